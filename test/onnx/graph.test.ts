import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { expectedWeights, Graph, NO_WEIGHTS } from '../../src/onnx/graph.js';
import { writeModel } from '../../src/onnx/write-model.js';
import type { WeightSource } from '../../src/checkpoint/weight-source.js';
import { memoryWeights } from '../support/fixtures.js';

async function run(g: Graph, feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.Tensor>> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-graph-'));
  try {
    const { onnxPath } = await writeModel(g, dir, 'm');
    const s = await ort.InferenceSession.create(onnxPath);
    const out = await s.run(feeds);
    await s.release();
    return out as Record<string, ort.Tensor>;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('onnx/graph', () => {
  const weights = memoryWeights({
    'm.lin.weight': { shape: [3, 2], data: [1, 2, 3, 4, 5, 6] },
    'm.lin.bias': { shape: [3], data: [0.5, -1, 2] },
    'm.conv.weight': { shape: [3, 2, 1, 1], data: [1, 0, 0, 1, 1, 1] },
  });

  it('linear reads W transposed and adds the bias: y = x W^T + b, as torch.nn.Linear', async () => {
    const g = new Graph('t', weights);
    const x = g.input('x', 'float32', [2, 2]);
    g.output(g.linear(x, 'm.lin'), 'y', [2, 3]);
    const out = await run(g, { x: new ort.Tensor('float32', Float32Array.from([1, -1, 0.5, 2]), [2, 2]) });
    // row [1,-1]: [1-2, 3-4, 5-6] + b ; row [0.5,2]: [0.5+4, 1.5+8, 2.5+12] + b
    assert.deepEqual([...(out.y.data as Float32Array)], [-0.5, -2, 1, 5, 8.5, 16.5]);
  });

  it('a 1x1 conv viewed as a linear weight gives the same numbers as the conv', async () => {
    const g = new Graph('t', weights);
    const x = g.input('x', 'float32', [1, 2, 1, 2]);
    const conv = g.conv2d(x, 'm.conv');
    const flat = g.transpose(g.reshape(x, [1, 2, 2]), [0, 2, 1]);
    const lin = g.matmul(flat, g.weight('m.conv.weight', { reshape: [3, 2], transpose: true }));
    g.output(conv, 'conv', [1, 3, 1, 2]);
    g.output(lin, 'lin', [1, 2, 3]);
    const out = await run(g, { x: new ort.Tensor('float32', Float32Array.from([1, 2, 3, 4]), [1, 2, 1, 2]) });
    const c = out.conv.data as Float32Array; // [3 channels][2 positions]
    const l = out.lin.data as Float32Array; // [2 positions][3 channels]
    for (let ch = 0; ch < 3; ch++) for (let p = 0; p < 2; p++) assert.equal(c[ch * 2 + p], l[p * 3 + ch]);
    assert.deepEqual([...c], [1, 2, 3, 4, 4, 6]);
  });

  it('deduplicates constants and names nodes after their scope', () => {
    const g = new Graph('t', weights);
    const a = g.scalar(2);
    const b = g.scalar(2);
    assert.equal(a.name, b.name);
    g.scope('down_blocks.0', () => g.scope('resnets.1', () => g.add(a, b)));
    g.scope('down_blocks.0', () => g.scope('resnets.1', () => g.add(a, b)));
    assert.deepEqual(g.nodes.map((n) => n.name), ['/down_blocks.0/resnets.1/Add', '/down_blocks.0/resnets.1/Add_1']);
  });


  describe('declared weight shapes and the dry run', () => {
    const linearGraph = (w: WeightSource) => {
      const g = new Graph('t', w);
      const m = g.module('net');
      const x = g.input('x', 'float32', ['batch', 3]);
      g.output(m.conv2d(m.linear(x, 'fc', 3, 2), 'conv', 2, 4, { kernel: 1 }), 'y', ['batch', 4]);
      return g;
    };

    it('a dry run lists every weight the builder reads, with the shape it declares', () => {
      assert.deepEqual(
        [...expectedWeights(linearGraph)],
        [
          ['net.fc.weight', [2, 3]],
          ['net.fc.bias', [2]],
          ['net.conv.bias', [4]],
          ['net.conv.weight', [4, 2, 1, 1]],
        ],
      );
    });

    it('a real build refuses a stored weight whose shape is not the declared one, naming both', () => {
      const w = memoryWeights({
        'net.fc.weight': { shape: [2, 4], data: Array(8).fill(0) },
        'net.fc.bias': { shape: [2], data: [0, 0] },
      });
      assert.throws(() => linearGraph(w), /weight net\.fc\.weight is \[2,4\], but the config needs \[2,3\]/);
    });

    it('a dry run refuses a builder that reads a weight without declaring its shape', () => {
      const g = new Graph('t', NO_WEIGHTS);
      assert.throws(() => g.linear(g.input('x', 'float32', [1, 3]), 'net.fc'), /dry run: the builder asks whether net\.fc\.bias exists|dry run: the builder reads net\.fc\.weight without declaring its shape/);
    });
  });
});
