/** What a file or folder is, from its key names (single files) or model_index.json (diffusers folders). */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BadInputError } from '../errors.js';

export type SingleFileKind =
  | { kind: 'sd1' }
  | { kind: 'sd2' }
  | { kind: 'sdxl' }
  | { kind: 'lora' }
  | { kind: 'unsupported'; what: string }
  | { kind: 'unknown' };

const LORA_KEY = /(^lora_(unet|te\d?)_)|(\.lora_(down|up|A|B)\.)|(\.(hada|lokr)_w\d)|(\.lora\.(down|up)\.)|(_lora\.(down|up)\.)/;

/** Classifies a single file by its tensor names. */
export function detectSingleFile(keys: readonly string[]): SingleFileKind {
  const has = (prefix: string): boolean => keys.some((k) => k.startsWith(prefix));
  if (keys.some((k) => LORA_KEY.test(k))) return { kind: 'lora' };
  if (has('conditioner.embedders.') || has('model.diffusion_model.label_emb.')) return { kind: 'sdxl' };
  const unet = has('model.diffusion_model.');
  if (unet && has('cond_stage_model.model.')) return { kind: 'sd2' };
  if (unet && has('cond_stage_model.transformer.')) return { kind: 'sd1' };
  if (unet) {
    return {
      kind: 'unsupported',
      what: has('first_stage_model.')
        ? 'an LDM checkpoint without a text encoder (no cond_stage_model.*)'
        : 'an LDM UNet alone (no first_stage_model.* VAE, no cond_stage_model.* text encoder)',
    };
  }
  if (has('first_stage_model.') || keys.some((k) => /^(encoder|decoder)\.(down|up|mid)\./.test(k))) {
    return { kind: 'unsupported', what: 'a VAE alone' };
  }
  if (has('x_embedder.') && has('t_embedder.')) return { kind: 'unsupported', what: 'an original PixArt transformer file' };
  if (has('down_blocks.') || has('transformer_blocks.') || has('text_model.') || has('encoder.block.')) {
    return { kind: 'unsupported', what: 'one component of a diffusers folder' };
  }
  return { kind: 'unknown' };
}

export type FolderKind = { kind: 'sd'; pipeline: string } | { kind: 'sdxl' } | { kind: 'pixart-alpha' };

/** Reads and classifies a diffusers folder's model_index.json. */
export async function detectFolder(dir: string): Promise<{ kind: FolderKind; index: Record<string, unknown> }> {
  const indexPath = join(dir, 'model_index.json');
  const text = await readFile(indexPath, 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') {
      throw new BadInputError(
        dir,
        'is a folder without model_index.json, so not a diffusers pipeline folder',
        'Pass a diffusers folder (with model_index.json) or a single .safetensors checkpoint file.',
      );
    }
    throw e;
  });
  let index: Record<string, unknown>;
  try {
    index = JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new BadInputError(indexPath, `is not valid JSON (${(e as Error).message})`);
  }
  const cls = typeof index._class_name === 'string' ? index._class_name : '';
  if (/^StableDiffusionXL/.test(cls)) return { kind: { kind: 'sdxl' }, index };
  if (cls === 'PixArtAlphaPipeline') return { kind: { kind: 'pixart-alpha' }, index };
  // Other pipelines built from SD's components (InstaFlow's RectifiedFlowPipeline, LatentConsistencyModelPipeline,
  // community pipelines) convert the same way: what matters is a CLIP text encoder, a UNet2DConditionModel and a VAE.
  const componentClass = (name: string): unknown => (Array.isArray(index[name]) ? (index[name] as unknown[])[1] : undefined);
  const sdComponents =
    componentClass('unet') === 'UNet2DConditionModel' && componentClass('text_encoder') === 'CLIPTextModel' && componentClass('vae') === 'AutoencoderKL' && !('text_encoder_2' in index);
  if (/^StableDiffusion(Img2Img|Inpaint)?Pipeline$/.test(cls) || sdComponents || (cls === '' && 'unet' in index && 'text_encoder' in index)) {
    return { kind: { kind: 'sd', pipeline: cls || 'StableDiffusionPipeline' }, index };
  }
  throw new BadInputError(
    indexPath,
    `names pipeline "${cls || '(none)'}", which onestep does not convert`,
    'Supported: StableDiffusionPipeline (SD 1.x / 2.x) and PixArtAlphaPipeline folders, or SD 1.x / 2.x single files.',
  );
}

export async function isDirectory(path: string): Promise<boolean> {
  const st = await stat(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') throw new BadInputError(path, 'no such file or folder', 'Check the path.');
    throw e;
  });
  return st.isDirectory();
}
