import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { BadInputError } from '../../src/errors.js';
import { Graph } from '../../src/onnx/graph.js';
import { readModelStructure } from '../../src/onnx/read-model.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { memoryWeights } from '../support/fixtures.js';

describe('onnx/read-model', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-read-model-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  function graph(): Graph {
    const weights = memoryWeights({ 'lin.weight': { shape: [3, 2], data: [1, 2, 3, 4, 5, 6] } });
    const g = new Graph('g', weights);
    const x = g.input('x', 'float32', ['batch', 2]);
    const y = g.linear(x, 'lin');
    const z = g.node('Softmax', [g.reshape(y, [0, -1])], { axis: -1 })[0];
    g.output(g.clip(g.mul(z, g.scalar(0.5)), -1, 1), 'y', ['batch', 3]);
    return g;
  }

  it('reads back what the writer wrote: nodes, attributes, inputs, outputs, initializer shapes and small values', async () => {
    const g = graph();
    const m = await readModelStructure((await writeModel(g, tmp, 'g')).onnxPath);
    assert.equal(m.graphName, 'g');
    assert.deepEqual(m.opsets, [{ domain: '', version: 21 }, { domain: 'com.microsoft', version: 1 }]);
    assert.deepEqual(m.nodes, g.nodes);
    assert.deepEqual(m.inputs, g.inputs);
    assert.deepEqual(m.outputs, g.outputs);
    assert.deepEqual([...m.initializers.keys()].sort(), [...g.initializers.keys()].sort());
    assert.deepEqual(m.initializers.get('lin.weight')!.dims, [3, 2]);
    // The weight lives in external data (not read); shape constants are inline and keep their values.
    assert.equal(m.initializers.get('lin.weight')!.values, undefined);
    const shapeConst = g.nodes.find((n) => n.opType === 'Reshape')!.inputs[1];
    assert.deepEqual(m.initializers.get(shapeConst)!.values, [0, -1]);
    const half = g.nodes.find((n) => n.opType === 'Mul')!.inputs[1];
    assert.deepEqual(m.initializers.get(half)!.values, [0.5]);
  });

  it('reads a model written by ORT itself (another protobuf writer: packed fields, value_info, its own node names)', async () => {
    const src = (await writeModel(graph(), tmp, 'g2')).onnxPath;
    const saved = path.join(tmp, 'ort.onnx');
    await (await ort.InferenceSession.create(src, { graphOptimizationLevel: 'basic', optimizedModelFilePath: saved })).release();
    const m = await readModelStructure(saved);
    assert.deepEqual(m.inputs.map((v) => [v.name, v.dims]), [['x', ['batch', 2]]]);
    assert.deepEqual(m.outputs.map((v) => v.name), ['y']);
    assert.ok(m.nodes.some((n) => n.opType === 'FusedMatMul' && n.domain === 'com.microsoft'));
    assert.deepEqual(m.initializers.get('lin.weight')!.dims, [3, 2]);
  });

  it('refuses a file that is not a model, naming it', async () => {
    const bad = path.join(tmp, 'bad.onnx');
    fs.writeFileSync(bad, Buffer.from([0x0b, 0xff, 0xff]));
    await assert.rejects(readModelStructure(bad), (e: BadInputError) => e instanceof BadInputError && e.message.includes(bad));
    await assert.rejects(readModelStructure(path.join(tmp, 'missing.onnx')), BadInputError);
  });
});
