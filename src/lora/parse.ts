/**
 * LoRA files -> per-module deltas. Understands kohya/A1111 (`lora_unet_*`, `lora_te_*`, `lora_te1_/lora_te2_`),
 * diffusers/PEFT (`unet.<module>.lora_A.weight`), diffusers' older formats (`.lora.down.weight`,
 * `.lora_linear_layer.down.weight`, attention processors `processor.to_q_lora.down.weight`), LyCORIS LoHa and LoKr,
 * LoCon's CP `lora_mid`, full `diff` and DoRA magnitudes (`dora_scale`, PEFT `lora_magnitude_vector`).
 *
 * Parsing happens in two steps: `LoraFile.open` groups keys into modules by their file names alone (enough for
 * `inspect`); `resolveTarget` then finds each module's canonical target in a base's `buildTargetIndex`.
 * Every delta is computed in float32 as a matrix [out, in * kh * kw] (the row-major flattening of the target weight).
 */
import { numel } from '../checkpoint/weight-source.js';
import { familiesByContextWidth, type FamilyId } from '../families/index.js';
import { BadInputError } from '../errors.js';
import { matmul } from './matmul.js';
import type { SafetensorsDType } from '../safetensors/dtypes.js';
import { openTensorFile } from '../safetensors/tensor-file.js';
import { canonicalUnetToLdm, type UnetLdmLayout } from '../checkpoint/keymap-sd.js';
import { transpose2d } from '../checkpoint/sources.js';

/** What LoRA parsing needs from a tensor file; every TensorFile (safetensors, PyTorch) has it, tests may pass their own. */
export interface LoraTensorStore {
  readonly path: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly tensors: ReadonlyMap<string, { dtype: SafetensorsDType; shape: number[] }>;
  readF32(name: string): Promise<Float32Array>;
  close(): Promise<void>;
}

export type LoraComponent = 'unet' | 'text_encoder' | 'text_encoder_2' | 'transformer';
export type LoraKind = 'lora' | 'loha' | 'lokr' | 'full';
export type LoraKeyStyle = 'kohya' | 'peft' | 'diffusers-legacy' | 'unprefixed';

/** Tensor roles inside one module. `down`/`up` are LoRA's A/B. */
const ROLE_SUFFIXES: [suffix: string, role: string][] = [
  ['.lora_down.weight', 'down'],
  ['.lora_up.weight', 'up'],
  ['.lora_mid.weight', 'mid'],
  ['.lora_A.weight', 'down'],
  ['.lora_B.weight', 'up'],
  ['.lora_A.default.weight', 'down'],
  ['.lora_B.default.weight', 'up'],
  ['.lora.down.weight', 'down'],
  ['.lora.up.weight', 'up'],
  ['.lora_linear_layer.down.weight', 'down'],
  ['.lora_linear_layer.up.weight', 'up'],
  ['.lora_magnitude_vector.weight', 'dora'],
  ['.lora_magnitude_vector.default.weight', 'dora'],
  ['.lora_magnitude_vector', 'dora'],
  ['.dora_scale', 'dora'],
  ['.alpha', 'alpha'],
  ['.hada_w1_a', 'hada_w1_a'],
  ['.hada_w1_b', 'hada_w1_b'],
  ['.hada_w2_a', 'hada_w2_a'],
  ['.hada_w2_b', 'hada_w2_b'],
  ['.hada_t1', 'hada_t1'],
  ['.hada_t2', 'hada_t2'],
  ['.lokr_w1', 'lokr_w1'],
  ['.lokr_w1_a', 'lokr_w1_a'],
  ['.lokr_w1_b', 'lokr_w1_b'],
  ['.lokr_w2', 'lokr_w2'],
  ['.lokr_w2_a', 'lokr_w2_a'],
  ['.lokr_w2_b', 'lokr_w2_b'],
  ['.lokr_t2', 'lokr_t2'],
  ['.diff', 'diff'],
];

/** diffusers' attention-processor LoRA: `<attn>.processor.to_q_lora.down.weight` -> module `<attn>.to_q`. */
const PROCESSOR_RE = /^(.*)\.processor\.(to_q|to_k|to_v|to_out|add_q_proj|add_k_proj|add_v_proj|to_add_out)_lora\.(down|up)\.weight$/;
const PROCESSOR_MODULE: Record<string, string> = { to_out: 'to_out.0', to_add_out: 'to_add_out' };

const UNPREFIXED_UNET_RE = /^(down_blocks|mid_block|up_blocks|conv_in|conv_out|time_embedding|add_embedding)\./;
/** A DiT's own module names (PixArt's PixArtTransformer2DModel), as PEFT saves an adapter of the transformer alone. */
const UNPREFIXED_TRANSFORMER_RE = /^(transformer_blocks|pos_embed|adaln_single|caption_projection|proj_out)(\.|$)/;

export interface LoraModuleGroup {
  /** Common key prefix in the LoRA file, e.g. `lora_unet_down_blocks_0_attentions_0_proj_in`. */
  prefix: string;
  component: LoraComponent;
  style: LoraKeyStyle;
  /** Module path after the component prefix: underscored for kohya (`down_blocks_0_...`), dotted otherwise. */
  path: string;
  /** role -> key in the file */
  keys: Map<string, string>;
}

/** One LoRA module, parsed: which tensors, which algorithm, rank and alpha. */
export class LoraModule {
  /** Canonical module name (`unet.down_blocks.0.attentions.0.proj_in`) once resolved against a base. */
  target: string | undefined;

  constructor(
    readonly store: LoraTensorStore,
    readonly group: LoraModuleGroup,
    readonly kind: LoraKind,
    readonly rank: number,
    /** alpha as used in the formula (alpha missing or 0 -> alpha = rank). */
    readonly alpha: number,
    /** Multiplier applied to the raw product: alpha / rank (or alpha / sqrt(rank) for rsLoRA; 1 for full LoKr). */
    readonly factor: number,
    /** [out, in * kh * kw] of the delta. */
    readonly outFeatures: number,
    readonly inFlat: number,
    /** Kernel [kh, kw] when the LoRA tensors reveal one (convolutions), else undefined. */
    readonly kernel: number[] | undefined,
  ) {}

  get prefix(): string {
    return this.group.prefix;
  }
  get component(): LoraComponent {
    return this.group.component;
  }
  /** Key of the DoRA magnitude tensor, if the module has one. */
  get doraKey(): string | undefined {
    return this.group.keys.get('dora');
  }
  /** Every key of the file that belongs to this module. */
  get fileKeys(): string[] {
    return [...this.group.keys.values()];
  }

  /** factor * (up @ down) etc., as float32 [outFeatures, inFlat] (row-major, same layout as the target weight). */
  async delta(): Promise<Float32Array> {
    const k = this.group.keys;
    const read = (role: string) => this.read(k.get(role)!);
    const shape = (role: string) => this.store.tensors.get(k.get(role)!)!.shape;
    let d: Float32Array;
    switch (this.kind) {
      case 'lora': {
        let up = await read('up');
        const down = await read('down');
        if (k.has('mid')) {
          // LoCon CP: mid [r, r, kh, kw] between up [out, r] and down [r, in]; the Tucker form takes up transposed.
          const mid = shape('mid');
          d = tuckerRebuild(await read('mid'), mid, transpose2d(up, this.outFeatures, mid[0]), this.outFeatures, down, this.inFlat / spatial(mid));
        } else {
          // The factor goes into `up` (out x rank values) rather than into the product (out x in).
          const factor = this.factor;
          if (factor !== 1) up = up.map((v) => v * factor);
          return matmul(up, down, this.outFeatures, this.rank, this.inFlat);
        }
        break;
      }
      case 'loha': {
        const w1 = await this.lohaFactor(1);
        const w2 = await this.lohaFactor(2);
        d = w1;
        for (let i = 0; i < d.length; i++) d[i] *= w2[i];
        break;
      }
      case 'lokr': {
        const [w1, a, b] = await this.lokrFactor(1);
        const [w2, c, dd] = await this.lokrFactor(2);
        d = kron(w1, a, b, w2, c, dd);
        break;
      }
      case 'full':
        d = Float32Array.from(await read('diff'));
        break;
    }
    if (this.factor !== 1) for (let i = 0; i < d.length; i++) d[i] *= this.factor;
    return d;
  }

  private async read(key: string): Promise<Float32Array> {
    return this.store.readF32(key);
  }

  private async lohaFactor(i: 1 | 2): Promise<Float32Array> {
    const k = this.group.keys;
    const a = await this.read(k.get(`hada_w${i}_a`)!);
    const b = await this.read(k.get(`hada_w${i}_b`)!);
    const t = k.get(`hada_t${i}`);
    if (t !== undefined) {
      // Tucker: t [r, r, kh, kw], a [r, out], b [r, in]
      const tShape = this.store.tensors.get(t)!.shape;
      return tuckerRebuild(await this.read(t), tShape, a, this.outFeatures, b, this.inFlat / spatial(tShape));
    }
    return await matmul(a, b, this.outFeatures, this.rank, this.inFlat);
  }

  /** A LoKr factor as a matrix with its [rows, cols]. */
  private async lokrFactor(i: 1 | 2): Promise<[Float32Array, number, number]> {
    const k = this.group.keys;
    const full = k.get(`lokr_w${i}`);
    const shapeOf = (key: string) => this.store.tensors.get(key)!.shape;
    if (full !== undefined) {
      const s = shapeOf(full);
      return [await this.read(full), s[0], numel(s) / s[0]];
    }
    const aKey = k.get(`lokr_w${i}_a`)!;
    const bKey = k.get(`lokr_w${i}_b`)!;
    const a = await this.read(aKey);
    const b = await this.read(bKey);
    const t = i === 2 ? k.get('lokr_t2') : undefined;
    if (t !== undefined) {
      // Tucker: t [r, r, kh, kw], a [r, c], b [r, d]
      const tShape = shapeOf(t);
      const rows = shapeOf(aKey)[1];
      const cols = shapeOf(bKey)[1];
      return [tuckerRebuild(await this.read(t), tShape, a, rows, b, cols), rows, cols * spatial(tShape)];
    }
    const rows = shapeOf(aKey)[0];
    const r = shapeOf(aKey)[1];
    const cols = numel(shapeOf(bKey)) / r;
    return [await matmul(a, b, rows, r, cols), rows, cols];
  }
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

function splitKey(key: string): { prefix: string; role: string } | undefined {
  const proc = PROCESSOR_RE.exec(key);
  if (proc) return { prefix: `${proc[1]}.${PROCESSOR_MODULE[proc[2]] ?? proc[2]}`, role: proc[3] };
  for (const [suffix, role] of ROLE_SUFFIXES) {
    if (key.endsWith(suffix) && key.length > suffix.length) return { prefix: key.slice(0, -suffix.length), role };
  }
  return undefined;
}

function locateModule(prefix: string): Pick<LoraModuleGroup, 'component' | 'style' | 'path'> | undefined {
  const kohya: [string, LoraComponent][] = [
    ['lora_unet_', 'unet'],
    ['lora_te1_', 'text_encoder'],
    ['lora_te2_', 'text_encoder_2'],
    ['lora_te_', 'text_encoder'],
    ['lora_transformer_', 'transformer'],
  ];
  for (const [p, component] of kohya) {
    if (prefix.startsWith(p)) return { component, style: 'kohya', path: prefix.slice(p.length) };
  }
  const dotted: [string, LoraComponent][] = [
    ['unet.', 'unet'],
    ['text_encoder.', 'text_encoder'],
    ['text_encoder_2.', 'text_encoder_2'],
    ['transformer.', 'transformer'],
  ];
  for (const [p, component] of dotted) {
    if (prefix.startsWith(p)) {
      let path = prefix.slice(p.length);
      if (path.startsWith('base_model.model.')) path = path.slice('base_model.model.'.length);
      return { component, style: 'peft', path };
    }
  }
  if (UNPREFIXED_UNET_RE.test(prefix)) return { component: 'unet', style: 'unprefixed', path: prefix };
  const bare = prefix.startsWith('base_model.model.') ? prefix.slice('base_model.model.'.length) : prefix;
  if (UNPREFIXED_TRANSFORMER_RE.test(bare)) return { component: 'transformer', style: 'unprefixed', path: bare };
  return undefined;
}

interface PeftAdapterConfig {
  /** Per component (or '' for a config that names none). */
  get(component: LoraComponent, path: string, rank: number): number | undefined;
}

/**
 * diffusers >= 0.33 stores the PEFT LoraConfig of each component in the `lora_adapter_metadata` metadata entry
 * (keys prefixed `unet.` / `text_encoder.`); PEFT's own adapters carry the same fields without prefix. Returns the
 * alpha to use for a module (with rsLoRA folded in as an equivalent alpha), or undefined when nothing says.
 */
function peftAdapterConfig(metadata: Readonly<Record<string, string>>): PeftAdapterConfig | undefined {
  const raw = metadata['lora_adapter_metadata'] ?? metadata['adapter_config'];
  if (raw === undefined) return undefined;
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(raw) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const field = (component: string, name: string): unknown => cfg[`${component}.${name}`] ?? cfg[name];
  return {
    get(component, path, rank) {
      let alpha = field(component, 'lora_alpha');
      const pattern = field(component, 'alpha_pattern');
      if (pattern && typeof pattern === 'object') {
        for (const [p, v] of Object.entries(pattern as Record<string, unknown>)) {
          if (path === p || path.endsWith(`.${p}`)) alpha = v;
        }
      }
      if (typeof alpha !== 'number') return undefined;
      // rsLoRA scales by alpha / sqrt(r): the same as a plain alpha of alpha * sqrt(r).
      return field(component, 'use_rslora') === true ? alpha * Math.sqrt(rank) : alpha;
    },
  };
}

async function buildModule(store: LoraTensorStore, g: LoraModuleGroup, peft: PeftAdapterConfig | undefined): Promise<LoraModule | string> {
  const k = g.keys;
  const shape = (role: string) => store.tensors.get(k.get(role)!)!.shape;
  const has = (...roles: string[]) => roles.every((r) => k.has(r));
  const alphaStored = k.has('alpha') ? (await store.readF32(k.get('alpha')!))[0] : undefined;
  const alphaFor = (rank: number): number => {
    if (alphaStored !== undefined && alphaStored !== 0 && Number.isFinite(alphaStored)) return alphaStored;
    return peft?.get(g.component, g.path, rank) ?? rank;
  };
  const module = (kind: LoraKind, rank: number, alpha: number, factor: number, out: number, inFlat: number, kernel?: number[]) =>
    new LoraModule(store, g, kind, rank, alpha, factor, out, inFlat, kernel);
  const kernelOf = (s: number[]) => (s.length === 4 ? s.slice(2) : undefined);

  if (has('up', 'down')) {
    const up = shape('up');
    const down = shape('down');
    const rank = down[0];
    if (up.length < 2 || up[1] !== rank || (up.length === 4 && spatial(up) !== 1)) {
      return `LoRA up ${JSON.stringify(up)} does not fit down ${JSON.stringify(down)}`;
    }
    if (has('mid')) {
      const mid = shape('mid');
      if (mid.length !== 4 || mid[0] !== rank || mid[1] !== rank) return `LoRA mid ${JSON.stringify(mid)} does not fit rank ${rank}`;
      const alpha = alphaFor(rank);
      return module('lora', rank, alpha, alpha / rank, up[0], down[1] * spatial(mid), mid.slice(2));
    }
    const alpha = alphaFor(rank);
    return module('lora', rank, alpha, alpha / rank, up[0], numel(down) / rank, kernelOf(down));
  }
  if (has('hada_w1_a', 'hada_w1_b', 'hada_w2_a', 'hada_w2_b')) {
    const rank = shape('hada_w1_b')[0];
    const alpha = alphaFor(rank);
    if (has('hada_t1')) {
      const t = shape('hada_t1');
      if (!has('hada_t2')) return 'LoHa with hada_t1 but no hada_t2';
      return module('loha', rank, alpha, alpha / rank, shape('hada_w1_a')[1], shape('hada_w1_b')[1] * spatial(t), t.slice(2));
    }
    const w1a = shape('hada_w1_a');
    const w1b = shape('hada_w1_b');
    const w2a = shape('hada_w2_a');
    const w2b = shape('hada_w2_b');
    if (w1a[1] !== rank || w2a[1] !== w2b[0] || w1a[0] !== w2a[0] || numel(w1b) / rank !== numel(w2b) / w2b[0]) {
      return `LoHa factor shapes ${JSON.stringify([w1a, w1b, w2a, w2b])} do not fit together`;
    }
    return module('loha', rank, alpha, alpha / rank, w1a[0], numel(w1b) / rank, kernelOf(w1b));
  }
  if ((has('lokr_w1') || has('lokr_w1_a', 'lokr_w1_b')) && (has('lokr_w2') || has('lokr_w2_a', 'lokr_w2_b'))) {
    let rows1: number, cols1: number, rows2: number, cols2: number;
    let rank: number | undefined;
    let kernel: number[] | undefined;
    if (has('lokr_w1')) {
      const s = shape('lokr_w1');
      if (spatial(s) !== 1) return `LoKr lokr_w1 ${JSON.stringify(s)} has a kernel; only lokr_w2 may`;
      [rows1, cols1] = [s[0], numel(s) / s[0]];
    } else {
      rank = shape('lokr_w1_b')[0];
      [rows1, cols1] = [shape('lokr_w1_a')[0], numel(shape('lokr_w1_b')) / rank];
    }
    if (has('lokr_w2')) {
      const s = shape('lokr_w2');
      [rows2, cols2] = [s[0], numel(s) / s[0]];
      kernel = kernelOf(s);
    } else if (has('lokr_t2')) {
      const t = shape('lokr_t2');
      rank = t[0];
      [rows2, cols2] = [shape('lokr_w2_a')[1], shape('lokr_w2_b')[1] * spatial(t)];
      kernel = t.slice(2);
    } else {
      rank = shape('lokr_w2_b')[0];
      [rows2, cols2] = [shape('lokr_w2_a')[0], numel(shape('lokr_w2_b')) / rank];
      kernel = kernelOf(shape('lokr_w2_b'));
    }
    // Neither factor decomposed: LyCORIS applies the product at scale 1.
    if (rank === undefined) return module('lokr', 0, alphaStored ?? 0, 1, rows1 * rows2, cols1 * cols2, kernel);
    const alpha = alphaFor(rank);
    return module('lokr', rank, alpha, alpha / rank, rows1 * rows2, cols1 * cols2, kernel);
  }
  if (has('diff')) {
    const s = shape('diff');
    return module('full', 0, 0, 1, s[0], numel(s) / s[0], kernelOf(s));
  }
  const roles = [...k.keys()].sort().join(', ');
  return `incomplete or unsupported module (tensors: ${roles})`;
}

// ---------------------------------------------------------------------------------------------------------------
// Resolving module names against a base

export interface TargetIndex {
  /** Canonical module names (`unet.down_blocks.0.attentions.0.proj_in`) that have a `.weight`. */
  modules: Set<string>;
  /** `${component}:${underscored path}` -> canonical module, for kohya names (diffusers- and LDM-style). */
  underscored: Map<string, string>;
  components: Set<string>;
}

/**
 * The base UNet's LDM layout, from its own names: layers per block, and which up blocks have attention (SD: all but
 * block 0; SDXL: blocks 0 and 1), which decides whether an up block's upsampler is `output_blocks.N.1` or `.2`.
 */
function unetLdmLayout(names: string[]): UnetLdmLayout {
  const resnets = new Set<number>();
  const upAttention = new Set<number>();
  for (const n of names) {
    let m = /^unet\.down_blocks\.0\.resnets\.(\d+)\./.exec(n);
    if (m) resnets.add(Number(m[1]));
    m = /^unet\.up_blocks\.(\d+)\.attentions\./.exec(n);
    if (m) upAttention.add(Number(m[1]));
  }
  return { layersPerBlock: resnets.size || 2, upBlockHasAttention: (b) => upAttention.has(b) };
}

/** Builds the name index once per base from its canonical weight names. */
export function buildTargetIndex(baseNames: Iterable<string>): TargetIndex {
  const names = [...baseNames];
  const layout = unetLdmLayout(names);
  const modules = new Set<string>();
  const underscored = new Map<string, string>();
  const ambiguous = new Set<string>();
  const components = new Set<string>();
  const add = (key: string, module: string) => {
    const prev = underscored.get(key);
    if (prev !== undefined && prev !== module) ambiguous.add(key);
    else underscored.set(key, module);
  };
  for (const name of names) {
    const dot = name.indexOf('.');
    if (dot < 0) continue;
    components.add(name.slice(0, dot));
    if (!name.endsWith('.weight')) continue;
    const module = name.slice(0, -'.weight'.length);
    modules.add(module);
    const component = name.slice(0, dot);
    const path = module.slice(dot + 1);
    add(`${component}:${path.replace(/\./g, '_')}`, module);
    if (component === 'unet') {
      // LDM-style kohya names (`lora_unet_input_blocks_4_1_proj_in`), as SD-trained kohya LoRAs write them.
      const ldm = canonicalUnetToLdm(`${path}.weight`, layout);
      if (ldm !== undefined) add(`unet:${ldm.slice(0, -'.weight'.length).replace(/\./g, '_')}`, module);
    }
  }
  for (const key of ambiguous) underscored.delete(key);
  return { modules, underscored, components };
}

/** Finds the canonical module a LoRA module targets, or undefined. */
export function resolveTarget(group: LoraModuleGroup, index: TargetIndex): string | undefined {
  if (group.style === 'kohya') return index.underscored.get(`${group.component}:${group.path}`);
  const module = `${group.component}.${group.path}`;
  return index.modules.has(module) ? module : undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Family guess (for inspect and for wrong-family errors)

export type LoraFamilyGuess = FamilyId;

export interface LoraDescription {
  path: string;
  keyStyle: LoraFileSummary['style'];
  /** Families the LoRA can be for, best first; several when nothing tells them apart (tiny test models). */
  families: LoraFamilyGuess[];
  familyEvidence: string;
  components: LoraFileSummary['components'];
  moduleCount: number;
  kinds: LoraFileSummary['kinds'];
  rankAlpha: LoraFileSummary['rankAlpha'];
  doraModules: number;
  unrecognizedKeys: number;
  metadata: Readonly<Record<string, string>>;
}

/** Which model families a LoRA fits, from its component and module names and widths. */
export function guessLoraFamily(file: LoraFile): { families: LoraFamilyGuess[]; evidence: string } {
  const mods = file.modules;
  const dit = mods.find((m) => m.component === 'transformer');
  if (dit) return { families: ['pixart-alpha'], evidence: `targets the transformer (${dit.group.path})` };
  if (mods.some((m) => m.component === 'text_encoder_2')) return { families: ['sdxl'], evidence: 'has a second text encoder (te2)' };
  const sdxlUnet = mods.find((m) => m.component === 'unet' && /(^|[._])(add_embedding|label_emb)([._]|$)/.test(m.group.path));
  if (sdxlUnet) return { families: ['sdxl'], evidence: `targets ${sdxlUnet.group.path} (SDXL's added embedding)` };
  // Cross-attention key/value projections read the text encoder's width: 768 SD1, 1024 SD2, 2048 SDXL.
  const crossKv = mods.find((m) => m.component === 'unet' && /attn2[._]to_[kv]$/.test(m.group.path));
  const width = crossKv?.inFlat;
  const byWidth = (w: number | undefined): LoraFamilyGuess | undefined => {
    const found = w === undefined ? [] : familiesByContextWidth(w);
    return found.length === 1 ? found[0].id : undefined;
  };
  const crossFamily = byWidth(width);
  if (crossFamily) return { families: [crossFamily], evidence: `cross-attention width ${width}` };
  // SD 1.x / 2.x condition on their one text encoder's hidden states, so its width is the context width.
  const te = mods.find((m) => m.component === 'text_encoder' && /q_proj$/.test(m.group.path));
  const teFamily = byWidth(te?.inFlat);
  if (te && teFamily && teFamily !== 'sdxl') return { families: [teFamily], evidence: `text encoder width ${te.inFlat}` };
  const evidence =
    width !== undefined ? `cross-attention width ${width} is no released model's; unet + one text encoder` : 'unet / text encoder module names';
  return { families: ['sd1', 'sd2'], evidence };
}

/** What `inspect` prints about a LoRA file. */
export async function describeLora(path: string): Promise<LoraDescription> {
  const file = await LoraFile.open(path);
  try {
    const s = file.summary();
    const fam = guessLoraFamily(file);
    return {
      path,
      keyStyle: s.style,
      families: fam.families,
      familyEvidence: fam.evidence,
      components: s.components,
      moduleCount: file.modules.length,
      kinds: s.kinds,
      rankAlpha: s.rankAlpha,
      doraModules: s.dora,
      unrecognizedKeys: file.unrecognized.size,
      metadata: file.store.metadata,
    };
  } finally {
    await file.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Small dense math, float32 out, float64 accumulation where it is free

function spatial(s: number[]): number {
  return numel(s.slice(2));
}

/** Kronecker product of a [ra, ca] and b [rb, cb] -> [ra*rb, ca*cb]. */
export function kron(a: Float32Array, ra: number, ca: number, b: Float32Array, rb: number, cb: number): Float32Array {
  const cols = ca * cb;
  const out = new Float32Array(ra * rb * cols);
  for (let i = 0; i < ra; i++) {
    for (let j = 0; j < ca; j++) {
      const av = a[i * ca + j];
      for (let k = 0; k < rb; k++) {
        const o = (i * rb + k) * cols + j * cb;
        const bo = k * cb;
        for (let l = 0; l < cb; l++) out[o + l] = av * b[bo + l];
      }
    }
  }
  return out;
}

/**
 * LyCORIS Tucker: result[p, q, s] = sum_{i,j} t[i, j, s] * a[i, p] * b[j, q]
 * (t [r1, r2, kh, kw], a [r1, rows], b [r2, cols]) -> [rows, cols * kh * kw].
 */
function tuckerRebuild(t: Float32Array, tShape: number[], a: Float32Array, rows: number, b: Float32Array, cols: number): Float32Array {
  const [r1, r2] = tShape;
  const S = spatial(tShape);
  // tmp[i, q, s] = sum_j t[i, j, s] * b[j, q]
  const tmp = new Float64Array(r1 * cols * S);
  for (let i = 0; i < r1; i++)
    for (let j = 0; j < r2; j++)
      for (let q = 0; q < cols; q++) {
        const bv = b[j * cols + q];
        for (let s = 0; s < S; s++) tmp[(i * cols + q) * S + s] += t[(i * r2 + j) * S + s] * bv;
      }
  const width = cols * S;
  const result = new Float32Array(rows * width);
  for (let p = 0; p < rows; p++) {
    const row = new Float64Array(width);
    for (let i = 0; i < r1; i++) {
      const av = a[i * rows + p];
      for (let c = 0; c < width; c++) row[c] += av * tmp[i * width + c];
    }
    result.set(row, p * width);
  }
  return result;
}
