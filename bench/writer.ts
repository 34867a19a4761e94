/**
 * The image writer alone: encode (sharp) and encode + atomic write of synthetic 512x512 RGB images, PNG / WebP / JPEG
 * at onestep's defaults, with the A1111 parameters embedded, as `generate` writes them. Each configuration runs in a
 * child process pinned to 1 or 2 cores (taskset) with a libuv thread pool of the same size (sharp and fs both run on
 * it), so the figures show how encoding scales with cores; and with and without the per-image fsync.
 *
 * Run: node --import tsx bench/writer.ts [images]   (or `npm run bench writer`). Prints figures only.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtemp, open, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { encodeImage, formatParameters, type ImageFormat } from '../src/io/images.js';
import { writeFileAtomic } from '../src/io/atomic.js';
import { cpuInfo } from '../src/runtime/machine.js';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const SIDE = 512;
const FORMATS: ImageFormat[] = ['png', 'webp', 'jpeg'];

/** A photo-like test image: smooth gradients and shapes plus mild noise (pure noise would not compress at all). */
export function syntheticImage(seed: number, side = SIDE): Uint8Array {
  const rgb = new Uint8Array(side * side * 3);
  let s = (seed * 2654435761) >>> 0 || 1;
  const noise = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) % 17) - 8;
  };
  const cx = side * (0.3 + 0.4 * ((seed * 7) % 10) / 10);
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      const d = Math.hypot(x - cx, y - side / 2) / side;
      const i = (y * side + x) * 3;
      rgb[i] = Math.max(0, Math.min(255, 255 * (1 - d) * (x / side) + noise()));
      rgb[i + 1] = Math.max(0, Math.min(255, 128 + 100 * Math.sin(x / 23 + seed) * Math.cos(y / 31) + noise()));
      rgb[i + 2] = Math.max(0, Math.min(255, 255 * (y / side) * (d < 0.25 ? 1 : 0.4) + noise()));
    }
  }
  return rgb;
}

const PARAMETERS = formatParameters({
  prompt: 'a photograph of an astronaut riding a horse on the moon, detailed, 8k',
  guidance: 0,
  seed: 42n,
  width: SIDE,
  height: SIDE,
  modelHash: 'a'.repeat(64),
  modelName: 'sd-turbo',
  version: '0.1.0',
});

/** Runs `count` jobs with at most `parallel` in flight; returns images/s. */
async function pool(count: number, parallel: number, job: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < count) await job(next++);
    }),
  );
  return count / ((performance.now() - started) / 1000);
}

/** Temp file + write + rename, without fsync: what the atomic write costs when durability is left to the OS. */
async function writeNoSync(path: string, data: Uint8Array): Promise<void> {
  const temp = `${path}.tmp`;
  const h = await open(temp, 'w');
  try {
    await h.writeFile(data);
  } finally {
    await h.close();
  }
  await rename(temp, path);
}

export interface WriterFigures {
  format: ImageFormat;
  cores: number;
  parallel: number;
  bytesPerImage: number;
  encode: number;
  encodeWriteFsync: number;
  encodeWriteNoFsync: number;
}

/** In the pinned child: the three rates for one format. */
async function child(format: ImageFormat, images: number, parallel: number, dir: string): Promise<Omit<WriterFigures, 'cores'>> {
  const inputs = Array.from({ length: 8 }, (_, i) => syntheticImage(i + 1));
  const opts = { format, parameters: PARAMETERS };
  let bytes = 0;
  await encodeImage(inputs[0], SIDE, SIDE, opts); // warm up libvips
  const encode = await pool(images, parallel, async (i) => {
    const n = (await encodeImage(inputs[i % 8], SIDE, SIDE, opts)).length;
    bytes += n;
  });
  const encodeWriteFsync = await pool(images, parallel, async (i) => writeFileAtomic(join(dir, `s${i}.${format}`), await encodeImage(inputs[i % 8], SIDE, SIDE, opts)));
  const encodeWriteNoFsync = await pool(images, parallel, async (i) => writeNoSync(join(dir, `n${i}.${format}`), await encodeImage(inputs[i % 8], SIDE, SIDE, opts)));
  return { format, parallel, bytesPerImage: bytes / images, encode, encodeWriteFsync, encodeWriteNoFsync };
}

function hasTaskset(): boolean {
  try {
    execFileSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export async function benchWriter(opts: { images?: number; dir?: string } = {}): Promise<WriterFigures[]> {
  const images = opts.images ?? 120;
  const cores = Math.min(os.availableParallelism(), 16);
  const pin = hasTaskset();
  const figures: WriterFigures[] = [];
  const dir = await mkdtemp(join(opts.dir ?? join(ROOT, 'bench', '.work'), 'writer-'));
  console.log(`${cpuInfo().model}, ${os.availableParallelism()} cores, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}; ${SIDE}x${SIDE} RGB, ${images} images per figure, output on ${dir}`);
  console.log('format  cores  in flight  KiB/image  encode img/s  +write+fsync img/s  +write, no fsync img/s');
  try {
    const coreCounts = [...new Set([1, 2, cores])].filter((c) => c <= os.availableParallelism());
    for (const format of FORMATS) {
      for (const c of coreCounts) {
        const script = fileURLToPath(import.meta.url);
        const args = ['--import', 'tsx', script, '--child', format, String(images), String(c), dir];
        const cmd = pin ? 'taskset' : process.execPath;
        const cmdArgs = pin ? ['-c', `0-${c - 1}`, process.execPath, ...args] : args;
        // sharp runs on libuv's thread pool (and so do fs writes and fsync): one thread per core, at least 4.
        const env = { ...process.env, UV_THREADPOOL_SIZE: String(Math.max(4, c)) };
        const out = await new Promise<string>((res, rej) => {
          const p = spawn(cmd, cmdArgs, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'inherit'] });
          let s = '';
          p.stdout.on('data', (d) => (s += d));
          p.on('close', (code) => (code === 0 ? res(s) : rej(new Error(`writer child exited ${code}`))));
        });
        const f: WriterFigures = { ...JSON.parse(out.trim().split('\n').pop()!), cores: c };
        figures.push(f);
        console.log(
          `${f.format.padEnd(6)}  ${String(c).padStart(5)}  ${String(f.parallel).padStart(9)}  ${(f.bytesPerImage / 1024).toFixed(0).padStart(9)}  ` +
            `${f.encode.toFixed(1).padStart(12)}  ${f.encodeWriteFsync.toFixed(1).padStart(18)}  ${f.encodeWriteNoFsync.toFixed(1).padStart(22)}`,
        );
      }
    }
    if (!pin) console.log('(taskset not found: children were not pinned, so the core counts are thread-pool sizes only)');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return figures;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const at = process.argv.indexOf('--child');
  if (at >= 0) {
    const [format, images, cores, dir] = process.argv.slice(at + 1);
    // Twice as many images in flight as cores keeps every thread busy while others wait on the disk.
    const sub = await mkdtemp(join(dir, `${format}-${cores}-`));
    console.log(JSON.stringify(await child(format as ImageFormat, Number(images), 2 * Number(cores), sub)));
  } else {
    await benchWriter({ images: process.argv[2] ? Number(process.argv[2]) : undefined });
  }
}
