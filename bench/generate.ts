/**
 * `onestep generate` benchmark: images/s and per-stage milliseconds per image at several batch sizes, for the bundled
 * demo model (converted into a temp cache) and, when given, a model directory; then a long run on a 100k-line prompt
 * file (spawned CLI, small images) stopped by SIGINT after some images, sampling the process RSS over time.
 * Run: node --import tsx bench/generate.ts [modelDir]   (env BENCH_PROMPTS, BENCH_BATCHES=1,4,8, BENCH_LONG_IMAGES)
 * Prints figures only; never asserts times.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { generateImages } from '../src/generate.js';
import { resolveModel } from '../src/models.js';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const STAGES = ['tokenize', 'textEncoder', 'denoiser', 'decoder', 'encode', 'write'] as const;

const PROMPT_WORDS = ['a photo of', 'a watercolor of', 'an oil painting of', 'a sketch of', 'a render of'];
const SUBJECTS = ['a cat', 'a lighthouse at dusk', 'a red sports car', 'a cabin in a snowy forest', 'an astronaut on a horse', 'a bowl of ramen'];
function prompt(i: number): string {
  return `${PROMPT_WORDS[i % PROMPT_WORDS.length]} ${SUBJECTS[Math.floor(i / PROMPT_WORDS.length) % SUBJECTS.length]}, number ${i}`;
}

export interface BatchFigures {
  model: string;
  batchSize: number;
  images: number;
  /** Whole run, engine load included. */
  seconds: number;
  /** From the first image to the last: (images after the first batch) / time. */
  steadyImagesPerSecond: number;
  /** Milliseconds per image per stage. */
  msPerImage: Record<string, number>;
}

export interface LongRunFigures {
  lines: number;
  images: number;
  seconds: number;
  exitCode: number | null;
  /** [seconds since start, RSS in MiB, images so far] */
  rss: [number, number, number][];
}

export interface GenerateBenchResult {
  batches: BatchFigures[];
  longRun?: LongRunFigures;
}

async function benchModel(name: string, modelDir: string, work: string, prompts: number, batchSizes: number[], size?: number): Promise<BatchFigures[]> {
  const promptFile = join(work, `prompts-${prompts}.txt`);
  await writeFile(promptFile, Array.from({ length: prompts }, (_, i) => prompt(i)).join('\n') + '\n');
  const figures: BatchFigures[] = [];
  for (const batchSize of batchSizes) {
    const out = join(work, `${name}-b${batchSize}`);
    const times: number[] = [];
    const summary = await generateImages(promptFile, {
      modelDir,
      out,
      batchSize,
      seed: 1n,
      width: size,
      height: size,
      device: process.env.BENCH_DEVICE ?? 'cpu',
      format: 'png',
      nameTemplate: '{index:06}-{seed}',
      resume: false,
      strict: false,
      onImage: () => times.push(performance.now()),
    });
    const afterFirst = times.length - Math.min(batchSize, times.length);
    const span = (times[times.length - 1] - times[Math.min(batchSize, times.length) - 1]) / 1000;
    const f: BatchFigures = {
      model: name,
      batchSize,
      images: summary.images,
      seconds: summary.seconds,
      steadyImagesPerSecond: afterFirst > 0 && span > 0 ? afterFirst / span : summary.images_per_second,
      msPerImage: Object.fromEntries(STAGES.map((s) => [s, (summary.stage_ms[s] ?? 0) / Math.max(1, summary.images)])),
    };
    figures.push(f);
    const stages = STAGES.map((s) => `${s} ${f.msPerImage[s].toFixed(1)}`).join(', ');
    console.log(
      `${name} batch ${batchSize}: ${f.images} images in ${f.seconds.toFixed(2)} s (load included), ` +
        `steady ${f.steadyImagesPerSecond.toFixed(2)} img/s; ms/image: ${stages}`,
    );
    await rm(out, { recursive: true, force: true });
  }
  return figures;
}

async function rssMiB(pid: number): Promise<number | undefined> {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** The spawned CLI on a `lines`-line prompt file, SIGINT after `stopAfter` images, RSS sampled every `everyMs`. */
async function longRun(modelDir: string, work: string, lines: number, stopAfter: number, everyMs = 1000): Promise<LongRunFigures> {
  const promptFile = join(work, `prompts-${lines}.txt`);
  await writeFile(promptFile, Array.from({ length: lines }, (_, i) => prompt(i)).join('\n') + '\n');
  const out = join(work, 'long');
  const started = performance.now();
  const child = spawn(
    process.execPath,
    [join(ROOT, 'bin', 'run.js'), 'generate', promptFile, '--model', modelDir, '-o', out, '--seed', '1', '--batch-size', '4',
      '--width', '64', '--height', '64', '--device', process.env.BENCH_DEVICE ?? 'cpu', '--quiet', '--json'],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  const rss: [number, number, number][] = [];
  let stopped = false;
  const countImages = async () => (await readdir(out).catch(() => [] as string[])).filter((f) => f.endsWith('.png') && !f.startsWith('.')).length;
  let running = true;
  void exited.then(() => (running = false));
  while (running) {
    const mib = await rssMiB(child.pid!);
    const images = await countImages();
    if (mib !== undefined) {
      rss.push([(performance.now() - started) / 1000, mib, images]);
      console.log(`  t ${rss.at(-1)![0].toFixed(1)} s: RSS ${mib.toFixed(0)} MiB, ${images} images`);
    }
    if (!stopped && images >= stopAfter) {
      stopped = true;
      child.kill('SIGINT');
    }
    await Promise.race([new Promise((r) => setTimeout(r, everyMs)), exited]);
  }
  const exitCode = await exited;
  let images = await countImages();
  try {
    images = JSON.parse(stdout).images;
  } catch {
    // no summary (the run failed): count the files
  }
  await rm(out, { recursive: true, force: true });
  return { lines, images, seconds: (performance.now() - started) / 1000, exitCode, rss };
}

export async function benchGenerate(opts: { modelDir?: string; prompts?: number; batchSizes?: number[]; longRunImages?: number } = {}): Promise<GenerateBenchResult> {
  const work = await mkdtemp(join(tmpdir(), 'onestep-bench-generate-'));
  try {
    const prompts = opts.prompts ?? 32;
    const batchSizes = opts.batchSizes ?? [1, 4, 8];
    const demo = await resolveModel({ env: { ONESTEP_CACHE: join(work, 'cache') } });
    console.log(`demo model converted into ${demo.dir}`);
    // The demo's own default size is 512x512 (a single file does not say its sample size); 64x64 keeps this quick.
    const batches = await benchModel('demo (tiny-sd15, 64x64)', demo.dir, work, prompts, batchSizes, 64);
    if (opts.modelDir) batches.push(...(await benchModel(opts.modelDir, resolve(opts.modelDir), work, prompts, batchSizes)));

    const lines = 100_000;
    const stopAfter = opts.longRunImages ?? 300;
    console.log(`long run: ${lines}-line prompt file, 64x64, batch 4, SIGINT after ${stopAfter} images`);
    const long = await longRun(demo.dir, work, lines, stopAfter);
    // Once images flow (the model loaded): the first half of the run against the second shows growth, if any.
    const flowing = long.rss.filter((r) => r[2] > 0);
    const range = (rows: typeof flowing) => (rows.length ? `${Math.min(...rows.map((r) => r[1])).toFixed(0)}..${Math.max(...rows.map((r) => r[1])).toFixed(0)} MiB` : 'n/a');
    const mid = flowing.length ? (flowing[0][0] + flowing[flowing.length - 1][0]) / 2 : 0;
    console.log(
      `long run: ${long.images} images in ${long.seconds.toFixed(1)} s (exit ${long.exitCode}); RSS while generating: ` +
        `first half ${range(flowing.filter((r) => r[0] < mid))}, second half ${range(flowing.filter((r) => r[0] >= mid))}`,
    );
    return { batches, longRun: long };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const env = process.env;
  await benchGenerate({
    modelDir: process.argv[2],
    prompts: env.BENCH_PROMPTS ? Number(env.BENCH_PROMPTS) : undefined,
    batchSizes: env.BENCH_BATCHES ? env.BENCH_BATCHES.split(',').map(Number) : undefined,
    longRunImages: env.BENCH_LONG_IMAGES ? Number(env.BENCH_LONG_IMAGES) : undefined,
  });
}
