import assert from 'node:assert/strict';
import { join } from 'node:path';
import { FIXTURES, folderWeights } from '../support/fixtures.js';
import { LoraFile } from '../../src/lora/parse.js';
import { buildTargetIndex, resolveTarget } from '../../src/lora/targets.js';

const LORAS = join(FIXTURES, 'loras');

describe('lora/targets', () => {
  it('kohya: 86 modules, rank/alpha pairs (2,1) (4,2) (4,8), all resolved against tiny-sd15', async () => {
      const file = await LoraFile.open(join(LORAS, 'tiny-sd15-kohya.safetensors'));
      try {
        const s = file.summary();
        assert.equal(file.modules.length, 86);
        assert.equal(s.style, 'kohya');
        assert.deepEqual(
          s.rankAlpha.map((p) => [p.rank, p.alpha]),
          [
            [2, 1],
            [4, 2],
            [4, 8],
          ],
        );
        assert.equal(file.unrecognized.size, 0);
        const index = buildTargetIndex(folderWeights('tiny-sd15').names());
        const targets = file.modules.map((m) => resolveTarget(m.group, index));
        assert.ok(targets.every((t) => t !== undefined));
        assert.ok(targets.includes('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0'));
        assert.ok(targets.includes('text_encoder.text_model.encoder.layers.0.self_attn.q_proj'));
        const conv = file.modules.find((m) => m.prefix === 'lora_unet_down_blocks_0_resnets_0_conv1')!;
        assert.deepEqual([conv.outFeatures, conv.inFlat, conv.kernel], [32, 32 * 9, [3, 3]]);
      } finally {
        await file.close();
      }
    });
});
