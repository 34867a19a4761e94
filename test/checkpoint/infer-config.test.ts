import { SD1_UNET_RULES, SD2_UNET_RULES } from '../../src/families/sd.js';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CLIP_EOS_TOKEN_ID,
  clipTextConfigFromJson,
  inferClipTextConfig,
  inferUnetConfig,
  inferVaeConfig,
  parseConfigOverrides,
  schedulerConfigFromJson,
  sd2HeadsFor,
  unetConfigFromJson,
  unsupportedUnetFeatures,
  vaeConfigFromJson,
} from '../../src/checkpoint/infer-config.js';
import { openCheckpoint } from '../../src/checkpoint/open.js';
import { OnestepError } from '../../src/errors.js';

const FIX = 'test/fixtures';
const json = async (p: string) => JSON.parse(await readFile(p, 'utf8')) as Record<string, unknown>;

describe('checkpoint/infer-config', () => {
  for (const [model, family] of [
    ['tiny-sd15', 'sd1'],
    ['tiny-sd21', 'sd2'],
  ] as const) {
    it(`${model}: configs inferred from the single file's shapes agree with the folder's config.json`, async () => {
      const c = await openCheckpoint(join(FIX, `${model}.safetensors`));
      try {
        const names = c.weights.names();
        const metaOf = (n: string) => (c.weights.has(n) ? c.weights.meta(n) : undefined);
        const unet = inferUnetConfig(names, metaOf, family === 'sd1' ? SD1_UNET_RULES : SD2_UNET_RULES, 'x');
        const ref = await json(join(FIX, model, 'unet', 'config.json'));
        for (const key of ['in_channels', 'out_channels', 'block_out_channels', 'down_block_types', 'up_block_types', 'layers_per_block', 'cross_attention_dim', 'use_linear_projection'] as const) {
          assert.deepEqual(unet[key], ref[key], key);
        }
        assert.deepEqual(unet.transformer_layers_per_block, [1, 1, 1, 1]);
        assert.equal(unet.time_cond_proj_dim, null);
        // Heads cannot be seen in shapes: SD 1.x's rule (8) matches the folder; SD 2.x's (channels/64) cannot for tiny widths.
        assert.deepEqual(unet.attention_head_dim, family === 'sd1' ? [8, 8, 8, 8] : [1, 1, 1, 1]);

        const vae = inferVaeConfig(names, metaOf, 'x');
        const vref = await json(join(FIX, model, 'vae', 'config.json'));
        for (const key of ['in_channels', 'out_channels', 'latent_channels', 'block_out_channels', 'layers_per_block', 'use_quant_conv', 'use_post_quant_conv', 'mid_block_add_attention', 'norm_num_groups', 'scaling_factor', 'shift_factor'] as const) {
          assert.deepEqual(vae[key], vref[key], key);
        }

        const te = inferClipTextConfig(names, metaOf, family === 'sd1' ? 'quick_gelu' : 'gelu', 'x');
        const tref = await json(join(FIX, model, 'text_encoder', 'config.json'));
        for (const key of ['vocab_size', 'hidden_size', 'intermediate_size', 'max_position_embeddings', 'hidden_act', 'layer_norm_eps'] as const) {
          assert.deepEqual(te[key], tref[key], key);
        }
        // The SD 2.x file holds OpenCLIP's whole tower (3 blocks); diffusers' folder only the 2 layers SD 2.x uses.
        assert.equal(te.num_hidden_layers, (tref.num_hidden_layers as number) + (family === 'sd2' ? 1 : 0));
        assert.equal(te.num_attention_heads, 1);
        assert.equal(te.eos_token_id, CLIP_EOS_TOKEN_ID);
      } finally {
        await c.weights.close();
      }
    });
  }

  it('SD 2.x head rule: head dim 64 (SD 2.1: [5, 10, 20, 20])', () => {
    assert.deepEqual([320, 640, 1280, 1280].map(sd2HeadsFor), [5, 10, 20, 20]);
    assert.equal(sd2HeadsFor(32), 1);
  });

  it('normalizes diffusers config.json fields (numbers become per-block lists, defaults fill gaps)', async () => {
    const u = unetConfigFromJson(await json(join(FIX, 'tiny-sd15', 'unet', 'config.json')));
    assert.deepEqual(u.attention_head_dim, [8, 8, 8, 8]);
    assert.deepEqual(u.transformer_layers_per_block, [1, 1, 1, 1]);
    assert.equal(u.num_attention_heads, null);
    assert.equal(u.sample_size, 8);
    const u2 = unetConfigFromJson({ block_out_channels: [320, 640], num_attention_heads: 5, down_block_types: ['CrossAttnDownBlock2D', 'DownBlock2D'] });
    assert.deepEqual(u2.num_attention_heads, [5, 5]);
    assert.equal(u2.cross_attention_dim, 1280);
    assert.deepEqual(unsupportedUnetFeatures(await json(join(FIX, 'tiny-sd21', 'unet', 'config.json'))), []);
    assert.deepEqual(unsupportedUnetFeatures({ addition_embed_type: 'image', conv_in_kernel: 3 }), ['addition_embed_type="image"']);
    for (const m of ['tiny-sdxl', 'tiny-sdxs']) assert.deepEqual(unsupportedUnetFeatures(await json(join(FIX, m, 'unet', 'config.json'))), [], m);
    const xl = unetConfigFromJson(await json(join(FIX, 'tiny-sdxl', 'unet', 'config.json')));
    assert.deepEqual([xl.addition_embed_type, xl.addition_time_embed_dim, xl.projection_class_embeddings_input_dim], ['text_time', 8, 60]);
    assert.equal(unetConfigFromJson(await json(join(FIX, 'tiny-sdxs', 'unet', 'config.json'))).mid_block_type, null);

    const v = vaeConfigFromJson(await json(join(FIX, 'tiny-sd15', 'vae', 'config.json')));
    assert.deepEqual(v.block_out_channels, [32, 32, 32, 32]);
    assert.equal(v.sample_size, 64);

    const t = clipTextConfigFromJson(await json(join(FIX, 'tiny-sd21', 'text_encoder', 'config.json')));
    assert.equal(t.hidden_act, 'gelu');
    assert.equal(t.num_attention_heads, 2);
    assert.equal(t.projection_dim, null);
    assert.equal(t.eos_token_id, CLIP_EOS_TOKEN_ID, 'legacy eos_token_id 2 means argmax pooling = first 49407');
    assert.throws(() => clipTextConfigFromJson({ hidden_act: 'relu' }), OnestepError);
  });

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
