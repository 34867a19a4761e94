/**
 * A single tensor file: a checkpoint in its original layout, a LoRA, a UNet or VAE alone, or a file onestep cannot open
 * (counted by key prefix).
 */
import { detectComponentKeys } from '../checkpoint/components.js';
import { openCheckpoint } from '../checkpoint/open.js';
import { detectSingleFile } from '../checkpoint/detect.js';
import { isKnownIgnorableKey } from '../checkpoint/keymap-sd.js';
import { convertibleLabels, FAMILIES, type FamilyDef } from '../families/index.js';
import { TensorSet } from '../safetensors/tensor-set.js';
import { inspectComponent } from './component.js';
import { inspectLora } from './lora.js';
import { dtypeWarnings, emaWarning, finish, fromCheckpoint, isUnreadable, storedTensors, Tally, unknownKeysWarning, type InspectReport, type StoredTensor } from './report.js';

export async function inspectFile(path: string, pickled: string[]): Promise<InspectReport> {
  const set = await TensorSet.open(path);
  let stored: StoredTensor[];
  let metadata: Record<string, string>;
  let kind: ReturnType<typeof detectSingleFile>;
  try {
    pickled.push(...set.pickleNotes());
    stored = storedTensors(set);
    metadata = { ...set.metadata };
    kind = detectSingleFile(set.names());
  } finally {
    await set.close();
  }
  if (kind.kind === 'lora') return inspectLora(path, stored, metadata);
  const component = detectComponentKeys(stored.map((t) => t.key));
  if (component) return inspectComponent(path, component, stored, metadata);

  const warnings: string[] = [];
  if (kind.kind === 'checkpoint' && kind.family.convertible) {
    try {
      const checkpoint = await openCheckpoint(path);
      try {
        return fromCheckpoint(checkpoint, stored, metadata);
      } finally {
        await checkpoint.weights.close();
      }
    } catch (e) {
      if (isUnreadable(e)) throw e;
      warnings.push(`onestep cannot convert it as it is: ${(e as Error).message}`);
    }
  } else if (kind.kind === 'checkpoint') {
    warnings.push(`${kind.family.label} checkpoints are recognized but not converted yet (onestep converts ${convertibleLabels()})`);
  } else if (kind.kind === 'unsupported') {
    warnings.push(`looks like ${kind.what}, not a complete checkpoint`);
  } else {
    warnings.push('no tensor names onestep recognizes');
  }
  return rawSingleFile(path, kind.kind === 'checkpoint' ? kind.family : undefined, stored, metadata, warnings);
}

/** Component of an original single-file key (by the family's key prefixes, or any family's), or undefined. */
function singleFileComponent(key: string, family: FamilyDef | undefined): string | undefined {
  for (const f of family ? [family] : FAMILIES) {
    for (const [component, prefixes] of Object.entries(f.singleFilePrefixes)) if (prefixes.some((p) => key.startsWith(p))) return component;
  }
  return undefined;
}

function rawSingleFile(
  path: string,
  family: FamilyDef | undefined,
  stored: StoredTensor[],
  metadata: Record<string, string>,
  warnings: string[],
): InspectReport {
  const tally = new Tally();
  const unknown: string[] = [];
  const recognized = family !== undefined;
  for (const t of stored) {
    if (isKnownIgnorableKey(t.key)) continue; // DDPM buffers, position_ids, ...: unused
    const component = singleFileComponent(t.key, family);
    if (component) tally.add(component, t.dtype, t.numel, t.id);
    else if (!recognized) tally.add('other', t.dtype, t.numel, t.id);
    else if (!t.key.startsWith('model_ema.')) unknown.push(t.key);
  }
  const keys = stored.map((t) => t.key);
  const ema = emaWarning(keys);
  if (ema) warnings.push(ema);
  if (unknown.length) warnings.push(unknownKeysWarning(unknown));
  warnings.push(...dtypeWarnings(tally.components));
  return finish({
    path,
    kind: 'checkpoint',
    layout: 'single-file',
    family: family?.id ?? 'unknown',
    convertible: false,
    components: tally.components,
    unused: tally.unused(stored),
    metadata,
    notes: ['parameters counted by key prefix (model.diffusion_model., first_stage_model., cond_stage_model., conditioner.embedders.N.)'],
    warnings,
  });
}
