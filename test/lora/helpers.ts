/** Test helpers for LoRA files: write small safetensors files with chosen keys, seeded values. */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LoraFile } from '../../src/lora/parse.js';
import { writeSafetensors } from '../../src/safetensors/writer.js';
import { signedRandom } from '../support/random.js';

export interface TestTensor {
  shape: number[];
  data: Float32Array;
}

export async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'onestep-lora-'));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * A fresh temp folder for each test of the calling describe block (mocha hooks), and `open`, which writes the given
 * tensors there as a float32 LoRA file (a new name each call) and opens it.
 */
export function tempLoraFiles(): { dir: () => string; open: (tensors: Record<string, TestTensor>, metadata?: Record<string, string>) => Promise<LoraFile> } {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => (tmp = await tempDir()));
  afterEach(() => tmp.cleanup());
  return {
    dir: () => tmp.dir,
    open: async (tensors, metadata) => LoraFile.open(await writeF32File(join(tmp.dir, `l${Math.random().toString(36).slice(2)}.safetensors`), tensors, metadata)),
  };
}

/** Naive reference matmul [m, k] x [k, n], written index by index from the formula (no shared code with src). */
export function naiveMatmul(a: Float32Array, b: Float32Array, m: number, k: number, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p] * b[p * n + j];
      out.push(s);
    }
  return out;
}

/** Seeded values in [-1, 1) (mulberry32). */
export function seeded(seed: number): (n: number) => Float32Array {
  const next = signedRandom(seed);
  return (n) => Float32Array.from({ length: n }, () => next());
}

export function tensor(rand: (n: number) => Float32Array, ...shape: number[]): TestTensor {
  return { shape, data: rand(shape.reduce((a, b) => a * b, 1)) };
}

export function scalar(v: number): TestTensor {
  return { shape: [], data: Float32Array.of(v) };
}

export async function writeF32File(path: string, tensors: Record<string, TestTensor>, metadata?: Record<string, string>): Promise<string> {
  await writeSafetensors(
    path,
    Object.entries(tensors).map(([name, t]) => ({
      name,
      dtype: 'F32' as const,
      shape: t.shape,
      data: () => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
    })),
    metadata,
  );
  return path;
}

/** max |a - b| / max |b| (the one in test/support, under the name the LoRA tests use). */
export { relErr as maxRelDiff } from '../support/fixtures.js';

/** Whole-file header parse for tests: tensor names in data order, metadata and each tensor's raw bytes. */
export function rawSafetensors(file: string): { names: string[]; metadata: Record<string, string> | undefined; dtypes: Map<string, string>; raw: Map<string, Buffer> } {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, any>;
  const entries = Object.entries(header).filter(([k]) => k !== '__metadata__');
  entries.sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
  const raw = new Map<string, Buffer>();
  const dtypes = new Map<string, string>();
  for (const [k, v] of entries) {
    raw.set(k, buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]));
    dtypes.set(k, v.dtype);
  }
  return { names: entries.map(([k]) => k), metadata: header.__metadata__, dtypes, raw };
}
