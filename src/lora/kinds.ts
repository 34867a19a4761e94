/**
 * The LoRA kinds, one record each holding both its shape rules (which tensors it has, how they must fit, the delta's
 * [out, in * kh * kw] and rank) and its math (the delta). Every delta is float32, row-major like the target weight.
 *
 * - lora: factor * (up @ down); LoCon's CP `mid` [r, r, kh, kw] between them (a Tucker rebuild).
 * - loha: factor * ((w1a @ w1b) ⊙ (w2a @ w2b)), each factor optionally Tucker (hada_t1 / hada_t2).
 * - lokr: factor * kron(w1, w2), either factor optionally low-rank (w_a @ w_b, w2 optionally Tucker); scale 1 when
 *   neither factor is decomposed (LyCORIS).
 * - full: the stored difference itself.
 * factor = alpha / rank, alpha missing or 0 -> alpha = rank (or PEFT's adapter config; rsLoRA folded in).
 */
import { transpose2d } from '../checkpoint/sources.js';
import { numel } from '../checkpoint/weight-source.js';
import type { LoraComponent, LoraModuleGroup, PeftAdapterConfig } from './keys.js';
import { kron, spatial, tuckerRebuild } from './math.js';
import { matmul } from './matmul.js';
import type { LoraTensorStore } from './parse.js';

export type LoraKind = 'lora' | 'loha' | 'lokr' | 'full';

/** What a kind's shape rule decides of a module. */
interface ModuleShape {
  rank: number;
  alpha: number;
  factor: number;
  outFeatures: number;
  inFlat: number;
  kernel?: number[];
}

/** What a shape rule reads: the module's tensor shapes, and the alpha its file or adapter config gives a rank. */
interface ShapeContext {
  has(...roles: string[]): boolean;
  shape(role: string): number[];
  /** The stored alpha if non-zero and finite, else the adapter config's, else the rank. */
  alphaFor(rank: number): number;
  alphaStored: number | undefined;
}

interface KindRule {
  /** Whether a module with these roles is of this kind (checked in KIND_ORDER). */
  matches(c: ShapeContext): boolean;
  /** The module's shape, or why its tensors do not fit together. */
  shape(c: ShapeContext): ModuleShape | string;
  delta(m: LoraModule): Promise<Float32Array>;
}

const kernelOf = (s: number[]) => (s.length === 4 ? s.slice(2) : undefined);

function scaled(d: Float32Array, factor: number): Float32Array {
  if (factor !== 1) for (let i = 0; i < d.length; i++) d[i] *= factor;
  return d;
}

const LORA: KindRule = {
  matches: (c) => c.has('up', 'down'),
  shape(c) {
    const up = c.shape('up');
    const down = c.shape('down');
    const rank = down[0];
    if (up.length < 2 || up[1] !== rank || (up.length === 4 && spatial(up) !== 1)) {
      return `LoRA up ${JSON.stringify(up)} does not fit down ${JSON.stringify(down)}`;
    }
    const alpha = c.alphaFor(rank);
    if (c.has('mid')) {
      const mid = c.shape('mid');
      if (mid.length !== 4 || mid[0] !== rank || mid[1] !== rank) return `LoRA mid ${JSON.stringify(mid)} does not fit rank ${rank}`;
      return { rank, alpha, factor: alpha / rank, outFeatures: up[0], inFlat: down[1] * spatial(mid), kernel: mid.slice(2) };
    }
    return { rank, alpha, factor: alpha / rank, outFeatures: up[0], inFlat: numel(down) / rank, kernel: kernelOf(down) };
  },
  async delta(m) {
    let up = await m.read('up');
    const down = await m.read('down');
    if (m.group.keys.has('mid')) {
      // LoCon CP: mid [r, r, kh, kw] between up [out, r] and down [r, in]; the Tucker form takes up transposed.
      const mid = m.shapeOf('mid');
      return scaled(tuckerRebuild(await m.read('mid'), mid, transpose2d(up, m.outFeatures, mid[0]), m.outFeatures, down, m.inFlat / spatial(mid)), m.factor);
    }
    // The factor goes into `up` (out x rank values) rather than into the product (out x in).
    const factor = m.factor;
    if (factor !== 1) up = up.map((v) => v * factor);
    return matmul(up, down, m.outFeatures, m.rank, m.inFlat);
  },
};

const LOHA: KindRule = {
  matches: (c) => c.has('hada_w1_a', 'hada_w1_b', 'hada_w2_a', 'hada_w2_b'),
  shape(c) {
    const rank = c.shape('hada_w1_b')[0];
    const alpha = c.alphaFor(rank);
    if (c.has('hada_t1')) {
      const t = c.shape('hada_t1');
      if (!c.has('hada_t2')) return 'LoHa with hada_t1 but no hada_t2';
      return { rank, alpha, factor: alpha / rank, outFeatures: c.shape('hada_w1_a')[1], inFlat: c.shape('hada_w1_b')[1] * spatial(t), kernel: t.slice(2) };
    }
    const [w1a, w1b, w2a, w2b] = ['hada_w1_a', 'hada_w1_b', 'hada_w2_a', 'hada_w2_b'].map((r) => c.shape(r));
    if (w1a[1] !== rank || w2a[1] !== w2b[0] || w1a[0] !== w2a[0] || numel(w1b) / rank !== numel(w2b) / w2b[0]) {
      return `LoHa factor shapes ${JSON.stringify([w1a, w1b, w2a, w2b])} do not fit together`;
    }
    return { rank, alpha, factor: alpha / rank, outFeatures: w1a[0], inFlat: numel(w1b) / rank, kernel: kernelOf(w1b) };
  },
  async delta(m) {
    const factor = async (i: 1 | 2): Promise<Float32Array> => {
      const a = await m.read(`hada_w${i}_a`);
      const b = await m.read(`hada_w${i}_b`);
      if (m.group.keys.has(`hada_t${i}`)) {
        // Tucker: t [r, r, kh, kw], a [r, out], b [r, in]
        const tShape = m.shapeOf(`hada_t${i}`);
        return tuckerRebuild(await m.read(`hada_t${i}`), tShape, a, m.outFeatures, b, m.inFlat / spatial(tShape));
      }
      return matmul(a, b, m.outFeatures, m.rank, m.inFlat);
    };
    const d = await factor(1);
    const w2 = await factor(2);
    for (let i = 0; i < d.length; i++) d[i] *= w2[i];
    return scaled(d, m.factor);
  },
};

const LOKR: KindRule = {
  matches: (c) => (c.has('lokr_w1') || c.has('lokr_w1_a', 'lokr_w1_b')) && (c.has('lokr_w2') || c.has('lokr_w2_a', 'lokr_w2_b')),
  shape(c) {
    let rows1: number, cols1: number, rows2: number, cols2: number;
    let rank: number | undefined;
    let kernel: number[] | undefined;
    if (c.has('lokr_w1')) {
      const s = c.shape('lokr_w1');
      if (spatial(s) !== 1) return `LoKr lokr_w1 ${JSON.stringify(s)} has a kernel; only lokr_w2 may`;
      [rows1, cols1] = [s[0], numel(s) / s[0]];
    } else {
      rank = c.shape('lokr_w1_b')[0];
      [rows1, cols1] = [c.shape('lokr_w1_a')[0], numel(c.shape('lokr_w1_b')) / rank];
    }
    if (c.has('lokr_w2')) {
      const s = c.shape('lokr_w2');
      [rows2, cols2] = [s[0], numel(s) / s[0]];
      kernel = kernelOf(s);
    } else if (c.has('lokr_t2')) {
      const t = c.shape('lokr_t2');
      rank = t[0];
      [rows2, cols2] = [c.shape('lokr_w2_a')[1], c.shape('lokr_w2_b')[1] * spatial(t)];
      kernel = t.slice(2);
    } else {
      rank = c.shape('lokr_w2_b')[0];
      [rows2, cols2] = [c.shape('lokr_w2_a')[0], numel(c.shape('lokr_w2_b')) / rank];
      kernel = kernelOf(c.shape('lokr_w2_b'));
    }
    const [outFeatures, inFlat] = [rows1 * rows2, cols1 * cols2];
    // Neither factor decomposed: LyCORIS applies the product at scale 1.
    if (rank === undefined) return { rank: 0, alpha: c.alphaStored ?? 0, factor: 1, outFeatures, inFlat, kernel };
    const alpha = c.alphaFor(rank);
    return { rank, alpha, factor: alpha / rank, outFeatures, inFlat, kernel };
  },
  async delta(m) {
    /** A LoKr factor as a matrix with its [rows, cols]. */
    const factor = async (i: 1 | 2): Promise<[Float32Array, number, number]> => {
      const k = m.group.keys;
      if (k.has(`lokr_w${i}`)) {
        const s = m.shapeOf(`lokr_w${i}`);
        return [await m.read(`lokr_w${i}`), s[0], numel(s) / s[0]];
      }
      const a = await m.read(`lokr_w${i}_a`);
      const b = await m.read(`lokr_w${i}_b`);
      const aShape = m.shapeOf(`lokr_w${i}_a`);
      const bShape = m.shapeOf(`lokr_w${i}_b`);
      if (i === 2 && k.has('lokr_t2')) {
        // Tucker: t [r, r, kh, kw], a [r, c], b [r, d]
        const tShape = m.shapeOf('lokr_t2');
        return [tuckerRebuild(await m.read('lokr_t2'), tShape, a, aShape[1], b, bShape[1]), aShape[1], bShape[1] * spatial(tShape)];
      }
      const [rows, r] = aShape;
      const cols = numel(bShape) / r;
      return [await matmul(a, b, rows, r, cols), rows, cols];
    };
    const [w1, a, b] = await factor(1);
    const [w2, c, d] = await factor(2);
    return scaled(kron(w1, a, b, w2, c, d), m.factor);
  },
};

const FULL: KindRule = {
  matches: (c) => c.has('diff'),
  shape(c) {
    const s = c.shape('diff');
    return { rank: 0, alpha: 0, factor: 1, outFeatures: s[0], inFlat: numel(s) / s[0], kernel: kernelOf(s) };
  },
  delta: async (m) => Float32Array.from(await m.read('diff')),
};

export const LORA_KINDS: Record<LoraKind, KindRule> = { lora: LORA, loha: LOHA, lokr: LOKR, full: FULL };
const KIND_ORDER: LoraKind[] = ['lora', 'loha', 'lokr', 'full'];

/** One LoRA module, parsed: which tensors, which kind, rank and alpha. */
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
  delta(): Promise<Float32Array> {
    return LORA_KINDS[this.kind].delta(this);
  }

  /** The module's tensor in `role`, as float32. */
  read(role: string): Promise<Float32Array> {
    return this.store.readF32(this.group.keys.get(role)!);
  }
  shapeOf(role: string): number[] {
    return this.store.tensors.get(this.group.keys.get(role)!)!.shape;
  }
}

/** The module a group of keys forms, or why it forms none. */
export async function buildModule(store: LoraTensorStore, g: LoraModuleGroup, peft: PeftAdapterConfig | undefined): Promise<LoraModule | string> {
  const k = g.keys;
  const alphaStored = k.has('alpha') ? (await store.readF32(k.get('alpha')!))[0] : undefined;
  const context: ShapeContext = {
    has: (...roles) => roles.every((r) => k.has(r)),
    shape: (role) => store.tensors.get(k.get(role)!)!.shape,
    alphaFor: (rank) => {
      if (alphaStored !== undefined && alphaStored !== 0 && Number.isFinite(alphaStored)) return alphaStored;
      return peft?.get(g.component, g.path, rank) ?? rank;
    },
    alphaStored,
  };
  const kind = KIND_ORDER.find((name) => LORA_KINDS[name].matches(context));
  if (!kind) return `incomplete or unsupported module (tensors: ${[...k.keys()].sort().join(', ')})`;
  const s = LORA_KINDS[kind].shape(context);
  if (typeof s === 'string') return s;
  return new LoraModule(store, g, kind, s.rank, s.alpha, s.factor, s.outFeatures, s.inFlat, s.kernel);
}
