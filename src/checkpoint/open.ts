/**
 * Opens a checkpoint (diffusers folder or single .safetensors file) as canonical weights plus configs: finds its family
 * in the registry and lets the family open it (src/families/).
 */
import { BadInputError } from '../errors.js';
import { detectComponentKeys } from './components.js';
import { convertibleLabels, type Checkpoint, type FamilyDef, type OpenOptions } from '../families/index.js';
import { TensorSet } from '../safetensors/tensor-set.js';
import { detectFolderFamily, detectSingleFile, isDirectory, readFolderIndex } from './detect.js';
import { pathExists, readJson } from './folder.js';

export type { Checkpoint, OpenOptions };

const LORA_HINT =
  'Merge it into a checkpoint with `onestep lora merge <checkpoint> <lora>`, or apply it while converting with `--lora <file>`.';

export async function openCheckpoint(path: string, opts: OpenOptions = {}): Promise<Checkpoint> {
  return (await isDirectory(path)) ? openFolder(path, opts) : openSingleFile(path, opts);
}

function notConvertible(path: string, family: FamilyDef, what: string): BadInputError {
  return new BadInputError(path, `is ${what}, which onestep recognises but cannot convert yet`, `onestep converts ${convertibleLabels()} checkpoints.`);
}

async function openSingleFile(path: string, opts: OpenOptions): Promise<Checkpoint> {
  const set = await TensorSet.open(path);
  try {
    const keys = set.names();
    const kind = detectSingleFile(keys);
    const sample = (re: RegExp): string =>
      keys
        .filter((k) => re.test(k))
        .slice(0, 3)
        .join(', ');
    const component = kind.kind === 'lora' ? undefined : detectComponentKeys(keys);
    if (component) {
      throw new BadInputError(
        path,
        `holds ${component.component === 'unet' ? 'a UNet' : 'a VAE'} alone (${component.style} keys), not a complete checkpoint`,
        `Convert it with the checkpoint it belongs to: onestep convert <base checkpoint> --${component.component} ${path}`,
      );
    }
    switch (kind.kind) {
      case 'lora':
        throw new BadInputError(path, `is a LoRA (keys like ${sample(/lora|hada|lokr/)}), not a checkpoint`, LORA_HINT);
      case 'unsupported':
        throw new BadInputError(path, `looks like ${kind.what}, not a complete checkpoint`, 'Pass a complete checkpoint (UNet, VAE and text encoder) or a diffusers folder.');
      case 'unknown':
        throw new BadInputError(
          path,
          `has no tensor names onestep recognizes (${keys.length} tensors, e.g. ${keys.slice(0, 4).join(', ') || 'none'})`,
          'Expected a single-file checkpoint in its original layout (model.diffusion_model.*, first_stage_model.*, cond_stage_model.* / conditioner.*) or a diffusers folder.',
        );
    }
    const { family } = kind;
    if (!family.convertible || !family.openSingleFile) throw notConvertible(path, family, `a ${family.label}-family checkpoint (keys like ${keys.slice(0, 2).join(', ')})`);
    return await family.openSingleFile({ path, keys, shapeOf: (k) => set.info(k).shape, metadata: set.metadata, set }, opts);
  } catch (e) {
    await set.close();
    throw e;
  }
}

/** The config.json of every component folder that has one (for detection rules that need them, SD 1.x vs 2.x). */
async function componentConfigs(dir: string, index: Readonly<Record<string, unknown>>): Promise<Record<string, Record<string, unknown>>> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const c of Object.keys(index).filter((k) => !k.startsWith('_'))) {
    const f = `${dir}/${c}/config.json`;
    // An unreadable config of a component no rule looks at (safety_checker, ...) must not stop detection.
    if (await pathExists(f)) out[c] = await readJson(f).catch(() => ({}));
  }
  return out;
}

async function openFolder(dir: string, opts: OpenOptions): Promise<Checkpoint> {
  const folder = await readFolderIndex(dir);
  const family = detectFolderFamily(folder, await componentConfigs(dir, folder.index));
  if (!family.convertible || !family.openFolder) throw notConvertible(dir, family, `a ${family.label}-family pipeline folder`);
  return family.openFolder(folder, opts);
}
