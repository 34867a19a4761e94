/** Test helpers for LoRA files: write small safetensors files with chosen keys, seeded values. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSafetensors } from '../../src/safetensors/writer.js';

export interface TestTensor {
  shape: number[];
  data: Float32Array;
}

export async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'onestep-lora-'));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Seeded values in [-1, 1) (mulberry32). */
export function seeded(seed: number): (n: number) => Float32Array {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  return (n) => Float32Array.from({ length: n }, () => next() * 2 - 1);
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

/** max |a - b| / max |b| */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let d = 0;
  let m = 1e-30;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}
