import assert from 'node:assert/strict';
import { join } from 'node:path';
import { FIXTURES } from '../support/fixtures.js';
import { BadInputError } from '../../src/errors.js';
import { LoraFile } from '../../src/lora/parse.js';
import { seeded, tempLoraFiles, tensor, writeF32File } from './helpers.js';

const LORAS = join(FIXTURES, 'loras');

describe('lora/parse', () => {
  const r = seeded(42);
  const { dir, open } = tempLoraFiles();

  it('peft: 37 modules, rank 4 with alpha = rank (no alphas stored)', async () => {
      const file = await LoraFile.open(join(LORAS, 'tiny-sd15-peft.safetensors'));
      try {
        assert.equal(file.modules.length, 37);
        assert.equal(file.summary().style, 'peft');
        assert.deepEqual(file.summary().rankAlpha, [{ rank: 4, alpha: 4, modules: 37 }]);
      } finally {
        await file.close();
      }
    });

  it('a file with no LoRA tensors is refused with the file named', async () => {
      const path = await writeF32File(join(dir(), 'notlora.safetensors'), { 'model.diffusion_model.x.weight': tensor(r, 2, 2) });
      await assert.rejects(LoraFile.open(path), (e: unknown) => e instanceof BadInputError && e.message.startsWith(path) && /no LoRA modules/.test(e.message));
    });

  it('unsupported tensors are reported, not silently dropped', async () => {
    const file = await open({ ...{ 'lora_unet_m.lora_down.weight': tensor(r, 2, 4), 'lora_unet_m.lora_up.weight': tensor(r, 4, 2) }, 'lora_unet_m.diff_b': tensor(r, 4), 'lora_unet_x.lora_down.weight': tensor(r, 2, 4) });
    assert.equal(file.modules.length, 1);
    assert.deepEqual([...file.unrecognized.keys()].sort(), ['lora_unet_m.diff_b', 'lora_unet_x.lora_down.weight']);
    await file.close();
  });
});
