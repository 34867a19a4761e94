/**
 * SDXL at full size, random weights (bench/sdxl-generator.ts): `onestep convert` of the SGM single file to fp16, and
 * of the same base with a full-size UNet-only file (`--unet`), each with its wall time beside `cp` of the input and
 * the converting process's peak RSS (goal: under 2 GB, at most 2.5x the cp time); then one 1024x1024 UNet evaluation
 * (latent 128x128, batch 1, 77 tokens) on CPU. The goal figures are printed, never asserted.
 *
 * Run: node --import tsx bench/sdxl.ts [--dir <folder>] [--keep] [--no-inference]
 * Big files (about 7 + 5 GB in, 2 x 7 GB out) go to --dir (default bench/.work/sdxl); deleted afterwards unless --keep.
 */
import { cpus } from 'node:os';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as ort from 'onnxruntime-node';
import { measure, ROOT, timeShell } from './measure.js';
import { generateSdxl, verifySdxl } from './sdxl-generator.js';

const MB = 1024 * 1024;

async function folderBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) if (e.isFile()) total += (await stat(join(e.parentPath, e.name))).size;
  return total;
}

function randn(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const u = (): number => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
  return Float32Array.from({ length: n }, () => (u() + u() + u() + u() - 2) * Math.sqrt(3));
}

export interface BenchSdxlOptions {
  dir?: string;
  keep?: boolean;
  noInference?: boolean;
}

async function convertOnce(label: string, args: string[], out: string, inputBytes: number, cpSeconds: number): Promise<void> {
  await rm(out, { recursive: true, force: true });
  const conv = await measure([join(ROOT, 'bin', 'run.js'), 'convert', ...args, '-o', out, '--dtype', 'fp16', '--quiet']);
  const outputBytes = await folderBytes(out);
  console.log(
    `${label}: ${conv.seconds.toFixed(1)} s wall (${(conv.seconds / cpSeconds).toFixed(2)}x cp; goal <= 2.5x), ` +
      `${(inputBytes / MB / conv.seconds).toFixed(0)} MB/s read, ${(outputBytes / 1e9).toFixed(2)} GB out; ` +
      `peak RSS ${conv.peakRssMB.toFixed(0)} MB (goal < 2048 MB; ${conv.source})`,
  );
  for (const line of conv.stderr.split('\n').filter((l) => l.startsWith('note: ') && /float16|float32/.test(l))) console.log(`  ${line}`);
}

export async function benchSdxl(opts: BenchSdxlOptions = {}): Promise<void> {
  const dir = resolve(opts.dir ?? join(ROOT, 'bench', '.work', 'sdxl'));
  await mkdir(dir, { recursive: true });
  await mkdir(join(ROOT, 'bench', '.work'), { recursive: true });
  console.log(`CPU: ${cpus()[0]?.model ?? 'unknown'} (${cpus().length} threads)`);
  const file = join(dir, 'sdxl-base-random-f16.safetensors');
  const unetFile = join(dir, 'sdxl-unet-random-f16.safetensors');
  try {
    let t0 = performance.now();
    const base = await generateSdxl(file, { dtype: 'f16' });
    console.log(`generated ${file}: ${base.tensors} tensors, ${(base.dataBytes / 1e9).toFixed(2)} GB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    console.log(`  opened as: ${await verifySdxl(file)}`);
    t0 = performance.now();
    const unet = await generateSdxl(unetFile, { dtype: 'f16', unetOnly: true });
    console.log(`generated ${unetFile}: ${unet.tensors} tensors (diffusers keys), ${(unet.dataBytes / 1e9).toFixed(2)} GB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    const inputBytes = (await stat(file)).size;
    const copy = join(dir, 'copy.safetensors');
    const cpSeconds = timeShell('cp "$1" "$2"', file, copy);
    await rm(copy, { force: true });
    console.log(`cp of the single file: ${cpSeconds.toFixed(1)} s (${(inputBytes / MB / cpSeconds).toFixed(0)} MB/s)`);
    const model = join(dir, 'model-fp16');
    await convertOnce('convert SDXL single file -> fp16', [file], model, inputBytes, cpSeconds);
    const swapped = join(dir, 'model-unet-fp16');
    await convertOnce('convert SDXL single file --unet <UNet-only file> -> fp16', [file, '--unet', unetFile], swapped, inputBytes + (await stat(unetFile)).size, cpSeconds);
    await rm(swapped, { recursive: true, force: true });

    if (!opts.noInference) {
      t0 = performance.now();
      // Prepacking would hold a second, repacked copy of every GEMM weight (10 GB more for this UNet).
      const session = await ort.InferenceSession.create(join(model, 'unet.onnx'), { executionProviders: ['cpu'], extra: { session: { disable_prepacking: '1' } } });
      console.log(`unet.onnx (fp16) session create (CPU): ${((performance.now() - t0) / 1000).toFixed(1)} s`);
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
      console.log(`unet 1024x1024 (latent 128x128), batch 1, 77 tokens, CPU: ${s.toFixed(1)} s (output ${o.out_sample.dims}, ${finite ? 'finite' : 'NOT FINITE'})`);
      await session.release();
    }
  } finally {
    if (!opts.keep) await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const argv = process.argv.slice(2);
  const dirAt = argv.indexOf('--dir');
  await benchSdxl({ dir: dirAt >= 0 ? argv[dirAt + 1] : undefined, keep: argv.includes('--keep'), noInference: argv.includes('--no-inference') });
}
