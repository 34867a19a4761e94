/**
 * `onestep convert` benchmark on a full-size SD 1.5 single file with random weights (bench/sd15-generator.ts):
 * wall time and throughput next to `cp` of the same file, the converting process's peak RSS, then one 512x512 UNet
 * evaluation of the converted graph on CPU.
 *
 * Run: node --import tsx bench/convert.ts [--dtype fp16] [--keep]
 * Files go to bench/.work/ (git-ignored); the generated checkpoint is reused between runs. Prints figures only.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as ort from 'onnxruntime-node';
import { folderBytes, measure, randn, ROOT, timeShell } from './measure.js';
import { generateSd15, verifySd15 } from './sd15-generator.js';

const MB = 1024 * 1024;

export interface BenchConvertOptions {
  /** Working folder (default bench/.work). */
  dir?: string;
  dtype?: 'fp32' | 'fp16';
  /** Keep the converted model directory afterwards. */
  keep?: boolean;
  /** Skip the UNet inference. */
  noInference?: boolean;
}

export interface BenchConvertResult {
  inputBytes: number;
  outputBytes: number;
  convertSeconds: number;
  peakRssMB: number;
  rssSource: string;
  cpSeconds: number;
  cpSyncSeconds: number;
  unetLoadSeconds?: number;
  unetRunSeconds?: number[];
}

export async function benchConvert(opts: BenchConvertOptions = {}): Promise<BenchConvertResult> {
  const dir = resolve(opts.dir ?? join(ROOT, 'bench', '.work'));
  const dtype = opts.dtype ?? 'fp32';
  await mkdir(dir, { recursive: true });
  const input = join(dir, 'sd15-random-f32.safetensors');
  const out = join(dir, `sd15-random-${dtype}-model`);
  const copy = join(dir, 'sd15-random-f32.copy.safetensors');

  if (existsSync(input)) {
    console.log(`reusing ${input}: ${await verifySd15(input)}`);
  } else {
    const t0 = performance.now();
    const { tensors, dataBytes } = await generateSd15(input, { dtype: 'f32' });
    console.log(`generated ${input}: ${tensors} tensors, ${(dataBytes / 1e9).toFixed(2)} GB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    console.log(`  opened as: ${await verifySd15(input)}`);
  }
  if (!existsSync(join(ROOT, 'dist', 'commands', 'convert.js'))) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
  const inputBytes = (await stat(input)).size;

  await rm(out, { recursive: true, force: true });
  const conv = await measure([join(ROOT, 'bin', 'run.js'), 'convert', input, '-o', out, '--dtype', dtype, '--quiet']);
  const outputBytes = await folderBytes(out);
  console.log(
    `convert (${dtype}): ${conv.seconds.toFixed(1)} s wall, ${(inputBytes / MB / conv.seconds).toFixed(0)} MB/s read, ` +
      `${(outputBytes / MB / conv.seconds).toFixed(0)} MB/s written (${(outputBytes / 1e9).toFixed(2)} GB out)`,
  );
  console.log(`convert peak RSS: ${conv.peakRssMB.toFixed(0)} MB (goal < 1536 MB; ${conv.source})`);

  await rm(copy, { force: true });
  const cpSeconds = timeShell('cp "$1" "$2"', input, copy);
  await rm(copy, { force: true });
  const cpSyncSeconds = timeShell('cp "$1" "$2" && sync "$2"', input, copy);
  await rm(copy, { force: true });
  console.log(
    `cp of the same file: ${cpSeconds.toFixed(1)} s (${(inputBytes / MB / cpSeconds).toFixed(0)} MB/s); ` +
      `cp + sync: ${cpSyncSeconds.toFixed(1)} s (${(inputBytes / MB / cpSyncSeconds).toFixed(0)} MB/s)`,
  );

  const result: BenchConvertResult = { inputBytes, outputBytes, convertSeconds: conv.seconds, peakRssMB: conv.peakRssMB, rssSource: conv.source, cpSeconds, cpSyncSeconds };
  if (!opts.noInference) {
    const t0 = performance.now();
    const session = await ort.InferenceSession.create(join(out, 'unet.onnx'), { executionProviders: ['cpu'] });
    result.unetLoadSeconds = (performance.now() - t0) / 1000;
    console.log(`unet.onnx session create (CPU): ${result.unetLoadSeconds.toFixed(1)} s`);
    const feeds = {
      sample: new ort.Tensor('float32', randn(4 * 64 * 64, 1), [1, 4, 64, 64]),
      timestep: new ort.Tensor('float32', new Float32Array([999]), [1]),
      encoder_hidden_states: new ort.Tensor('float32', randn(77 * 768, 2), [1, 77, 768]),
    };
    result.unetRunSeconds = [];
    for (let i = 0; i < 2; i++) {
      const t1 = performance.now();
      const o = await session.run(feeds);
      const s = (performance.now() - t1) / 1000;
      result.unetRunSeconds.push(s);
      const data = o.out_sample.data as Float32Array;
      const finite = data.every(Number.isFinite);
      console.log(`unet 512x512 (latent 64x64), batch 1, 77 tokens, CPU run ${i + 1}: ${s.toFixed(2)} s (output ${o.out_sample.dims}, ${finite ? 'finite' : 'NOT FINITE'})`);
    }
    await session.release();
  }
  if (!opts.keep) await rm(out, { recursive: true, force: true });
  return result;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const argv = process.argv.slice(2);
  const dtypeAt = argv.indexOf('--dtype');
  await benchConvert({
    dtype: dtypeAt >= 0 ? (argv[dtypeAt + 1] as 'fp32' | 'fp16') : 'fp32',
    keep: argv.includes('--keep'),
    noInference: argv.includes('--no-inference'),
  });
}
