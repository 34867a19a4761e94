/**
 * `npm run gpu-check`: the CUDA path, checkable in one command. Offline: the CUDA provider library comes from a
 * folder named by ONESTEP_CUDA_PROVIDER_DIR (DESIGN.md section 6), never from the network.
 *
 * CPU half (always; CI runs it through test/bench/gpu-check.test.ts):
 *   1. `convert --target cuda` graph building on the full-size SD 1.5 UNet and VAE decoder (from tensor shapes): how
 *      many of each fused op, and that the rewritten graphs count the same FLOPs as the CPU ones.
 *   2. fp16 against fp32 images of a small model on CPU (tiny-sd15: the same prompts and seeds), PSNR per image.
 *   3. The bench table of the small model, with the full VAE and with a TAESD decoder.
 * GPU half (when a CUDA provider loads): the full-size random SD 1.5 (bench/sd15-generator.ts) converted in fp32
 * (standard ops) and in fp16 for CUDA (fused ops), fp16 against fp32 images on the GPU (PSNR >= 40 dB), then bench at
 * batch 1, 4, 8, 16 with the full VAE and with TAESD.
 *
 * Env: ONESTEP_CUDA_PROVIDER_DIR (libonnxruntime_providers_cuda.so, and libonnxruntime_providers_shared.so unless
 * onnxruntime-node has it: copied beside onnxruntime-node's own library, where ORT looks); the CUDA runtime, cuBLAS and
 * cuDNN on LD_LIBRARY_PATH; ONESTEP_GPU_CHECK_DIR (work folder, about 20 GB; default bench/.work/gpu-check);
 * ONESTEP_GPU_CHECK_CPU_ONLY=1 (the CPU half only). Exit code 1 when a PSNR is below its bound.
 */
import { copyFile, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { buildUNetGraph, expectedUnetWeights } from '../src/architectures/unet.js';
import { buildVaeDecoderGraph, expectedVaeWeights } from '../src/architectures/vae.js';
import { formatBenchReport, runBench, type BenchReport } from '../src/bench.js';
import type { WeightSource } from '../src/checkpoint/weight-source.js';
import { convertCheckpoint } from '../src/convert.js';
import { fuseForCuda, type CudaFusionReport } from '../src/onnx/cuda-fusions.js';
import { countFlops } from '../src/onnx/flops.js';
import type { Graph } from '../src/onnx/graph.js';
import { graphStructure } from '../src/onnx/read-model.js';
import { OneStepEngine, type ImageRequest } from '../src/runtime/engine.js';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors/writer.js';
import { generateSd15, SD15_UNET, SD15_VAE } from './sd15-generator.js';

const ROOT = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
const TINY = path.join(ROOT, 'test', 'fixtures', 'tiny-sd15');

/** PSNR of two 8-bit images in dB (Infinity when identical). */
export function psnr(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) throw new Error(`images differ in size: ${a.length} vs ${b.length}`);
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i] - b[i]) ** 2;
  return se === 0 ? Infinity : 10 * Math.log10((255 * 255) / (se / a.length));
}

function shapesOnly(shapes: Map<string, number[]>): WeightSource {
  return {
    names: () => [...shapes.keys()].sort(),
    has: (n) => shapes.has(n),
    meta: (n) => ({ shape: shapes.get(n)!, dtype: 'F32' }),
    readF32: async (n) => {
      throw new Error(`gpu-check builds graphs from shapes only (read ${n})`);
    },
    close: async () => {},
  };
}


export interface GraphCheck {
  graph: string;
  fusions: CudaFusionReport;
  gflopCpu: number;
  gflopCuda: number;
  unresolved: number;
}

/** CPU half, 1: the CUDA graphs of the full-size SD 1.5 (512x512, batch 1), built from shapes. */
export function checkCudaGraphs(): GraphCheck[] {
  const out: GraphCheck[] = [];
  const cases: [string, () => Graph, Record<string, number>][] = [
    ['unet', () => buildUNetGraph(shapesOnly(expectedUnetWeights(SD15_UNET)), SD15_UNET, 'float16'), { batch: 1, sequence: 77, height: 64, width: 64 }],
    ['vae_decoder', () => buildVaeDecoderGraph(shapesOnly(expectedVaeWeights(SD15_VAE)), SD15_VAE, 'float16'), { batch: 1, height: 64, width: 64 }],
  ];
  for (const [graph, build, symbols] of cases) {
    const g = build();
    const cpu = countFlops(graphStructure(g), symbols);
    const fusions = fuseForCuda(g);
    const cuda = countFlops(graphStructure(g), symbols);
    out.push({ graph, fusions, gflopCpu: cpu.flops / 1e9, gflopCuda: cuda.flops / 1e9, unresolved: cuda.unresolved.length });
  }
  return out;
}

/** madebyollin's TAESD decoder layout ([3, 3, 3, 1] blocks of 64 channels) with seeded random weights, as a diffusers AutoencoderTiny folder. */
export async function writeRandomTaesd(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  const shapes: [string, number[]][] = [];
  const conv = (i: number | string, cin: number, cout: number, bias = true) => {
    shapes.push([`decoder.layers.${i}.weight`, [cout, cin, 3, 3]]);
    if (bias) shapes.push([`decoder.layers.${i}.bias`, [cout]]);
  };
  const block = (i: number) => {
    for (const j of [0, 2, 4]) conv(`${i}.conv.${j}`, 64, 64);
  };
  conv(0, 4, 64);
  let index = 2;
  [3, 3, 3, 1].forEach((count, stage) => {
    for (let b = 0; b < count; b++) block(index++);
    if (stage < 3) index++; // the upsample
    conv(index++, 64, stage < 3 ? 64 : 3, stage === 3);
  });
  let s = 12345;
  const rand = () => {
    s = (s * 1103515245 + 12345) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
  const tensors: TensorToWrite[] = shapes.map(([name, shape]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const fanIn = shape.length === 4 ? shape[1] * 9 : 1;
    const data = Float32Array.from({ length: n }, () => (shape.length === 4 ? rand() * 2 * Math.sqrt(3 / fanIn) : rand() * 0.1));
    return { name, dtype: 'F32', shape, data: () => new Uint8Array(data.buffer) };
  });
  await writeSafetensors(path.join(dir, 'diffusion_pytorch_model.safetensors'), tensors, { format: 'pt' });
  await writeFile(path.join(dir, 'config.json'), JSON.stringify({ _class_name: 'AutoencoderTiny', latent_channels: 4, num_decoder_blocks: [3, 3, 3, 1] }) + '\n');
  return dir;
}

const PROMPTS = ['a photo of a cat', 'a watercolor painting of a lighthouse at dusk', 'an astronaut riding a horse', 'a bowl of ramen, studio light'];

async function images(modelDir: string, device: string, size: number): Promise<Uint8Array[]> {
  const engine = await OneStepEngine.load(modelDir, { device });
  try {
    const batch: ImageRequest[] = PROMPTS.map((prompt, i) => ({ index: i, prompt, seed: BigInt(1000 + i), width: size, height: size, guidance: 0 }));
    return (await engine.generate(batch)).sort((a, b) => a.index - b.index).map((img) => img.rgb);
  } finally {
    await engine.close();
  }
}

export interface PsnrCheck {
  what: string;
  psnr: number[];
  bound: number;
}

/** fp16 (`reference` converted with dtype float16, target as given) against fp32 images, one PSNR per prompt. */
async function comparePrecisions(what: string, fp32Dir: string, fp16Dir: string, device: string, size: number, bound: number): Promise<PsnrCheck> {
  const a = await images(fp32Dir, device, size);
  const b = await images(fp16Dir, device, size);
  return { what, psnr: a.map((x, i) => psnr(x, b[i])), bound };
}

/**
 * The CPU half: graph building, a small model's fp16-vs-fp32 PSNR on CPU, and its bench table (full VAE and TAESD).
 * `bound` is the PSNR the small model's fp16 images must reach (its random weights give it less headroom than a
 * trained model: see bench/README.md for the measured values).
 */
export async function cpuHalf(opts: { work: string; bound?: number; log?: (s: string) => void }) {
  const log = opts.log ?? console.log;
  const graphs = checkCudaGraphs();
  for (const g of graphs) {
    log(`cuda ${g.graph} (full-size SD 1.5, 512x512): ${Object.entries(g.fusions).map(([k, v]) => `${k} ${v}`).join(', ')}; ` +
      `${g.gflopCuda.toFixed(1)} GFLOP (CPU graph ${g.gflopCpu.toFixed(1)}), ${g.unresolved} unresolved shapes`);
  }
  const fp32 = path.join(opts.work, 'tiny-fp32');
  const fp16 = path.join(opts.work, 'tiny-fp16');
  const taesdModel = path.join(opts.work, 'tiny-taesd');
  const taesd = await writeRandomTaesd(path.join(opts.work, 'taesd'));
  await convertCheckpoint(TINY, { out: fp32, force: true });
  await convertCheckpoint(TINY, { out: fp16, dtype: 'float16', force: true });
  await convertCheckpoint(TINY, { out: taesdModel, taesd, force: true });
  const precision = await comparePrecisions('tiny-sd15 fp16 vs fp32 on CPU, 64x64', fp32, fp16, 'cpu', 64, opts.bound ?? 40);
  log(`${precision.what}: PSNR ${precision.psnr.map((p) => p.toFixed(1)).join(', ')} dB (bound ${precision.bound})`);
  const benches: BenchReport[] = [];
  for (const dir of [fp32, taesdModel]) {
    const r = await runBench({ modelDir: dir, device: 'cpu', batchSizes: [1, 4], size: 64 });
    benches.push(r);
    log(formatBenchReport(r));
  }
  return { graphs, precision, benches };
}

/** Puts the CUDA provider libraries from ONESTEP_CUDA_PROVIDER_DIR beside onnxruntime-node's own (where ORT loads them). */
async function installCudaProvider(dir: string): Promise<string[]> {
  const require = createRequire(import.meta.url);
  const ortDir = path.join(path.dirname(require.resolve('onnxruntime-node/package.json')), 'bin', 'napi-v6', process.platform, process.arch);
  const copied: string[] = [];
  for (const lib of ['libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_shared.so']) {
    const from = path.join(dir, lib);
    const to = path.join(ortDir, lib);
    if (!(await stat(from).then(() => true, () => false))) {
      if (lib.includes('cuda')) throw new Error(`${from} does not exist (ONESTEP_CUDA_PROVIDER_DIR must hold libonnxruntime_providers_cuda.so)`);
      continue;
    }
    if (await stat(to).then(() => true, () => false)) continue;
    await copyFile(from, to);
    copied.push(to);
  }
  return copied;
}

async function gpuHalf(work: string, log: (s: string) => void): Promise<{ precision: PsnrCheck[]; benches: BenchReport[] }> {
  const ckpt = path.join(work, 'sd15-random.safetensors');
  if (!(await stat(ckpt).then(() => true, () => false))) {
    log(`writing the full-size random SD 1.5 to ${ckpt}`);
    await generateSd15(ckpt);
  }
  const taesd = await writeRandomTaesd(path.join(work, 'taesd'));
  const dirs = {
    fp32: path.join(work, 'sd15-fp32'),
    cuda: path.join(work, 'sd15-cuda-fp16'),
    cudaTaesd: path.join(work, 'sd15-cuda-fp16-taesd'),
    fp32Taesd: path.join(work, 'sd15-fp32-taesd'),
  };
  const exists = (d: string) => stat(path.join(d, 'model.json')).then(() => true, () => false);
  if (!(await exists(dirs.fp32))) await convertCheckpoint(ckpt, { out: dirs.fp32, force: true });
  if (!(await exists(dirs.cuda))) await convertCheckpoint(ckpt, { out: dirs.cuda, target: 'cuda', force: true });
  if (!(await exists(dirs.fp32Taesd))) await convertCheckpoint(ckpt, { out: dirs.fp32Taesd, taesd, force: true });
  if (!(await exists(dirs.cudaTaesd))) await convertCheckpoint(ckpt, { out: dirs.cudaTaesd, target: 'cuda', taesd, force: true });
  const precision = [
    await comparePrecisions('SD 1.5 (random) cuda fp16 fused vs fp32, 512x512, on the GPU', dirs.fp32, dirs.cuda, 'cuda', 512, 40),
    await comparePrecisions('SD 1.5 (random) + TAESD cuda fp16 fused vs fp32, 512x512, on the GPU', dirs.fp32Taesd, dirs.cudaTaesd, 'cuda', 512, 40),
  ];
  for (const p of precision) log(`${p.what}: PSNR ${p.psnr.map((x) => x.toFixed(1)).join(', ')} dB (bound ${p.bound})`);
  const benches: BenchReport[] = [];
  for (const dir of [dirs.cuda, dirs.cudaTaesd, dirs.fp32]) {
    const r = await runBench({ modelDir: dir, device: 'cuda', batchSizes: dir === dirs.fp32 ? [1, 4] : [1, 4, 8, 16], size: 512, iterations: 3 });
    benches.push(r);
    log(formatBenchReport(r));
  }
  return { precision, benches };
}

export async function gpuCheck(): Promise<number> {
  const env = process.env;
  const work = env.ONESTEP_GPU_CHECK_DIR ?? path.join(ROOT, 'bench', '.work', 'gpu-check');
  await mkdir(work, { recursive: true });
  const log = (s: string) => console.log(s);
  let failed = false;
  const tmp = await mkdtemp(path.join(tmpdir(), 'onestep-gpu-check-'));
  try {
    log('== CPU half ==');
    const cpu = await cpuHalf({ work: tmp, log });
    if (cpu.precision.psnr.some((p) => p < cpu.precision.bound)) failed = true;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  if (env.ONESTEP_GPU_CHECK_CPU_ONLY === '1') return failed ? 1 : 0;
  log('\n== GPU half ==');
  if (!env.ONESTEP_CUDA_PROVIDER_DIR) {
    log('skipped: set ONESTEP_CUDA_PROVIDER_DIR to the folder holding libonnxruntime_providers_cuda.so (see README "GPU check")');
    return failed ? 1 : 0;
  }
  const copied = await installCudaProvider(env.ONESTEP_CUDA_PROVIDER_DIR);
  for (const c of copied) log(`installed ${c}`);
  const gpu = await gpuHalf(work, log);
  if (gpu.precision.some((p) => p.psnr.some((x) => x < p.bound))) failed = true;
  await writeFile(path.join(work, 'gpu-check.json'), JSON.stringify(gpu, null, 2));
  log(`figures: ${path.join(work, 'gpu-check.json')}`);
  return failed ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) process.exitCode = await gpuCheck();
