import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkComponentFits, detectComponentKeys, openComponent, withComponent, type OpenedComponent } from '../../src/checkpoint/components.js';
import { unetConfigFromJson, vaeConfigFromJson } from '../../src/checkpoint/infer-config.js';
import { BadInputError } from '../../src/errors.js';
import { folderConfig, folderWeights } from '../support/fixtures.js';
import { rewriteSafetensors } from './helpers.js';

const FIX = 'test/fixtures';
const SDXL_FILE = join(FIX, 'tiny-sdxl.safetensors');

describe('checkpoint/components', () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'onestep-components-'));
    // Component files cut out of the SGM single file, with and without their single-file prefix.
    const only = (prefix: string) => (k: string) => !k.startsWith(prefix);
    await rewriteSafetensors(SDXL_FILE, join(tmp, 'unet-ldm.safetensors'), { drop: only('model.diffusion_model.') });
    await rewriteSafetensors(SDXL_FILE, join(tmp, 'unet-bare.safetensors'), { drop: only('model.diffusion_model.'), rename: (k) => k.slice('model.diffusion_model.'.length) });
    await rewriteSafetensors(SDXL_FILE, join(tmp, 'vae-ldm.safetensors'), { drop: only('first_stage_model.') });
    await rewriteSafetensors(SDXL_FILE, join(tmp, 'vae-bare.safetensors'), { drop: only('first_stage_model.'), rename: (k) => k.slice('first_stage_model.'.length) });
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  const sdxlUnet = unetConfigFromJson(folderConfig('tiny-sdxl', 'unet'));
  const sdxlVae = vaeConfigFromJson(folderConfig('tiny-sdxl', 'vae'));

  const folders = new Map<string, ReturnType<typeof folderWeights>>();
  async function sameAsFolder(c: OpenedComponent): Promise<void> {
    if (!folders.has(c.component)) folders.set(c.component, folderWeights('tiny-sdxl', [c.component]));
    const folder = folders.get(c.component)!;
    assert.deepEqual(c.weights.names(), folder.names());
    for (const n of folder.names()) {
      assert.deepEqual(c.weights.meta(n).shape, folder.meta(n).shape, n);
      assert.deepEqual(await c.weights.readF32(n), await folder.readF32(n), n);
    }
  }

  for (const [label, input, component, style] of [
    ['diffusers UNet file', join(FIX, 'tiny-sdxl', 'unet', 'diffusion_pytorch_model.safetensors'), 'unet', 'diffusers'],
    ['diffusers UNet folder', join(FIX, 'tiny-sdxl', 'unet'), 'unet', 'diffusers'],
    ['pipeline folder (its unet/)', join(FIX, 'tiny-sdxl'), 'unet', 'diffusers'],
    ['LDM UNet file', 'unet-ldm.safetensors', 'unet', 'ldm'],
    ['bare LDM UNet file', 'unet-bare.safetensors', 'unet', 'ldm'],
    ['diffusers VAE folder', join(FIX, 'tiny-sdxl', 'vae'), 'vae', 'diffusers'],
    ['LDM VAE file', 'vae-ldm.safetensors', 'vae', 'ldm'],
    ['bare LDM VAE file', 'vae-bare.safetensors', 'vae', 'ldm'],
  ] as const) {
    it(`${label}: recognised (${style}), canonical names and values equal the folder's, fits the base`, async () => {
      const c = await openComponent(input.startsWith(FIX) ? input : join(tmp, input), component);
      try {
        assert.equal(c.component, component);
        assert.equal(c.style, style);
        assert.deepEqual(c.unmapped, []);
        assert.equal(c.config !== undefined, !input.endsWith('.safetensors'));
        await sameAsFolder(c);
        if (component === 'unet') checkComponentFits(c, sdxlUnet, sdxlUnet, 'tiny-sdxl');
        else checkComponentFits(c, sdxlVae, sdxlVae, 'tiny-sdxl');
      } finally {
        await c.weights.close();
      }
    });
  }

  it('refuses the wrong component, a full checkpoint, and a UNet of another family, naming the file', async () => {
    const refuse = async (input: string, component: 'unet' | 'vae', re: RegExp) =>
      assert.rejects(openComponent(input, component), (e: unknown) => e instanceof BadInputError && re.test(e.message));
    await refuse(join(tmp, 'vae-bare.safetensors'), 'unet', /vae-bare\.safetensors: holds a VAE, not a UNet/);
    await refuse(join(FIX, 'tiny-sdxl', 'unet'), 'vae', /holds a UNet, not a VAE/);
    await refuse(SDXL_FILE, 'unet', /tiny-sdxl\.safetensors: is not a UNet file/);
    const sd15 = await openComponent(join(FIX, 'tiny-sd15', 'unet'), 'unet');
    try {
      const sd15Cfg = unetConfigFromJson(sd15.config!);
      assert.throws(
        () => checkComponentFits(sd15, sd15Cfg, sdxlUnet, 'tiny-sdxl'),
        (e: unknown) => e instanceof BadInputError && /unet: is a UNet with cross_attention_dim 32, but tiny-sdxl needs 24/.test(e.message),
      );
      // Checked against the base's config (a file without config.json), the shapes themselves refuse it.
      assert.throws(() => checkComponentFits(sd15, sdxlUnet, sdxlUnet, 'tiny-sdxl'), /required tensor\(s\) missing|wrong shape/);
    } finally {
      await sd15.weights.close();
    }
  });

  it('detects component key styles; a full checkpoint is none', () => {
    assert.deepEqual(detectComponentKeys(['conv_in.weight', 'time_embedding.linear_1.weight', 'down_blocks.0.resnets.0.conv1.weight']), { component: 'unet', style: 'diffusers', prefix: '' });
    assert.deepEqual(detectComponentKeys(['decoder.up.0.block.0.conv1.weight', 'encoder.down.0.block.0.conv1.weight']), { component: 'vae', style: 'ldm', prefix: '' });
    assert.equal(detectComponentKeys(['model.diffusion_model.out.2.weight', 'first_stage_model.decoder.conv_in.weight']), undefined);
    assert.equal(detectComponentKeys(['text_model.embeddings.token_embedding.weight']), undefined);
  });

  it('withComponent: the base with one component swapped', async () => {
    const base = folderWeights('tiny-sdxl', ['unet', 'vae']);
    const other = folderWeights('tiny-sd15', ['vae']);
    const w = withComponent(base, 'vae', other);
    assert.deepEqual(w.names(), [...base.names().filter((n) => n.startsWith('unet.')), ...other.names()].sort());
    assert.deepEqual(await w.readF32('vae.decoder.conv_in.weight'), await other.readF32('vae.decoder.conv_in.weight'));
    assert.deepEqual(await w.readF32('unet.conv_in.weight'), await base.readF32('unet.conv_in.weight'));
  });
});
