/** The CPU half of `npm run gpu-check` (bench/gpu-check.ts), so it cannot rot while no GPU is at hand. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cpuHalf, psnr } from '../../bench/gpu-check.js';

describe('bench/gpu-check (CPU half)', function () {
  this.timeout(300_000);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-gpu-check-test-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('PSNR is 10 log10(255^2 / MSE)', () => {
    assert.equal(psnr(Uint8Array.from([1, 2]), Uint8Array.from([1, 2])), Infinity);
    // MSE = (4 + 0) / 2 = 2
    assert.ok(Math.abs(psnr(Uint8Array.from([0, 9]), Uint8Array.from([2, 9])) - 10 * Math.log10(65025 / 2)) < 1e-12);
  });

  it('builds the CUDA graphs, compares fp16 with fp32 images of a small model, and prints its bench tables', async () => {
    const lines: string[] = [];
    const r = await cpuHalf({ work: tmp, log: (s) => lines.push(s) });
    for (const g of r.graphs) {
      assert.equal(g.unresolved, 0, g.graph);
      assert.equal(g.gflopCuda, g.gflopCpu, g.graph);
      assert.ok(g.fusions.nhwcConv > 0 && g.fusions.groupNorm > 0, g.graph);
    }
    assert.equal(r.precision.psnr.length, 4);
    for (const p of r.precision.psnr) assert.ok(p >= r.precision.bound, `PSNR ${p} dB`);
    assert.deepEqual(r.benches.map((b) => b.model.vaeDecoder), ['autoencoder-kl', 'taesd']);
    assert.ok(r.benches.every((b) => b.runs[0].batches.length === 2));
    assert.ok(lines.some((l) => /PSNR/.test(l)));
  });
});
