/**
 * LoRA files -> modules. `LoraFile.open` groups a file's keys into modules by their names alone (the key grammar:
 * keys.ts), enough for `inspect`; each module's kind, shapes and math are kinds.ts; `resolveTarget` (targets.ts) then
 * finds each module's canonical target in a base's `buildTargetIndex`; family.ts guesses which family a LoRA is for.
 */
import { BadInputError } from '../errors.js';
import type { SafetensorsDType } from '../safetensors/dtypes.js';
import { openTensorFile } from '../safetensors/tensor-file.js';
import { locateModule, peftAdapterConfig, splitKey, type LoraComponent, type LoraKeyStyle, type LoraModuleGroup } from './keys.js';
import { buildModule, type LoraKind, type LoraModule } from './kinds.js';

/** What LoRA parsing needs from a tensor file; every TensorFile (safetensors, PyTorch) has it, tests may pass their own. */
export interface LoraTensorStore {
  readonly path: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly tensors: ReadonlyMap<string, { dtype: SafetensorsDType; shape: number[] }>;
  readF32(name: string): Promise<Float32Array>;
  close(): Promise<void>;
}

export interface LoraFileSummary {
  style: LoraKeyStyle | 'mixed' | 'none';
  components: Partial<Record<LoraComponent, number>>;
  kinds: Partial<Record<LoraKind, number>>;
  /** Distinct (rank, alpha) pairs, sorted. */
  rankAlpha: { rank: number; alpha: number; modules: number }[];
  dora: number;
}

/** A LoRA file, its keys grouped into modules. */
export class LoraFile {
  private constructor(
    readonly store: LoraTensorStore,
    readonly modules: LoraModule[],
    /** Keys that belong to no module we can apply: key -> why. */
    readonly unrecognized: Map<string, string>,
  ) {}

  get path(): string {
    return this.store.path;
  }

  static async open(path: string): Promise<LoraFile> {
    const file = await openTensorFile(path);
    try {
      return await LoraFile.fromStore(file);
    } catch (e) {
      await file.close();
      throw e;
    }
  }

  static async fromStore(store: LoraTensorStore): Promise<LoraFile> {
    const groups = new Map<string, LoraModuleGroup>();
    const unrecognized = new Map<string, string>();
    for (const key of store.tensors.keys()) {
      const split = splitKey(key);
      if (!split) {
        unrecognized.set(key, 'not a LoRA tensor name this tool knows');
        continue;
      }
      const located = locateModule(split.prefix);
      if (!located) {
        unrecognized.set(key, 'its module prefix names no known component (unet, text_encoder, text_encoder_2, transformer)');
        continue;
      }
      let g = groups.get(split.prefix);
      if (!g) {
        g = { prefix: split.prefix, ...located, keys: new Map() };
        groups.set(split.prefix, g);
      }
      g.keys.set(split.role, key);
    }
    const adapterConfig = peftAdapterConfig(store.metadata);
    const modules: LoraModule[] = [];
    for (const g of groups.values()) {
      const built = await buildModule(store, g, adapterConfig);
      if (typeof built === 'string') for (const key of g.keys.values()) unrecognized.set(key, built);
      else modules.push(built);
    }
    if (modules.length === 0) {
      throw new BadInputError(
        store.path,
        `no LoRA modules found among its ${store.tensors.size} tensors`,
        'Pass a LoRA in kohya/A1111, diffusers/PEFT or LyCORIS (LoHa/LoKr) format.',
      );
    }
    return new LoraFile(store, modules, unrecognized);
  }

  summary(): LoraFileSummary {
    const styles = new Set(this.modules.map((m) => m.group.style));
    const components: Partial<Record<LoraComponent, number>> = {};
    const kinds: Partial<Record<LoraKind, number>> = {};
    const pairs = new Map<string, { rank: number; alpha: number; modules: number }>();
    let dora = 0;
    for (const m of this.modules) {
      components[m.component] = (components[m.component] ?? 0) + 1;
      kinds[m.kind] = (kinds[m.kind] ?? 0) + 1;
      const id = `${m.rank}/${m.alpha}`;
      const p = pairs.get(id) ?? { rank: m.rank, alpha: m.alpha, modules: 0 };
      p.modules++;
      pairs.set(id, p);
      if (m.doraKey) dora++;
    }
    return {
      style: styles.size === 0 ? 'none' : styles.size === 1 ? [...styles][0] : 'mixed',
      components,
      kinds,
      rankAlpha: [...pairs.values()].sort((a, b) => a.rank - b.rank || a.alpha - b.alpha),
      dora,
    };
  }

  close(): Promise<void> {
    return this.store.close();
  }
}
