import assert from 'node:assert/strict';
import { imageOrdinal, imagesOf } from '../src/plan.js';
import { resolveSeed } from '../src/io/prompts.js';

describe('plan', () => {
  it('image j of prompt i: index i*n + j, seed base + i*n + j; a line seed s gives s + j', () => {
    const n = 3;
    const seeds = [0, 1, 2].flatMap((i) => imagesOf({ index: i, line: i + 1, prompt: `p${i}` }, n).map((r) => [r.index, r.promptIndex, resolveSeed(r, 100n)]));
    assert.deepEqual(seeds, [
      [0, 0, 100n], [1, 0, 101n], [2, 0, 102n],
      [3, 1, 103n], [4, 1, 104n], [5, 1, 105n],
      [6, 2, 106n], [7, 2, 107n], [8, 2, 108n],
    ]);
    const own = imagesOf({ index: 4, line: 5, prompt: 'p', seed: 2n ** 64n - 2n }, 3).map((r) => resolveSeed(r, 100n));
    assert.deepEqual(own, [2n ** 64n - 2n, 2n ** 64n - 1n, 0n], 'wraps within 64 bits as the base seed rule does');
    assert.deepEqual(imagesOf({ index: 7, line: 8, prompt: 'p' }, 1).map((r) => [r.index, resolveSeed(r, 5n)]), [[7, 12n]], 'n = 1 is the plain rule');
  });

  it('ordinals count the images this process makes, under a cluster shard too', () => {
    assert.deepEqual([0, 1, 2, 3].map((i) => imageOrdinal(i, 1, undefined)), [0, 1, 2, 3]);
    // --shard 1/4 makes prompts 1, 5, 9: with 2 images each, image indices 2,3, 10,11, 18,19.
    assert.deepEqual([2, 3, 10, 11, 18, 19].map((i) => imageOrdinal(i, 2, { index: 1, count: 4 })), [0, 1, 2, 3, 4, 5]);
  });
});
