import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { copyFile, cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkComponentFits, detectComponentKeys, openComponent, withComponent, type OpenedComponent } from '../../src/checkpoint/components.js';
import { unetConfigFromJson } from '../../src/architectures/unet.js';
import { vaeConfigFromJson } from '../../src/architectures/vae.js';
import { convertCheckpoint } from '../../src/convert.js';
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

  const sdxlUnet = unetConfigFromJson(folderConfig('tiny-sdxl', 'unet'), 'unet/config.json');
  const sdxlVae = vaeConfigFromJson(folderConfig('tiny-sdxl', 'vae'), 'vae/config.json');

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
      const sd15Cfg = unetConfigFromJson(sd15.config!, 'unet/config.json');
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

describe('convert --unet / --vae (withReplacedComponents)', function () {
  this.timeout(300_000);
  let tmp: string;
  const graphBytes = (dir: string, g: string) => readFileSync(join(dir, `${g}.onnx.data`));
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'onestep-replace-'));
    // A changed SD 1.5 UNet (conv_out negated), as a bare-LDM file and inside a copy of the folder.
    await rewriteSafetensors(join(FIX, 'tiny-sd15.safetensors'), join(tmp, 'negated.safetensors'), {
      drop: (k) => !k.startsWith('model.diffusion_model.'),
      rename: (k) => k.slice('model.diffusion_model.'.length),
      negate: (k) => k === 'model.diffusion_model.out.2.weight',
    });
    await cp(join(FIX, 'tiny-sd15'), join(tmp, 'sd15-negated'), { recursive: true });
    await rewriteSafetensors(join(FIX, 'tiny-sd15', 'unet', 'diffusion_pytorch_model.safetensors'), join(tmp, 'sd15-negated', 'unet', 'diffusion_pytorch_model.safetensors'), {
      negate: (k) => k === 'conv_out.weight',
    });
    await rewriteSafetensors(SDXL_FILE, join(tmp, 'vae-bare.safetensors'), { drop: (k) => !k.startsWith('first_stage_model.'), rename: (k) => k.slice('first_stage_model.'.length) });
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  it('SD 1.5: the base with another UNet gives exactly the graphs of a folder holding that UNet', async () => {
    await convertCheckpoint(join(FIX, 'tiny-sd15'), { out: join(tmp, 'plain') });
    const swapped = await convertCheckpoint(join(FIX, 'tiny-sd15'), { out: join(tmp, 'swapped'), unet: join(tmp, 'negated.safetensors') });
    await convertCheckpoint(join(tmp, 'sd15-negated'), { out: join(tmp, 'reference') });
    assert.ok(graphBytes(join(tmp, 'swapped'), 'unet').equals(graphBytes(join(tmp, 'reference'), 'unet')));
    assert.ok(!graphBytes(join(tmp, 'swapped'), 'unet').equals(graphBytes(join(tmp, 'plain'), 'unet')));
    for (const g of ['text_encoder', 'vae_decoder']) assert.ok(graphBytes(join(tmp, 'swapped'), g).equals(graphBytes(join(tmp, 'plain'), g)), g);
    assert.deepEqual(swapped.manifest.source.components?.map((c) => [c.component, c.name]), [['unet', 'negated.safetensors']]);
    assert.ok(swapped.notes.some((n) => /UNet from .*negated\.safetensors \(ldm keys, the base's unet config\)/.test(n)), swapped.notes.join('; '));
  });

  it('SDXL single file with --unet and --vae from the folder: the same graphs; the UNet\'s name picks the recipe', async () => {
    await copyFile(join(FIX, 'tiny-sdxl', 'unet', 'diffusion_pytorch_model.safetensors'), join(tmp, 'sdxl_lightning_1step_unet_x0.safetensors'));
    const r = await convertCheckpoint(SDXL_FILE, { out: join(tmp, 'xl-swapped'), unet: join(tmp, 'sdxl_lightning_1step_unet_x0.safetensors'), vae: join(tmp, 'vae-bare.safetensors') });
    await convertCheckpoint(SDXL_FILE, { out: join(tmp, 'xl-plain') });
    for (const g of ['text_encoder', 'text_encoder_2', 'unet', 'vae_decoder', 'vae_encoder']) assert.ok(graphBytes(join(tmp, 'xl-swapped'), g).equals(graphBytes(join(tmp, 'xl-plain'), g)), g);
    assert.equal(r.manifest.recipe.name, 'sdxl-lightning-1step');
    assert.match(r.manifest.recipe.source, /sdxl_lightning_1step_unet_x0/);
    assert.equal(r.manifest.recipe.prediction_type, 'sample');
  });

  it('refuses a component of another family or shape, or the wrong kind, before any output exists', async () => {
    const refuses = async (opts: Parameters<typeof convertCheckpoint>[1], base: string, re: RegExp) => {
      await assert.rejects(convertCheckpoint(base, opts), (e: unknown) => e instanceof BadInputError && re.test(e.message));
      assert.ok(!existsSync(opts.out), 'no output');
    };
    await refuses({ out: join(tmp, 'x1'), unet: join(FIX, 'tiny-sd15', 'unet') }, SDXL_FILE, /is a UNet with cross_attention_dim 32, but .*tiny-sdxl\.safetensors needs 24/);
    await refuses({ out: join(tmp, 'x2'), unet: join(tmp, 'negated.safetensors') }, SDXL_FILE, /negated\.safetensors: .*(missing|wrong shape|does not build)/);
    await refuses({ out: join(tmp, 'x3'), unet: join(tmp, 'vae-bare.safetensors') }, join(FIX, 'tiny-sd15'), /holds a VAE, not a UNet/);
    await refuses({ out: join(tmp, 'x4'), vae: join(FIX, 'tiny-sdxl', 'vae') }, join(FIX, 'tiny-sdxs'), /SDXS has no AutoencoderKL VAE/);
  });
});
