import assert from 'node:assert/strict';
import { join } from 'node:path';
import { clipTextConfigFromJson, expectedClipTextWeights } from '../../src/architectures/clip-text.js';
import { expectedUnetWeights, unetConfigFromJson } from '../../src/architectures/unet.js';
import { expectedVaeWeights, vaeConfigFromJson } from '../../src/architectures/vae.js';
import { checkTensors } from '../../src/checkpoint/check-tensors.js';
import { MappedSource } from '../../src/checkpoint/sources.js';
import { TensorSet } from '../../src/safetensors/tensor-set.js';
import { FIXTURES, folderConfig } from '../support/fixtures.js';

async function storedShapes(dir: string): Promise<Map<string, number[]>> {
  const set = await TensorSet.open(dir);
  try {
    return new Map(set.names().filter((n) => !n.endsWith('position_ids')).map((n) => [n, set.info(n).shape]));
  } finally {
    await set.close();
  }
}

/** What each component's builder expects (its dry run), by component folder. */
const EXPECTED: Record<string, (component: string, json: Record<string, unknown>) => Map<string, number[]>> = {
  unet: (_, json) => expectedUnetWeights(unetConfigFromJson(json, 'unet/config.json')),
  vae: (_, json) => expectedVaeWeights(vaeConfigFromJson(json, 'vae/config.json')),
  text_encoder: (c, json) => expectedClipTextWeights(clipTextConfigFromJson(json, `${c}/config.json`), c),
};
EXPECTED.text_encoder_2 = EXPECTED.text_encoder;

describe('checkpoint/check-tensors', () => {
  // The tensor lists diffusers and transformers actually saved are the reference for the ones the builders expect.
  for (const [model, components] of [
    ['tiny-sd15', ['unet', 'vae', 'text_encoder']],
    ['tiny-sd21', ['unet', 'vae', 'text_encoder']],
    ['tiny-sdxl', ['unet', 'vae', 'text_encoder', 'text_encoder_2']],
    ['tiny-sdxs', ['unet', 'text_encoder']],
  ] as const) {
    it(`${model}: the builders' dry runs expect the folder's tensors, names and shapes`, async () => {
      for (const component of components) {
        const expected = EXPECTED[component](component, folderConfig(model, component));
        const stored = await storedShapes(join(FIXTURES, model, component));
        const names = [...expected.keys()].map((n) => n.slice(component.length + 1));
        assert.deepEqual(names.sort(), [...stored.keys()].sort(), component);
        for (const [name, shape] of expected) assert.deepEqual(stored.get(name.slice(component.length + 1)), shape, name);
      }
    });
  }

  it('checkTensors names what is missing or misshapen', async () => {
    const source = MappedSource.prefixed(await TensorSet.open(join(FIXTURES, 'tiny-sd15', 'vae')), 'vae.', 'the-vae');
    try {
      const expected = expectedVaeWeights(vaeConfigFromJson(folderConfig('tiny-sd15', 'vae'), 'config.json'));
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
