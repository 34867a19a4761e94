import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openFolderComponents, openPipelineFolder, readFolderScheduler, readJson, type OpenedFolder } from '../../src/checkpoint/folder.js';
import { SD1 } from '../../src/families/sd.js';
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

  it('opens a pipeline folder for a family: the common Checkpoint fields, the tokenizers it has; closes the weights when reading fails', async () => {
    const dir = join(FIXTURES, 'tiny-sd15');
    const folder = { dir, index: { _class_name: 'StableDiffusionPipeline' }, pipelineClass: 'StableDiffusionPipeline' };
    let seen: OpenedFolder | undefined;
    const ckpt = await openPipelineFolder(folder, ['unet', 'vae'], ['tokenizer', 'tokenizer_2'], { predictionType: 'v_prediction' }, (f) => {
      seen = f;
      return { family: SD1, configs: {}, unmappedKeys: ['x'] };
    });
    try {
      assert.equal(ckpt.layout, 'diffusers');
      assert.equal(ckpt.path, dir);
      assert.equal(ckpt.family, SD1);
      assert.equal(ckpt.weights, seen!.weights);
      assert.ok(ckpt.weights.has('unet.conv_in.weight') && ckpt.weights.has('vae.decoder.conv_in.weight'));
      assert.ok(!ckpt.weights.names().some((n) => n.startsWith('text_encoder.')));
      assert.deepEqual(Object.keys(ckpt.rawConfigs).sort(), ['scheduler', 'unet', 'vae']);
      assert.equal(ckpt.scheduler.prediction_type, 'v_prediction');
      assert.deepEqual(ckpt.tokenizerDirs, { tokenizer: join(dir, 'tokenizer') });
      assert.equal(seen!.configFile('unet'), join(dir, 'unet', 'config.json'));
      assert.equal(ckpt.pipelineIndex, folder.index);
      assert.deepEqual(ckpt.unmappedKeys, ['x']);
      assert.deepEqual(ckpt.metadata, {});
    } finally {
      await ckpt.weights.close();
    }
    const failure = new Error('the family refuses');
    await assert.rejects(
      openPipelineFolder(folder, ['unet'], [], {}, (f) => {
        seen = f;
        throw failure;
      }),
      (e) => e === failure,
    );
    await assert.rejects(seen!.weights.readF32('unet.conv_in.weight'), 'closed when reading fails');
  });
});
