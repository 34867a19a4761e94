import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Graph } from '../../src/onnx/graph.js';
import { float16Overflows, referenceFeeds } from '../../src/onnx/fp16-check.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { memoryWeights } from '../support/fixtures.js';

/**
 * x [batch, 4] -> two linears whose weights are all `gain`: y = 4 gain^2 sum(x) in every element. The reference x
 * (torch seed 0) sums to -0.363, so y is -1.45e6 for gain 1000 (past float16's 65504) and -145 for gain 10.
 */
function twoLinears(gain: number, dtype: 'float32' | 'float16'): Graph {
  const w = Array.from({ length: 16 }, () => gain);
  const g = new Graph('m', memoryWeights({ 'a.weight': { shape: [4, 4], data: w }, 'b.weight': { shape: [4, 4], data: w } }), dtype);
  const x = g.input('latent_sample', 'float32', ['batch', 4]);
  const y = g.linear(g.linear(g.cast(x, dtype), 'a'), 'b');
  g.output(g.cast(y, 'float32'), 'sample', ['batch', 4]);
  g.output(g.cast(g.linear(g.cast(x, dtype), 'a'), 'float32'), 'first', ['batch', 4]);
  return g;
}

describe('onnx/fp16-check', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'onestep-fp16-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('names the values a float16 graph overflows in (hidden inside on a CPU), none of its float32 twin', async () => {
    for (const dtype of ['float16', 'float32'] as const) {
      const g = twoLinears(1000, dtype);
      const written = await writeModel(g, dir, `m-${dtype}`);
      // The first linear gives -363 (fine), the second -1.45e6: Inf in float16. onnxruntime's CPU provider computes
      // that MatMul in float32, so only reading the float16 value back shows it.
      const bad = await float16Overflows(g, written);
      assert.equal(bad.length > 0, dtype === 'float16', `${dtype}: ${bad}`);
      if (dtype === 'float16') assert.ok(bad.some((n) => /\/b\//.test(n)) && !bad.some((n) => /\/a\//.test(n)), bad.join(', '));
      assert.deepEqual(readdirSync(dir).filter((f) => f.includes('probe')), [], 'probe proto removed');
    }
    const g = twoLinears(10, 'float16');
    const written = await writeModel(g, dir, 'm-small');
    assert.deepEqual(await float16Overflows(g, written), []);
    // The input scale is applied: x 1000 gives -1.45e5 at the end (Inf), -3628 after the first linear (fine).
    const scaled = await float16Overflows(g, written, { latent_sample: 1000 });
    assert.ok(scaled.length > 0 && !scaled.some((n) => /\/a\//.test(n)), scaled.join(', '));
  });

  it('reference feeds follow the declared inputs (batch 1, 77 tokens, 8x8, t = 999, SDXL time ids)', () => {
    const feeds = referenceFeeds([
      { name: 'input_ids', type: 'int64', dims: ['batch', 'sequence'] },
      { name: 'sample', type: 'float32', dims: ['batch', 4, 'height', 'width'] },
      { name: 'timestep', type: 'float32', dims: ['batch'] },
      { name: 'time_ids', type: 'float32', dims: ['batch', 6] },
    ]);
    assert.deepEqual(feeds.input_ids.dims, [1, 77]);
    assert.deepEqual(feeds.sample.dims, [1, 4, 8, 8]);
    assert.deepEqual([...(feeds.timestep.data as Float32Array)], [999]);
    assert.deepEqual([...(feeds.time_ids.data as Float32Array)], [1024, 1024, 0, 0, 1024, 1024]);
    const s = feeds.sample.data as Float32Array;
    const mean = s.reduce((a, b) => a + b, 0) / s.length;
    assert.ok(Math.abs(mean) < 0.3 && s.some((v) => v < -1) && s.some((v) => v > 1), 'standard normal values');
  });
});
