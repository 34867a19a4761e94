import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { detectFolderFamily, detectSingleFile, readFolderIndex, type SingleFileKind } from '../../src/checkpoint/detect.js';
import { readJson } from '../../src/checkpoint/folder.js';
import { OnestepError } from '../../src/errors.js';
import { SafetensorsFile } from '../../src/safetensors/reader.js';

const FIX = 'test/fixtures';

/** A single-file classification as a word: the family id for checkpoints, else the kind. */
function word(k: SingleFileKind): string {
  return k.kind === 'checkpoint' ? k.family.id : k.kind;
}

/** The family id of a folder, detected from model_index.json and (when `withConfigs`) its component configs. */
async function folderFamilyId(dir: string, withConfigs = true): Promise<string> {
  const folder = await readFolderIndex(dir);
  const configs = withConfigs ? { unet: await readJson(join(dir, 'unet', 'config.json')).catch(() => ({})), text_encoder: await readJson(join(dir, 'text_encoder', 'config.json')).catch(() => ({})) } : undefined;
  return detectFolderFamily(folder, configs).id;
}

async function keysOf(path: string): Promise<string[]> {
  const f = await SafetensorsFile.open(path);
  try {
    return [...f.tensors.keys()];
  } finally {
    await f.close();
  }
}

describe('checkpoint/detect', () => {
  it('classifies the fixture single files', async () => {
    assert.equal(word(detectSingleFile(await keysOf(join(FIX, 'tiny-sd15.safetensors')))), 'sd1');
    assert.equal(word(detectSingleFile(await keysOf(join(FIX, 'tiny-sd21.safetensors')))), 'sd2');
    assert.equal(word(detectSingleFile(await keysOf(join(FIX, 'loras', 'tiny-sd15-kohya.safetensors')))), 'lora');
    assert.equal(word(detectSingleFile(await keysOf(join(FIX, 'loras', 'tiny-sd15-peft.safetensors')))), 'lora');
    assert.equal(word(detectSingleFile(await keysOf(join(FIX, 'goldens', 'tiny-pixart.safetensors')))), 'unknown');
    const component = detectSingleFile(await keysOf(join(FIX, 'tiny-sd15', 'unet', 'diffusion_pytorch_model.safetensors')));
    assert.deepEqual(component, { kind: 'unsupported', what: 'one component of a diffusers folder' });
    const t5 = detectSingleFile(await keysOf(join(FIX, 'tiny-pixart', 'text_encoder', 'model.safetensors')));
    assert.equal(t5.kind, 'unsupported');
  });

  it('classifies synthetic key sets', () => {
    assert.equal(word(detectSingleFile(['conditioner.embedders.0.transformer.text_model.final_layer_norm.weight', 'model.diffusion_model.input_blocks.0.0.weight'])), 'sdxl');
    assert.equal(word(detectSingleFile(['model.diffusion_model.label_emb.0.0.weight', 'model.diffusion_model.input_blocks.0.0.weight'])), 'sdxl');
    assert.equal(word(detectSingleFile(['lora_unet_down_blocks_0_attentions_0_proj_in.alpha'])), 'lora');
    assert.equal(word(detectSingleFile(['unet.down_blocks.0.attentions.0.proj_in.lora_A.weight'])), 'lora');
    assert.equal(word(detectSingleFile(['lora_unet_x.hada_w1_a'])), 'lora');
    assert.equal(detectSingleFile(['model.diffusion_model.input_blocks.0.0.weight']).kind, 'unsupported');
    assert.equal(detectSingleFile(['first_stage_model.decoder.conv_in.weight']).kind, 'unsupported');
    assert.equal(word(detectSingleFile(['foo', 'bar'])), 'unknown');
  });

  it('classifies the fixture folders from model_index.json', async () => {
    assert.equal(await folderFamilyId(join(FIX, 'tiny-sd15')), 'sd1');
    assert.equal(await folderFamilyId(join(FIX, 'tiny-sd21')), 'sd2');
    assert.equal(await folderFamilyId(join(FIX, 'tiny-pixart')), 'pixart-alpha');
    await assert.rejects(folderFamilyId(join(FIX, 'loras')), (e: unknown) => e instanceof OnestepError && /model_index\.json/.test(e.message));
  });

  it('accepts other pipelines made of SD components (InstaFlow RectifiedFlowPipeline), refuses unknown ones', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onestep-detect-'));
    try {
      const index = (cls: string) => ({
        _class_name: cls,
        unet: ['diffusers', 'UNet2DConditionModel'],
        text_encoder: ['transformers', 'CLIPTextModel'],
        vae: ['diffusers', 'AutoencoderKL'],
      });
      await writeFile(join(dir, 'model_index.json'), JSON.stringify(index('RectifiedFlowPipeline')));
      assert.equal(await folderFamilyId(dir, false), 'sd1');
      await writeFile(join(dir, 'model_index.json'), JSON.stringify({ _class_name: 'KandinskyPipeline', unet: ['diffusers', 'UNet2DConditionModel'] }));
      await assert.rejects(folderFamilyId(dir, false), /names pipeline "KandinskyPipeline"/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
