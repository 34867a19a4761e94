import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { OnestepError } from '../../src/errors.js';
import { Graph } from '../../src/onnx/graph.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { defaultThreads, deviceName, nvidiaGpuPresent, openSession, parseDevice, sessionOptions } from '../../src/runtime/device.js';
import { folderWeights, relErr } from '../support/fixtures.js';

const FC1 = 'text_encoder.text_model.encoder.layers.0.mlp.fc1';

describe('runtime/device', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-device-'));
  const weights = folderWeights('tiny-sd15', ['text_encoder']);
  let onnxPath = '';

  before(async () => {
    // One real layer of the fixture (CLIP fc1), enough to exercise GEMM prepacking.
    const g = new Graph('fc1', weights);
    const x = g.input('x', 'float32', ['batch', 32]);
    g.output(g.linear(x, FC1), 'y', ['batch', 'features']);
    onnxPath = (await writeModel(g, tmp, 'fc1')).onnxPath;
  });

  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('parses auto, cpu, cuda and cuda:N, and rejects anything else', () => {
    assert.deepEqual(parseDevice('auto'), { kind: 'auto' });
    assert.deepEqual(parseDevice('CPU'), { kind: 'cpu' });
    assert.deepEqual(parseDevice('cuda'), { kind: 'cuda', id: 0 });
    assert.deepEqual(parseDevice('cuda:3'), { kind: 'cuda', id: 3 });
    assert.equal(deviceName(parseDevice('cuda:3')), 'cuda:3');
    for (const bad of ['gpu', 'cuda:', 'cuda:x', 'cuda:-1', '']) assert.throws(() => parseDevice(bad), OnestepError, bad);
  });

  it('builds session options: full optimization, threads, no memory pattern on CPU, CUDA device id, optional prepacking switch', () => {
    const cpu = sessionOptions({ kind: 'cpu' }, { threads: 3 });
    assert.deepEqual(cpu.executionProviders, ['cpu']);
    assert.equal(cpu.graphOptimizationLevel, 'all');
    assert.equal(cpu.intraOpNumThreads, 3);
    assert.equal(cpu.extra, undefined);
    assert.equal(cpu.enableMemPattern, false, 'the memory pattern keeps a second copy of the activations resident on CPU');
    const cuda = sessionOptions({ kind: 'cuda', id: 1 }, { threads: 1, disablePrepacking: true });
    assert.deepEqual(cuda.executionProviders, [{ name: 'cuda', deviceId: 1 }]);
    assert.deepEqual(cuda.extra, { session: { disable_prepacking: '1' } });
    assert.ok(defaultThreads(1) >= 1);
    assert.equal(defaultThreads(os.availableParallelism() * 4), 1);
  });

  it('runs a real layer on CPU with and without prepacking, both equal to a JS matmul', async () => {
    const [outFeatures, inFeatures] = weights.meta(`${FC1}.weight`).shape;
    const w = await weights.readF32(`${FC1}.weight`);
    const b = await weights.readF32(`${FC1}.bias`);
    const x = Float32Array.from({ length: 2 * inFeatures }, (_, i) => Math.sin(i));
    const expected = new Float32Array(2 * outFeatures);
    for (let r = 0; r < 2; r++) {
      for (let o = 0; o < outFeatures; o++) {
        let s = b[o];
        for (let k = 0; k < inFeatures; k++) s += x[r * inFeatures + k] * w[o * inFeatures + k];
        expected[r * outFeatures + o] = s;
      }
    }
    for (const disablePrepacking of [false, true]) {
      const { session, device, note } = await openSession(onnxPath, { kind: 'cpu' }, { threads: 1, disablePrepacking });
      try {
        assert.deepEqual(device, { kind: 'cpu' });
        assert.equal(note, undefined);
        const { y } = await session.run({ x: new ort.Tensor('float32', x, [2, 32]) });
        assert.ok(relErr(y.data as Float32Array, expected) < 1e-6);
      } finally {
        await session.release();
      }
    }
  });

  it('auto: CPU with no word of CUDA on a machine without an NVIDIA GPU, one note where a GPU is there but CUDA is not; explicit cuda fails with the install hint', async () => {
    const explicit: Awaited<ReturnType<typeof openSession>> | Error = await openSession(onnxPath, { kind: 'cuda', id: 0 }, { threads: 1 }).catch((e: Error) => e);
    if (!(explicit instanceof Error)) {
      // This machine has a working CUDA provider: nothing to fall back from.
      await explicit.session.release();
      return;
    }
    assert.ok(explicit instanceof OnestepError);
    assert.match(explicit.message, /CUDA device 0 is not usable/);
    assert.match(explicit.hint ?? '', /ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci/);
    const auto = await openSession(onnxPath, { kind: 'auto' }, { threads: 1 });
    assert.deepEqual(auto.device, { kind: 'cpu' });
    if (nvidiaGpuPresent()) assert.match(auto.note ?? '', /^CUDA is not available \(.*Failed to load shared library.*\); running on CPU$/);
    else assert.equal(auto.note, undefined, 'no GPU here: nothing to warn about');
    await auto.session.release();
  });

  it('a graph ORT cannot read is reported as such, naming the file', async () => {
    const bad = path.join(tmp, 'broken.onnx');
    fs.writeFileSync(bad, 'not a model');
    await assert.rejects(openSession(bad, { kind: 'cpu' }, { threads: 1 }), (e: OnestepError) => {
      assert.ok(e instanceof OnestepError);
      assert.ok(e.message.startsWith(`${bad}: onnxruntime cannot load this graph`), e.message);
      return true;
    });
  });
});
