/**
 * `onestep bench`: how fast a model directory runs here, in figures that can be compared across machines: load time
 * of each session, milliseconds per image per stage, images/s, peak RSS, and the achieved GFLOP/s from a FLOP count
 * of the graphs themselves (onnx/flops.ts), on a named CPU (model and ISA) or GPU. Prints figures; asserts none.
 */
import { stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { OnestepError } from './errors.js';
import { countFlops } from './onnx/flops.js';
import { readModelStructure } from './onnx/read-model.js';
import { defaultThreads } from './runtime/device.js';
import { OneStepEngine, type GeneratedImage, type ImageRequest, type SessionLoad } from './runtime/engine.js';
import { cpuInfo, gpuNames, isaLevel } from './runtime/machine.js';
import { readModelManifest, type ModelManifest } from './runtime/model-dir.js';
import { usesGuidance } from './runtime/one-step.js';
import { ONESTEP_VERSION } from './convert.js';

export interface BenchOptions {
  modelDir: string;
  /** auto | cpu | cuda | cuda:N */
  device: string;
  batchSizes: number[];
  /** Square image side (default: the model's default size). */
  size?: number;
  /** Worker counts to compare (each a fresh engine); default [1]. */
  workers?: number[];
  /** Intra-op threads per worker (default: cores / workers). */
  threads?: number;
  /** Timed batches per batch size and worker (default 1; the first batch size is run once untimed before). */
  iterations?: number;
  onProgress?: (line: string) => void;
}

/** Milliseconds per image of each pipeline stage. */
export interface StageMs {
  tokenize: number;
  textEncoder: number;
  denoiser: number;
  decoder: number;
  total: number;
}

export interface BatchFigures {
  batchSize: number;
  images: number;
  /** Wall time of the timed batches (all workers together). */
  seconds: number;
  imagesPerSecond: number;
  /** Each image's share of its batch's stage times, averaged (per worker: workers overlap). */
  msPerImage: StageMs;
  /** Counted FLOPs per image / wall time per image (all workers together). */
  gflopsPerSecond: number;
  /** Per stage: the stage's FLOPs / its time. */
  stageGflopsPerSecond: { textEncoder: number; denoiser: number; decoder: number };
  /** The process's peak RSS so far (batch sizes run in ascending order, so this is the peak up to this batch size). */
  peakRssMB: number;
}

export interface WorkerRun {
  workers: number;
  threads: number;
  device: string;
  notes: string[];
  /** Engine load (all workers, in parallel), first worker's parts. */
  loadSeconds: number;
  loads: SessionLoad[];
  /** Seconds since process start when the engine was ready, and when the first image was done. */
  readyAfterProcessStart: number;
  firstImageAfterProcessStart: number;
  batches: BatchFigures[];
}

export interface BenchReport {
  onestep: string;
  onnxruntime: string;
  node: string;
  machine: { cpu: string; cores: number; isa: string[]; isaLevel: string; memoryGB: number; gpus: string[]; loadAverage: number[] };
  model: {
    dir: string;
    family: string;
    dtype: string;
    vaeDecoder: string;
    width: number;
    height: number;
    /** Bytes of the graphs and weights generation loads (conditioning graphs, denoiser, decoder). */
    weightBytes: number;
    /** Counted GFLOP per image (text encoders per prompt row, denoiser per row, decoder per image). */
    gflopPerImage: { textEncoder: number; denoiser: number; decoder: number; total: number };
    guidance: number;
    uncountedNodes: number;
  };
  runs: WorkerRun[];
  /** The fastest configuration measured at the largest batch size, and what `generate` uses without flags. */
  best?: { workers: number; threads: number; batchSize: number; imagesPerSecond: number };
  generateDefault: { workers: number; threads: number };
}

const PROMPT = 'a photograph of an astronaut riding a horse on the moon, detailed, 8k';

async function fileBytes(file: string): Promise<number> {
  let total = 0;
  for (const f of [file, `${file}.data`]) total += (await stat(f).catch(() => undefined))?.size ?? 0;
  return total;
}

/** GFLOP of one evaluation of each generation graph, per image, at `width` x `height`. */
async function countModel(modelDir: string, m: ModelManifest, width: number, height: number, rowsPerImage: number) {
  const f = m.latent.downscale;
  const sequence = Math.max(...m.conditioning.map((c) => c.max_length));
  const at = async (rel: string, symbols: Record<string, number>) => {
    const c = countFlops(await readModelStructure(path.join(modelDir, rel)), symbols);
    return { gflop: c.flops / 1e9, unresolved: c.unresolved.length };
  };
  const conditioning = await Promise.all(m.conditioning.map((c) => at(c.graph, { batch: 1, sequence: c.max_length })));
  const unet = await at(m.denoiser.graph, { batch: 1, sequence, height: height / f, width: width / f });
  const dec = await at(m.decoder.graph, { batch: 1, height: height / f, width: width / f });
  const textEncoder = conditioning.reduce((a, c) => a + c.gflop, 0) * rowsPerImage;
  const denoiser = unet.gflop * rowsPerImage;
  return {
    textEncoder,
    denoiser,
    decoder: dec.gflop,
    total: textEncoder + denoiser + dec.gflop,
    unresolved: conditioning.reduce((a, c) => a + c.unresolved, 0) + unet.unresolved + dec.unresolved,
  };
}

function requests(batch: number, start: number, width: number, height: number, guidance: number): ImageRequest[] {
  return Array.from({ length: batch }, (_, i) => ({
    index: start + i,
    prompt: `${PROMPT}, ${start + i}`,
    negativePrompt: '',
    seed: BigInt(start + i),
    width,
    height,
    guidance,
  }));
}

const maxRssMB = () => process.resourceUsage().maxRSS / 1024;

export async function runBench(opts: BenchOptions): Promise<BenchReport> {
  const m = await readModelManifest(opts.modelDir);
  const width = opts.size ?? m.default_size.width;
  const height = opts.size ?? m.default_size.height;
  const f = m.latent.downscale;
  if (!Number.isInteger(width) || width < f || width % f) throw new OnestepError(`--size ${width} must be a positive multiple of ${f}`);
  const batchSizes = [...new Set(opts.batchSizes)].sort((a, b) => a - b);
  if (!batchSizes.length || batchSizes.some((b) => !Number.isInteger(b) || b < 1)) throw new OnestepError(`--batch-sizes must be positive integers (got ${opts.batchSizes.join(',')})`);
  const workerCounts = opts.workers?.length ? opts.workers : [1];
  if (workerCounts.some((w) => !Number.isInteger(w) || w < 1)) throw new OnestepError(`--workers must be positive integers (got ${workerCounts.join(',')})`);
  const iterations = opts.iterations ?? 1;
  const guidance = m.recipe.guidance;
  const rowsPerImage = usesGuidance(guidance) ? 2 : 1;
  const flops = await countModel(opts.modelDir, m, width, height, rowsPerImage);
  let weightBytes = 0;
  for (const g of [m.denoiser.graph, m.decoder.graph, ...m.conditioning.map((c) => c.graph)]) weightBytes += await fileBytes(path.join(opts.modelDir, g));
  const cpu = cpuInfo();
  const say = opts.onProgress ?? (() => undefined);

  const runs: WorkerRun[] = [];
  let next = 0;
  for (const workers of workerCounts) {
    const threads = opts.threads ?? defaultThreads(workers);
    const t0 = performance.now();
    say(`loading ${opts.modelDir} (${workers} worker(s) x ${threads} thread(s))`);
    const engine = await OneStepEngine.load(opts.modelDir, { device: opts.device, workers, threads });
    const readyAfterProcessStart = process.uptime();
    const loadSeconds = (performance.now() - t0) / 1000;
    try {
      // The first image (untimed for the table): ORT's first run allocates its buffers.
      await engine.generate(requests(1, next++, width, height, guidance));
      const firstImageAfterProcessStart = process.uptime();
      const batches: BatchFigures[] = [];
      for (const batchSize of batchSizes) {
        say(`batch ${batchSize}: ${iterations * workers} batch(es) on ${workers} worker(s)`);
        const started = performance.now();
        const jobs: Promise<GeneratedImage[]>[] = [];
        for (let i = 0; i < iterations * workers; i++) {
          jobs.push(engine.generate(requests(batchSize, next, width, height, guidance)));
          next += batchSize;
        }
        const images = (await Promise.all(jobs)).flat();
        const seconds = (performance.now() - started) / 1000;
        const ms: StageMs = { tokenize: 0, textEncoder: 0, denoiser: 0, decoder: 0, total: 0 };
        for (const img of images) for (const k of Object.keys(ms) as (keyof StageMs)[]) ms[k] += img.ms[k] / batchSize / images.length;
        const perImage = seconds / images.length;
        batches.push({
          batchSize,
          images: images.length,
          seconds,
          imagesPerSecond: images.length / seconds,
          msPerImage: ms,
          gflopsPerSecond: flops.total / perImage,
          stageGflopsPerSecond: {
            textEncoder: flops.textEncoder / (ms.textEncoder / 1000),
            denoiser: flops.denoiser / (ms.denoiser / 1000),
            decoder: flops.decoder / (ms.decoder / 1000),
          },
          peakRssMB: maxRssMB(),
        });
      }
      runs.push({ workers, threads, device: engine.device, notes: engine.notes, loadSeconds, loads: engine.loads, readyAfterProcessStart, firstImageAfterProcessStart, batches });
    } finally {
      await engine.close();
    }
  }

  const largest = batchSizes[batchSizes.length - 1];
  let best: BenchReport['best'];
  for (const r of runs) {
    const b = r.batches.find((x) => x.batchSize === largest)!;
    if (!best || b.imagesPerSecond > best.imagesPerSecond) best = { workers: r.workers, threads: r.threads, batchSize: largest, imagesPerSecond: b.imagesPerSecond };
  }
  return {
    onestep: ONESTEP_VERSION,
    onnxruntime: ort.env.versions.common,
    node: process.versions.node,
    machine: { cpu: cpu.model, cores: cpu.cores, isa: cpu.isa, isaLevel: isaLevel(cpu), memoryGB: os.totalmem() / 2 ** 30, gpus: gpuNames(), loadAverage: os.loadavg() },
    model: {
      dir: opts.modelDir,
      family: m.family,
      dtype: m.dtype,
      vaeDecoder: m.decoder.kind,
      width,
      height,
      weightBytes,
      gflopPerImage: { textEncoder: flops.textEncoder, denoiser: flops.denoiser, decoder: flops.decoder, total: flops.total },
      guidance,
      uncountedNodes: flops.unresolved,
    },
    runs,
    best,
    generateDefault: { workers: 1, threads: defaultThreads(1) },
  };
}

const fixed = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
/** GFLOP with enough digits for tiny test models and big ones alike. */
const gflop = (x: number) => fixed(x, x < 10 ? 3 : 1);

/** The report as a table for people. */
export function formatBenchReport(r: BenchReport): string {
  const mm = r.model;
  const g = mm.gflopPerImage;
  const lines = [
    `onestep ${r.onestep} bench: ${mm.dir} (${mm.family}, ${mm.dtype}, decoder ${mm.vaeDecoder}), ${mm.width}x${mm.height}` +
      (mm.guidance > 1 ? `, guidance ${mm.guidance} (2 rows per image)` : ''),
    `machine: ${r.machine.cpu}, ${r.machine.cores} cores, ISA ${r.machine.isaLevel} (${r.machine.isa.join(' ')}), ${fixed(r.machine.memoryGB, 0)} GB` +
      (r.machine.gpus.length ? `; GPU ${r.machine.gpus.join('; ')}` : '') +
      `; load average ${r.machine.loadAverage.map((x) => x.toFixed(2)).join(' ')}; onnxruntime ${r.onnxruntime}, node ${r.node}`,
    `compute per image (counted from the graphs): text encoder ${gflop(g.textEncoder)} + denoiser ${gflop(g.denoiser)} + decoder ${gflop(g.decoder)} = ${gflop(g.total)} GFLOP` +
      (mm.uncountedNodes ? ` (${mm.uncountedNodes} nodes with unresolved shapes not counted)` : '') +
      `; weights ${fixed(mm.weightBytes / 2 ** 30, 2)} GiB`,
  ];
  for (const run of r.runs) {
    lines.push('');
    lines.push(`${run.device}, ${run.workers} worker(s) x ${run.threads} thread(s)${run.notes.length ? ` (${run.notes.join('; ')})` : ''}`);
    lines.push(
      `load ${fixed(run.loadSeconds, 2)} s: ` +
        run.loads.map((l) => `${l.component} ${fixed(l.ms / 1000, 2)} s${l.cache ? ` (cache ${l.cache})` : ''}`).join(', ') +
        `; ready ${fixed(run.readyAfterProcessStart, 2)} s and first image ${fixed(run.firstImageAfterProcessStart, 2)} s after process start`,
    );
    const head = ['batch', 'images', 'tokenize', 'text enc', 'denoiser', 'decoder', 'ms/image', 'img/s', 'GFLOP/s', 'denoiser', 'decoder', 'peak RSS'];
    const rows = run.batches.map((b) => [
      String(b.batchSize),
      String(b.images),
      fixed(b.msPerImage.tokenize),
      fixed(b.msPerImage.textEncoder),
      fixed(b.msPerImage.denoiser),
      fixed(b.msPerImage.decoder),
      fixed(b.msPerImage.total),
      fixed(b.imagesPerSecond, 3),
      fixed(b.gflopsPerSecond),
      fixed(b.stageGflopsPerSecond.denoiser),
      fixed(b.stageGflopsPerSecond.decoder),
      `${fixed(b.peakRssMB / 1024, 2)} GiB`,
    ]);
    const width = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
    const fmt = (cells: string[]) => cells.map((c, i) => c.padStart(width[i])).join('  ');
    lines.push(`${' '.repeat(width.slice(0, 2).reduce((a, b) => a + b + 2, 0))}${'--- ms per image (each worker) ---'.padEnd(width.slice(2, 7).reduce((a, b) => a + b + 2, 0))}${''.padEnd(width[7] + 2)}-- achieved GFLOP/s --`);
    lines.push(fmt(head));
    for (const row of rows) lines.push(fmt(row));
  }
  if (r.best && r.runs.length > 1) {
    lines.push('');
    lines.push(`fastest at batch ${r.best.batchSize}: ${r.best.workers} worker(s) x ${r.best.threads} thread(s), ${fixed(r.best.imagesPerSecond, 3)} img/s`);
  }
  lines.push(`generate's default: ${r.generateDefault.workers} worker x ${r.generateDefault.threads} threads (see bench/README.md for the measurement behind it)`);
  return lines.join('\n');
}
