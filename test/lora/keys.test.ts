import assert from 'node:assert/strict';
import { buildTargetIndex, resolveTarget } from '../../src/lora/targets.js';
import { seeded, tempLoraFiles, tensor, type TestTensor } from './helpers.js';

describe('lora/keys', () => {
  const r = seeded(42);
  const { dir, open } = tempLoraFiles();

  describe('key formats -> targets', () => {
    const names = [
      'unet.down_blocks.1.attentions.0.proj_in.weight',
      'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight',
      'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight',
      'unet.up_blocks.1.resnets.0.conv_shortcut.weight',
      'text_encoder.text_model.encoder.layers.1.self_attn.k_proj.weight',
    ];
    const index = buildTargetIndex(names);
    const pair = (prefix: string, down = '.lora_down.weight', up = '.lora_up.weight') => ({
      [`${prefix}${down}`]: tensor(r, 2, 4),
      [`${prefix}${up}`]: tensor(r, 4, 2),
    });

    const cases: [string, Record<string, TestTensor>, string][] = [
      ['kohya diffusers-style', pair('lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0'), 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0'],
      ['kohya LDM-style', pair('lora_unet_input_blocks_4_1_proj_in'), 'unet.down_blocks.1.attentions.0.proj_in'],
      ['kohya LDM-style resnet skip', pair('lora_unet_output_blocks_3_0_skip_connection'), 'unet.up_blocks.1.resnets.0.conv_shortcut'],
      ['kohya te', pair('lora_te_text_model_encoder_layers_1_self_attn_k_proj'), 'text_encoder.text_model.encoder.layers.1.self_attn.k_proj'],
      ['kohya te1 (SDXL naming)', pair('lora_te1_text_model_encoder_layers_1_self_attn_k_proj'), 'text_encoder.text_model.encoder.layers.1.self_attn.k_proj'],
      ['PEFT', pair('unet.down_blocks.1.attentions.0.proj_in', '.lora_A.weight', '.lora_B.weight'), 'unet.down_blocks.1.attentions.0.proj_in'],
      ['diffusers .lora.down', pair('unet.down_blocks.1.attentions.0.proj_in', '.lora.down.weight', '.lora.up.weight'), 'unet.down_blocks.1.attentions.0.proj_in'],
      ['diffusers text lora_linear_layer', pair('text_encoder.text_model.encoder.layers.1.self_attn.k_proj', '.lora_linear_layer.down.weight', '.lora_linear_layer.up.weight'), 'text_encoder.text_model.encoder.layers.1.self_attn.k_proj'],
      ['legacy attention processor', pair('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora', '.down.weight', '.up.weight'), 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0'],
      ['legacy processor, unprefixed', pair('down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora', '.down.weight', '.up.weight'), 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q'],
    ];
    for (const [label, tensors, target] of cases) {
      it(label, async () => {
        const file = await open(tensors);
        try {
          assert.equal(file.modules.length, 1);
          assert.equal(resolveTarget(file.modules[0].group, index), target);
        } finally {
          await file.close();
        }
      });
    }
  });
});
