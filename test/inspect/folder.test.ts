import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspectPath } from '../../src/inspect.js';
import { FIXTURES } from '../support/fixtures.js';
import { assertComponents, assertNothingLost, expectedFolder, writeHeaderOnly } from '../support/headers.js';

describe('inspect/folder: diffusers fixtures', () => {
  it('tiny-sd15/: diffusers SD 1.x, counts per component folder, same numbers as the single file', async () => {
    const dir = join(FIXTURES, 'tiny-sd15');
    const r = await inspectPath(dir);
    const { components, files } = expectedFolder(dir);
    assert.equal(r.layout, 'diffusers');
    assert.equal(r.family, 'sd1');
    assertComponents(r, components);
    assertNothingLost(r, files);
    assert.equal(r.metadata['unet/format'], 'pt');
    assert.equal(r.config?.scheduler._class_name, 'PNDMScheduler');
    const single = await inspectPath(join(FIXTURES, 'tiny-sd15.safetensors'));
    for (const c of ['unet', 'vae', 'text_encoder']) assert.equal(r.components[c].parameters, single.components[c].parameters, c);
  });

  it('tiny-sd21/: diffusers SD 2.x', async () => {
    const dir = join(FIXTURES, 'tiny-sd21');
    const r = await inspectPath(dir);
    const { components, files } = expectedFolder(dir);
    assert.equal(r.layout, 'diffusers');
    assert.equal(r.family, 'sd2');
    assertComponents(r, components);
    assertNothingLost(r, files);
    assert.equal(r.unused.tensors, 0);
  });

  it('tiny-pixart/: diffusers PixArt-α with transformer, T5 text encoder and VAE', async () => {
    const dir = join(FIXTURES, 'tiny-pixart');
    const r = await inspectPath(dir);
    const { components, files } = expectedFolder(dir);
    assert.equal(r.family, 'pixart-alpha');
    assert.equal(r.layout, 'diffusers');
    assert.deepEqual(Object.keys(components).sort(), ['text_encoder', 'transformer', 'vae']);
    assertComponents(r, components);
    assertNothingLost(r, files);
    assert.deepEqual(r.components.transformer.dtypes, { F32: components.transformer.parameters });
    assert.equal(r.config?.transformer.num_layers, 2);
  });
});

describe('inspect/folder: pipeline folders linking to the fixtures', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'onestep-inspect-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** A pipeline folder whose weight folders link to the fixture's. */
  function pipelineFolder(name: string, index: Record<string, unknown>, links: Record<string, string>): string {
    const root = join(dir, name);
    mkdirSync(root);
    writeFileSync(join(root, 'model_index.json'), JSON.stringify(index));
    for (const [sub, target] of Object.entries(links)) symlinkSync(target, join(root, sub), 'dir');
    return root;
  }

  it('a diffusers folder with a safety checker: counted as a component onestep does not use', async () => {
    const fixture = join(FIXTURES, 'tiny-sd15');
    const index = { ...JSON.parse(readFileSync(join(fixture, 'model_index.json'), 'utf8')), safety_checker: ['stable_diffusion', 'StableDiffusionSafetyChecker'] };
    const root = pipelineFolder('with-checker', index, { unet: join(fixture, 'unet'), vae: join(fixture, 'vae'), text_encoder: join(fixture, 'text_encoder') });
    mkdirSync(join(root, 'safety_checker'));
    writeHeaderOnly(join(root, 'safety_checker', 'model.safetensors'), [{ name: 'vision_model.proj.weight', dtype: 'F16', shape: [7, 11] }]);
    const r = await inspectPath(root);
    const plain = await inspectPath(fixture);
    assert.equal(r.family, 'sd1');
    assert.deepEqual(r.components.safety_checker, { parameters: 77, tensors: 1, dtypes: { F16: 77 } });
    assert.equal(r.totalParameters, plain.totalParameters + 77);
    assert.equal(r.unused.tensors, 0);
    assert.ok(r.notes.includes('safety_checker/ is not used by onestep'));
  });

  it('an SDXL diffusers folder: family sdxl, counts per component folder', async () => {
    const sd15 = join(FIXTURES, 'tiny-sd15');
    const sd21 = join(FIXTURES, 'tiny-sd21');
    const index = {
      _class_name: 'StableDiffusionXLPipeline',
      unet: ['diffusers', 'UNet2DConditionModel'],
      vae: ['diffusers', 'AutoencoderKL'],
      text_encoder: ['transformers', 'CLIPTextModel'],
      text_encoder_2: ['transformers', 'CLIPTextModelWithProjection'],
      tokenizer: ['transformers', 'CLIPTokenizer'],
    };
    const root = pipelineFolder('sdxl', index, {
      unet: join(sd15, 'unet'),
      vae: join(sd15, 'vae'),
      text_encoder: join(sd15, 'text_encoder'),
      text_encoder_2: join(sd21, 'text_encoder'),
    });
    const r = await inspectPath(root);
    assert.equal(r.family, 'sdxl');
    assert.equal(r.layout, 'diffusers');
    assert.equal(r.convertible, false);
    const expected = expectedFolder(root).components;
    assertComponents(r, expected);
    assert.ok(r.components.text_encoder_2.parameters > 0);
    assert.equal(r.config?.text_encoder_2.hidden_act, 'gelu');
  });
});
