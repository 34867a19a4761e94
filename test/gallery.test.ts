/**
 * The gallery of a real run (the bundled demo model, through the built CLI), checked in headless Chromium: the DOM
 * it renders (cards, prompts, seeds, sizes, model, links, filter, pages) and a screenshot whose pixels show the
 * thumbnail. Skipped when Chromium is not installed, unless ONESTEP_REQUIRE_CHROMIUM=1 (as .ci/run sets).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { buildGallery, GALLERY_DIR, THUMBS_DIR } from '../src/gallery.js';
import { tempPathFor } from '../src/io/atomic.js';
import { onestep } from './support/cli.js';
import { ROOT } from './support/fixtures.js';

function findChromium(): string | undefined {
  for (const bin of ['chromium', 'chromium-browser', 'google-chrome']) {
    if (spawnSync(bin, ['--version'], { stdio: 'ignore' }).status === 0) return bin;
  }
  return undefined;
}

const WORDS = ['apple', 'bridge', 'castle', 'desert', 'eagle', 'forest', 'glacier', 'harbor', 'island', 'jungle', 'kettle', 'lantern'];

describe('gallery', function () {
  this.timeout(300_000);
  let dir: string;
  let out: string;
  let chromium: string | undefined;
  let profile = 0;

  function needChromium(ctx: Mocha.Context): void {
    if (chromium) return;
    if (process.env.ONESTEP_REQUIRE_CHROMIUM === '1') assert.fail('chromium is not installed (apt-get install chromium)');
    ctx.skip();
  }

  /** Chromium headless with the flags that work on these machines and a fresh profile each time. */
  function browse(args: string[], url: string): string {
    const userDir = path.join(dir, `chrome-profile-${profile++}`);
    return execFileSync(
      chromium!,
      ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', `--user-data-dir=${userDir}`, '--force-device-scale-factor=1', ...args, url],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 120_000 },
    );
  }

  before(async function () {
    chromium = findChromium();
    if (!fs.existsSync(path.join(ROOT, 'dist', 'commands', 'generate.js'))) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'pipe' });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-gallery-'));
    out = path.join(dir, 'out');
    const prompts = path.join(dir, 'prompts.txt');
    fs.writeFileSync(prompts, WORDS.map((w, i) => `a picture of a ${w}, number ${i}\n`).join(''));
    const res = await onestepWithCache([prompts, '-o', out, '--seed', '30', '--batch-size', '4', '--device', 'cpu', '--quiet']);
    assert.equal(res.code, 0, res.stderr);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function onestepWithCache(args: string[]) {
    const saved = process.env.ONESTEP_CACHE;
    process.env.ONESTEP_CACHE = path.join(dir, 'cache');
    try {
      return await onestep('generate', ...args);
    } finally {
      if (saved === undefined) delete process.env.ONESTEP_CACHE;
      else process.env.ONESTEP_CACHE = saved;
    }
  }

  it('writes index.html and one thumbnail per image, made once; a regenerated image gets a new one', async () => {
    const first = await buildGallery({ dir: out });
    assert.deepEqual([first.images, first.thumbnails_made, first.thumbnails_kept, first.left_out], [12, 12, 0, 0]);
    const thumbs = path.join(out, GALLERY_DIR, THUMBS_DIR);
    const images = fs.readdirSync(out).filter((f) => f.endsWith('.png'));
    assert.deepEqual(fs.readdirSync(thumbs).sort(), images.map((f) => `${f}.webp`).sort());
    for (const t of fs.readdirSync(thumbs)) {
      const meta = await sharp(path.join(thumbs, t)).metadata();
      assert.deepEqual([meta.format, meta.width, meta.height], ['webp', 64, 64], t);
    }
    // Thumbnails a killed build was writing (a dead pid's temp names, this version's and an older one's) are removed.
    const dead = 2 ** 22 + 1;
    const torn = [path.basename(tempPathFor(path.join(thumbs, 'x.png.webp'))).replace(`-${process.pid}-`, `-${dead}-`), `.y.png.webp.tmp-${dead}`];
    for (const t of torn) fs.writeFileSync(path.join(thumbs, t), 'torn');
    const again = await buildGallery({ dir: out });
    assert.deepEqual([again.thumbnails_made, again.thumbnails_kept], [0, 12]);
    assert.deepEqual(fs.readdirSync(thumbs).sort(), images.map((f) => `${f}.webp`).sort());
    const later = new Date(Date.now() + 5000);
    fs.utimesSync(path.join(out, images[3]), later, later);
    const third = await buildGallery({ dir: out });
    assert.deepEqual([third.thumbnails_made, third.thumbnails_kept], [1, 11]);
  });

  it('the CLI builds it too and says what it did', async () => {
    const res = await onestep('gallery', out, '--json', '--quiet');
    assert.equal(res.code, 0, res.stderr);
    assert.deepEqual(JSON.parse(res.stdout).images, 12);
    const missing = await onestep('gallery', path.join(dir, 'nope'));
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /Error: .*nope: has no manifest\.jsonl/);
  });

  it('headless Chromium: a card per image with prompt, seed, size, model and a link to the image; filter and pages', function () {
    needChromium(this);
    const url = pathToFileURL(path.join(out, 'index.html')).href;
    const dom = browse(['--dump-dom'], url);
    const cards = [...dom.matchAll(/<article class="card" data-index="(\d+)">(.*?)<\/article>/gs)];
    assert.equal(cards.length, 12);
    const manifest = fs.readFileSync(path.join(out, 'manifest.jsonl'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
    for (const [, index, html] of cards) {
      const e = manifest.find((m) => m.index === Number(index));
      assert.ok(e, `card ${index}`);
      assert.match(html, new RegExp(`<a class="image" href="${e.file}"`));
      assert.ok(fs.existsSync(path.join(out, e.file)));
      assert.match(html, new RegExp(`<img src="\\.gallery/thumbs/${e.file}\\.webp"`));
      assert.match(html, new RegExp(`<div class="prompt">${e.prompt}</div>`));
      assert.match(html, new RegExp(`<div class="meta">seed ${30 + Number(index)} · 64×64 · tiny-sd15</div>`));
    }
    assert.match(dom, /<span id="count">12 images<\/span>/);

    const filtered = browse(['--dump-dom'], `${url}#q=GLACIER`);
    const only = [...filtered.matchAll(/<article class="card" data-index="(\d+)">/g)].map((m) => m[1]);
    assert.deepEqual(only, ['6']);
    assert.match(filtered, /<span id="count">1 of 12 images<\/span>/);
    // Every word must match (in any field); no match says so.
    assert.equal([...browse(['--dump-dom'], `${url}#q=picture%20castle`).matchAll(/<article /g)].length, 1);
    assert.match(browse(['--dump-dom'], `${url}#q=castle%20apple`), /<div id="empty">No image matches/);
  });

  it('pages: --page-size 5 gives 3 pages; page 3 holds the last 2 cards', async function () {
    needChromium(this);
    await buildGallery({ dir: out, pageSize: 5 });
    const url = pathToFileURL(path.join(out, 'index.html')).href;
    const page3 = browse(['--dump-dom'], `${url}#page=3`);
    assert.deepEqual([...page3.matchAll(/<article class="card" data-index="(\d+)">/g)].map((m) => m[1]), ['10', '11']);
    assert.match(page3, /page 3 of 3/);
    await buildGallery({ dir: out });
  });

  it('headless Chromium screenshot: the filtered card shows its thumbnail, pixel for pixel (3x, pixelated)', async function () {
    needChromium(this);
    const shot = path.join(dir, 'shot.png');
    browse(['--window-size=800,600', `--screenshot=${shot}`], `${pathToFileURL(path.join(out, 'index.html')).href}#q=glacier`);
    const { data, info } = await sharp(shot).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    // The page itself is grey and black; the demo model's images are colourful: their box is the thumbnail.
    let [x0, y0, x1, y1] = [info.width, info.height, -1, -1];
    for (let y = 0; y < info.height; y++) {
      for (let x = 0; x < info.width; x++) {
        const p = (y * info.width + x) * 3;
        if (Math.max(data[p], data[p + 1], data[p + 2]) - Math.min(data[p], data[p + 1], data[p + 2]) > 40) {
          [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
        }
      }
    }
    const [w, h] = [x1 - x0 + 1, y1 - y0 + 1];
    assert.ok(Math.abs(w - 192) <= 3 && Math.abs(h - 192) <= 3, `colourful box ${w}x${h} at ${x0},${y0}`);
    const file = fs.readdirSync(out).find((f) => f.startsWith('000006-'))!;
    const thumb = await sharp(path.join(out, GALLERY_DIR, THUMBS_DIR, `${file}.webp`)).removeAlpha().raw().toBuffer();
    // The 64x64 thumbnail drawn at 192x192 with image-rendering: pixelated: each pixel is a 3x3 block; compare centres.
    const left = x0 + Math.round((w - 192) / 2);
    const top = y0 + Math.round((h - 192) / 2);
    let close = 0;
    let total = 0;
    for (let ty = 0; ty < 64; ty++) {
      for (let tx = 0; tx < 64; tx++) {
        const s = ((top + ty * 3 + 1) * info.width + (left + tx * 3 + 1)) * 3;
        const t = (ty * 64 + tx) * 3;
        for (let c = 0; c < 3; c++) {
          total++;
          if (Math.abs(data[s + c] - thumb[t + c]) <= 3) close++;
        }
      }
    }
    assert.ok(close / total >= 0.98, `${close}/${total} channel values within 3 of the thumbnail`);
  });

  it('a webdataset run: thumbnails from the tar members, cards link to their shard', async function () {
    const wds = path.join(dir, 'wds');
    const res = await onestepWithCache([path.join(dir, 'prompts.txt'), '-o', wds, '--seed', '30', '--batch-size', '4', '--device', 'cpu', '--quiet', '--output-format', 'webdataset', '--shard-size', '5']);
    assert.equal(res.code, 0, res.stderr);
    const summary = await buildGallery({ dir: wds });
    assert.deepEqual([summary.images, summary.thumbnails_made, summary.left_out], [12, 12, 0]);
    // The same prompts and seeds as the files run: the members are the same images, so the thumbnails are too.
    for (const f of fs.readdirSync(out).filter((x) => x.endsWith('.png'))) {
      const i = Number(f.slice(0, 6));
      const shard = `${String(Math.floor(i / 5)).padStart(5, '0')}.tar`;
      const fromTar = fs.readFileSync(path.join(wds, GALLERY_DIR, THUMBS_DIR, `${shard}_${f}.webp`));
      assert.ok(fromTar.equals(fs.readFileSync(path.join(out, GALLERY_DIR, THUMBS_DIR, `${f}.webp`))), f);
    }
    assert.equal((await buildGallery({ dir: wds })).thumbnails_kept, 12);
    needChromium(this);
    const dom = browse(['--dump-dom'], `${pathToFileURL(path.join(wds, 'index.html')).href}#q=00002.tar`);
    const cards = [...dom.matchAll(/<article class="card" data-index="(\d+)">(.*?)<\/article>/gs)];
    assert.deepEqual(cards.map((c) => c[1]), ['10', '11']);
    assert.match(cards[0][2], /<a class="image" href="00002\.tar" title="000010-40\.png in 00002\.tar">/);
  });
});
