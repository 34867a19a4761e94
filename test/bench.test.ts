import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { formatBenchReport, runBench } from '../src/bench.js';
import { convertCheckpoint } from '../src/convert.js';
import { OnestepError } from '../src/errors.js';
import { countFlops } from '../src/onnx/flops.js';
import { readModelStructure } from '../src/onnx/read-model.js';
import { FIXTURES } from './support/fixtures.js';

describe('bench', function () {
  this.timeout(300_000);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-bench-'));
  const model = path.join(tmp, 'tiny-sd15');
  before(async () => {
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: model });
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('measures every figure on a real model: loads, stages, images/s, GFLOP/s from the graphs, RSS, the CPU', async () => {
    const r = await runBench({ modelDir: model, device: 'cpu', batchSizes: [2, 1], size: 64 });
    const run = r.runs[0];
    assert.deepEqual(run.batches.map((b) => [b.batchSize, b.images]), [[1, 1], [2, 2]]);
    assert.deepEqual(run.loads.map((l) => l.component), ['tokenizer', 'unet', 'vae_decoder', 'text_encoder']);
    assert.ok(run.loads.slice(1).every((l) => l.cache === 'written' || l.cache === 'hit'));
    assert.ok(run.readyAfterProcessStart > 0 && run.firstImageAfterProcessStart >= run.readyAfterProcessStart);
    // The counted compute is the graphs' own: the UNet and decoder at the 8x8 latent of a 64x64 image.
    const unet = countFlops(await readModelStructure(path.join(model, 'unet.onnx')), { batch: 1, sequence: 77, height: 8, width: 8 });
    assert.equal(r.model.gflopPerImage.denoiser, unet.flops / 1e9);
    assert.equal(r.model.uncountedNodes, 0);
    for (const b of run.batches) {
      assert.ok(Math.abs(b.imagesPerSecond - b.images / b.seconds) < 1e-9);
      assert.ok(Math.abs(b.gflopsPerSecond - (r.model.gflopPerImage.total * b.images) / b.seconds) < 1e-6 * b.gflopsPerSecond);
      assert.ok(b.msPerImage.denoiser > 0 && b.msPerImage.decoder > 0 && b.msPerImage.total >= b.msPerImage.denoiser);
      assert.ok(b.peakRssMB * 2 ** 20 > r.model.weightBytes);
    }
    assert.ok(r.machine.cpu.length > 0 && r.machine.cores >= 1);
    const table = formatBenchReport(r);
    assert.ok(table.includes(r.machine.cpu));
    assert.match(table, /^\s+1\s+1\s/m);
    assert.match(table, /^\s+2\s+2\s/m);
    // The second load finds the optimized graphs cached beside the model.
    const again = await runBench({ modelDir: model, device: 'cpu', batchSizes: [1], size: 64 });
    assert.ok(again.runs[0].loads.slice(1).every((l) => l.cache === 'hit'));
  });

  it('refuses bad batch sizes, worker counts and sizes before loading anything', async () => {
    await assert.rejects(runBench({ modelDir: model, device: 'cpu', batchSizes: [0] }), OnestepError);
    await assert.rejects(runBench({ modelDir: model, device: 'cpu', batchSizes: [1], workers: [0] }), OnestepError);
    await assert.rejects(runBench({ modelDir: model, device: 'cpu', batchSizes: [1], size: 60 }), OnestepError);
  });
});
