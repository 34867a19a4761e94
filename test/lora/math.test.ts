import assert from 'node:assert/strict';
import { kron } from '../../src/lora/math.js';
import { matmul } from '../../src/lora/matmul.js';
import { maxRelDiff, seeded } from './helpers.js';

/** Naive references, written index by index from the published formulas (no shared code with src). */
function naiveMatmul(a: Float32Array, b: Float32Array, m: number, k: number, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p] * b[p * n + j];
      out.push(s);
    }
  return out;
}

describe('lora/math', () => {
  const r = seeded(42);

  it('matmul and kron helpers agree with the naive forms', async () => {
      const a = r(12);
      const b = r(20);
      assert.ok(maxRelDiff(await matmul(a, b, 3, 4, 5), naiveMatmul(a, b, 3, 4, 5)) < 1e-6);
      const k = kron(Float32Array.of(1, 2), 1, 2, Float32Array.of(3, 4, 5, 6), 2, 2);
      assert.deepEqual([...k], [3, 4, 6, 8, 5, 6, 10, 12]);
    });
});
