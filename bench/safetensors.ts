/**
 * Safetensors benchmark: open+index time, an f32 -> f16 rewrite (reader + writer) against `cp`, and the rewrite's peak RSS.
 * Run: node --import tsx bench/safetensors.ts [GB]   (default 5 GB; files go to bench/.work/, which git ignores)
 * Prints figures only; never asserts times.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { SafetensorsFile } from '../src/safetensors/reader.js';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors/writer.js';

const THIS_FILE = fileURLToPath(import.meta.url);
const MB = 1024 * 1024;

/** One "block" of SD-like tensor shapes (~84 MB of f32), repeated until the target size. */
const BLOCK_SHAPES: number[][] = [[1280, 1280, 3, 3], [1280, 2560], [2560, 1280], [1280], [1280], [320, 320], [320], [640, 320, 1, 1], [77, 768]];

function planTensors(targetBytes: number): { name: string; shape: number[] }[] {
  const plan: { name: string; shape: number[] }[] = [];
  let bytes = 0;
  for (let block = 0; bytes < targetBytes; block++) {
    for (const [i, shape] of BLOCK_SHAPES.entries()) {
      plan.push({ name: `blocks.${block}.t${i}.weight`, shape });
      bytes += shape.reduce((a, b) => a * b, 4);
    }
  }
  return plan;
}

/** 64 MiB of pseudo-random N(0,1)-ish float32 values; each tensor takes a slice at its own offset. */
function randomPool(): Float32Array {
  const pool = new Float32Array(16 * MB);
  let s = 0x9e3779b9;
  for (let i = 0; i < pool.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    pool[i] = ((s >>> 0) / 2 ** 32 - 0.5) * 3.4 + (i % 7) * 1e-3;
  }
  return pool;
}

async function generate(path: string, sizeGB: number): Promise<void> {
  const plan = planTensors(sizeGB * 1024 * MB);
  const expected = plan.reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 4), 0);
  const existing = await stat(path).catch(() => undefined);
  if (existing) {
    const f = await SafetensorsFile.open(path).catch(() => undefined);
    const dataBytes = f ? f.fileSize - 8 - f.headerLength : -1;
    await f?.close();
    if (dataBytes === expected) {
      console.log(`reusing ${path} (${(existing.size / 1024 / MB).toFixed(2)} GiB, ${plan.length} tensors)`);
      return;
    }
  }
  const pool = randomPool();
  const started = performance.now();
  const tensors: TensorToWrite[] = plan.map((t, i) => ({
    name: t.name,
    dtype: 'F32',
    shape: t.shape,
    data: () => {
      const numel = t.shape.reduce((a, b) => a * b, 1);
      const values = new Float32Array(numel);
      let offset = (i * 7919) % pool.length;
      for (let done = 0; done < numel; ) {
        const n = Math.min(numel - done, pool.length - offset);
        values.set(pool.subarray(offset, offset + n), done);
        done += n;
        offset = 0;
      }
      return new Uint8Array(values.buffer);
    },
  }));
  await writeSafetensors(path, tensors, { bench: 'random f32' });
  const s = (performance.now() - started) / 1000;
  console.log(`generated ${path}: ${(expected / 1024 / MB).toFixed(2)} GiB, ${plan.length} tensors, ${s.toFixed(1)} s`);
}

/** The measured rewrite: every tensor read, converted to f16, written; returns the child's own figures. */
async function rewriteToF16(input: string, output: string): Promise<{ seconds: number; maxRssMB: number }> {
  const started = performance.now();
  const file = await SafetensorsFile.open(input);
  const tensors: TensorToWrite[] = [...file.tensors.values()].map((t) => ({
    name: t.name,
    dtype: 'F16',
    shape: t.shape,
    data: async () => {
      const halves = await file.readF16(t.name);
      return new Uint8Array(halves.buffer, halves.byteOffset, halves.byteLength);
    },
  }));
  await writeSafetensors(output, tensors, { ...file.metadata });
  await file.close();
  return { seconds: (performance.now() - started) / 1000, maxRssMB: process.resourceUsage().maxRSS / 1024 };
}

function timeCommand(cmd: string, args: string[]): number {
  const started = performance.now();
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed`);
  return (performance.now() - started) / 1000;
}

export async function benchSafetensors(opts: { sizeGB?: number; dir?: string } = {}): Promise<void> {
  const sizeGB = opts.sizeGB ?? 5;
  const dir = resolve(opts.dir ?? join(fileURLToPath(new URL('.', import.meta.url)), '.work'));
  await mkdir(dir, { recursive: true });
  const input = join(dir, `random-f32-${sizeGB}gb.safetensors`);
  const output = join(dir, `random-f16-${sizeGB}gb.safetensors`);
  const copy = join(dir, `copy-${sizeGB}gb.safetensors`);

  await generate(input, sizeGB);
  const inputBytes = (await stat(input)).size;
  const inputMB = inputBytes / MB;

  let openMs = Infinity;
  let count = 0;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    const f = await SafetensorsFile.open(input);
    openMs = Math.min(openMs, performance.now() - t0);
    count = f.tensors.size;
    await f.close();
  }
  console.log(`open + index: ${openMs.toFixed(2)} ms for ${count} tensors (best of 5; goal < 1000 ms)`);

  const child = spawnSync(process.execPath, [...process.execArgv, THIS_FILE, '--rewrite-child', input, output], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (child.status !== 0) throw new Error(`rewrite child failed: ${child.stdout}`);
  const { seconds, maxRssMB } = JSON.parse(child.stdout.trim().split('\n').pop()!) as { seconds: number; maxRssMB: number };
  const outMB = (await stat(output)).size / MB;
  console.log(
    `f32 -> f16 rewrite: ${seconds.toFixed(2)} s, ${(inputMB / seconds).toFixed(0)} MB/s read, ${(outMB / seconds).toFixed(0)} MB/s written (includes fsync)`,
  );
  console.log(`rewrite peak RSS: ${maxRssMB.toFixed(0)} MB (goal < 300 MB)`);

  const cpSeconds = timeCommand('cp', [input, copy]);
  console.log(`cp of the same file: ${cpSeconds.toFixed(2)} s, ${(inputMB / cpSeconds).toFixed(0)} MB/s`);
  await rm(copy, { force: true });
  const cpSyncSeconds = timeCommand('sh', ['-c', 'cp "$1" "$2" && sync "$2"', 'sh', input, copy]);
  console.log(`cp + sync of the same file: ${cpSyncSeconds.toFixed(2)} s, ${(inputMB / cpSyncSeconds).toFixed(0)} MB/s`);
  await rm(copy, { force: true });
  await rm(output, { force: true });
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  if (process.argv[2] === '--rewrite-child') {
    const result = await rewriteToF16(process.argv[3], process.argv[4]);
    console.log(JSON.stringify(result));
  } else {
    const sizeGB = process.argv[2] ? Number(process.argv[2]) : undefined;
    await benchSafetensors({ sizeGB });
  }
}
