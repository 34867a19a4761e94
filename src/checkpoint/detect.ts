/** What a file or folder is, from its key names (single files) or model_index.json (diffusers folders). */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BadInputError } from '../errors.js';
import { convertibleLabels, folderFamily, singleFileFamily, type FamilyDef, type FolderInput } from '../families/index.js';

export type SingleFileKind =
  | { kind: 'checkpoint'; family: FamilyDef }
  | { kind: 'lora' }
  | { kind: 'unsupported'; what: string }
  | { kind: 'unknown' };

const LORA_KEY = /(^lora_(unet|te\d?)_)|(\.lora_(down|up|A|B)\.)|(\.(hada|lokr)_w\d)|(\.lora\.(down|up)\.)|(_lora\.(down|up)\.)/;

/** Classifies a single file by its tensor names. */
export function detectSingleFile(keys: readonly string[]): SingleFileKind {
  const has = (prefix: string): boolean => keys.some((k) => k.startsWith(prefix));
  if (keys.some((k) => LORA_KEY.test(k))) return { kind: 'lora' };
  const family = singleFileFamily(keys);
  if (family) return { kind: 'checkpoint', family };
  const unet = has('model.diffusion_model.');
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

/** Reads a diffusers folder's model_index.json. */
export async function readFolderIndex(dir: string): Promise<FolderInput> {
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
  let index: unknown;
  try {
    index = JSON.parse(text);
  } catch (e) {
    throw new BadInputError(indexPath, `is not valid JSON (${(e as Error).message})`);
  }
  if (typeof index !== 'object' || index === null || Array.isArray(index)) throw new BadInputError(indexPath, 'is not a JSON object');
  const cls = (index as Record<string, unknown>)._class_name;
  return { dir, index: index as Record<string, unknown>, pipelineClass: typeof cls === 'string' ? cls : '' };
}

/** The family of a folder, or a clear refusal naming its pipeline. */
export function detectFolderFamily(folder: FolderInput, configs?: Readonly<Record<string, Readonly<Record<string, unknown>>>>): FamilyDef {
  const family = folderFamily(folder, configs);
  if (family) return family;
  throw new BadInputError(
    join(folder.dir, 'model_index.json'),
    `names pipeline "${folder.pipelineClass || '(none)'}", which onestep does not know`,
    `onestep converts ${convertibleLabels()} pipelines (diffusers folders) and single files.`,
  );
}

export async function isDirectory(path: string): Promise<boolean> {
  const st = await stat(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') throw new BadInputError(path, 'no such file or folder', 'Check the path.');
    throw e;
  });
  return st.isDirectory();
}
