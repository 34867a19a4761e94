import assert from 'node:assert/strict';
import { matmul } from '../../src/lora/matmul.js';

function naive(a: Float32Array, b: Float32Array, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) for (let j = 0; j < n; j++) out[i * n + j] += a[i * k + p] * b[p * n + j];
  return out;
}

describe('lora/matmul', () => {
  it('equals a float64 product for LoRA-like shapes (tall up, wide down, rank 1..64)', async () => {
    let s = 7;
    const rand = (n: number) => Float32Array.from({ length: n }, () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32 - 0.5));
    for (const [m, k, n] of [[1, 1, 1], [320, 4, 320], [1280, 64, 5120 / 4], [7, 3, 11]]) {
      const a = rand(m * k);
      const b = rand(k * n);
      const got = await matmul(a, b, m, k, n);
      const want = naive(a, b, m, k, n);
      let err = 0;
      let max = 1e-30;
      for (let i = 0; i < want.length; i++) {
        err = Math.max(err, Math.abs(got[i] - want[i]));
        max = Math.max(max, Math.abs(want[i]));
      }
      assert.ok(err / max < 1e-6, `${m}x${k}x${n}: relErr ${err / max}`);
    }
    await assert.rejects(matmul(new Float32Array(3), new Float32Array(3), 2, 2, 2), /matmul sizes/);
  });
});
