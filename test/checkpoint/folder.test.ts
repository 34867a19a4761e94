import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openFolderComponents, readFolderScheduler, readJson } from '../../src/checkpoint/folder.js';
import { BadInputError } from '../../src/errors.js';
import { FIXTURES } from '../support/fixtures.js';

describe('checkpoint/folder', () => {
  it("opens a pipeline's component folders under canonical names, with their configs", async () => {
    const { weights, rawConfigs } = await openFolderComponents(join(FIXTURES, 'tiny-pixart'), ['transformer', 'text_encoder', 'vae']);
    try {
      assert.ok(weights.has('transformer.transformer_blocks.0.attn1.to_q.weight'));
      assert.ok(weights.has('text_encoder.encoder.block.0.layer.0.SelfAttention.q.weight'));
      assert.ok(weights.has('vae.decoder.conv_in.weight'));
      assert.equal(rawConfigs.transformer.num_layers, 2);
      assert.equal((await weights.readF32('transformer.scale_shift_table')).length, 2 * 64);
    } finally {
      await weights.close();
    }
  });

  it("reads Python's NaN / Infinity in config files as null, and the folder's scheduler", async () => {
    const rawConfigs: Record<string, Record<string, unknown>> = {};
    const notes: string[] = [];
    const scheduler = await readFolderScheduler(join(FIXTURES, 'tiny-pixart'), rawConfigs, notes, {});
    assert.equal(scheduler.beta_schedule, 'linear');
    assert.equal(scheduler.beta_start, 0.0001);
    assert.equal(rawConfigs.scheduler.lambda_min_clipped, null);
    assert.deepEqual(notes, []);
    assert.equal((await readFolderScheduler(join(FIXTURES, 'tiny-pixart'), {}, notes, { predictionType: 'v_prediction' })).prediction_type, 'v_prediction');
  });

  it('names a missing config file', async () => {
    await assert.rejects(readJson(join(FIXTURES, 'tiny-sd15', 'nope', 'config.json')), (e: unknown) => e instanceof BadInputError && /nope\/config\.json: is missing/.test(e.message));
  });
});
