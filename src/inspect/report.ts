/** The report `inspect` gives (its JSON contract is in src/inspect.ts) and the pieces every kind of input shares. */
import { numel } from '../checkpoint/weight-source.js';
import type { Checkpoint } from '../checkpoint/open.js';
import { emaKeyFor, isKnownIgnorableKey } from '../checkpoint/keymap-sd.js';
import { MappedSource } from '../checkpoint/sources.js';
import { BadInputError } from '../errors.js';
import type { LoraDescription } from '../lora/family.js';
import type { SafetensorsDType } from '../safetensors/dtypes.js';
import { PickleError } from '../pytorch/pickle.js';
import { SafetensorsError } from '../safetensors/errors.js';
import { TensorSet } from '../safetensors/tensor-set.js';

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
  kind: 'checkpoint' | 'lora' | 'component';
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

export const EXAMPLES = 5;

export interface StoredTensor {
  /** Unique id: `<file path>\0<key>`. */
  id: string;
  /** What the user sees: the key (single files) or `<component>/<key>` (folders). */
  label: string;
  key: string;
  dtype: SafetensorsDType;
  numel: number;
}

/** Tensors grouped into components as they are found; everything not placed ends up in `unused`. */
export class Tally {
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

export function storedTensors(set: TensorSet, labelPrefix = ''): StoredTensor[] {
  return set.names().map((key) => {
    const info = set.info(key);
    return { id: `${info.file.path}\0${key}`, label: labelPrefix + key, key, dtype: info.dtype, numel: numel(info.shape) };
  });
}

/** Errors that say the input cannot be read at all; anything else about a checkpoint still leaves something to report. */
export function isUnreadable(e: unknown): boolean {
  return e instanceof SafetensorsError || e instanceof PickleError || !(e instanceof BadInputError);
}

/** Both the plain UNet and its EMA copy (LitEma `model_ema.*`) stored: the user should know which one is used. */
export function emaWarning(keys: string[], used?: string): string | undefined {
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

export function unknownKeysWarning(keys: string[]): string {
  return `${keys.length} tensor(s) onestep does not recognize, e.g. ${keys.slice(0, EXAMPLES).join(', ')}`;
}

export function dtypeWarnings(components: Record<string, ComponentReport>): string[] {
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

export function fromCheckpoint(checkpoint: Checkpoint, stored: StoredTensor[], metadata: Record<string, string>, extraWarnings: string[] = []): InspectReport {
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

export const COMPONENT_ORDER = ['unet', 'transformer', 'text_encoder', 'text_encoder_2', 'vae'];

/** Components in a fixed order (the pipeline's, then the rest by name), so output is deterministic. */
export function ordered(components: Record<string, ComponentReport>): Record<string, ComponentReport> {
  const rank = (n: string) => (COMPONENT_ORDER.includes(n) ? COMPONENT_ORDER.indexOf(n) : COMPONENT_ORDER.length);
  const names = Object.keys(components).sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
  return Object.fromEntries(names.map((n) => [n, components[n]]));
}

export function finish(r: Omit<InspectReport, 'totalParameters'>): InspectReport {
  const totalParameters = Object.values(r.components).reduce((a, c) => a + c.parameters, 0);
  const { path, kind, layout, family, convertible, components, ...rest } = r;
  return { path, kind, layout, family, convertible, totalParameters, components: ordered(components), ...rest };
}

export function subtractUnused(unused: UnusedReport, tensors: StoredTensor[]): UnusedReport {
  const labels = new Set(tensors.map((t) => t.label));
  const removed = tensors.length;
  const parameters = tensors.reduce((a, t) => a + t.numel, 0);
  return {
    parameters: unused.parameters - parameters,
    tensors: unused.tensors - removed,
    examples: unused.examples.filter((l) => !labels.has(l)),
  };
}
