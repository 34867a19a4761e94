import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MappedSource, presentedShape, transpose2d } from '../../src/checkpoint/sources.js';
import { OnestepError } from '../../src/errors.js';
import type { SourceRef } from '../../src/checkpoint/keymap-sd.js';
import { f32ToBf16, f32ToF16 } from '../../src/safetensors/dtypes.js';
import { TensorSet } from '../../src/safetensors/tensor-set.js';
import { writeSafetensors } from '../../src/safetensors/writer.js';

const bytes = (a: Float32Array | Uint16Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

describe('checkpoint/sources', () => {
  let tmp: string;
  let path: string;
  // packed: 6 rows x 2 cols (three 2-row blocks); proj: 2x3; conv: [2,2,1,1] in f16.
  const packed = Float32Array.from({ length: 12 }, (_, i) => i + 0.5);
  const proj = Float32Array.from([1, 2, 3, 4, 5, 6]);
  const conv = Float32Array.from([0.25, -1, 2, 3.5]);

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'onestep-sources-'));
    path = join(tmp, 'w.safetensors');
    await writeSafetensors(path, [
      { name: 'packed', dtype: 'F32', shape: [6, 2], data: () => bytes(packed) },
      { name: 'proj', dtype: 'F32', shape: [2, 3], data: () => bytes(proj) },
      { name: 'conv', dtype: 'F16', shape: [2, 2, 1, 1], data: () => bytes(f32ToF16(conv)) },
    ]);
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('presents rows, transposed and squeezed tensors with their own shapes and values', async () => {
    const set = await TensorSet.open(path);
    const s = new MappedSource(
      [
        ['a.q', { set, ref: { key: 'packed', rows: [0, 2] } }],
        ['a.k', { set, ref: { key: 'packed', rows: [2, 4] } }],
        ['a.v', { set, ref: { key: 'packed', rows: [4, 6] } }],
        ['b.t', { set, ref: { key: 'proj', transpose: true } }],
        ['c.lin', { set, ref: { key: 'conv', squeeze: true } }],
        ['d.plain', { set, ref: { key: 'proj' } }],
      ],
      [set],
      'w.safetensors',
    );
    try {
      assert.deepEqual(s.names(), ['a.k', 'a.q', 'a.v', 'b.t', 'c.lin', 'd.plain']);
      assert.deepEqual(s.meta('a.k'), { shape: [2, 2], dtype: 'F32' });
      assert.deepEqual([...(await s.readF32('a.k'))], [4.5, 5.5, 6.5, 7.5]);
      assert.deepEqual([...(await s.readF32('a.v'))], [8.5, 9.5, 10.5, 11.5]);
      assert.deepEqual(s.meta('b.t').shape, [3, 2]);
      assert.deepEqual([...(await s.readF32('b.t'))], [1, 4, 2, 5, 3, 6]);
      assert.deepEqual(s.meta('c.lin'), { shape: [2, 2], dtype: 'F16' });
      assert.deepEqual([...(await s.readF32('c.lin'))], [...conv]);
      assert.deepEqual([...(await s.readF32('d.plain'))], [...proj]);
      assert.deepEqual(s.sourceOf('a.v'), { key: 'packed', rows: [4, 6], storedShape: [6, 2], file: path });
      assert.ok(!s.has('nope'));
      assert.throws(() => s.meta('nope'), (e: unknown) => e instanceof OnestepError && /no weight named nope/.test(e.message));
    } finally {
      await s.close();
    }
  });

  it('readF16 gives exactly f32ToF16(readF32) through rows and transposes, for f16, bf16 and f32 storage', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onestep-sources16-'));
    try {
      const values = Float32Array.from({ length: 6 * 5 }, (_, i) => (i - 11) * 0.3717 + (i === 4 ? 1e5 : 0));
      const file = join(dir, 'w.safetensors');
      await writeSafetensors(file, [
        { name: 'f16', dtype: 'F16', shape: [6, 5], data: () => bytes(f32ToF16(values)) },
        { name: 'bf16', dtype: 'BF16', shape: [6, 5], data: () => bytes(f32ToBf16(values)) },
        { name: 'f32', dtype: 'F32', shape: [6, 5], data: () => bytes(values) },
      ]);
      const set = await TensorSet.open(file);
      const refs = (key: string): [string, { set: TensorSet; ref: SourceRef }][] => [
        [`${key}.plain`, { set, ref: { key } }],
        [`${key}.rows`, { set, ref: { key, rows: [2, 4] } }],
        [`${key}.t`, { set, ref: { key, transpose: true } }],
      ];
      const s = new MappedSource([...refs('f16'), ...refs('bf16'), ...refs('f32')], [set], 'w.safetensors');
      try {
        for (const name of s.names()) assert.deepEqual(await s.readF16(name), f32ToF16(await s.readF32(name)), name);
        // f16 storage: the stored bits themselves; the 1e5 of f32 storage became +Inf for the caller to refuse.
        assert.deepEqual(await s.readF16('f16.plain'), new Uint16Array((await set.readRaw('f16')).buffer));
        assert.equal((await s.readF16('f32.plain'))[4], 0x7c00);
        assert.deepEqual([...(await s.readF16('f16.t')).subarray(0, 3)], [...f32ToF16(Float32Array.of(values[0], values[5], values[10]))]);
      } finally {
        await s.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses refs that do not fit the stored tensor', async () => {
    const set = await TensorSet.open(path);
    try {
      assert.throws(() => new MappedSource([['x', { set, ref: { key: 'packed', rows: [4, 8] } }]], [set], 'w'), /too small/);
      assert.throws(() => new MappedSource([['x', { set, ref: { key: 'conv', transpose: true } }]], [set], 'w'), /expected a matrix/);
    } finally {
      await set.close();
    }
  });

  it('prefixed() and union() name every tensor of component sets', async () => {
    const a = MappedSource.prefixed(await TensorSet.open(path), 'one.', 'f');
    const b = MappedSource.prefixed(await TensorSet.open(path), 'two.', 'f', (k) => k !== 'conv');
    const u = MappedSource.union([a, b], 'f');
    try {
      assert.deepEqual(u.names(), ['one.conv', 'one.packed', 'one.proj', 'two.packed', 'two.proj']);
      assert.deepEqual([...(await u.readF32('two.proj'))], [...proj]);
      const c = MappedSource.prefixed(await TensorSet.open(path), 'one.', 'f');
      assert.throws(() => MappedSource.union([u, c], 'f'), /both provide one\.packed/);
      await c.close();
    } finally {
      await u.close();
    }
  });

  it('presentedShape', () => {
    assert.deepEqual(presentedShape([3072, 1024], { key: 'k', rows: [1024, 2048] }), [1024, 1024]);
    assert.deepEqual(presentedShape([512, 512, 1, 1], { key: 'k', squeeze: true }), [512, 512]);
    assert.deepEqual(presentedShape([1024, 768], { key: 'k', transpose: true }), [768, 1024]);
  });

  it('transposes in tiles exactly like the naive loop, for shapes that are not tile multiples, float32 and 16-bit', () => {
    // Even sides take the 16-bit word path (2x2 blocks), odd ones the element loop.
    for (const [rows, cols] of [[1, 1], [3, 70], [65, 33], [128, 64], [2, 2], [66, 34], [2, 130]]) {
      const data = Float32Array.from({ length: rows * cols }, (_, i) => i * 0.5 - 7);
      const t = transpose2d(data, rows, cols);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) assert.equal(t[c * rows + r], data[r * cols + c]);
      const bits = Uint16Array.from({ length: rows * cols }, (_, i) => (i * 7919) & 0xffff);
      const tb = transpose2d(bits, rows, cols);
      assert.ok(tb instanceof Uint16Array);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) assert.equal(tb[c * rows + r], bits[r * cols + c]);
    }
  });
});
