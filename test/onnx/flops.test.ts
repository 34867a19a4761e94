import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { countFlops } from '../../src/onnx/flops.js';
import { Graph } from '../../src/onnx/graph.js';
import { readModelStructure } from '../../src/onnx/read-model.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { memoryWeights } from '../support/fixtures.js';
import { unitRandom } from '../support/random.js';

describe('onnx/flops', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-flops-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  // A small graph with every counted op, its shapes resolved only through Shape -> Gather -> Concat -> Reshape:
  // x [B, 4, H, W] -> conv 3x3 stride 2 (4 -> 8) -> [B, 8, H/2, W/2] -> tokens [B, S, 8] (S = HW/4)
  // -> linear 8 -> 16 -> MHA 2 heads (q = k = v) -> Gemm [B*S, 16] x [16, 4]^T
  async function build(): Promise<string> {
    const rand = unitRandom(7);
    const w = (shape: number[]) => ({ shape, data: Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rand() - 0.5) });
    const weights = memoryWeights({ 'conv.weight': w([8, 4, 3, 3]), 'conv.bias': w([8]), 'proj.weight': w([16, 8]), 'proj.bias': w([16]), 'head.weight': w([4, 16]) });
    const g = new Graph('flops', weights);
    const x = g.input('x', 'float32', ['batch', 4, 'height', 'width']);
    const h = g.conv2d(x, 'conv', { stride: 2, padding: 1 });
    const shape = g.shape(h);
    const bc = g.gather(shape, g.ints([0, 1]));
    const tokens = g.transpose(g.node('Reshape', [h, g.concat([bc, g.ints([-1])], 0)])[0], [0, 2, 1]);
    const q = g.linear(tokens, 'proj');
    const a = g.attention(q, q, q, 2);
    const flat = g.reshape(a, [-1, 16]);
    const y = g.node('Gemm', [flat, g.weight('head.weight')], { transB: 1 })[0];
    g.output(y, 'y', ['rows', 4]);
    return (await writeModel(g, tmp, 'flops')).onnxPath;
  }

  it('counts conv, matmul and attention FLOPs as a hand count does, for any input size', async () => {
    const file = await build();
    const model = await readModelStructure(file);
    for (const [B, H, W] of [[1, 8, 8], [2, 16, 12]]) {
      const S = (H / 2) * (W / 2);
      // By hand, 2 FLOPs per multiply-add:
      const conv = 2 * B * 8 * S * 4 * 3 * 3;
      const linear = 2 * B * S * 8 * 16;
      const attention = 2 * B * 2 * S * S * (8 + 8); // QK^T and AV, 2 heads of 8
      const gemm = 2 * (B * S) * 16 * 4;
      const c = countFlops(model, { batch: B, height: H, width: W });
      assert.deepEqual(c.unresolved, []);
      assert.equal(c.byKind.conv, conv);
      assert.equal(c.byKind.matmul, linear + gemm);
      assert.equal(c.byKind.attention, attention);
      assert.equal(c.flops, conv + linear + attention + gemm);

      // The shapes the count walked are the real ones: ORT runs the graph and returns [B*S, 4].
      const session = await ort.InferenceSession.create(file);
      try {
        const { y } = await session.run({ x: new ort.Tensor('float32', new Float32Array(B * 4 * H * W).fill(0.1), [B, 4, H, W]) });
        assert.deepEqual(y.dims, [B * S, 4]);
      } finally {
        await session.release();
      }
    }
  });

  it('lists the nodes it cannot resolve instead of counting them as zero', async () => {
    const model = await readModelStructure(await build());
    const c = countFlops(model, { batch: 1 }); // height and width unknown
    assert.ok(c.unresolved.some((u) => u.op === 'Conv'));
    assert.ok(c.unresolved.some((u) => u.op === 'MultiHeadAttention'));
  });

  it('counts the same graph after ORT rewrote and saved it (an independent writer, basic fusions)', async () => {
    const file = await build();
    const saved = path.join(tmp, 'ort-basic.onnx');
    const session = await ort.InferenceSession.create(file, { graphOptimizationLevel: 'basic', optimizedModelFilePath: saved });
    await session.release();
    const ours = countFlops(await readModelStructure(file), { batch: 2, height: 16, width: 12 });
    const theirs = countFlops(await readModelStructure(saved), { batch: 2, height: 16, width: 12 });
    assert.deepEqual(theirs.unresolved, []);
    assert.equal(theirs.flops, ours.flops);
  });
});
