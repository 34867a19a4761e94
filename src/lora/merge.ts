/**
 * LoRA merge math and the WeightSource decorator. All arithmetic is float32 (float64 accumulation in products),
 * whatever the storage dtype; callers store the result in the dtype they choose.
 *
 * planLoraMerge validates every LoRA against the base before anything is read or written: targets resolved,
 * shapes checked, families compared. LoraMergedSource then adds the deltas when a weight is read, so
 * `lora merge` (writing a checkpoint) and `convert --lora` (building graphs) share one implementation.
 */
import { BadInputError, OnestepError } from '../errors.js';
import type { Allocator } from '../io/buffers.js';
import { f32ToF16, isFloatDType } from '../safetensors/dtypes.js';
import { numel, type TensorMeta, type WeightSource } from '../checkpoint/weight-source.js';
import { guessLoraFamily } from './family.js';
import type { LoraComponent } from './keys.js';
import type { LoraModule } from './kinds.js';
import { LoraFile } from './parse.js';
import { buildTargetIndex, resolveTarget } from './targets.js';

export interface LoraSpec {
  path: string;
  /** User multiplier (1 = as trained). */
  scale: number;
}

export interface SkippedModule {
  /** The module's key prefix in the LoRA file. */
  module: string;
  reason: string;
}

export interface ComponentReport {
  component: LoraComponent;
  /** LoRA modules for this component in the file. */
  present: number;
  merged: number;
  skipped: SkippedModule[];
}

export interface LoraMergeReport {
  path: string;
  scale: number;
  keyStyle: string;
  components: ComponentReport[];
  /** Keys of the file that form no module we can apply (with why), skipped under allowUnmatched. */
  unrecognizedKeys: { key: string; reason: string }[];
}

export interface MergeReport {
  loras: LoraMergeReport[];
  /** Canonical weight names that change. */
  changedWeights: string[];
}

export interface Application {
  module: LoraModule;
  scale: number;
}

export interface MergePlan {
  /** Canonical weight name (`unet.….weight`) -> the LoRA modules to add, in the order the LoRAs were given. */
  byWeight: Map<string, Application[]>;
  report: MergeReport;
}

export interface PlanOptions {
  /** Skip LoRA keys that match nothing in the base instead of failing. Never skips shape or family mismatches. */
  allowUnmatched?: boolean;
  /** The base's family (`sd1`, `sd2`, `sdxl`, ...), for clearer wrong-family errors. */
  baseFamily?: string;
  /** How to name the base in messages. */
  baseLabel?: string;
}

const MAX_LISTED = 20;

/**
 * Matches every module of every LoRA to a base weight and checks shapes. Throws (naming the LoRA file) on any
 * shape or family mismatch, and on unmatched keys unless allowUnmatched.
 */
export function planLoraMerge(base: Pick<WeightSource, 'names' | 'has' | 'meta'>, loras: { file: LoraFile; scale: number }[], opts: PlanOptions = {}): MergePlan {
  const index = buildTargetIndex(base.names());
  const byWeight = new Map<string, Application[]>();
  const reports: LoraMergeReport[] = [];
  const baseLabel = opts.baseLabel ?? 'the base checkpoint';

  for (const { file, scale } of loras) {
    const components = new Map<LoraComponent, ComponentReport>();
    const comp = (c: LoraComponent) => {
      let r = components.get(c);
      if (!r) components.set(c, (r = { component: c, present: 0, merged: 0, skipped: [] }));
      return r;
    };
    const unmatched: { key: string; reason: string }[] = [];
    const misfits: string[] = [];
    const missingComponents = new Set<string>();
    const planned: [string, Application][] = [];

    for (const module of file.modules) {
      const report = comp(module.component);
      report.present++;
      const target = resolveTarget(module.group, index);
      if (target === undefined) {
        if (!index.components.has(module.component)) {
          missingComponents.add(module.component);
          misfits.push(`${module.prefix}: ${baseLabel} has no ${module.component}`);
          continue;
        }
        const reason = `no ${module.component} weight in ${baseLabel} matches this module`;
        report.skipped.push({ module: module.prefix, reason });
        for (const key of module.fileKeys) unmatched.push({ key, reason });
        continue;
      }
      const weight = `${target}.weight`;
      const meta = base.meta(weight);
      const misfit = shapeMisfit(module, meta);
      if (misfit) {
        misfits.push(`${module.prefix} -> ${weight}: ${misfit}`);
        continue;
      }
      module.target = target;
      planned.push([weight, { module, scale }]);
    }
    for (const [key, reason] of file.unrecognized) unmatched.push({ key, reason });

    const fam = guessLoraFamily(file);
    const familyHint = `This LoRA looks made for ${fam.families.join(' or ')} (${fam.evidence}); merge it into a checkpoint of that family.`;
    const conflictingFamily =
      opts.baseFamily !== undefined && fam.families.length === 1 && !fam.families.includes(opts.baseFamily as never);
    if (misfits.length > 0 || conflictingFamily) {
      const what = conflictingFamily ? `is a ${fam.families[0]} LoRA (${fam.evidence}) and ${baseLabel} is ${opts.baseFamily}` : 'does not fit';
      throw new BadInputError(
        file.path,
        `${what}${misfits.length ? `: ${misfits.length} module(s) cannot be applied${listed(misfits)}` : ''}`,
        familyHint,
      );
    }
    if (unmatched.length > 0 && !opts.allowUnmatched) {
      throw new BadInputError(
        file.path,
        `${unmatched.length} LoRA key(s) match no weight of ${baseLabel}${listed(unmatched.map((u) => `${u.key} (${u.reason})`))}`,
        'Check that the LoRA is for this model family, or pass --allow-unmatched to merge the rest and skip these keys.',
      );
    }
    for (const [weight, app] of planned) {
      let list = byWeight.get(weight);
      if (!list) byWeight.set(weight, (list = []));
      list.push(app);
      comp(app.module.component).merged++;
    }
    reports.push({
      path: file.path,
      scale,
      keyStyle: file.summary().style,
      components: [...components.values()].sort((a, b) => a.component.localeCompare(b.component)),
      unrecognizedKeys: [...file.unrecognized].map(([key, reason]) => ({ key, reason })),
    });
  }
  return { byWeight, report: { loras: reports, changedWeights: [...byWeight.keys()].sort() } };
}

function listed(items: string[]): string {
  const head = items.slice(0, MAX_LISTED).map((s) => `\n  ${s}`).join('');
  return `:${head}${items.length > MAX_LISTED ? `\n  ... and ${items.length - MAX_LISTED} more` : ''}`;
}

/** Why a module's delta cannot be added to a weight of this shape, or undefined when it can. */
function shapeMisfit(module: LoraModule, meta: TensorMeta): string | undefined {
  const t = meta.shape;
  if (!isFloatDType(meta.dtype)) return `the weight is ${meta.dtype}, not a float tensor`;
  const deltaShape = `[${module.outFeatures}, ${module.inFlat}${module.kernel ? ` = in x ${module.kernel.join('x')}` : ''}]`;
  if (t.length < 2 || t[0] !== module.outFeatures || numel(t) / t[0] !== module.inFlat) {
    return `weight shape ${JSON.stringify(t)} vs LoRA delta ${deltaShape}`;
  }
  if (module.kernel && t.length === 4 && numel(module.kernel) !== 1 && (t[2] !== module.kernel[0] || t[3] !== module.kernel[1])) {
    return `weight kernel ${t[2]}x${t[3]} vs LoRA kernel ${module.kernel.join('x')}`;
  }
  const dora = module.doraKey;
  if (dora !== undefined) {
    const n = numel(module.store.tensors.get(dora)!.shape);
    if (n !== t[0] && n !== t[1]) return `DoRA magnitude of ${n} values fits neither ${t[0]} outputs nor ${t[1]} inputs`;
  }
  return undefined;
}

/**
 * Adds the LoRA deltas to a weight in place (`values`: float32, canonical shape). A non-finite delta, or a merge
 * that leaves non-finite values (a huge scale overflows float32), is an error naming the LoRA and the weight.
 */
export async function applyLoras(values: Float32Array, shape: readonly number[], apps: readonly Application[], weight = 'the weight'): Promise<void> {
  for (const { module, scale } of apps) {
    const delta = await module.delta();
    if (delta.length !== values.length) {
      throw new OnestepError(`internal: delta of ${module.prefix} has ${delta.length} values, weight ${values.length}`);
    }
    if (!allFinite(delta)) {
      throw new BadInputError(module.store.path, `module ${module.prefix}: its values are not finite (NaN or Inf).`, 'The LoRA file is damaged or was trained into NaN: use another file.');
    }
    await applyOne(values, shape, module, scale, delta);
    if (!allFinite(values)) {
      throw new BadInputError(
        `${module.store.path} at scale ${scale}`,
        `merging module ${module.prefix} into ${weight} gives values that are not finite (NaN or Inf, float32 overflow).`,
        'Use a smaller scale.',
      );
    }
  }
}

function allFinite(values: Float32Array): boolean {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) return false;
  return true;
}

/**
 * One module's delta added in place.
 * Plain modules: W += scale * delta. DoRA modules: W_d = m * (W + delta) / ||W + delta|| (norm per output row, or
 * per input column for kohya/LyCORIS `dora_scale` shaped [1, in, ...]), then W += scale * (W_d - W), so scale 0
 * leaves the weight alone and scale 1 is the trained result.
 */
async function applyOne(values: Float32Array, shape: readonly number[], module: LoraModule, scale: number, delta: Float32Array): Promise<void> {
  const dora = module.doraKey;
  if (dora === undefined) {
    for (let i = 0; i < values.length; i++) values[i] += scale * delta[i];
    return;
  }
  const magnitudeShape = module.store.tensors.get(dora)!.shape;
  const magnitude = await module.store.readF32(dora);
  for (let i = 0; i < delta.length; i++) delta[i] += values[i];
  const perColumn = magnitudeShape.length >= 2 && magnitudeShape[0] === 1 && magnitude.length === shape[1];
  const out = shape[0];
  const inner = values.length / out;
  if (perColumn) {
    const spatialSize = inner / shape[1];
    const norms = new Float64Array(shape[1]);
    for (let o = 0; o < out; o++)
      for (let j = 0; j < inner; j++) {
        const v = delta[o * inner + j];
        norms[Math.floor(j / spatialSize)] += v * v;
      }
    for (let o = 0; o < out; o++)
      for (let j = 0; j < inner; j++) {
        const c = Math.floor(j / spatialSize);
        delta[o * inner + j] *= normFactor(magnitude[c], norms[c]);
      }
  } else {
    for (let o = 0; o < out; o++) {
      let sum = 0;
      for (let j = 0; j < inner; j++) sum += delta[o * inner + j] ** 2;
      const f = normFactor(magnitude[o], sum);
      for (let j = 0; j < inner; j++) delta[o * inner + j] *= f;
    }
  }
  for (let i = 0; i < values.length; i++) values[i] += scale * (delta[i] - values[i]);
}

function normFactor(magnitude: number, sumSquares: number): number {
  const norm = Math.sqrt(sumSquares);
  return norm > 0 ? magnitude / norm : 0;
}

/** Opens the LoRA files; closes the ones already open if one fails. */
export async function openLoras(specs: readonly LoraSpec[]): Promise<{ file: LoraFile; scale: number }[]> {
  const out: { file: LoraFile; scale: number }[] = [];
  try {
    for (const spec of specs) out.push({ file: await LoraFile.open(spec.path), scale: spec.scale });
  } catch (e) {
    await Promise.all(out.map((l) => l.file.close()));
    throw e;
  }
  return out;
}

/**
 * A WeightSource that reads the base and adds the planned LoRA deltas. Names, shapes and dtypes are the base's.
 * Owns the LoRA files and the base: close() closes all of them.
 */
export class LoraMergedSource implements WeightSource {
  constructor(
    readonly base: WeightSource,
    readonly plan: MergePlan,
    private readonly files: readonly LoraFile[],
  ) {}

  /** Validates and opens: the one call `convert --lora` needs. */
  static async create(base: WeightSource, specs: readonly LoraSpec[], opts: PlanOptions = {}): Promise<LoraMergedSource> {
    const loras = await openLoras(specs);
    try {
      const plan = planLoraMerge(base, loras, opts);
      return new LoraMergedSource(
        base,
        plan,
        loras.map((l) => l.file),
      );
    } catch (e) {
      await Promise.all(loras.map((l) => l.file.close()));
      throw e;
    }
  }

  get report(): MergeReport {
    return this.plan.report;
  }

  names(): string[] {
    return this.base.names();
  }
  has(name: string): boolean {
    return this.base.has(name);
  }
  meta(name: string): TensorMeta {
    return this.base.meta(name);
  }

  async readF32(name: string): Promise<Float32Array> {
    const apps = this.plan.byWeight.get(name);
    if (!apps) return this.base.readF32(name);
    // A private copy: the base may hand out a buffer it keeps.
    const values = Float32Array.from(await this.base.readF32(name));
    await applyLoras(values, this.base.meta(name).shape, apps, name);
    return values;
  }

  /** A weight no LoRA touches keeps the base's float16 path (its stored bits); a merged one is converted after the merge. */
  async readF16(name: string, alloc?: Allocator): Promise<Uint16Array> {
    if (!this.plan.byWeight.has(name) && this.base.readF16) return this.base.readF16(name, alloc);
    return f32ToF16(await this.readF32(name));
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
    await this.base.close();
  }
}

/** A few lines per LoRA: what was merged, what was skipped and why. */
export function formatMergeReport(report: MergeReport): string {
  const lines: string[] = [];
  for (const l of report.loras) {
    lines.push(`${l.path} (scale ${l.scale}, ${l.keyStyle} keys)`);
    for (const c of l.components) {
      lines.push(`  ${c.component}: ${c.merged} of ${c.present} modules merged${c.skipped.length ? `, ${c.skipped.length} skipped` : ''}`);
      for (const s of c.skipped.slice(0, MAX_LISTED)) lines.push(`    skipped ${s.module}: ${s.reason}`);
      if (c.skipped.length > MAX_LISTED) lines.push(`    ... and ${c.skipped.length - MAX_LISTED} more`);
    }
    if (l.unrecognizedKeys.length) {
      lines.push(`  ${l.unrecognizedKeys.length} key(s) not understood and skipped`);
      for (const u of l.unrecognizedKeys.slice(0, MAX_LISTED)) lines.push(`    ${u.key}: ${u.reason}`);
    }
  }
  lines.push(`${report.changedWeights.length} weight tensor(s) changed`);
  return lines.join('\n');
}
