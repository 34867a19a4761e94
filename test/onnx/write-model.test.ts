import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MappedSource } from '../../src/checkpoint/sources.js';
import type { WeightSource } from '../../src/checkpoint/weight-source.js';
import { Graph, type WeightView } from '../../src/onnx/graph.js';
import type { ElemType } from '../../src/onnx/proto.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { f32ToBf16, f32ToF16 } from '../../src/safetensors/dtypes.js';
import { TensorSet } from '../../src/safetensors/tensor-set.js';
import { writeSafetensors } from '../../src/safetensors/writer.js';
import { memoryWeights } from '../support/fixtures.js';

const bytes = (a: Float32Array | Uint16Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** The same weights without readF16: every float16 initializer goes through float32 (the conversion before passthrough). */
function viaFloat32(w: WeightSource): WeightSource {
  return { names: () => w.names(), has: (n) => w.has(n), meta: (n) => w.meta(n), readF32: (n) => w.readF32(n), close: () => w.close() };
}

/** A graph holding one initializer per (key, view, type): what writeModel reads and writes. */
function graphOf(weights: WeightSource, inits: [string, string, WeightView, ElemType, number[]][]): Graph {
  const g = new Graph('t', weights, 'float16');
  const x = g.input('x', 'float16', [2]);
  g.output(g.add(x, x), 'y', [2]);
  for (const [name, key, view, type, dims] of inits) g.initializers.set(name, { name, type, dims, weight: { key, view } });
  return g;
}

describe('onnx/write-model', () => {
  const weights = memoryWeights({
    'm.lin.weight': { shape: [3, 2], data: [1, 2, 3, 4, 5, 6] },
    'm.lin.bias': { shape: [3], data: [0.5, -1, 2] },
  });

  it('writes byte-identical models for the same graph, with 64-byte aligned external data', async () => {
    const dirs = [0, 1].map(() => fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-det-')));
    try {
      const g1 = new Graph('t', weights);
      const x1 = g1.input('x', 'float32', ['batch', 2]);
      g1.output(g1.linear(x1, 'm.lin'), 'y', ['batch', 3]);
      const g2 = new Graph('t', weights);
      const x2 = g2.input('x', 'float32', ['batch', 2]);
      g2.output(g2.linear(x2, 'm.lin'), 'y', ['batch', 3]);
      await writeModel(g1, dirs[0], 'm');
      await writeModel(g2, dirs[1], 'm');
      for (const f of ['m.onnx', 'm.onnx.data']) {
        assert.ok(fs.readFileSync(path.join(dirs[0], f)).equals(fs.readFileSync(path.join(dirs[1], f))), f);
      }
      // weight (24 bytes) at 0, bias aligned at 64
      assert.equal(fs.statSync(path.join(dirs[0], 'm.onnx.data')).size, 64 + 12);
    } finally {
      for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    }
  });

  it('refuses to store a weight that overflows float16', async () => {
    const g = new Graph('t', memoryWeights({ 'w.weight': { shape: [2], data: [1, 1e6] } }), 'float16');
    const x = g.input('x', 'float16', [2]);
    g.output(g.add(x, g.weight('w.weight')), 'y', [2]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-f16-'));
    try {
      await assert.rejects(writeModel(g, dir, 'm'), /w\.weight: 1 values exceed the float16 range/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  it('float16 weights keep their stored bits through transpose, head packing and permute: the same bytes as via float32', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-f16pass-'));
    try {
      const values = (n: number, k: number) => Float32Array.from({ length: n }, (_, i) => Math.fround(Math.sin(i * k + 1) * 3 * 2 ** (i % 9 - 4)));
      const file = path.join(dir, 'w.safetensors');
      await writeSafetensors(file, [
        { name: 'a', dtype: 'F16', shape: [6, 4], data: () => bytes(f32ToF16(values(24, 1))) },
        { name: 'b', dtype: 'F16', shape: [6, 4], data: () => bytes(f32ToF16(values(24, 2))) },
        { name: 'c', dtype: 'F16', shape: [2, 3, 2, 2], data: () => bytes(f32ToF16(values(24, 3))) },
        { name: 'd', dtype: 'F16', shape: [5], data: () => bytes(f32ToF16(values(5, 4))) },
        { name: 'e', dtype: 'BF16', shape: [6, 4], data: () => bytes(f32ToBf16(values(24, 5))) },
        { name: 'f', dtype: 'F32', shape: [6, 4], data: () => bytes(values(24, 6)) },
      ]);
      const inits: [string, string, WeightView, ElemType, number[]][] = [
        ['a.T', 'a', { transpose: true }, 'float16', [4, 6]],
        ['ab.packed', 'a', { pack: { keys: ['a', 'b'], heads: 2 } }, 'float16', [4, 12]],
        ['c.ohwi', 'c', { permute: [0, 2, 3, 1] }, 'float16', [2, 2, 2, 3]],
        ['d', 'd', {}, 'float16', [5]],
        ['d.float32', 'd', {}, 'float32', [5]],
        ['e.T', 'e', { transpose: true }, 'float16', [4, 6]],
        ['e.flat', 'e', { reshape: [24] }, 'float16', [24]],
        ['f.T', 'f', { transpose: true }, 'float16', [4, 6]],
      ];
      const source = MappedSource.prefixed(await TensorSet.open(file), '', file);
      try {
        for (const [out, w] of [['pass', source], ['float32', viaFloat32(source)]] as const) {
          fs.mkdirSync(path.join(dir, out));
          await writeModel(graphOf(w, inits), path.join(dir, out), 'm');
        }
        for (const f of ['m.onnx', 'm.onnx.data']) {
          assert.ok(fs.readFileSync(path.join(dir, 'pass', f)).equals(fs.readFileSync(path.join(dir, 'float32', f))), f);
        }
        // 'd' passes through: its stored bytes, at 256 (a.T: 48 bytes at 0, ab.packed: 96 at 64, c.ohwi: 48 at 192).
        const data = fs.readFileSync(path.join(dir, 'pass', 'm.onnx.data'));
        assert.deepEqual([...new Uint16Array(data.buffer.slice(data.byteOffset + 256, data.byteOffset + 266))], [...f32ToF16(values(5, 4))]);
        // ab.packed, by its definition: row r (input feature), then per head h: a's rows 3h..3h+2, b's rows 3h..3h+2.
        const [a, b] = [f32ToF16(values(24, 1)), f32ToF16(values(24, 2))];
        const expected: number[] = [];
        for (let r = 0; r < 4; r++) for (let h = 0; h < 2; h++) for (const w of [a, b]) for (let d = 0; d < 3; d++) expected.push(w[(h * 3 + d) * 4 + r]);
        assert.deepEqual([...new Uint16Array(data.buffer.slice(data.byteOffset + 64, data.byteOffset + 160))], expected);
      } finally {
        await source.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses NaN and Inf weights, float16 bits or float32 values, with one error naming the weight', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-nan-'));
    try {
      const file = path.join(dir, 'w.safetensors');
      await writeSafetensors(file, [
        { name: 'nan16', dtype: 'F16', shape: [3], data: () => bytes(Uint16Array.of(0x3c00, 0x7e00, 0x0001)) },
        { name: 'inf16', dtype: 'F16', shape: [2], data: () => bytes(Uint16Array.of(0xfc00, 0x7c00)) },
        { name: 'big32', dtype: 'F32', shape: [2], data: () => bytes(Float32Array.of(1, 1e6)) },
        { name: 'nan32', dtype: 'F32', shape: [2], data: () => bytes(Float32Array.of(NaN, 2)) },
      ]);
      const source = MappedSource.prefixed(await TensorSet.open(file), '', file);
      try {
        const write = (key: string, type: ElemType, w: WeightSource = source) => writeModel(graphOf(w, [[key, key, {}, type, w.meta(key).shape]]), dir, 'm');
        for (const w of [source, viaFloat32(source)]) {
          await assert.rejects(write('nan16', 'float16', w), /^OnestepError: weight nan16: 1 values are NaN or infinite/);
          await assert.rejects(write('inf16', 'float16', w), /weight inf16: 2 values are NaN or infinite/);
          await assert.rejects(write('nan16', 'float32', w), /weight nan16: 1 values are NaN or infinite/);
          await assert.rejects(write('nan32', 'float16', w), /weight nan32: 1 values are NaN or infinite/);
          await assert.rejects(write('nan32', 'float32', w), /weight nan32: 1 values are NaN or infinite/);
          // A finite value beyond float16's range is still the overflow error, which --dtype fp32 avoids.
          await assert.rejects(write('big32', 'float16', w), /weight big32: 1 values exceed the float16 range/);
          await write('big32', 'float32', w);
        }
      } finally {
        await source.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
