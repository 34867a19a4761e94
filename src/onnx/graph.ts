import { createHash } from 'node:crypto';
import { numel, type WeightSource } from '../checkpoint/weight-source.js';
import { OnestepError } from '../errors.js';
import { f32ToF16Bits } from '../safetensors/dtypes.js';
import { ELEM_TYPES, type AttrValue, type ElemType, type NodeProtoData, type ValueInfoData } from './proto.js';

/** A typed handle on a tensor in the graph being built. */
export interface Value {
  readonly name: string;
  readonly type: ElemType;
}

export type Dims = (number | string)[];

/** How a stored weight becomes an initializer: applied when the model is written, one tensor at a time. */
export interface WeightView {
  /** 2-D weights: store W^T, for MatMul(x, W^T) (an int8 site's B for a linear layer, onnx/int8.ts). */
  transpose?: boolean;
  /** Reinterpret the stored values under another shape of the same size (e.g. a 1x1 conv as a linear). */
  reshape?: number[];
  /** 4-D weights: reorder the axes (OIHW -> OHWI for NhwcConv is [0, 2, 3, 1]). */
  permute?: number[];
  /**
   * Several stored 2-D weights [out, in] side by side as one [in, sum(out)] matrix, interleaved per head: head h's
   * columns of each key in turn (the packed QKV layout of com.microsoft MultiHeadAttention). `key` is the first.
   */
  pack?: { keys: string[]; heads: number };
  /**
   * The int8 form `convert --quantize int8` stores (onnx/int8.ts), computed from the weight as viewed, of `dims`, with
   * channels along `axis`: 'values' int8, 'scales' their float32 per-channel scales (times `times`), 'bias' this
   * tensor as int32 at scale `times` * the scales of `weight`.
   */
  quant?: { part: 'values' | 'scales' | 'bias'; axis: number; dims: number[]; times?: number; weight?: { key: string; view: WeightView } };
}

/** Where Graph.groupNorm emitted a group normalization: the node range and what it reads (for cuda-fusions.ts). */
export interface GroupNormSite {
  first: number;
  count: number;
  input: string;
  output: string;
  prefix: string;
  groups: number;
  eps: number;
}

export interface InitializerSpec {
  name: string;
  type: ElemType;
  dims: number[];
  /** A weight read from the WeightSource at write time, or bytes known now (constants). */
  weight?: { key: string; view: WeightView };
  raw?: Uint8Array;
}

type Attrs = Record<string, number | bigint | string | number[] | { floats: number[] } | { float: number } | undefined>;

function toAttr(v: Exclude<Attrs[string], undefined>): AttrValue {
  if (typeof v === 'string') return { type: 'string', value: v };
  if (typeof v === 'bigint') return { type: 'int', value: v };
  if (typeof v === 'number') return Number.isInteger(v) ? { type: 'int', value: v } : { type: 'float', value: v };
  if (Array.isArray(v)) return { type: 'ints', value: v };
  if ('floats' in v) return { type: 'floats', value: v.floats };
  return { type: 'float', value: v.float };
}

function typedBytes(type: ElemType, values: ArrayLike<number | bigint>): Uint8Array {
  switch (type) {
    case 'float32':
      return new Uint8Array(Float32Array.from(values as ArrayLike<number>).buffer);
    case 'float64':
      return new Uint8Array(Float64Array.from(values as ArrayLike<number>).buffer);
    case 'int64':
      return new Uint8Array(BigInt64Array.from(Array.from(values, (v) => BigInt(v))).buffer);
    case 'int32':
      return new Uint8Array(Int32Array.from(values as ArrayLike<number>).buffer);
    case 'uint8':
    case 'bool':
      return Uint8Array.from(values as ArrayLike<number>);
    case 'int8':
      return new Uint8Array(Int8Array.from(values as ArrayLike<number>).buffer);
    default:
      throw new Error(`constants of type ${type} are built with constF16`);
  }
}

/**
 * Builds one ONNX graph. Architecture code calls one method per op, inside `scope()` calls that mirror the module
 * tree, so node names read like `/unet/down_blocks.0/resnets.1/conv1/Conv`. Weights are referenced by canonical
 * name and only read when the model is written.
 */
export class Graph {
  readonly nodes: NodeProtoData[] = [];
  readonly inputs: ValueInfoData[] = [];
  readonly outputs: ValueInfoData[] = [];
  readonly initializers = new Map<string, InitializerSpec>();
  readonly domains = new Set<string>();
  /** The element type of every node output, by value name (as the builder declared it). */
  readonly valueTypes = new Map<string, ElemType>();
  readonly groupNormSites: GroupNormSite[] = [];
  private readonly scopes: string[] = [];
  private readonly nodeNames = new Map<string, number>();
  private readonly constants = new Map<string, Value>();
  /** The shape the builder declared for each weight it read (see weight()). */
  readonly declaredShapes = new Map<string, number[]>();

  constructor(
    readonly name: string,
    readonly weights: WeightSource,
    /** The type weights are stored in and computed with (float16 keeps sensitive parts in float32). */
    readonly dtype: 'float32' | 'float16' = 'float32',
  ) {}

  /** A handle on the module at weight path `path` (see Module). */
  module(path: string): Module {
    return new Module(this, path);
  }

  scope<T>(name: string, fn: () => T): T {
    this.scopes.push(name);
    try {
      return fn();
    } finally {
      this.scopes.pop();
    }
  }

  input(name: string, type: ElemType, dims: Dims): Value {
    this.inputs.push({ name, type, dims });
    return { name, type };
  }

  output(value: Value, name: string, dims: Dims): void {
    const v = value.name === name ? value : this.node('Identity', [value], {}, { outputNames: [name] })[0];
    this.outputs.push({ name, type: v.type, dims });
  }

  // ---- weights and constants ----

  hasWeight(key: string): boolean {
    if (this.weights === NO_WEIGHTS) throw new OnestepError(`dry run: the builder asks whether ${key} exists instead of knowing it from the config`);
    return this.weights.has(key);
  }

  /** The shape weight `key` was declared with, else its stored shape. */
  weightShape(key: string): number[] {
    const declared = this.declaredShapes.get(key);
    if (declared) return [...declared];
    if (this.weights === NO_WEIGHTS) throw new OnestepError(`dry run: the builder reads ${key} without declaring its shape`);
    return this.weights.meta(key).shape;
  }

  /**
   * The stored weight `key` as an initializer in the graph's dtype. `shape`: the shape the config says it has, as
   * torch's nn.Linear(in, out) knows its weight's. Builders declare it rather than read it off the checkpoint, so a dry
   * run over no weights (expectedWeights) knows every tensor's shape, a missing one's too, and one check can name all
   * missing and misshapen tensors before anything is built; recording the names a build over the real weights asks
   * for could say neither what a missing tensor's shape should be nor that a present one is wrong. A real build still
   * compares each declared shape with the stored one, so no graph is ever built around a misshapen tensor.
   */
  weight(key: string, view: WeightView = {}, type: ElemType = this.dtype, shape?: readonly number[]): Value {
    if (shape) this.declare(key, shape);
    const stored = this.weightShape(key);
    let dims = view.reshape ?? stored;
    if (view.reshape) {
      const a = numel(stored);
      const b = numel(view.reshape);
      if (a !== b) throw new OnestepError(`weight ${key}: cannot view shape [${stored}] as [${view.reshape}]`);
    }
    if (view.transpose) {
      if (dims.length !== 2) throw new OnestepError(`weight ${key}: transpose needs a 2-D weight, got [${dims}]`);
      dims = [dims[1], dims[0]];
    }
    const name = key + (view.transpose ? '.T' : '') + (type !== this.dtype ? `.${type}` : '');
    if (!this.initializers.has(name)) this.initializers.set(name, { name, type, dims, weight: { key, view } });
    return { name, type };
  }

  private declare(key: string, shape: readonly number[]): void {
    const before = this.declaredShapes.get(key);
    if (before && !sameShape(before, shape)) throw new OnestepError(`weight ${key} is declared as [${before}] and as [${shape}]`);
    if (!before && this.weights !== NO_WEIGHTS) {
      const stored = this.weights.meta(key).shape; // a missing tensor: the source names it
      if (this.weights.has(key) && !sameShape(stored, shape)) throw new OnestepError(`weight ${key} is [${stored}], but the config needs [${shape}]`);
    }
    this.declaredShapes.set(key, [...shape]);
  }

  /** A constant tensor, deduplicated by content. Floats are given as numbers and stored in `type`. */
  constant(values: ArrayLike<number | bigint>, dims: number[], type: ElemType = this.dtype): Value {
    const raw = type === 'float16' ? f16Bytes(values as ArrayLike<number>) : typedBytes(type, values);
    const hash = createHash('sha256').update(raw).update(`${type}:${dims.join(',')}`).digest('hex').slice(0, 16);
    const cached = this.constants.get(hash);
    if (cached) return cached;
    const name = `const_${type}_${dims.join('x') || 'scalar'}_${hash}`;
    this.initializers.set(name, { name, type, dims, raw });
    const v = { name, type };
    this.constants.set(hash, v);
    return v;
  }

  scalar(value: number, type: ElemType = this.dtype): Value {
    return this.constant([value], [], type);
  }

  ints(values: (number | bigint)[]): Value {
    return this.constant(values, [values.length], 'int64');
  }

  // ---- nodes ----

  node(
    opType: string,
    inputs: (Value | undefined)[],
    attrs: Attrs = {},
    opts: { outputs?: number; domain?: string; outTypes?: ElemType[]; outputNames?: string[] } = {},
  ): Value[] {
    const domain = opts.domain ?? '';
    if (domain) this.domains.add(domain);
    const base = `/${[...this.scopes, opType].join('/')}`;
    const seen = this.nodeNames.get(base) ?? 0;
    this.nodeNames.set(base, seen + 1);
    const name = seen ? `${base}_${seen}` : base;
    const n = opts.outputs ?? 1;
    const firstType = inputs.find((v) => v)?.type ?? this.dtype;
    const outputs = Array.from({ length: n }, (_, i) => ({
      name: opts.outputNames?.[i] ?? `${name}_output_${i}`,
      type: opts.outTypes?.[i] ?? firstType,
    }));
    const attributes: [string, AttrValue][] = Object.entries(attrs)
      .filter((e): e is [string, Exclude<Attrs[string], undefined>] => e[1] !== undefined)
      .map(([k, v]) => [k, toAttr(v)]);
    this.nodes.push({ name, opType, domain, inputs: inputs.map((v) => v?.name ?? ''), outputs: outputs.map((o) => o.name), attributes });
    for (const o of outputs) this.valueTypes.set(o.name, o.type);
    return outputs;
  }

  private op(opType: string, inputs: (Value | undefined)[], attrs: Attrs = {}, outType?: ElemType): Value {
    return this.node(opType, inputs, attrs, outType ? { outTypes: [outType] } : {})[0];
  }

  add(a: Value, b: Value): Value {
    return this.op('Add', [a, b]);
  }
  sub(a: Value, b: Value): Value {
    return this.op('Sub', [a, b]);
  }
  mul(a: Value, b: Value): Value {
    return this.op('Mul', [a, b]);
  }
  div(a: Value, b: Value): Value {
    return this.op('Div', [a, b]);
  }
  matmul(a: Value, b: Value): Value {
    return this.op('MatMul', [a, b]);
  }
  /** a @ b^T for b of [n, k] (isMatMulTransB recognises it). */
  matmulTransB(a: Value, b: Value): Value {
    return this.node('FusedMatMul', [a, b], { transB: 1 }, { domain: 'com.microsoft' })[0];
  }
  sigmoid(x: Value): Value {
    return this.op('Sigmoid', [x]);
  }
  silu(x: Value): Value {
    return this.mul(x, this.sigmoid(x));
  }
  /** torch.nn.GELU (exact erf form) or its tanh approximation. */
  gelu(x: Value, approximate: 'none' | 'tanh' = 'none'): Value {
    return this.op('Gelu', [x], { approximate });
  }
  /** CLIP's quick_gelu: x * sigmoid(1.702 x). */
  quickGelu(x: Value): Value {
    return this.mul(x, this.sigmoid(this.mul(x, this.scalar(1.702, x.type))));
  }
  exp(x: Value): Value {
    return this.op('Exp', [x]);
  }
  sin(x: Value): Value {
    return this.op('Sin', [x]);
  }
  cos(x: Value): Value {
    return this.op('Cos', [x]);
  }
  clip(x: Value, min: number, max: number): Value {
    return this.op('Clip', [x, this.scalar(min, x.type), this.scalar(max, x.type)]);
  }
  cast(x: Value, to: ElemType): Value {
    if (x.type === to) return x;
    return this.op('Cast', [x], { to: ELEM_TYPES[to] }, to);
  }
  reshape(x: Value, shape: number[]): Value {
    return this.op('Reshape', [x, this.ints(shape)]);
  }
  transpose(x: Value, perm: number[]): Value {
    return this.op('Transpose', [x], { perm });
  }
  unsqueeze(x: Value, axes: number[]): Value {
    return this.op('Unsqueeze', [x, this.ints(axes)]);
  }
  concat(xs: Value[], axis: number): Value {
    return this.op('Concat', xs, { axis });
  }
  split(x: Value, sizes: number[], axis: number): Value[] {
    return this.node('Split', [x, this.ints(sizes)], { axis }, { outputs: sizes.length });
  }
  slice(x: Value, starts: number[], ends: number[], axes: number[]): Value {
    return this.op('Slice', [x, this.ints(starts), this.ints(ends), this.ints(axes)]);
  }
  gather(data: Value, indices: Value, axis = 0): Value {
    return this.op('Gather', [data, indices], { axis }, data.type);
  }
  shape(x: Value, start?: number, end?: number): Value {
    return this.op('Shape', [x], { start, end }, 'int64');
  }
  softmax(x: Value, axis = -1): Value {
    return this.op('Softmax', [x], { axis });
  }

  /**
   * torch Linear on the last axis: x @ W^T + b, reading `${prefix}.weight` / `${prefix}.bias`. `features`: [in, out]
   * as nn.Linear(in, out) declares them (a bias unless `bias: false`); without them, shapes and bias are the stored ones.
   * W stays as stored, [out, in], under com.microsoft FusedMatMul with transB: converting then moves no values (a
   * transposed copy of every linear weight was most of a float16 conversion's CPU time), and ONNX Runtime packs B for
   * its GEMM either way, so the outputs are the same bits as MatMul(x, W^T)'s.
   */
  linear(x: Value, prefix: string, opts: { bias?: boolean; features?: readonly [number, number] } = {}): Value {
    const f = opts.features;
    return this.scope(prefix.slice(prefix.lastIndexOf('.') + 1), () => {
      const w = this.weight(`${prefix}.weight`, {}, this.dtype, f && [f[1], f[0]]);
      const y = this.matmulTransB(x, w);
      const hasBias = opts.bias ?? (f ? true : this.hasWeight(`${prefix}.bias`));
      return hasBias ? this.add(y, this.weight(`${prefix}.bias`, {}, this.dtype, f && [f[1]])) : y;
    });
  }

  /**
   * torch Conv2d on NCHW. `channels`: [in, out] as nn.Conv2d(in, out, kernel) declares them (square `kernel`, 3 unless
   * given; a bias unless `bias: false`); without them, shapes and bias are the stored ones. Padding: kernel / 2 unless
   * given.
   */
  conv2d(x: Value, prefix: string, opts: { stride?: number; padding?: number; channels?: readonly [number, number]; kernel?: number; bias?: boolean } = {}): Value {
    const c = opts.channels;
    const declared = c && [c[1], c[0], opts.kernel ?? 3, opts.kernel ?? 3];
    return this.scope(prefix.slice(prefix.lastIndexOf('.') + 1), () => {
      const shape = declared ?? this.weightShape(`${prefix}.weight`);
      const k = shape[2];
      const p = opts.padding ?? Math.floor(k / 2);
      const hasBias = declared ? opts.bias !== false : this.hasWeight(`${prefix}.bias`);
      const bias = hasBias ? this.weight(`${prefix}.bias`, {}, this.dtype, declared && [declared[0]]) : undefined;
      return this.op('Conv', [x, this.weight(`${prefix}.weight`, {}, this.dtype, declared), bias], {
        kernel_shape: [shape[2], shape[3]],
        pads: [p, p, p, p],
        strides: [opts.stride ?? 1, opts.stride ?? 1],
      });
    });
  }

  /** LayerNorm over the last axis (of `dim` features, when declared), statistics in float32. */
  layerNorm(x: Value, prefix: string, eps: number, dim?: number): Value {
    const shape = dim === undefined ? undefined : [dim];
    return this.scope(prefix.slice(prefix.lastIndexOf('.') + 1), () =>
      this.op('LayerNormalization', [x, this.weight(`${prefix}.weight`, {}, this.dtype, shape), this.weight(`${prefix}.bias`, {}, this.dtype, shape)], {
        axis: -1,
        epsilon: { float: eps },
        stash_type: 1,
      }),
    );
  }

  /**
   * torch GroupNorm on NCHW, statistics in float32 with a two-pass variance. (ONNX Runtime has no CPU kernel for
   * GroupNormalization-21: it expands it with E[x^2] - E[x]^2, which measurably loses precision, 1.8e-4 vs 1.6e-5 on
   * the tiny SD 2.1 UNet.)
   */
  groupNorm(x: Value, prefix: string, groups: number, eps: number, declaredChannels?: number): Value {
    const first = this.nodes.length;
    const out = this.scope(prefix.slice(prefix.lastIndexOf('.') + 1), () => {
      if (declaredChannels !== undefined) for (const p of ['weight', 'bias']) this.declare(`${prefix}.${p}`, [declaredChannels]);
      const channels = this.weightShape(`${prefix}.weight`)[0];
      const grouped = this.cast(this.reshape(x, [0, groups, -1]), 'float32');
      const mean = this.node('ReduceMean', [grouped, this.ints([2])], { keepdims: 1 })[0];
      const centered = this.sub(grouped, mean);
      const variance = this.node('ReduceMean', [this.mul(centered, centered), this.ints([2])], { keepdims: 1 })[0];
      const normed = this.div(centered, this.node('Sqrt', [this.add(variance, this.scalar(eps, 'float32'))])[0]);
      const y = this.node('Reshape', [this.cast(normed, x.type), this.shape(x)])[0];
      const scale = this.weight(`${prefix}.weight`, { reshape: [channels, 1, 1] });
      return this.add(this.mul(y, scale), this.weight(`${prefix}.bias`, { reshape: [channels, 1, 1] }));
    });
    this.groupNormSites.push({ first, count: this.nodes.length - first, input: x.name, output: out.name, prefix, groups, eps });
    return out;
  }

  /** Nearest-neighbour 2x upsampling of NCHW (torch F.interpolate(scale_factor=2, mode='nearest')). */
  upsampleNearest2x(x: Value): Value {
    const scales = this.constant([1, 1, 2, 2], [4], 'float32');
    return this.op('Resize', [x, undefined, scales], { mode: 'nearest', nearest_mode: 'floor', coordinate_transformation_mode: 'asymmetric' });
  }

  /**
   * Scaled dot-product attention through com.microsoft MultiHeadAttention (13x faster than written out on CPU):
   * q [B,S,H*D], k/v [B,L,H*D] already projected; optional additive bias broadcastable to [B,H,S,L].
   */
  attention(q: Value, k: Value, v: Value, heads: number, opts: { attentionBias?: Value; scale?: number } = {}): Value {
    return this.node('MultiHeadAttention', [q, k, v, undefined, undefined, opts.attentionBias], {
      num_heads: heads,
      scale: opts.scale === undefined ? undefined : { float: opts.scale },
    }, { domain: 'com.microsoft' })[0];
  }
}

/** A node computing input 0 @ input 1^T: Graph.matmulTransB's FusedMatMul (transB, and no other transposition or scale). */
export function isMatMulTransB(node: NodeProtoData): boolean {
  if (node.opType !== 'FusedMatMul' || node.domain !== 'com.microsoft') return false;
  const attr = (name: string) => node.attributes.find(([k]) => k === name)?.[1];
  const int = (name: string, dflt: number) => {
    const a = attr(name);
    return a?.type === 'int' ? Number(a.value) : dflt;
  };
  const alpha = attr('alpha');
  return int('transB', 0) === 1 && int('transA', 0) === 0 && int('transBatchA', 0) === 0 && int('transBatchB', 0) === 0 && (!alpha || (alpha.type === 'float' && alpha.value === 1));
}

const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);

/** The weights of a dry run: none. A graph built over them reads nothing and learns every shape from its builder. */
export const NO_WEIGHTS: WeightSource = {
  names: () => [],
  has: () => false,
  meta: (name) => {
    throw new OnestepError(`dry run: no weight ${name}`);
  },
  readF32: (name) => Promise.reject(new OnestepError(`dry run: no weight ${name}`)),
  close: async () => {},
};

/**
 * The weights the given builders read, each with the shape it declares (Graph.weight): the builders run over
 * NO_WEIGHTS, a dry run that builds the graphs and reads nothing. This is the one list of the tensors a config
 * expects, so it cannot drift from what is built; checkpoint/check.ts checks a checkpoint against it.
 */
export function expectedWeights(...builds: ((weights: WeightSource) => Graph)[]): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const build of builds) for (const [name, shape] of build(NO_WEIGHTS).declaredShapes) out.set(name, shape);
  return out;
}

function f16Bytes(values: ArrayLike<number>): Uint8Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToF16Bits(values[i]);
  return new Uint8Array(out.buffer);
}

/**
 * One way to name a module: a weight path (`unet.down_blocks.0.resnets.1`) whose `with(child, fn)` opens the child's
 * node scope and extends the weight path together, so node names (`/unet/down_blocks.0/resnets.1/conv1/Conv`) cannot
 * drift from the weights they use. Leaf ops read `${path}.${name}.weight` / `.bias`.
 */
export class Module {
  constructor(
    readonly g: Graph,
    readonly path: string,
  ) {}

  /** The child module `name` (dotted names allowed: 'resnets.1', 'to_out.0'), without opening a scope. */
  at(name: string): Module {
    return new Module(this.g, `${this.path}.${name}`);
  }

  /** Runs `fn` on the child module `name` inside the node scope `name`. */
  with<T>(name: string, fn: (child: Module) => T): T {
    return this.g.scope(name, () => fn(this.at(name)));
  }

  /** The full weight name of a tensor of this module. */
  key(name: string): string {
    return `${this.path}.${name}`;
  }
  has(name: string): boolean {
    return this.g.hasWeight(this.key(name));
  }
  shape(name: string): number[] {
    return this.g.weightShape(this.key(name));
  }
  /** The weight `name`, of the declared `shape`. */
  weight(name: string, shape: readonly number[], view?: WeightView, type?: ElemType): Value {
    return this.g.weight(this.key(name), view, type, shape);
  }

  /** nn.Linear(inFeatures, outFeatures, bias) named `name`. */
  linear(x: Value, name: string, inFeatures: number, outFeatures: number, opts: { bias?: boolean } = {}): Value {
    return this.g.linear(x, this.key(name), { bias: opts.bias ?? true, features: [inFeatures, outFeatures] });
  }
  /** nn.Conv2d(inChannels, outChannels, kernel (3), stride, padding, bias (true)) named `name`. */
  conv2d(x: Value, name: string, inChannels: number, outChannels: number, opts: { kernel?: number; stride?: number; padding?: number; bias?: boolean } = {}): Value {
    return this.g.conv2d(x, this.key(name), { ...opts, channels: [inChannels, outChannels] });
  }
  /** nn.LayerNorm(dim, eps) named `name`. */
  layerNorm(x: Value, name: string, dim: number, eps: number): Value {
    return this.g.layerNorm(x, this.key(name), eps, dim);
  }
  /** nn.GroupNorm(groups, channels, eps) named `name`. */
  groupNorm(x: Value, name: string, channels: number, groups: number, eps: number): Value {
    return this.g.groupNorm(x, this.key(name), groups, eps, channels);
  }
}
