/**
 * `onestep gallery` on a 10k-image folder (ONESTEP_BENCH_GALLERY_IMAGES and ONESTEP_BENCH_GALLERY_SIDE to change, e.g.
 * 100000 images of 64x64 to time the page on 100k cards): the first build (10k WebP
 * thumbnails from 512x512 PNGs) and a rebuild (thumbnails kept), then the page opened in headless Chromium when it
 * is installed. The folder is 16 distinct PNGs hard-linked under 10k names (every thumbnail is still decoded and
 * encoded; the disk holds 16 images), with a manifest as generate writes it.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { buildGallery } from '../src/gallery.js';
import { ROOT } from './measure.js';

export async function benchGallery(opts: { images?: number } = {}): Promise<void> {
  const count = opts.images ?? Number(process.env.ONESTEP_BENCH_GALLERY_IMAGES ?? 10_000);
  const dir = path.join(ROOT, 'bench', '.work', 'gallery');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const side = Number(process.env.ONESTEP_BENCH_GALLERY_SIDE ?? 512);
  const sources: string[] = [];
  for (let k = 0; k < 16; k++) {
    // Smooth colour waves plus a little noise: about what a photo-like 512x512 PNG weighs.
    const px = Buffer.alloc(side * side * 3);
    for (let y = 0; y < side; y++) {
      for (let x = 0; x < side; x++) {
        const p = (y * side + x) * 3;
        const [u, v] = [(x * 512) / side, (y * 512) / side];
        px[p] = 128 + 100 * Math.sin((u + 13 * k) / 37);
        px[p + 1] = 128 + 100 * Math.sin((v + 7 * k) / 23);
        px[p + 2] = 128 + 100 * Math.sin((u + v + k) / 51) + ((x * 31 + y * 17 + k) % 9);
      }
    }
    const file = path.join(dir, `.source-${k}.png`);
    await sharp(px, { raw: { width: side, height: side, channels: 3 } }).png().toFile(file);
    sources.push(file);
  }
  const lines: string[] = [];
  for (let i = 0; i < count; i++) {
    const file = `${String(i).padStart(6, '0')}-${1000 + i}.png`;
    fs.linkSync(sources[i % 16], path.join(dir, file));
    lines.push(JSON.stringify({ index: i, prompt: `prompt ${i}: a lighthouse at dusk, style ${i % 97}`, seed: 1000 + i, width: side, height: side, guidance: 0, file, model: 'f'.repeat(64), model_name: 'bench' }));
  }
  fs.writeFileSync(path.join(dir, 'manifest.jsonl'), lines.join('\n') + '\n');
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  console.log(`gallery of ${count} images (${side}x${side} PNG) on ${cpu}, ${os.cpus().length} cores`);

  const first = await buildGallery({ dir });
  console.log(`  first build: ${first.seconds} s (${first.thumbnails_made} thumbnails, ${(count / first.seconds).toFixed(0)} images/s)`);
  const again = await buildGallery({ dir });
  console.log(`  rebuild: ${again.seconds} s (${again.thumbnails_kept} thumbnails kept)`);
  const thumbs = path.join(dir, '.gallery', 'thumbs');
  const bytes = fs.readdirSync(thumbs).reduce((s, f) => s + fs.statSync(path.join(thumbs, f)).size, 0);
  console.log(`  thumbnails: ${(bytes / count / 1024).toFixed(1)} KiB each; data scripts ${(fs.readdirSync(path.join(dir, '.gallery')).filter((f) => f.endsWith('.js')).reduce((s, f) => s + fs.statSync(path.join(dir, '.gallery', f)).size, 0) / 1e6).toFixed(1)} MB`);

  if (spawnSync('chromium', ['--version'], { stdio: 'ignore' }).status === 0) {
    const started = performance.now();
    const dom = execFileSync('chromium', ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', `--user-data-dir=${path.join(dir, '.chrome')}`, '--dump-dom', `${pathToFileURL(path.join(dir, 'index.html')).href}#q=style%2042`], { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'ignore'] });
    const cards = (dom.match(/<article /g) ?? []).length;
    console.log(`  headless Chromium: page loaded and filtered ("style 42": ${cards} cards shown) in ${((performance.now() - started) / 1000).toFixed(1)} s, browser start included`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
}
