import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseConfigOverrides, schedulerConfigFromJson } from '../../src/checkpoint/infer-config.js';

const FIX = 'test/fixtures';
const json = async (p: string) => JSON.parse(await readFile(p, 'utf8')) as Record<string, unknown>;

describe('checkpoint/infer-config', () => {
  it('reads scheduler configs', async () => {
    const s = schedulerConfigFromJson(await json(join(FIX, 'tiny-sd21', 'scheduler', 'scheduler_config.json')), 'x');
    assert.deepEqual(s, {
      num_train_timesteps: 1000,
      beta_start: 0.00085,
      beta_end: 0.012,
      beta_schedule: 'scaled_linear',
      trained_betas: null,
      prediction_type: 'v_prediction',
    });
    assert.throws(() => schedulerConfigFromJson({ beta_schedule: 'exp' }, 'x'), /beta_schedule "exp"/);
    assert.throws(() => schedulerConfigFromJson({ prediction_type: 'x0' }, 'x'), /prediction_type "x0"/);
  });

  it('parses the onestep.config metadata', () => {
    assert.equal(parseConfigOverrides({}, 'f'), undefined);
    assert.deepEqual(parseConfigOverrides({ 'onestep.config': '{"unet":{"attention_head_dim":[1,2,4,4]}}' }, 'f'), {
      unet: { attention_head_dim: [1, 2, 4, 4] },
    });
    assert.throws(() => parseConfigOverrides({ 'onestep.config': '[1]' }, 'f'), /must be a JSON object/);
    assert.throws(() => parseConfigOverrides({ 'onestep.config': '{"vae":3}' }, 'f'), /vae must be a JSON object/);
  });
});
