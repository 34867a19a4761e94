import assert from 'node:assert/strict';
import { OnestepError } from '../../src/errors.js';
import { applyGuidance, informativePrior, usesGuidance, x0FromModelOutput } from '../../src/runtime/one-step.js';
import { goldens, relErr } from '../support/fixtures.js';

/** Deterministic N(0,1)-ish data from a small LCG + Box-Muller, independent of src/runtime/noise. */
function gaussian(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 1) / 4294967297;
  return Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u()));
}

describe('runtime/one-step', () => {
  const cases = [
    ['tiny-sd15', 'epsilon'],
    ['tiny-sd21', 'v_prediction'],
  ] as const;
  for (const [model, prediction] of cases) {
    it(`${model} (${prediction}): x0 from the goldens' latents and model output equals onestep.x0_direct`, () => {
      const g = goldens(model);
      const a = g.get('onestep.alpha_bar')!.data[0];
      const x0 = x0FromModelOutput(prediction, g.get('onestep.latents')!.data, g.get('onestep.model_output')!.data, a);
      const expected = g.get('onestep.x0_direct')!.data;
      assert.ok(relErr(x0, expected) < 1e-6, `relErr ${relErr(x0, expected)}`);
      // The pipeline's own x0 (LCMScheduler at one step) agrees to its c_skip/c_out deviation.
      assert.ok(relErr(x0, g.get('onestep.x0_pipeline')!.data) < 1e-5);
    });

    it(`${model}: guidance of text/uncond outputs equals onestep_cfg.model_output_guided, and its x0 the golden`, () => {
      const g = goldens(model);
      const guided = applyGuidance(g.get('onestep_cfg.model_output_uncond')!.data, g.get('onestep_cfg.model_output_text')!.data, 1.5);
      const expected = g.get('onestep_cfg.model_output_guided')!.data;
      assert.ok(relErr(guided, expected) < 1e-6, `relErr ${relErr(guided, expected)}`);
      const x0 = x0FromModelOutput(prediction, g.get('onestep_cfg.latents')!.data, guided, g.get('onestep.alpha_bar')!.data[0]);
      assert.ok(relErr(x0, g.get('onestep_cfg.x0_direct')!.data) < 1e-5);
    });
  }

  it('flow: x0 = z + v and sample: x0 = output, on random data', () => {
    const z = gaussian(4 * 8 * 8, 1);
    const v = gaussian(4 * 8 * 8, 2);
    const flow = x0FromModelOutput('flow', z, v, Number.NaN);
    const sample = x0FromModelOutput('sample', z, v, 0.5);
    for (let i = 0; i < z.length; i++) {
      assert.equal(flow[i], Math.fround(z[i] + v[i]));
      assert.equal(sample[i], v[i]);
    }
  });

  it('epsilon and v_prediction invert the forward process on random data', () => {
    // x_t = sqrt(a) x0 + sqrt(1-a) eps; v = sqrt(a) eps - sqrt(1-a) x0 (Salimans & Ho).
    const a = 0.3;
    const x0 = gaussian(256, 3);
    const eps = gaussian(256, 4);
    const xt = x0.map((x, i) => Math.sqrt(a) * x + Math.sqrt(1 - a) * eps[i]);
    const v = x0.map((x, i) => Math.sqrt(a) * eps[i] - Math.sqrt(1 - a) * x);
    assert.ok(relErr(x0FromModelOutput('epsilon', xt, eps, a), x0) < 1e-6);
    assert.ok(relErr(x0FromModelOutput('v_prediction', xt, v, a), x0) < 1e-6);
  });

  it('informative prior: per-channel and whole-latent means, as add_noise', () => {
    const a = 0.00466;
    const noise = gaussian(4 * 2 * 2, 5);
    const mean = Float32Array.from([0.5, -1, 2, 0]);
    const z = informativePrior(mean, noise, a, 4);
    for (let i = 0; i < noise.length; i++) {
      assert.equal(z[i], Math.fround(Math.sqrt(a) * mean[Math.floor(i / 4)] + Math.sqrt(1 - a) * noise[i]));
    }
    const full = Float32Array.from({ length: 16 }, (_, i) => mean[Math.floor(i / 4)]);
    assert.deepEqual(informativePrior(full, noise, a, 4), z);
    assert.throws(() => informativePrior(new Float32Array(3), noise, a, 4), OnestepError);
  });

  it('guidance is applied only above 1', () => {
    assert.equal(usesGuidance(0), false);
    assert.equal(usesGuidance(1), false);
    assert.equal(usesGuidance(1.5), true);
  });
});
