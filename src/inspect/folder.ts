/** A diffusers pipeline folder: opened through its family when it converts, else counted per component folder. */
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { openCheckpoint } from '../checkpoint/open.js';
import { detectFolderFamily, readFolderIndex } from '../checkpoint/detect.js';
import { convertibleLabels, folderFamily, type FamilyDef, type FolderInput } from '../families/index.js';
import { PickleError } from '../pytorch/pickle.js';
import { SafetensorsError } from '../safetensors/errors.js';
import { TensorSet } from '../safetensors/tensor-set.js';
import { dtypeWarnings, finish, fromCheckpoint, isUnreadable, ordered, storedTensors, subtractUnused, Tally, type InspectReport, type StoredTensor } from './report.js';

/** Subfolders of a pipeline that model_index.json names with a library and class (weights may live there). */
function pipelineComponents(index: Record<string, unknown>): string[] {
  return Object.entries(index)
    .filter(([k, v]) => !k.startsWith('_') && Array.isArray(v) && typeof v[0] === 'string' && typeof v[1] === 'string')
    .map(([k]) => k)
    .sort();
}

async function hasSafetensors(dir: string): Promise<boolean> {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) return false;
  return (await readdir(dir)).some((n) => /\.safetensors(\.index(\.[^.]+)?\.json)?$/i.test(n) || /\.(ckpt|pt|pth|bin)$/i.test(n));
}

async function readJsonObject(path: string): Promise<Record<string, unknown> | undefined> {
  try {
    const v: unknown = JSON.parse(await readFile(path, 'utf8'));
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

export async function inspectFolder(dir: string, pickled: string[]): Promise<InspectReport> {
  const warnings: string[] = [];
  let family: FamilyDef | undefined;
  let folder: FolderInput;
  let openable = true;
  try {
    folder = await readFolderIndex(dir);
  } catch (e) {
    // A model_index.json that is not an object is still worth describing; a folder without one is not a pipeline.
    const parsed = await readJsonObject(join(dir, 'model_index.json'));
    if (!parsed) throw e;
    folder = { dir, index: parsed, pipelineClass: '' };
    openable = false;
    warnings.push((e as Error).message);
  }
  const index = folder.index;
  const rawConfigs: Record<string, Record<string, unknown>> = {};
  for (const c of pipelineComponents(index)) {
    const json = await readJsonObject(join(dir, c, 'config.json'));
    if (json) rawConfigs[c] = json;
  }
  if (openable) {
    try {
      family = detectFolderFamily(folder, rawConfigs);
      if (!family.convertible) {
        warnings.push(`${family.label} pipelines are recognized but not converted yet (onestep converts ${convertibleLabels()})`);
        openable = false;
      }
    } catch (e) {
      openable = false;
      warnings.push((e as Error).message);
    }
  }

  // Every component folder with weights, opened once for its headers and metadata.
  const stored: StoredTensor[] = [];
  const metadata: Record<string, string> = {};
  const rawComponents = new Map<string, StoredTensor[]>();
  for (const c of pipelineComponents(index)) {
    if (!(await hasSafetensors(join(dir, c)))) continue;
    let set: TensorSet;
    try {
      set = await TensorSet.open(join(dir, c));
    } catch (e) {
      if (!(e instanceof SafetensorsError || e instanceof PickleError)) throw e;
      warnings.push(`${c}/: ${e.message}`);
      continue;
    }
    pickled.push(...set.pickleNotes().map((n) => `${c}/${n}`));
    try {
      const tensors = storedTensors(set, `${c}/`);
      stored.push(...tensors);
      rawComponents.set(c, tensors);
      for (const [k, v] of Object.entries(set.metadata)) metadata[`${c}/${k}`] = v;
    } finally {
      await set.close();
    }
  }

  if (openable) {
    try {
      const checkpoint = await openCheckpoint(dir);
      try {
        const report = fromCheckpoint(checkpoint, stored, metadata, warnings);
        // Weight folders onestep does not use (safety_checker, ...) are still components of the pipeline.
        for (const [c, tensors] of rawComponents) {
          if (c in report.components) continue;
          const tally = new Tally();
          for (const t of tensors) tally.add(c, t.dtype, t.numel, t.id);
          report.components = ordered({ ...report.components, [c]: tally.components[c] });
          report.totalParameters += tally.components[c].parameters;
          report.unused = subtractUnused(report.unused, tensors);
          report.notes.push(`${c}/ is not used by onestep`);
        }
        return report;
      } finally {
        await checkpoint.weights.close();
      }
    } catch (e) {
      if (isUnreadable(e)) throw e;
      warnings.push(`onestep cannot convert it as it is: ${(e as Error).message}`);
    }
  }

  const tally = new Tally();
  const config: Record<string, Record<string, unknown>> = {};
  for (const [c, tensors] of rawComponents) {
    for (const t of tensors) tally.add(c, t.dtype, t.numel, t.id);
    if (rawConfigs[c]) config[c] = rawConfigs[c];
  }
  const scheduler = await readJsonObject(join(dir, 'scheduler', 'scheduler_config.json'));
  if (scheduler) config.scheduler = scheduler;
  family ??= folderFamily(folder, rawConfigs);
  warnings.push(...dtypeWarnings(tally.components));
  return finish({
    path: dir,
    kind: 'checkpoint',
    layout: 'diffusers',
    family: family?.id ?? 'unknown',
    convertible: false,
    components: tally.components,
    unused: tally.unused(stored),
    config,
    metadata,
    notes: ['parameters counted per component folder'],
    warnings,
  });
}
