import assert from 'node:assert/strict';
import { SD_SCHEDULER, type SchedulerConfig } from '../../src/checkpoint/configs.js';
import { OnestepError } from '../../src/errors.js';
import { alphaBar, alphasCumprod, betas, linspaceF32 } from '../../src/runtime/schedule.js';
import { folderConfig, goldens } from '../support/fixtures.js';

function schedulerOf(folder: string): SchedulerConfig {
  // tiny-pixart's DPMSolver config holds `-Infinity`, which JSON.parse rejects; its betas are linear 1e-4..0.02.
  if (folder === 'tiny-pixart') return { ...SD_SCHEDULER, beta_schedule: 'linear', beta_start: 0.0001, beta_end: 0.02 };
  const json = folderConfig(folder, 'scheduler');
  return {
    num_train_timesteps: json.num_train_timesteps,
    beta_start: json.beta_start,
    beta_end: json.beta_end,
    beta_schedule: json.beta_schedule,
    trained_betas: json.trained_betas,
    prediction_type: json.prediction_type,
  };
}

describe('runtime/schedule', () => {
  for (const model of ['tiny-sd15', 'tiny-sd21', 'tiny-pixart'] as const) {
    it(`alphaBar(999) equals ${model}'s golden alphas_cumprod[999] exactly (float32)`, () => {
      const cfg = schedulerOf(model);
      const expected = goldens(model).get('onestep.alpha_bar')!.data[0];
      assert.equal(alphaBar(cfg, 999), expected);
    });
  }

  it('matches the DESIGN.md figures for the SD schedule', () => {
    assert.equal(alphaBar(SD_SCHEDULER, 999).toFixed(5), '0.00466');
    assert.equal(alphaBar(SD_SCHEDULER, 500).toFixed(3), '0.276');
    assert.equal(alphaBar(SD_SCHEDULER, 399).toFixed(3), '0.426');
  });

  it('linspaceF32 hits both ends exactly and is monotonic', () => {
    const x = linspaceF32(0.1, 0.7, 1000);
    assert.equal(x[0], Math.fround(0.1));
    assert.equal(x[999], Math.fround(0.7));
    for (let i = 1; i < x.length; i++) assert.ok(x[i] > x[i - 1]);
  });

  it('squaredcos_cap_v2 follows the closed-form cosine alpha bar where betas are not clipped', () => {
    const cfg: SchedulerConfig = { ...SD_SCHEDULER, beta_schedule: 'squaredcos_cap_v2' };
    const table = alphasCumprod(cfg);
    const g = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
    for (const i of [0, 1, 100, 500, 900, 980]) {
      const expected = g((i + 1) / 1000) / g(0);
      assert.ok(Math.abs(table[i] - expected) / expected < 2e-5, `i=${i}: ${table[i]} vs ${expected}`);
    }
    assert.equal(betas(cfg)[999], Math.fround(0.999));
  });

  it('trained_betas give the same table as the schedule they came from', () => {
    const trained: SchedulerConfig = { ...SD_SCHEDULER, trained_betas: Array.from(betas(SD_SCHEDULER)) };
    assert.deepEqual(alphasCumprod(trained), alphasCumprod(SD_SCHEDULER));
  });

  it('interpolates fractional timesteps and rejects out-of-range ones', () => {
    const mid = alphaBar(SD_SCHEDULER, 499.5);
    assert.ok(Math.abs(mid - (alphaBar(SD_SCHEDULER, 499) + alphaBar(SD_SCHEDULER, 500)) / 2) < 1e-9);
    assert.throws(() => alphaBar(SD_SCHEDULER, 1000), OnestepError);
    assert.throws(() => alphaBar(SD_SCHEDULER, -1), OnestepError);
    assert.throws(() => betas({ ...SD_SCHEDULER, beta_schedule: 'exotic' as never }), OnestepError);
  });
});
