/**
 * `onestep inspect`: what a checkpoint or LoRA is, from its headers alone (tensor data is never read, except the
 * scalar `.alpha` tensors of a LoRA), so it takes milliseconds even on multi-gigabyte files.
 *
 * JSON shape (`onestep inspect --json`), stable:
 * {
 *   path: string,
 *   kind: 'checkpoint' | 'lora',
 *   layout: 'single-file' | 'diffusers' | 'lora',
 *   family: a family id of src/families (sd1, sd2, sdxl, sdxs, pixart-alpha) or 'unknown' (a LoRA that fits several: 'sd1|sd2'),
 *   convertible: boolean,                  // whether `onestep convert` takes it as it is
 *   totalParameters: number,               // sum over components
 *   components: { [name]: { parameters: number, tensors: number (as stored), dtypes: { [dtype]: parameters } } },
 *   unused: { parameters: number, tensors: number, examples: string[] },  // stored tensors no component uses
 *   config?: { [component]: { ...config.json as read, or as inferred from shapes } },
 *   lora?: { keyStyle, families, familyEvidence, modules, modulesPerComponent, kinds, rankAlpha, doraModules,
 *            unrecognizedKeys, unrecognizedExamples },
 *   metadata: { [key]: string },           // the file's __metadata__; folders: `<component>/<key>`
 *   notes: string[],                       // how things were decided (configs inferred, EMA used, ...)
 *   warnings: string[]
 * }
 * Components of a checkpoint: unet / vae / text_encoder (SD), transformer / text_encoder / vae (PixArt), plus
 * text_encoder_2 (SDXL) and any other weight folder of a diffusers pipeline (e.g. safety_checker).
 * Counts of convertible checkpoints are over the canonical tensors onestep uses; of other files over raw key prefixes.
 */
import { numel } from './checkpoint/weight-source.js';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { openCheckpoint, type Checkpoint } from './checkpoint/open.js';
import { detectFolderFamily, detectSingleFile, isDirectory, readFolderIndex } from './checkpoint/detect.js';
import { emaKeyFor, isKnownIgnorableKey } from './checkpoint/keymap-sd.js';
import { MappedSource } from './checkpoint/sources.js';
import { BadInputError } from './errors.js';
import { convertibleLabels, FAMILIES, familyLabel as labelOf, folderFamily, type FamilyDef, type FolderInput } from './families/index.js';
import { describeLora, type LoraDescription } from './lora/family.js';
import { LoraFile } from './lora/parse.js';
import type { SafetensorsDType } from './safetensors/dtypes.js';
import { PickleError } from './pytorch/pickle.js';
import { SafetensorsError } from './safetensors/errors.js';
import { TensorSet } from './safetensors/tensor-set.js';

/** A family id of src/families, or 'unknown'. */
export type InspectFamily = string;

export interface ComponentReport {
  parameters: number;
  tensors: number;
  /** Parameters per storage dtype. */
  dtypes: Partial<Record<SafetensorsDType, number>>;
}

export interface UnusedReport {
  parameters: number;
  tensors: number;
  /** The first few names (single files: the file's keys; folders: `<component>/<key>`). */
  examples: string[];
}

export interface LoraReport {
  keyStyle: LoraDescription['keyStyle'];
  families: string[];
  familyEvidence: string;
  modules: number;
  modulesPerComponent: LoraDescription['components'];
  kinds: LoraDescription['kinds'];
  rankAlpha: LoraDescription['rankAlpha'];
  doraModules: number;
  unrecognizedKeys: number;
  unrecognizedExamples: string[];
}

export interface InspectReport {
  path: string;
  kind: 'checkpoint' | 'lora';
  layout: 'single-file' | 'diffusers' | 'lora';
  family: string;
  convertible: boolean;
  totalParameters: number;
  components: Record<string, ComponentReport>;
  unused: UnusedReport;
  config?: Record<string, Record<string, unknown>>;
  lora?: LoraReport;
  metadata: Record<string, string>;
  notes: string[];
  warnings: string[];
}

const EXAMPLES = 5;

interface StoredTensor {
  /** Unique id: `<file path>\0<key>`. */
  id: string;
  /** What the user sees: the key (single files) or `<component>/<key>` (folders). */
  label: string;
  key: string;
  dtype: SafetensorsDType;
  numel: number;
}

/** Tensors grouped into components as they are found; everything not placed ends up in `unused`. */
class Tally {
  readonly components: Record<string, ComponentReport> = {};
  private readonly placed = new Set<string>();

  /**
   * Adds one tensor. `storedId` names the stored tensor it comes from: several canonical tensors cut from one stored
   * tensor (OpenCLIP's fused q/k/v) add their parameters but count as the one tensor the file holds.
   */
  add(component: string, dtype: SafetensorsDType, numel: number, storedId?: string): void {
    const c = (this.components[component] ??= { parameters: 0, tensors: 0, dtypes: {} });
    c.parameters += numel;
    c.dtypes[dtype] = (c.dtypes[dtype] ?? 0) + numel;
    if (storedId === undefined) c.tensors += 1;
    else if (!this.placed.has(storedId)) {
      c.tensors += 1;
      this.placed.add(storedId);
    }
  }

  unused(stored: StoredTensor[]): UnusedReport {
    const rest = stored.filter((t) => !this.placed.has(t.id));
    return {
      parameters: rest.reduce((a, t) => a + t.numel, 0),
      tensors: rest.length,
      examples: rest.slice(0, EXAMPLES).map((t) => t.label),
    };
  }
}

function storedTensors(set: TensorSet, labelPrefix = ''): StoredTensor[] {
  return set.names().map((key) => {
    const info = set.info(key);
    return { id: `${info.file.path}\0${key}`, label: labelPrefix + key, key, dtype: info.dtype, numel: numel(info.shape) };
  });
}

/** Errors that say the input cannot be read at all; anything else about a checkpoint still leaves something to report. */
function isUnreadable(e: unknown): boolean {
  return e instanceof SafetensorsError || e instanceof PickleError || !(e instanceof BadInputError);
}

// ---------------------------------------------------------------------------------------------------------------

/**
 * Inspects a tensor file (.safetensors or a PyTorch pickle; checkpoint or LoRA) or a diffusers folder. Throws
 * OnestepError for unreadable input. How each pickle was read (and the globals kept inert) comes first in the notes.
 */
export async function inspectPath(path: string): Promise<InspectReport> {
  const pickled: string[] = [];
  const report = (await isDirectory(path)) ? await inspectFolder(path, pickled) : await inspectFile(path, pickled);
  report.notes.unshift(...pickled);
  return report;
}

async function inspectFile(path: string, pickled: string[]): Promise<InspectReport> {
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

/** Both the plain UNet and its EMA copy (LitEma `model_ema.*`) stored: the user should know which one is used. */
function emaWarning(keys: string[], used?: string): string | undefined {
  const ema = keys.filter((k) => k.startsWith('model_ema.') && !isKnownIgnorableKey(k));
  const plain = keys.filter((k) => k.startsWith('model.diffusion_model.'));
  if (ema.length === 0 || plain.length === 0) return undefined;
  const all = new Set(keys);
  const complete = plain.every((k) => all.has(emaKeyFor(k)));
  return (
    `EMA and plain UNet weights are both present (${ema.length} model_ema.* tensors, ${plain.length} model.diffusion_model.* tensors)` +
    (used ? `; ${used}` : complete ? '' : '; the EMA copy is incomplete')
  );
}

function unknownKeysWarning(keys: string[]): string {
  return `${keys.length} tensor(s) onestep does not recognize, e.g. ${keys.slice(0, EXAMPLES).join(', ')}`;
}

function dtypeWarnings(components: Record<string, ComponentReport>): string[] {
  const out: string[] = [];
  const main: string[] = [];
  for (const [name, c] of Object.entries(components)) {
    const dtypes = Object.keys(c.dtypes);
    if (dtypes.length > 1) {
      out.push(`${name} mixes dtypes: ${Object.entries(c.dtypes).map(([d, n]) => `${d} (${n.toLocaleString('en-US')} parameters)`).join(', ')}`);
    } else if (dtypes.length === 1) main.push(`${name} ${dtypes[0]}`);
  }
  if (out.length === 0 && new Set(main.map((s) => s.split(' ')[1])).size > 1) out.push(`components are stored in different dtypes: ${main.join(', ')}`);
  return out;
}

function fromCheckpoint(checkpoint: Checkpoint, stored: StoredTensor[], metadata: Record<string, string>, extraWarnings: string[] = []): InspectReport {
  const tally = new Tally();
  const weights = checkpoint.weights;
  for (const name of weights.names()) {
    const meta = weights.meta(name);
    const src = weights instanceof MappedSource ? weights.sourceOf(name) : undefined;
    tally.add(name.split('.')[0], meta.dtype, numel(meta.shape), src && `${src.file}\0${src.key}`);
  }
  const warnings = [...extraWarnings];
  if (checkpoint.layout === 'single-file') {
    const ema = emaWarning(
      stored.map((t) => t.key),
      checkpoint.notes.find((n) => /EMA/.test(n)),
    );
    if (ema) warnings.push(ema);
  }
  if (checkpoint.unmappedKeys.length) warnings.push(unknownKeysWarning(checkpoint.unmappedKeys));
  warnings.push(...dtypeWarnings(tally.components));
  const config: Record<string, Record<string, unknown>> = {};
  for (const [c, v] of Object.entries(checkpoint.rawConfigs)) config[c] = { ...v };
  config.scheduler ??= { ...checkpoint.scheduler };
  return finish({
    path: checkpoint.path,
    kind: 'checkpoint',
    layout: checkpoint.layout,
    family: checkpoint.family.id,
    convertible: true,
    components: tally.components,
    unused: tally.unused(stored),
    config,
    metadata,
    notes: [...checkpoint.notes],
    warnings,
  });
}

const COMPONENT_ORDER = ['unet', 'transformer', 'text_encoder', 'text_encoder_2', 'vae'];

/** Components in a fixed order (the pipeline's, then the rest by name), so output is deterministic. */
function ordered(components: Record<string, ComponentReport>): Record<string, ComponentReport> {
  const rank = (n: string) => (COMPONENT_ORDER.includes(n) ? COMPONENT_ORDER.indexOf(n) : COMPONENT_ORDER.length);
  const names = Object.keys(components).sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
  return Object.fromEntries(names.map((n) => [n, components[n]]));
}

function finish(r: Omit<InspectReport, 'totalParameters'>): InspectReport {
  const totalParameters = Object.values(r.components).reduce((a, c) => a + c.parameters, 0);
  const { path, kind, layout, family, convertible, components, ...rest } = r;
  return { path, kind, layout, family, convertible, totalParameters, components: ordered(components), ...rest };
}

// ---------------------------------------------------------------------------------------------------------------

async function inspectLora(path: string, stored: StoredTensor[], metadata: Record<string, string>): Promise<InspectReport> {
  const description = await describeLora(path);
  const file = await LoraFile.open(path);
  const tally = new Tally();
  const byKey = new Map(stored.map((t) => [t.key, t]));
  let unrecognized: string[];
  try {
    for (const m of file.modules) {
      for (const key of m.group.keys.values()) {
        const t = byKey.get(key);
        if (t) tally.add(m.component, t.dtype, t.numel, t.id);
      }
    }
    unrecognized = [...file.unrecognized.keys()];
  } finally {
    await file.close();
  }
  const warnings: string[] = [];
  if (unrecognized.length) {
    warnings.push(`${unrecognized.length} key(s) are not LoRA tensors onestep can apply, e.g. ${unrecognized.slice(0, EXAMPLES).join(', ')}`);
  }
  warnings.push(...dtypeWarnings(tally.components));
  return finish({
    path,
    kind: 'lora',
    layout: 'lora',
    family: description.families.join('|'),
    convertible: false,
    components: tally.components,
    unused: tally.unused(stored),
    lora: {
      keyStyle: description.keyStyle,
      families: description.families,
      familyEvidence: description.familyEvidence,
      modules: description.moduleCount,
      modulesPerComponent: description.components,
      kinds: description.kinds,
      rankAlpha: description.rankAlpha,
      doraModules: description.doraModules,
      unrecognizedKeys: description.unrecognizedKeys,
      unrecognizedExamples: unrecognized.slice(0, EXAMPLES),
    },
    metadata,
    notes: [],
    warnings,
  });
}

// ---------------------------------------------------------------------------------------------------------------

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

async function inspectFolder(dir: string, pickled: string[]): Promise<InspectReport> {
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

function subtractUnused(unused: UnusedReport, tensors: StoredTensor[]): UnusedReport {
  const labels = new Set(tensors.map((t) => t.label));
  const removed = tensors.length;
  const parameters = tensors.reduce((a, t) => a + t.numel, 0);
  return {
    parameters: unused.parameters - parameters,
    tensors: unused.tensors - removed,
    examples: unused.examples.filter((l) => !labels.has(l)),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Human output

const LAYOUT_LABELS: Record<string, string> = {
  'single-file': 'single file (original LDM / CompVis keys)',
  diffusers: 'diffusers folder',
  lora: 'LoRA',
};

const KEY_STYLE_LABELS: Record<string, string> = {
  kohya: 'kohya / A1111 keys (lora_unet_*, lora_te_*)',
  peft: 'diffusers / PEFT keys (unet.*.lora_A / lora_B)',
  'diffusers-legacy': 'older diffusers keys (.lora.down / .lora.up, attention processors)',
  unprefixed: 'unprefixed diffusers UNet keys',
  mixed: 'mixed key styles',
  none: 'no key style',
};

/** Config keys worth a line in human output, per component (whichever are present). */
const CONFIG_HIGHLIGHTS: Record<string, string[]> = {
  unet: ['sample_size', 'block_out_channels', 'layers_per_block', 'cross_attention_dim', 'attention_head_dim', 'use_linear_projection'],
  transformer: ['sample_size', 'num_layers', 'num_attention_heads', 'attention_head_dim', 'patch_size', 'caption_channels', 'out_channels'],
  text_encoder: ['hidden_size', 'd_model', 'num_hidden_layers', 'num_layers', 'num_attention_heads', 'num_heads', 'hidden_act', 'vocab_size'],
  vae: ['block_out_channels', 'latent_channels', 'scaling_factor'],
  scheduler: ['_class_name', 'prediction_type', 'beta_schedule', 'num_train_timesteps'],
};

/** Metadata keys shown in human output (all of them are in --json). */
const METADATA_HIGHLIGHTS = [
  'modelspec.title',
  'modelspec.architecture',
  'modelspec.implementation',
  'modelspec.author',
  'modelspec.resolution',
  'modelspec.prediction_type',
  'ss_output_name',
  'ss_sd_model_name',
  'ss_base_model_version',
  'ss_v2',
  'ss_network_module',
  'ss_network_dim',
  'ss_network_alpha',
  'ss_resolution',
  'ss_num_train_images',
  'ss_epoch',
  'ss_steps',
  'ss_training_comment',
];

function count(n: number): string {
  return n.toLocaleString('en-US');
}

function short(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

function clip(s: string, max = 100): string {
  const one = s.replace(/\s+/g, ' ');
  return one.length > max ? `${one.slice(0, max - 1)}…` : one;
}

function familyLabel(family: string): string {
  return family
    .split('|')
    .map(labelOf)
    .join(' or ');
}

export function formatInspectReport(r: InspectReport): string {
  const lines: string[] = [r.path];
  const field = (name: string, value: string) => lines.push(`  ${`${name}:`.padEnd(13)}${value}`);
  field('Kind', r.kind === 'lora' ? 'LoRA' : 'checkpoint');
  field('Layout', r.lora ? `LoRA, ${KEY_STYLE_LABELS[r.lora.keyStyle] ?? r.lora.keyStyle}` : (LAYOUT_LABELS[r.layout] ?? r.layout));
  field('Family', familyLabel(r.family) + (r.lora ? ` (${r.lora.familyEvidence})` : ''));
  if (r.kind === 'checkpoint') field('Convertible', r.convertible ? 'yes' : 'no');
  field('Parameters', `${short(r.totalParameters)} (${count(r.totalParameters)})`);

  const names = Object.keys(r.components);
  const width = Math.max(12, ...names.map((n) => n.length));
  for (const name of names) {
    const c = r.components[name];
    const dtypes = Object.entries(c.dtypes)
      .map(([d, n]) => (Object.keys(c.dtypes).length > 1 ? `${d} ${short(n)}` : d))
      .join(', ');
    lines.push(`    ${name.padEnd(width)} ${count(c.parameters).padStart(15)}  ${short(c.parameters).padStart(8)}  ${String(c.tensors).padStart(5)} tensors  ${dtypes}`);
  }
  if (r.unused.tensors > 0) {
    field('Unused', `${r.unused.tensors} stored tensor(s), ${count(r.unused.parameters)} parameters, e.g. ${r.unused.examples.join(', ')}`);
  }

  if (r.lora) {
    const l = r.lora;
    const perComponent = Object.entries(l.modulesPerComponent).map(([c, n]) => `${c} ${n}`).join(', ');
    field('Modules', `${l.modules} (${perComponent})`);
    field('Kinds', Object.entries(l.kinds).map(([k, n]) => `${k} ${n}`).join(', '));
    field('Rank/alpha', l.rankAlpha.map((p) => `rank ${p.rank} alpha ${p.alpha} (${p.modules} modules)`).join('; '));
    if (l.doraModules) field('DoRA', `${l.doraModules} module(s) with a magnitude vector`);
  }

  if (r.config) {
    const configLines: string[] = [];
    for (const [component, keys] of Object.entries(CONFIG_HIGHLIGHTS)) {
      const cfg = r.config[component];
      if (!cfg) continue;
      const parts = keys.filter((k) => cfg[k] !== undefined && cfg[k] !== null).map((k) => `${k} ${JSON.stringify(cfg[k])}`);
      if (parts.length) configLines.push(`    ${component}: ${parts.join(', ')}`);
    }
    if (configLines.length) {
      lines.push('  Config:');
      lines.push(...configLines);
    }
  }

  const metaKeys = Object.keys(r.metadata);
  if (metaKeys.length) {
    const shown = METADATA_HIGHLIGHTS.filter((k) => k in r.metadata);
    const suffix = shown.length === metaKeys.length ? '' : shown.length ? `, ${metaKeys.length - shown.length} more in --json` : ' (see --json)';
    field('Metadata', `${metaKeys.length} key(s)${suffix}`);
    for (const k of shown) lines.push(`    ${k}: ${clip(r.metadata[k])}`);
  }

  if (r.notes.length) {
    lines.push('  Notes:');
    for (const n of r.notes) lines.push(`    - ${n}`);
  }
  if (r.warnings.length) {
    lines.push('  Warnings:');
    for (const w of r.warnings) lines.push(`    ! ${w}`);
  }
  return lines.join('\n');
}
