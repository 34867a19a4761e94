/**
 * SDXL at full size, random weights (bench/sdxl-generator.ts): `onestep convert` of the SGM single file to fp16, and
 * of the same base with a full-size UNet-only file (`--unet`), each beside `cp` of the single file, with the
 * converting process's peak RSS (goal: under 2 GB, at most 2.5x the cp time); then one 1024x1024 UNet evaluation
 * (latent 128x128, batch 1, 77 tokens) on CPU, in float32. The issue's goal figures are printed, never asserted.
 *
 * Timing: both inputs are read once first (page cache warm, as for cp), and before each timed command the page cache
 * is synced (`sync`): a previous command's dirty pages would otherwise throttle the next one's writes. Rounds
 * interleave cp and the two converts (the machine's load moves), and the medians are reported.
 *
 * Run: node --import tsx bench/sdxl.ts [--dir <folder>] [--keep] [--reuse] [--rounds N] [--no-inference]
 * Big files (7 + 5 GB in, 7 GB out at a time, 10 GB for the float32 UNet) go to --dir (default bench/.work/sdxl);
 * deleted afterwards unless --keep; --reuse keeps generated inputs already there.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { mkdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as ort from 'onnxruntime-node';
import { openCheckpoint } from '../src/checkpoint/open.js';
import { countFlops } from '../src/onnx/flops.js';
import { readModelStructure } from '../src/onnx/read-model.js';
import { writeModel } from '../src/onnx/write-model.js';
import { folderBytes, measure, randn, ROOT, timeShell } from './measure.js';
import { generateSdxl, verifySdxl } from './sdxl-generator.js';

const MB = 1024 * 1024;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const load = (): string => loadavg().map((l) => l.toFixed(2)).join(' ');
const sync = (): void => void execFileSync('sync');

function memAvailableGB(): number {
  const m = /MemAvailable:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) / 1024 / 1024 : NaN;
}

export interface BenchSdxlOptions {
  dir?: string;
  keep?: boolean;
  reuse?: boolean;
  rounds?: number;
  noInference?: boolean;
}

interface Run {
  seconds: number;
  peakRssMB: number;
  notes: string[];
}

async function convertOnce(args: string[], out: string): Promise<Run> {
  await rm(out, { recursive: true, force: true });
  sync();
  const conv = await measure([join(ROOT, 'bin', 'run.js'), 'convert', ...args, '-o', out, '--dtype', 'fp16', '--quiet']);
  const notes = conv.stderr.split('\n').filter((l) => l.startsWith('note: ') && /float16|float32/.test(l));
  return { seconds: conv.seconds, peakRssMB: conv.peakRssMB, notes };
}

function report(label: string, runs: Run[], cps: number[], outBytes: number): void {
  const s = median(runs.map((r) => r.seconds));
  const ratios = runs.map((r, i) => r.seconds / cps[i]);
  const rss = Math.max(...runs.map((r) => r.peakRssMB));
  console.log(
    `${label}: ${s.toFixed(1)} s median of ${runs.map((r) => r.seconds.toFixed(1)).join(', ')}; ` +
      `${(s / median(cps)).toFixed(2)}x the median cp (per round ${ratios.map((r) => r.toFixed(2)).join(', ')}; goal <= 2.5x); ` +
      `${(outBytes / 1e9).toFixed(2)} GB out; peak RSS ${rss.toFixed(0)} MB (goal < 2048 MB)`,
  );
  for (const line of runs[0].notes) console.log(`  ${line}`);
}

export async function benchSdxl(opts: BenchSdxlOptions = {}): Promise<void> {
  const dir = resolve(opts.dir ?? join(ROOT, 'bench', '.work', 'sdxl'));
  const rounds = opts.rounds ?? 3;
  await mkdir(dir, { recursive: true });
  await mkdir(join(ROOT, 'bench', '.work'), { recursive: true });
  console.log(`CPU: ${cpus()[0]?.model ?? 'unknown'} (${cpus().length} threads); load average ${load()}`);
  const file = join(dir, 'sdxl-base-random-f16.safetensors');
  const unetFile = join(dir, 'sdxl-unet-random-f16.safetensors');
  try {
    for (const [path, unetOnly] of [[file, false], [unetFile, true]] as const) {
      if (opts.reuse && existsSync(path)) {
        console.log(`reusing ${path}`);
        continue;
      }
      const t0 = performance.now();
      const g = await generateSdxl(path, { dtype: 'f16', unetOnly });
      console.log(`generated ${path}: ${g.tensors} tensors${unetOnly ? ' (diffusers keys)' : ''}, ${(g.dataBytes / 1e9).toFixed(2)} GB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
    console.log(`  opened as: ${await verifySdxl(file)}`);

    const inputBytes = (await stat(file)).size;
    // Page cache warm for everyone: cp and both converts read files already in memory.
    timeShell('cat "$1" "$2" > /dev/null', file, unetFile);
    const copy = join(dir, 'copy.safetensors');
    const model = join(dir, 'model-fp16');
    const swapped = join(dir, 'model-unet-fp16');
    const cps: number[] = [];
    const single: Run[] = [];
    const withUnet: Run[] = [];
    let outBytes = 0;
    let outUnetBytes = 0;
    for (let r = 0; r < rounds; r++) {
      sync();
      cps.push(timeShell('cp "$1" "$2"', file, copy));
      await rm(copy, { force: true });
      single.push(await convertOnce([file], model));
      outBytes = await folderBytes(model);
      withUnet.push(await convertOnce([file, '--unet', unetFile], swapped));
      outUnetBytes = await folderBytes(swapped);
      await rm(swapped, { recursive: true, force: true });
      console.log(`round ${r + 1}: cp ${cps[r].toFixed(1)} s, convert ${single[r].seconds.toFixed(1)} s, --unet ${withUnet[r].seconds.toFixed(1)} s (load average ${load()})`);
    }
    console.log(`cp of the single file (${(inputBytes / 1e9).toFixed(2)} GB): ${median(cps).toFixed(1)} s median of ${cps.map((c) => c.toFixed(1)).join(', ')} (${(inputBytes / MB / median(cps)).toFixed(0)} MB/s)`);
    report('convert SDXL single file -> fp16', single, cps, outBytes);
    report('convert SDXL single file --unet <UNet-only file> -> fp16', withUnet, cps, outUnetBytes);
    await rm(model, { recursive: true, force: true });

    if (!opts.noInference) await benchUnetEval(file, dir);
  } finally {
    if (!opts.keep) await rm(dir, { recursive: true, force: true });
  }
}

/** Weights of the float32 UNet plus what onnxruntime holds beside them at 1024x1024 (activations, workspace). */
const EVAL_MARGIN_GB = 4;

/**
 * One 1024x1024 UNet evaluation on CPU. In float32: onnxruntime's CPU provider computes float16 MatMul and Conv by
 * casting to float32 (a float32 copy of every weight beside the float16 one), so the float32 graph is the smaller
 * session as well as the faster one. Only the UNet is written (10.3 GB), and it runs in a child process so that its
 * peak RSS is its own.
 */
export async function benchUnetEval(file: string, dir: string): Promise<void> {
  const unetDir = join(dir, 'unet-fp32');
  await rm(unetDir, { recursive: true, force: true });
  await mkdir(unetDir, { recursive: true });
  let t0 = performance.now();
  const ckpt = await openCheckpoint(file);
  try {
    const spec = ckpt.family.graphs!(ckpt).find((g) => g.name === 'unet')!;
    await writeModel(spec.build(ckpt.weights, 'float32'), unetDir, 'unet');
  } finally {
    await ckpt.weights.close();
  }
  const weightsGB = (await stat(join(unetDir, 'unet.onnx.data'))).size / 2 ** 30;
  console.log(`unet.onnx float32 written: ${weightsGB.toFixed(1)} GiB of weights in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const available = memAvailableGB();
  if (!(available >= weightsGB + EVAL_MARGIN_GB)) {
    console.log(`unet 1024x1024 on CPU: not run: MemAvailable ${available.toFixed(1)} GiB < ${weightsGB.toFixed(1)} GiB of weights + ${EVAL_MARGIN_GB} GiB`);
    return;
  }
  t0 = performance.now();
  const run = await measure(['--import', 'tsx', join(ROOT, 'bench', 'sdxl.ts'), '--eval-unet', join(unetDir, 'unet.onnx')]);
  console.log(`  child process: ${((performance.now() - t0) / 1000).toFixed(1)} s in all, peak RSS ${(run.peakRssMB / 1024).toFixed(2)} GiB (${run.source}); MemAvailable before ${available.toFixed(1)} GiB`);
  await rm(unetDir, { recursive: true, force: true });
}

/** The child: one evaluation of `onnxPath`, printing its seconds and GFLOP/s. */
async function evalUnet(onnxPath: string): Promise<void> {
  const count = countFlops(await readModelStructure(onnxPath), { batch: 1, sequence: 77, height: 128, width: 128 });
  let t0 = performance.now();
  // Prepacking would hold a second, repacked copy of every GEMM weight (10 GB more for this UNet).
  const session = await ort.InferenceSession.create(onnxPath, { executionProviders: ['cpu'], extra: { session: { disable_prepacking: '1' } } });
  const createSeconds = (performance.now() - t0) / 1000;
  const feeds = {
    sample: new ort.Tensor('float32', randn(4 * 128 * 128, 1), [1, 4, 128, 128]),
    timestep: new ort.Tensor('float32', new Float32Array([999]), [1]),
    encoder_hidden_states: new ort.Tensor('float32', randn(77 * 2048, 2), [1, 77, 2048]),
    text_embeds: new ort.Tensor('float32', randn(1280, 3), [1, 1280]),
    time_ids: new ort.Tensor('float32', Float32Array.from([1024, 1024, 0, 0, 1024, 1024]), [1, 6]),
  };
  t0 = performance.now();
  const o = await session.run(feeds);
  const s = (performance.now() - t0) / 1000;
  const finite = (o.out_sample.data as Float32Array).every(Number.isFinite);
  const gflop = count.flops / 1e9;
  console.log(
    `unet 1024x1024 (latent 128x128), batch 1, 77 tokens, float32, CPU (${cpus().length} threads): ${s.toFixed(1)} s, ` +
      `${gflop.toFixed(0)} GFLOP = ${(gflop / s).toFixed(1)} GFLOP/s (session create ${createSeconds.toFixed(1)} s; ` +
      `output ${o.out_sample.dims}, ${finite ? 'finite' : 'NOT FINITE'}${count.unresolved.length ? `; ${count.unresolved.length} nodes uncounted` : ''})`,
  );
  await session.release();
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const argv = process.argv.slice(2);
  const value = (flag: string): string | undefined => (argv.includes(flag) ? argv[argv.indexOf(flag) + 1] : undefined);
  const evalAt = value('--eval-unet');
  if (evalAt) await evalUnet(evalAt);
  else {
    const rounds = value('--rounds');
    await benchSdxl({ dir: value('--dir'), keep: argv.includes('--keep'), reuse: argv.includes('--reuse'), rounds: rounds ? Number(rounds) : undefined, noInference: argv.includes('--no-inference') });
  }
}
