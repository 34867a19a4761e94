import assert from 'node:assert/strict';
import { join } from 'node:path';
import { FIXTURES } from '../support/fixtures.js';
import { describeLora } from '../../src/lora/family.js';
import { seeded, tempDir, tensor, writeF32File, type TestTensor } from './helpers.js';

const LORAS = join(FIXTURES, 'loras');

describe('lora/family', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => (tmp = await tempDir()));
  afterEach(() => tmp.cleanup());
  const r = seeded(42);

  it('describeLora: key style, components, module count, families (tiny: SD1 or SD2 by names)', async () => {
      const d = await describeLora(join(LORAS, 'tiny-sd15-kohya.safetensors'));
      assert.equal(d.keyStyle, 'kohya');
      assert.deepEqual(d.components, { text_encoder: 18, unet: 68 });
      assert.equal(d.moduleCount, 86);
      assert.deepEqual(d.families, ['sd1', 'sd2']);
      assert.deepEqual(d.kinds, { lora: 86 });
    });

  it('family guesses: te2 -> sdxl; cross-attention width 768 -> sd1, 1024 -> sd2', async () => {
    const dir = tmp.dir;
    const cases: [Record<string, TestTensor>, string][] = [
      [{ 'lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight': tensor(r, 2, 8), 'lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight': tensor(r, 8, 2) }, 'sdxl'],
      [{ 'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight': tensor(r, 2, 768), 'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight': tensor(r, 8, 2) }, 'sd1'],
      [{ 'lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v.lora_down.weight': tensor(r, 2, 1024), 'lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v.lora_up.weight': tensor(r, 8, 2) }, 'sd2'],
    ];
    for (const [i, [tensors, family]] of cases.entries()) {
      const d = await describeLora(await writeF32File(join(dir, `f${i}.safetensors`), tensors));
      assert.deepEqual(d.families, [family]);
    }
  });
});
