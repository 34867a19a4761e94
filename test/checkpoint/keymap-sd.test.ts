import assert from 'node:assert/strict';
import {
  SD1_LDM_LAYOUT,
  buildLdmKeyMap,
  canonicalToLdm,
  canonicalUnetToLdm,
  canonicalVaeToLdm,
  emaKeyFor,
  isKnownIgnorableKey,
  ldmClipKeyToCanonical,
  ldmTextModuleToCanonical,
  ldmUnetKeyToCanonical,
  ldmUnetModuleToCanonical,
  ldmVaeKeyToCanonical,
  openClipKeyToCanonical,
  openClipUsedBlocks,
} from '../../src/checkpoint/keymap-sd.js';
import { MappedSource } from '../../src/checkpoint/sources.js';
import { SafetensorsFile } from '../../src/safetensors/reader.js';
import { TensorSet } from '../../src/safetensors/tensor-set.js';
import { folderWeights } from '../support/fixtures.js';

async function shapesOf(path: string): Promise<Map<string, number[]>> {
  const f = await SafetensorsFile.open(path);
  try {
    return new Map([...f.tensors].map(([k, v]) => [k, v.shape]));
  } finally {
    await f.close();
  }
}

describe('checkpoint/keymap-sd', () => {
  it('maps LDM UNet keys to diffusers names', () => {
    const cases: [string, string][] = [
      ['input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight', 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight'],
      ['output_blocks.2.1.conv.weight', 'up_blocks.0.upsamplers.0.conv.weight'],
      ['output_blocks.5.2.conv.bias', 'up_blocks.1.upsamplers.0.conv.bias'],
      ['output_blocks.5.1.proj_in.weight', 'up_blocks.1.attentions.2.proj_in.weight'],
      ['input_blocks.0.0.weight', 'conv_in.weight'],
      ['input_blocks.3.0.op.weight', 'down_blocks.0.downsamplers.0.conv.weight'],
      ['input_blocks.4.0.skip_connection.bias', 'down_blocks.1.resnets.0.conv_shortcut.bias'],
      ['input_blocks.11.0.emb_layers.1.weight', 'down_blocks.3.resnets.1.time_emb_proj.weight'],
      ['input_blocks.2.0.in_layers.0.weight', 'down_blocks.0.resnets.1.norm1.weight'],
      ['input_blocks.2.0.in_layers.2.weight', 'down_blocks.0.resnets.1.conv1.weight'],
      ['input_blocks.2.0.out_layers.0.bias', 'down_blocks.0.resnets.1.norm2.bias'],
      ['input_blocks.2.0.out_layers.3.bias', 'down_blocks.0.resnets.1.conv2.bias'],
      ['middle_block.0.in_layers.0.weight', 'mid_block.resnets.0.norm1.weight'],
      ['middle_block.1.proj_out.weight', 'mid_block.attentions.0.proj_out.weight'],
      ['middle_block.2.out_layers.3.weight', 'mid_block.resnets.1.conv2.weight'],
      ['output_blocks.0.0.skip_connection.weight', 'up_blocks.0.resnets.0.conv_shortcut.weight'],
      ['output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight', 'up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight'],
      ['time_embed.0.weight', 'time_embedding.linear_1.weight'],
      ['time_embed.2.bias', 'time_embedding.linear_2.bias'],
      ['out.0.weight', 'conv_norm_out.weight'],
      ['out.2.bias', 'conv_out.bias'],
      ['label_emb.0.0.weight', 'add_embedding.linear_1.weight'],
      ['label_emb.0.2.bias', 'add_embedding.linear_2.bias'],
    ];
    for (const [ldm, canonical] of cases) {
      assert.equal(ldmUnetKeyToCanonical(ldm), canonical, ldm);
      assert.equal(ldmUnetKeyToCanonical('model.diffusion_model.' + ldm), canonical, ldm);
      assert.equal(canonicalUnetToLdm(canonical), ldm, canonical);
    }
    for (const bad of ['input_blocks.0.1.weight', 'input_blocks.1.0.in_layers.1.weight', 'output_blocks.1.2.conv.weight', 'label_emb.0.1.weight']) {
      assert.equal(ldmUnetKeyToCanonical(bad), undefined, bad);
    }
  });

  it('maps LDM module paths (for LoRA keys) and the text encoder modules', () => {
    assert.equal(ldmUnetModuleToCanonical('input_blocks.4.1.proj_in'), 'down_blocks.1.attentions.0.proj_in');
    assert.equal(ldmUnetModuleToCanonical('input_blocks.4.0.in_layers.2'), 'down_blocks.1.resnets.0.conv1');
    assert.equal(ldmUnetModuleToCanonical('input_blocks.6.0.op'), 'down_blocks.1.downsamplers.0.conv');
    assert.equal(ldmUnetModuleToCanonical('output_blocks.8.2.conv'), 'up_blocks.2.upsamplers.0.conv');
    assert.equal(ldmUnetModuleToCanonical('middle_block.1.transformer_blocks.0.attn2.to_out.0'), 'mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0');
    assert.equal(ldmTextModuleToCanonical('cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1'), 'text_model.encoder.layers.0.mlp.fc1');
    assert.equal(ldmTextModuleToCanonical('transformer.encoder.layers.3.self_attn.q_proj'), 'text_model.encoder.layers.3.self_attn.q_proj');
    assert.equal(ldmTextModuleToCanonical('cond_stage_model.model.transformer.resblocks.5.mlp.c_fc'), 'text_model.encoder.layers.5.mlp.fc1');
    assert.equal(ldmTextModuleToCanonical('model.transformer.resblocks.5.attn.out_proj'), 'text_model.encoder.layers.5.self_attn.out_proj');
    assert.equal(ldmTextModuleToCanonical('model.transformer.resblocks.5.attn'), undefined);
    assert.equal(ldmTextModuleToCanonical('text_model.encoder.layers.1.mlp.fc2'), 'text_model.encoder.layers.1.mlp.fc2');
  });

  it('maps LDM VAE keys, reversing the decoder order and flagging 1x1-conv attention', () => {
    const cases: [string, string, boolean?][] = [
      ['decoder.up.0.block.2.conv1.weight', 'decoder.up_blocks.3.resnets.2.conv1.weight'],
      ['decoder.up.3.upsample.conv.bias', 'decoder.up_blocks.0.upsamplers.0.conv.bias'],
      ['encoder.down.1.block.0.nin_shortcut.weight', 'encoder.down_blocks.1.resnets.0.conv_shortcut.weight'],
      ['encoder.down.2.downsample.conv.weight', 'encoder.down_blocks.2.downsamplers.0.conv.weight'],
      ['encoder.norm_out.bias', 'encoder.conv_norm_out.bias'],
      ['decoder.mid.block_2.norm2.weight', 'decoder.mid_block.resnets.1.norm2.weight'],
      ['decoder.mid.attn_1.norm.weight', 'decoder.mid_block.attentions.0.group_norm.weight'],
      ['decoder.mid.attn_1.proj_out.weight', 'decoder.mid_block.attentions.0.to_out.0.weight', true],
      ['encoder.mid.attn_1.k.bias', 'encoder.mid_block.attentions.0.to_k.bias'],
      ['encoder.mid.attn_1.q.weight', 'encoder.mid_block.attentions.0.to_q.weight', true],
      ['post_quant_conv.weight', 'post_quant_conv.weight'],
    ];
    for (const [ldm, canonical, squeeze] of cases) {
      const t = ldmVaeKeyToCanonical(ldm, 4);
      assert.equal(t?.name, canonical, ldm);
      assert.equal(t?.squeeze ?? false, squeeze ?? false, ldm);
      assert.equal(canonicalVaeToLdm(canonical, 4), ldm, canonical);
    }
  });

  it('maps CLIP and OpenCLIP text keys (q/k/v split by rows, projection transposed, every block kept)', () => {
    assert.equal(ldmClipKeyToCanonical('text_model.final_layer_norm.weight'), 'text_model.final_layer_norm.weight');
    assert.equal(ldmClipKeyToCanonical('embeddings.token_embedding.weight'), 'text_model.embeddings.token_embedding.weight');
    assert.equal(ldmClipKeyToCanonical('logit_scale'), undefined);
    assert.deepEqual(openClipKeyToCanonical('transformer.resblocks.1.attn.in_proj_weight', 1024), [
      { name: 'text_model.encoder.layers.1.self_attn.q_proj.weight', rows: [0, 1024] },
      { name: 'text_model.encoder.layers.1.self_attn.k_proj.weight', rows: [1024, 2048] },
      { name: 'text_model.encoder.layers.1.self_attn.v_proj.weight', rows: [2048, 3072] },
    ]);
    assert.deepEqual(openClipKeyToCanonical('transformer.resblocks.23.mlp.c_fc.weight', 1024), [{ name: 'text_model.encoder.layers.23.mlp.fc1.weight' }]);
    assert.deepEqual(openClipKeyToCanonical('transformer.resblocks.22.mlp.c_proj.bias', 1024), [{ name: 'text_model.encoder.layers.22.mlp.fc2.bias' }]);
    assert.deepEqual(openClipKeyToCanonical('text_projection', 1024), [{ name: 'text_projection.weight', transpose: true }]);
    assert.deepEqual(openClipKeyToCanonical('positional_embedding', 1024), [{ name: 'text_model.embeddings.position_embedding.weight' }]);
    assert.equal(openClipKeyToCanonical('visual.conv1.weight', 1024), undefined);
    assert.equal(canonicalToLdm('text_encoder.text_model.encoder.layers.4.self_attn.v_proj.bias', { ...SD1_LDM_LAYOUT, text: 'openclip' }), 'cond_stage_model.model.transformer.resblocks.4.attn.in_proj_bias');
    assert.equal(canonicalToLdm('text_encoder.text_model.encoder.layers.4.layer_norm2.weight', { ...SD1_LDM_LAYOUT, text: 'openclip' }), 'cond_stage_model.model.transformer.resblocks.4.ln_2.weight');
  });

  it('OpenCLIP blocks used: all but the last, except a ViT-H file already cut to 23 blocks', () => {
    assert.equal(openClipUsedBlocks(24, 1024), 23);
    assert.equal(openClipUsedBlocks(23, 1024), 23);
    assert.equal(openClipUsedBlocks(3, 32), 2);
  });

  it('EMA names and known-ignorable keys', () => {
    assert.equal(emaKeyFor('model.diffusion_model.input_blocks.1.0.emb_layers.1.weight'), 'model_ema.diffusion_modelinput_blocks10emb_layers1weight');
    for (const k of ['alphas_cumprod', 'posterior_mean_coef2', 'cond_stage_model.transformer.text_model.embeddings.position_ids', 'cond_stage_model.model.logit_scale', 'model_ema.num_updates']) {
      assert.ok(isKnownIgnorableKey(k), k);
    }
    assert.ok(!isKnownIgnorableKey('cond_stage_model.model.text_projection'));
  });

  for (const [file, text] of [
    ['tiny-sd15.safetensors', 'clip'],
    ['tiny-sd21.safetensors', 'openclip'],
  ] as const) {
    it(`${file}: every key maps, and every canonical name maps back to its key`, async () => {
      const shapes = await shapesOf(`test/fixtures/${file}`);
      const map = buildLdmKeyMap([...shapes.keys()], (k) => shapes.get(k)!, text);
      assert.deepEqual(map.unmapped, []);
      assert.equal(map.layout.unet.layersPerBlock, 2);
      assert.equal(map.layout.vaeLevels, 4);
      const defaultLayout = { ...SD1_LDM_LAYOUT, text };
      for (const [name, ref] of map.entries) {
        assert.equal(canonicalToLdm(name, map.layout), ref.key, name);
        assert.equal(canonicalToLdm(name, defaultLayout), ref.key, name);
        if (name.startsWith('unet.') && name.endsWith('.weight')) {
          const module = ref.key.slice('model.diffusion_model.'.length, -'.weight'.length);
          assert.equal(ldmUnetModuleToCanonical(module), name.slice('unet.'.length, -'.weight'.length), module);
        }
      }
      const used = new Set([...map.entries.values()].map((r) => r.key));
      assert.deepEqual([...shapes.keys()].filter((k) => !used.has(k) && !isKnownIgnorableKey(k)), []);
      // SD 2.x conditions on the penultimate layer: the map keeps all 3 blocks and says which hidden state is used.
      assert.equal(map.textLayer, text === 'openclip' ? -2 : undefined);
    });
  }

  // The maps are one table read both ways: LDM/SGM name -> diffusers name -> LDM/SGM name gives back the name, for
  // every tensor of the fixtures' single files and for every module path above a UNet or VAE tensor (LoRA keys).
  for (const [file, text] of [
    ['tiny-sd15.safetensors', 'clip'],
    ['tiny-sd21.safetensors', 'openclip'],
    ['tiny-sdxl.safetensors', 'sgm'],
  ] as const) {
    it(`${file}: round trip of every key, and of every UNet and VAE module path`, async () => {
      const shapes = await shapesOf(`test/fixtures/${file}`);
      const keys = [...shapes.keys()];
      const map = buildLdmKeyMap(keys, (k) => shapes.get(k)!, text);
      const back = new Map<string, string[]>();
      for (const [name, ref] of map.entries) back.set(ref.key, [...(back.get(ref.key) ?? []), name]);
      for (const key of keys.filter((k) => !isKnownIgnorableKey(k))) {
        const names = back.get(key);
        assert.ok(names, `${key} maps to a diffusers name`);
        for (const name of names) assert.equal(canonicalToLdm(name, map.layout), key, name);
      }
      let modules = 0;
      const roundTrip = (path: string, name: string | undefined, back: (name: string) => string | undefined) => {
        if (name === undefined) return;
        assert.equal(back(name), path, `${path} -> ${name}`);
        modules++;
      };
      for (const key of keys) {
        const parts = key.split('.');
        for (let n = 2; n < parts.length; n++) {
          if (key.startsWith('model.diffusion_model.')) {
            const path = parts.slice(2, n + 1).join('.');
            roundTrip(path, ldmUnetModuleToCanonical(path, map.layout.unet.layersPerBlock), (name) => canonicalUnetToLdm(name, map.layout.unet));
          } else if (key.startsWith('first_stage_model.')) {
            const path = parts.slice(1, n + 1).join('.');
            roundTrip(path, ldmVaeKeyToCanonical(path, map.layout.vaeLevels)?.name, (name) => canonicalVaeToLdm(name, map.layout.vaeLevels));
          }
        }
      }
      assert.ok(modules > keys.length, `${modules} module paths`);
    });
  }

  it('reports keys it cannot map', () => {
    const keys = ['model.diffusion_model.input_blocks.0.0.weight', 'model.diffusion_model.mystery.weight', 'cond_stage_model.transformer.vision_model.x', 'something_else'];
    const map = buildLdmKeyMap(keys, () => [1], 'clip');
    assert.deepEqual(map.unmapped, keys.slice(1));
    assert.deepEqual([...map.entries.keys()], ['unet.conv_in.weight']);
  });
});

describe('checkpoint/keymap-sd SGM (SDXL single files)', () => {
  it('tiny-sdxl.safetensors: every key maps or is a known extra, onto exactly the folder\'s tensors, value for value', async () => {
    const file = 'test/fixtures/tiny-sdxl.safetensors';
    const shapes = await shapesOf(file);
    const map = buildLdmKeyMap([...shapes.keys()], (k) => shapes.get(k)!, 'sgm');
    assert.deepEqual(map.unmapped, []);
    // The extras real SGM files carry and diffusers ignores (fixtures README).
    const extras = [...shapes.keys()].filter((k) => isKnownIgnorableKey(k));
    assert.deepEqual(extras.sort(), ['conditioner.embedders.0.transformer.text_model.embeddings.position_ids', 'conditioner.embedders.1.model.logit_scale', 'denoiser.sigmas']);
    assert.equal(map.layout.unet.layersPerBlock, 2);
    assert.ok(map.layout.unet.upBlockHasAttention(0) && map.layout.unet.upBlockHasAttention(1) && !map.layout.unet.upBlockHasAttention(2));
    assert.equal(map.entries.get('unet.add_embedding.linear_1.weight')?.key, 'model.diffusion_model.label_emb.0.0.weight');
    assert.deepEqual(map.entries.get('text_encoder_2.text_projection.weight'), { key: 'conditioner.embedders.1.model.text_projection', rows: undefined, transpose: true });
    // SDXL's up block 0 has attention, so its upsampler is output_blocks.2.2 (SD's default layout would say .1).
    assert.equal(map.entries.get('unet.up_blocks.0.upsamplers.0.conv.weight')?.key, 'model.diffusion_model.output_blocks.2.2.conv.weight');
    for (const [name, ref] of map.entries) assert.equal(canonicalToLdm(name, map.layout), ref.key, name);

    const folder = folderWeights('tiny-sdxl', ['unet', 'vae', 'text_encoder', 'text_encoder_2']);
    const set = await TensorSet.open(file);
    const source = new MappedSource([...map.entries].map(([name, ref]) => [name, { set, ref }]), [set], file);
    try {
      assert.deepEqual(source.names(), folder.names().filter((n) => !n.endsWith('position_ids')));
      for (const name of source.names()) {
        assert.deepEqual(source.meta(name).shape, folder.meta(name).shape, name);
        assert.deepEqual(await source.readF32(name), await folder.readF32(name), name);
      }
    } finally {
      await source.close();
    }
  });
});
