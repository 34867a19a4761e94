import assert from 'node:assert/strict';
import { kron } from '../../src/lora/math.js';
import { matmul } from '../../src/lora/matmul.js';
import { maxRelDiff, naiveMatmul, seeded } from './helpers.js';

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
