import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Graph } from '../../src/onnx/graph.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { memoryWeights } from '../support/fixtures.js';

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
});
