import assert from 'node:assert/strict';
import { BufferPool, freshBuffer } from '../../src/io/buffers.js';

const MIB = 1 << 20;

describe('io/buffers', () => {
  it('freshBuffer gives a buffer of exactly the size asked', () => {
    assert.equal(freshBuffer(12345).byteLength, 12345);
    assert.equal(freshBuffer(0).byteLength, 0);
  });

  it('a recycled slot gives its buffers back: the next allocations reuse them (best fit), the other slot keeps its own', () => {
    const pool = new BufferPool(2);
    const a = pool.recycle(0);
    const big = a(3 * MIB + 1);
    const small = a(100);
    assert.equal(big.byteLength, 4 * MIB); // rounded up to MiB
    assert.equal(small.byteLength, MIB);
    const b = pool.recycle(1);
    const other = b(100);
    assert.notEqual(other, small);
    assert.notEqual(other, big);
    // Slot 0 again: its two buffers are free; a 1 MiB request takes the 1 MiB one, a 2 MiB request the 4 MiB one.
    const again = pool.recycle(0);
    assert.equal(again(MIB), small);
    assert.equal(again(2 * MIB), big);
    assert.notEqual(again(MIB), other); // slot 1's buffer is still in use
  });

  it('keeps at most 512 MiB of spare buffers, the largest', () => {
    const pool = new BufferPool(1);
    const a = pool.recycle(0);
    const sizes = [300, 200, 100, 50].map((m) => a(m * MIB));
    const again = pool.recycle(0); // 650 MiB free: the 50 and 100 MiB ones go (300 + 200 = 500 <= 512)
    assert.equal(again(10 * MIB), sizes[1]);
    assert.equal(again(10 * MIB), sizes[0]);
    assert.ok(![sizes[2], sizes[3]].includes(again(10 * MIB)));
  });
});
