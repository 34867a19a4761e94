/**
 * `onestep convert` benchmark on a full-size PixArt-α XL/2 diffusers folder with random weights
 * (bench/pixart-generator.ts: 0.61 B transformer, 4.76 B T5-XXL encoder, SD VAE): wall time and peak RSS of the fp16
 * conversion next to `cp -r` of the same folder, then one 512x512 transformer evaluation of the converted graph on CPU.
 *
 * Run: node --import tsx bench/pixart.ts [--dir <work dir>] [--keep]   (default dir: bench/.work; needs ~30 GB free)
 * The generated folder is reused between runs; with --keep nothing is deleted afterwards. Prints figures only.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as ort from 'onnxruntime-node';
import { folderBytes, measure, randn, ROOT, timeShell } from './measure.js';
import { generatePixArt } from './pixart-generator.js';

const MB = 1024 * 1024;

export async function benchPixArt(opts: { dir?: string; keep?: boolean } = {}): Promise<void> {
  const dir = resolve(opts.dir ?? join(ROOT, 'bench', '.work'));
  await mkdir(dir, { recursive: true });
  const input = join(dir, 'pixart-xl-2-512-random-f16');
  const out = join(dir, 'pixart-xl-2-512-random-fp16-model');
  const copy = join(dir, 'pixart-copy');
  console.log(`CPU: ${cpus()[0]?.model ?? 'unknown'} (${cpus().length} threads)`);
  if (!existsSync(join(input, 'model_index.json'))) {
    const t0 = performance.now();
    const bytes = await generatePixArt(input, { dtype: 'f16', size: 512 });
    console.log(`generated ${input}: ${(bytes / 1e9).toFixed(2)} GB of f16 weights in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  } else console.log(`reusing ${input}`);
  if (!existsSync(join(ROOT, 'dist', 'commands', 'convert.js'))) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
  const inputBytes = await folderBytes(input);

  await rm(out, { recursive: true, force: true });
  const conv = await measure([join(ROOT, 'bin', 'run.js'), 'convert', input, '-o', out, '--dtype', 'fp16', '--quiet']);
  const outputBytes = await folderBytes(out);
  console.log(`convert (fp16): ${conv.seconds.toFixed(1)} s wall, ${(inputBytes / MB / conv.seconds).toFixed(0)} MB/s read (${(inputBytes / 1e9).toFixed(2)} GB in, ${(outputBytes / 1e9).toFixed(2)} GB out)`);
  console.log(`convert peak RSS: ${conv.peakRssMB.toFixed(0)} MB (goal < 2048 MB; ${conv.source})`);
  await rm(copy, { recursive: true, force: true });
  const cpSeconds = timeShell('cp -r "$1" "$2"', input, copy);
  await rm(copy, { recursive: true, force: true });
  console.log(`cp -r of the same folder: ${cpSeconds.toFixed(1)} s (${(inputBytes / MB / cpSeconds).toFixed(0)} MB/s)`);

  const t0 = performance.now();
  const session = await ort.InferenceSession.create(join(out, 'transformer.onnx'), { executionProviders: ['cpu'] });
  console.log(`transformer.onnx session create (CPU): ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const mask = new BigInt64Array(120).fill(0n);
  mask.fill(1n, 0, 20);
  const feeds = {
    sample: new ort.Tensor('float32', randn(4 * 64 * 64, 1), [1, 4, 64, 64]),
    timestep: new ort.Tensor('float32', new Float32Array([999]), [1]),
    encoder_hidden_states: new ort.Tensor('float32', randn(120 * 4096, 2).map((x) => x * 0.1), [1, 120, 4096]),
    encoder_attention_mask: new ort.Tensor('int64', mask, [1, 120]),
  };
  const t1 = performance.now();
  const o = await session.run(feeds);
  const finite = (o.out_sample.data as Float32Array).every(Number.isFinite);
  console.log(`transformer 512x512 (latent 64x64, 1024 tokens), batch 1, 120 caption tokens, CPU: ${((performance.now() - t1) / 1000).toFixed(2)} s (output ${o.out_sample.dims}, ${finite ? 'finite' : 'NOT FINITE'})`);
  await session.release();
  if (!opts.keep) {
    await rm(out, { recursive: true, force: true });
    await rm(input, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const argv = process.argv.slice(2);
  const dirAt = argv.indexOf('--dir');
  await benchPixArt({ dir: dirAt >= 0 ? argv[dirAt + 1] : undefined, keep: argv.includes('--keep') });
}
