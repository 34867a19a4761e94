import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { checkTensors, expectedClipTextTensors, expectedUnetTensors, expectedVaeTensors, type ShapeMap } from '../../src/checkpoint/expected.js';
import { clipTextConfigFromJson, unetConfigFromJson, vaeConfigFromJson } from '../../src/checkpoint/infer-config.js';
import { MappedSource } from '../../src/checkpoint/sources.js';
import { TensorSet } from '../../src/safetensors/tensor-set.js';

const FIX = 'test/fixtures';
const json = async (p: string) => JSON.parse(await readFile(p, 'utf8')) as Record<string, unknown>;

async function storedShapes(dir: string): Promise<ShapeMap> {
  const set = await TensorSet.open(dir);
  try {
    return new Map(set.names().map((n) => [n, set.info(n).shape]));
  } finally {
    await set.close();
  }
}

describe('checkpoint/expected', () => {
  // The tensor lists diffusers and transformers actually saved are the reference for the expected ones.
  for (const model of ['tiny-sd15', 'tiny-sd21']) {
    it(`${model}: expected tensors equal the folder's tensors, names and shapes`, async () => {
      const cases: [string, ShapeMap][] = [
        ['unet', expectedUnetTensors(unetConfigFromJson(await json(join(FIX, model, 'unet', 'config.json'))), '')],
        ['vae', expectedVaeTensors(vaeConfigFromJson(await json(join(FIX, model, 'vae', 'config.json'))), '')],
        ['text_encoder', expectedClipTextTensors(clipTextConfigFromJson(await json(join(FIX, model, 'text_encoder', 'config.json'))), '')],
      ];
      for (const [component, expected] of cases) {
        const stored = await storedShapes(join(FIX, model, component));
        stored.delete('text_model.embeddings.position_ids');
        assert.deepEqual([...expected.keys()].sort(), [...stored.keys()].sort(), component);
        for (const [name, shape] of expected) assert.deepEqual(stored.get(name), shape, name);
      }
    });
  }

  it('checkTensors names what is missing or misshapen', async () => {
    const source = MappedSource.prefixed(await TensorSet.open(join(FIX, 'tiny-sd15', 'vae')), 'vae.', 'the-vae');
    try {
      const expected = expectedVaeTensors(vaeConfigFromJson(await json(join(FIX, 'tiny-sd15', 'vae', 'config.json'))));
      checkTensors(source, expected, 'the-vae');
      expected.set('vae.decoder.extra.weight', [1]);
      expected.set('vae.decoder.conv_in.weight', [32, 4, 1, 1]);
      assert.throws(
        () => checkTensors(source, expected, 'the-vae'),
        /^.*the-vae: 1 required tensor\(s\) missing: vae\.decoder\.extra\.weight\. 1 tensor\(s\) with the wrong shape: vae\.decoder\.conv_in\.weight is \[32,4,3,3\], expected \[32,4,1,1\]$/,
      );
    } finally {
      await source.close();
    }
  });
});
