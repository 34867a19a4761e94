import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { detectFolder, detectSingleFile } from '../../src/checkpoint/detect.js';
import { OnestepError } from '../../src/errors.js';
import { SafetensorsFile } from '../../src/safetensors/reader.js';

const FIX = 'test/fixtures';

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
    assert.deepEqual(detectSingleFile(await keysOf(join(FIX, 'tiny-sd15.safetensors'))), { kind: 'sd1' });
    assert.deepEqual(detectSingleFile(await keysOf(join(FIX, 'tiny-sd21.safetensors'))), { kind: 'sd2' });
    assert.deepEqual(detectSingleFile(await keysOf(join(FIX, 'loras', 'tiny-sd15-kohya.safetensors'))), { kind: 'lora' });
    assert.deepEqual(detectSingleFile(await keysOf(join(FIX, 'loras', 'tiny-sd15-peft.safetensors'))), { kind: 'lora' });
    assert.deepEqual(detectSingleFile(await keysOf(join(FIX, 'goldens', 'tiny-pixart.safetensors'))), { kind: 'unknown' });
    const component = detectSingleFile(await keysOf(join(FIX, 'tiny-sd15', 'unet', 'diffusion_pytorch_model.safetensors')));
    assert.deepEqual(component, { kind: 'unsupported', what: 'one component of a diffusers folder' });
    const t5 = detectSingleFile(await keysOf(join(FIX, 'tiny-pixart', 'text_encoder', 'model.safetensors')));
    assert.equal(t5.kind, 'unsupported');
  });

  it('classifies synthetic key sets', () => {
    assert.deepEqual(detectSingleFile(['conditioner.embedders.0.transformer.text_model.final_layer_norm.weight', 'model.diffusion_model.input_blocks.0.0.weight']), { kind: 'sdxl' });
    assert.deepEqual(detectSingleFile(['model.diffusion_model.label_emb.0.0.weight', 'model.diffusion_model.input_blocks.0.0.weight']), { kind: 'sdxl' });
    assert.deepEqual(detectSingleFile(['lora_unet_down_blocks_0_attentions_0_proj_in.alpha']), { kind: 'lora' });
    assert.deepEqual(detectSingleFile(['unet.down_blocks.0.attentions.0.proj_in.lora_A.weight']), { kind: 'lora' });
    assert.deepEqual(detectSingleFile(['lora_unet_x.hada_w1_a']), { kind: 'lora' });
    assert.equal(detectSingleFile(['model.diffusion_model.input_blocks.0.0.weight']).kind, 'unsupported');
    assert.equal(detectSingleFile(['first_stage_model.decoder.conv_in.weight']).kind, 'unsupported');
    assert.deepEqual(detectSingleFile(['foo', 'bar']), { kind: 'unknown' });
  });

  it('classifies the fixture folders from model_index.json', async () => {
    assert.deepEqual((await detectFolder(join(FIX, 'tiny-sd15'))).kind, { kind: 'sd', pipeline: 'StableDiffusionPipeline' });
    assert.deepEqual((await detectFolder(join(FIX, 'tiny-sd21'))).kind, { kind: 'sd', pipeline: 'StableDiffusionPipeline' });
    assert.deepEqual((await detectFolder(join(FIX, 'tiny-pixart'))).kind, { kind: 'pixart-alpha' });
    await assert.rejects(detectFolder(join(FIX, 'loras')), (e: unknown) => e instanceof OnestepError && /model_index\.json/.test(e.message));
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
      assert.deepEqual((await detectFolder(dir)).kind, { kind: 'sd', pipeline: 'RectifiedFlowPipeline' });
      await writeFile(join(dir, 'model_index.json'), JSON.stringify({ _class_name: 'KandinskyPipeline', unet: ['diffusers', 'UNet2DConditionModel'] }));
      await assert.rejects(detectFolder(dir), /names pipeline "KandinskyPipeline"/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
