/**
 * Counts the arithmetic of one evaluation of a graph by walking its nodes with concrete input shapes: shapes are
 * propagated node by node (with the values of small integer tensors, so Shape -> Gather -> Concat -> Reshape chains
 * resolve), and the ops that carry the compute are counted as 2 FLOPs per multiply-add:
 *
 *   Conv / NhwcConv   2 * N * Cout * Hout * Wout * (Cin / group) * kh * kw
 *   MatMul / Gemm     2 * batch * M * K * N   (and FusedMatMul's a @ b^T)
 *   attention         2 * B * heads * S * L * (Dqk + Dv)   (QK^T and the weighted sum of V; softmax not counted)
 *
 * Elementwise ops, norms and softmax are not counted (a few percent of a diffusion model's total). Nodes whose shapes
 * cannot be resolved are listed, so a count is never silently short.
 */
import { numel } from '../checkpoint/weight-source.js';
import { isMatMulTransB } from './graph.js';
import type { AttrValue, NodeProtoData } from './proto.js';
import type { ModelStructure } from './read-model.js';

interface Val {
  dims?: number[];
  /** Values of small integer/float tensors (shapes, indices, scalars). */
  values?: number[];
}

export interface FlopCount {
  /** Total FLOPs (2 per multiply-add) of the counted ops. */
  flops: number;
  /** FLOPs per op kind: conv, matmul, attention. */
  byKind: Record<'conv' | 'matmul' | 'attention', number>;
  nodes: number;
  /** Nodes whose output shape could not be resolved (their FLOPs, if any, are missing from the total). */
  unresolved: { node: string; op: string }[];
}

const SMALL = 64;

function attr(node: NodeProtoData, name: string): AttrValue | undefined {
  return node.attributes.find(([k]) => k === name)?.[1];
}
function attrInt(node: NodeProtoData, name: string, dflt: number): number {
  const a = attr(node, name);
  return a && a.type === 'int' ? Number(a.value) : dflt;
}
function attrInts(node: NodeProtoData, name: string): number[] | undefined {
  const a = attr(node, name);
  return a && a.type === 'ints' ? a.value.map(Number) : undefined;
}
function attrString(node: NodeProtoData, name: string): string | undefined {
  const a = attr(node, name);
  return a && a.type === 'string' ? a.value : undefined;
}

const prod = numel;
const axisOf = (axis: number, rank: number): number => (axis < 0 ? axis + rank : axis);

function broadcast(shapes: number[][]): number[] | undefined {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    let d = 1;
    for (const s of shapes) {
      const v = s[s.length - rank + i] ?? 1;
      if (v === 1) continue;
      if (d !== 1 && d !== v) return undefined;
      d = v;
    }
    out.push(d);
  }
  return out;
}

/** Element-wise arithmetic on known small values (shape arithmetic), with numpy broadcasting of a scalar. */
function elementwise(op: string, a: number[], b: number[]): number[] | undefined {
  const n = Math.max(a.length, b.length);
  if ((a.length !== n && a.length !== 1) || (b.length !== n && b.length !== 1)) return undefined;
  const f: Record<string, (x: number, y: number) => number> = {
    Add: (x, y) => x + y,
    Sub: (x, y) => x - y,
    Mul: (x, y) => x * y,
    Div: (x, y) => Math.trunc(x / y),
    Equal: (x, y) => Number(x === y),
  };
  const fn = f[op];
  if (!fn) return undefined;
  return Array.from({ length: n }, (_, i) => fn(a[a.length === 1 ? 0 : i], b[b.length === 1 ? 0 : i]));
}

const UNARY_SAME = new Set([
  'Identity', 'Cast', 'Relu', 'Sigmoid', 'Tanh', 'Exp', 'Log', 'Sin', 'Cos', 'Sqrt', 'Erf', 'Neg', 'Abs', 'Round',
  'Floor', 'Ceil', 'Reciprocal', 'Not', 'Gelu', 'FastGelu', 'QuickGelu', 'BiasGelu', 'Softmax', 'Clip',
  'LayerNormalization', 'SkipLayerNormalization', 'SimplifiedLayerNormalization', 'SkipSimplifiedLayerNormalization',
  'RMSNormalization', 'GroupNormalization', 'InstanceNormalization', 'GroupNorm', 'SkipGroupNorm', 'BiasAdd',
  'Dropout', 'Pow', 'LeakyRelu', 'Softplus', 'Mish', 'HardSigmoid', 'QuantizeLinear', 'DequantizeLinear',
]);
const BINARY = new Set(['Add', 'Sub', 'Mul', 'Div', 'Equal', 'Less', 'Greater', 'And', 'Or', 'Max', 'Min', 'Where', 'Mod']);

function resolveInput(dims: (number | string)[] | null, symbols: Record<string, number>): number[] | undefined {
  if (!dims) return undefined;
  const out: number[] = [];
  for (const d of dims) {
    const v = typeof d === 'number' ? d : symbols[d];
    if (v === undefined) return undefined;
    out.push(v);
  }
  return out;
}

/**
 * Counts FLOPs of `model` for inputs whose symbolic dims (`batch`, `height`, ...) take the values in `symbols`;
 * `inputs` overrides the dims of named inputs.
 */
export function countFlops(model: ModelStructure, symbols: Record<string, number>, inputs: Record<string, number[]> = {}): FlopCount {
  const vals = new Map<string, Val>();
  for (const [name, init] of model.initializers) {
    vals.set(name, { dims: init.dims, values: init.values && init.values.length <= SMALL ? init.values : undefined });
  }
  for (const input of model.inputs) vals.set(input.name, { dims: inputs[input.name] ?? resolveInput(input.dims, symbols) });
  const result: FlopCount = { flops: 0, byKind: { conv: 0, matmul: 0, attention: 0 }, nodes: model.nodes.length, unresolved: [] };
  const add = (kind: keyof FlopCount['byKind'], flops: number) => {
    result.byKind[kind] += flops;
    result.flops += flops;
  };

  for (const node of model.nodes) {
    const ins = node.inputs.map((n) => (n ? vals.get(n) : undefined));
    let outs: Val[] | undefined;
    try {
      outs = infer(node, ins, add);
    } catch {
      outs = undefined;
    }
    if (!outs || node.outputs.some((name, i) => name && !outs![i]?.dims)) result.unresolved.push({ node: node.name, op: node.opType });
    node.outputs.forEach((name, i) => vals.set(name, outs?.[i] ?? {}));
  }
  return result;
}

type Adder = (kind: 'conv' | 'matmul' | 'attention', flops: number) => void;

/** Output shapes (and small values) of one node; counts its FLOPs through `add`. */
function infer(node: NodeProtoData, ins: (Val | undefined)[], add: Adder): Val[] | undefined {
  const x = ins[0];
  const d = x?.dims;
  const op = node.opType;
  const constOf = (i: number): number[] | undefined => ins[i]?.values;

  if (UNARY_SAME.has(op) && !BINARY.has(op)) {
    if (op === 'LayerNormalization' || op === 'SkipLayerNormalization') return [{ dims: d }, {}, {}, {}];
    if (op === 'SkipGroupNorm') return [{ dims: d }, { dims: d }];
    return [{ dims: d, values: op === 'Identity' || op === 'Cast' ? x?.values : undefined }];
  }
  if (BINARY.has(op)) {
    const shapes = ins.filter((v): v is Val => !!v).map((v) => v.dims);
    if (shapes.some((s) => !s)) return undefined;
    const dims = broadcast(shapes as number[][]);
    const a = constOf(0);
    const b = constOf(1);
    return [{ dims, values: a && b && ins.length === 2 ? elementwise(op, a, b) : undefined }];
  }
  switch (op) {
    case 'Constant': {
      const v = attr(node, 'value');
      if (v?.type === 'tensor') {
        const t = v.value;
        let values: number[] | undefined;
        if (t.raw && t.type === 'int64') values = Array.from(new BigInt64Array(t.raw.slice().buffer), Number);
        else if (t.raw && t.type === 'float32') values = Array.from(new Float32Array(t.raw.slice().buffer));
        return [{ dims: t.dims, values }];
      }
      const ints = attrInts(node, 'value_ints');
      if (ints) return [{ dims: [ints.length], values: ints }];
      const i = attr(node, 'value_int');
      if (i?.type === 'int') return [{ dims: [], values: [Number(i.value)] }];
      const f = attr(node, 'value_float');
      if (f?.type === 'float') return [{ dims: [], values: [f.value] }];
      return undefined;
    }
    case 'Shape': {
      if (!d) return undefined;
      const rank = d.length;
      const clampAxis = (a: number) => Math.min(Math.max(a < 0 ? a + rank : a, 0), rank);
      const start = clampAxis(attrInt(node, 'start', 0));
      const end = clampAxis(attrInt(node, 'end', rank));
      const values = d.slice(start, end);
      return [{ dims: [values.length], values }];
    }
    case 'Size':
      return d ? [{ dims: [], values: [prod(d)] }] : undefined;
    case 'Gather': {
      const idx = ins[1];
      if (!d || !idx?.dims) return undefined;
      const axis = axisOf(attrInt(node, 'axis', 0), d.length);
      const dims = [...d.slice(0, axis), ...idx.dims, ...d.slice(axis + 1)];
      let values: number[] | undefined;
      if (x?.values && idx.values && d.length === 1) values = idx.values.map((i) => x.values![i < 0 ? i + d[0] : i]);
      return [{ dims, values }];
    }
    case 'Concat': {
      if (ins.some((v) => !v?.dims)) return undefined;
      const rank = ins[0]!.dims!.length;
      const axis = axisOf(attrInt(node, 'axis', 0), rank);
      const dims = [...ins[0]!.dims!];
      dims[axis] = ins.reduce((s, v) => s + v!.dims![axis], 0);
      const values = rank === 1 && ins.every((v) => v!.values) ? ins.flatMap((v) => v!.values!) : undefined;
      return [{ dims, values }];
    }
    case 'Unsqueeze': {
      const axes = constOf(1) ?? attrInts(node, 'axes');
      if (!d || !axes) return undefined;
      const rank = d.length + axes.length;
      const norm = new Set(axes.map((a) => axisOf(a, rank)));
      const dims: number[] = [];
      for (let i = 0, j = 0; i < rank; i++) dims.push(norm.has(i) ? 1 : d[j++]);
      return [{ dims, values: x?.values }];
    }
    case 'Squeeze': {
      if (!d) return undefined;
      const axes = constOf(1) ?? attrInts(node, 'axes');
      const drop = axes ? new Set(axes.map((a) => axisOf(a, d.length))) : new Set(d.flatMap((v, i) => (v === 1 ? [i] : [])));
      return [{ dims: d.filter((_, i) => !drop.has(i)), values: x?.values }];
    }
    case 'Flatten': {
      if (!d) return undefined;
      const axis = axisOf(attrInt(node, 'axis', 1), d.length);
      return [{ dims: [prod(d.slice(0, axis)), prod(d.slice(axis))] }];
    }
    case 'Reshape': {
      const shape = constOf(1);
      if (!d || !shape) return undefined;
      const allowZero = attrInt(node, 'allowzero', 0);
      const dims = shape.map((s, i) => (s === 0 && !allowZero ? d[i] : s));
      const known = prod(dims.filter((s) => s !== -1));
      const minus = dims.indexOf(-1);
      if (minus >= 0) dims[minus] = prod(d) / known;
      if (prod(dims) !== prod(d)) return undefined;
      return [{ dims, values: x?.values }];
    }
    case 'Expand': {
      const shape = constOf(1);
      if (!d || !shape) return undefined;
      return [{ dims: broadcast([d, shape]) }];
    }
    case 'ConstantOfShape': {
      const shape = constOf(0);
      return shape ? [{ dims: shape }] : undefined;
    }
    case 'Range': {
      const [s, l, dl] = [constOf(0), constOf(1), constOf(2)];
      if (!s || !l || !dl) return undefined;
      const n = Math.max(Math.ceil((l[0] - s[0]) / dl[0]), 0);
      return [{ dims: [n], values: n <= SMALL ? Array.from({ length: n }, (_, i) => s[0] + i * dl[0]) : undefined }];
    }
    case 'Transpose': {
      if (!d) return undefined;
      const perm = attrInts(node, 'perm') ?? d.map((_, i) => d.length - 1 - i);
      return [{ dims: perm.map((p) => d[p]) }];
    }
    case 'Slice': {
      const starts = constOf(1);
      const ends = constOf(2);
      if (!d || !starts || !ends) return undefined;
      const axes = constOf(3) ?? starts.map((_, i) => i);
      const steps = constOf(4) ?? starts.map(() => 1);
      const dims = [...d];
      let values = x?.values;
      axes.forEach((a0, i) => {
        const a = axisOf(a0, d.length);
        const n = d[a];
        const step = steps[i];
        const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi);
        let s = starts[i] < 0 ? starts[i] + n : starts[i];
        let e = ends[i] < 0 ? ends[i] + n : ends[i];
        s = step > 0 ? clamp(s, 0, n) : clamp(s, 0, n - 1);
        e = step > 0 ? clamp(e, 0, n) : clamp(e, -1, n - 1);
        dims[a] = Math.max(0, Math.ceil((e - s) / step));
        if (values && d.length === 1) values = Array.from({ length: dims[a] }, (_, k) => values![s + k * step]);
      });
      return [{ dims, values: d.length === 1 ? values : undefined }];
    }
    case 'Split': {
      if (!d) return undefined;
      const axis = axisOf(attrInt(node, 'axis', 0), d.length);
      const n = node.outputs.length;
      const sizes = constOf(1) ?? attrInts(node, 'split') ?? Array.from({ length: n }, (_, i) => {
        const chunk = Math.ceil(d[axis] / n);
        return Math.min(chunk, d[axis] - i * chunk);
      });
      return sizes.map((s) => {
        const dims = [...d];
        dims[axis] = s;
        return { dims };
      });
    }
    case 'Tile': {
      const reps = constOf(1);
      if (!d || !reps) return undefined;
      return [{ dims: d.map((v, i) => v * reps[i]) }];
    }
    case 'Pad': {
      const pads = constOf(1) ?? attrInts(node, 'pads');
      if (!d || !pads) return undefined;
      return [{ dims: d.map((v, i) => v + pads[i] + pads[i + d.length]) }];
    }
    case 'ReduceMean':
    case 'ReduceSum':
    case 'ReduceMax':
    case 'ReduceMin':
    case 'ReduceSumSquare':
    case 'ReduceL2':
    case 'ArgMax':
    case 'ArgMin': {
      if (!d) return undefined;
      const keep = attrInt(node, 'keepdims', 1);
      const arg = op.startsWith('Arg');
      const axes = arg ? [attrInt(node, 'axis', 0)] : (constOf(1) ?? attrInts(node, 'axes') ?? d.map((_, i) => i));
      const set = new Set(axes.map((a) => axisOf(a, d.length)));
      const dims = keep ? d.map((v, i) => (set.has(i) ? 1 : v)) : d.filter((_, i) => !set.has(i));
      return [{ dims }];
    }
    case 'OneHot': {
      const depth = constOf(1);
      if (!d || !depth) return undefined;
      const rank = d.length + 1;
      const axis = axisOf(attrInt(node, 'axis', -1), rank);
      return [{ dims: [...d.slice(0, axis), depth[0], ...d.slice(axis)] }];
    }
    case 'Resize': {
      if (!d) return undefined;
      const sizes = constOf(3);
      if (sizes && sizes.length) return [{ dims: sizes }];
      const scales = constOf(2);
      if (!scales || !scales.length) return undefined;
      return [{ dims: d.map((v, i) => Math.floor(v * scales[i])) }];
    }
    case 'MatMul':
    case 'MatMulNBits': {
      const b = ins[1]?.dims;
      if (!d || !b) return undefined;
      let bDims = b;
      if (op === 'MatMulNBits') bDims = [attrInt(node, 'K', 0), attrInt(node, 'N', 0)];
      const a2 = d.length === 1 ? [1, d[0]] : d;
      const b2 = bDims.length === 1 ? [bDims[0], 1] : bDims;
      const [m, k] = a2.slice(-2);
      const n = b2[b2.length - 1];
      if (b2[b2.length - 2] !== k) return undefined;
      const batch = broadcast([a2.slice(0, -2), b2.slice(0, -2)]);
      if (!batch) return undefined;
      add('matmul', 2 * prod(batch) * m * k * n);
      const dims = [...batch, ...(d.length === 1 ? [] : [m]), ...(bDims.length === 1 ? [] : [n])];
      return [{ dims }];
    }
    case 'FusedMatMul': {
      // Graph.matmulTransB's a @ b^T, b [n, k]; other transpositions are not built here.
      const b = ins[1]?.dims;
      if (!d || !b || b.length !== 2 || !isMatMulTransB(node)) return undefined;
      const [m, k] = d.length === 1 ? [1, d[0]] : d.slice(-2);
      if (b[1] !== k) return undefined;
      const batch = d.slice(0, -2);
      add('matmul', 2 * prod(batch) * m * k * b[0]);
      return [{ dims: [...d.slice(0, -1), b[0]] }];
    }
    case 'Gemm': {
      const b = ins[1]?.dims;
      if (!d || !b) return undefined;
      const [m, k] = attrInt(node, 'transA', 0) ? [d[1], d[0]] : d;
      const n = attrInt(node, 'transB', 0) ? b[0] : b[1];
      add('matmul', 2 * m * k * n);
      return [{ dims: [m, n] }];
    }
    case 'Conv':
    case 'NhwcConv': {
      const w = ins[1]?.dims;
      if (!d || !w) return undefined;
      const nhwc = op === 'NhwcConv';
      const spatial = nhwc ? d.slice(1, -1) : d.slice(2);
      // NhwcConv's weight is NHWC too: [M, kh, kw, C/group] (Conv's is [M, C/group, kh, kw]).
      const kernel = attrInts(node, 'kernel_shape') ?? (nhwc ? w.slice(1, -1) : w.slice(2));
      const strides = attrInts(node, 'strides') ?? spatial.map(() => 1);
      const dil = attrInts(node, 'dilations') ?? spatial.map(() => 1);
      const pads = attrInts(node, 'pads') ?? spatial.flatMap(() => [0, 0]).concat();
      const autoPad = attrString(node, 'auto_pad') ?? 'NOTSET';
      const out = spatial.map((s, i) => {
        if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') return Math.ceil(s / strides[i]);
        const p = autoPad === 'VALID' ? 0 : pads[i] + pads[i + spatial.length];
        return Math.floor((s + p - dil[i] * (kernel[i] - 1) - 1) / strides[i]) + 1;
      });
      const cout = w[0];
      const cinPerGroup = nhwc ? w[w.length - 1] : w[1];
      add('conv', 2 * d[0] * cout * prod(out) * cinPerGroup * prod(kernel));
      return [{ dims: nhwc ? [d[0], ...out, cout] : [d[0], cout, ...out] }];
    }
    case 'MultiHeadAttention':
    case 'PackedMultiHeadAttention': {
      // com.microsoft MultiHeadAttention: query [B,S,N*H], key/value [B,L,N*H] (or [B,N,L,H]); packed QKV query
      // [B,S,N,3,H] with no key/value; packed KV key [B,L,N,2,H] with no value.
      const heads = attrInt(node, 'num_heads', 1);
      const q = d;
      const k = ins[1]?.dims;
      const v = ins[2]?.dims;
      if (!q) return undefined;
      let B: number, S: number, L: number, dqk: number, dv: number;
      if (q.length === 5) {
        [B, S] = q;
        L = S;
        dqk = dv = q[4];
      } else {
        [B, S] = q;
        dqk = q[2] / heads;
        if (!k) return undefined;
        if (k.length === 5) {
          L = k[1];
          dv = k[4];
        } else if (k.length === 4) {
          L = k[2];
          dv = v ? v[3] : k[3];
        } else {
          L = k[1];
          if (!v) return undefined;
          dv = (v.length === 4 ? v[1] * v[3] : v[2]) / heads;
        }
      }
      add('attention', 2 * B * heads * S * L * (dqk + dv));
      return [{ dims: [B, S, heads * dv] }, {}, {}];
    }
    case 'Attention': {
      // ONNX Attention-23: Q [B,Hq,S,D] / K,V [B,Hkv,L,D], or 3-D [B,S,H*D] with q_num_heads / kv_num_heads.
      const q = d;
      const k = ins[1]?.dims;
      const v = ins[2]?.dims;
      if (!q || !k || !v) return undefined;
      if (q.length === 4) {
        const [B, H, S, D] = q;
        add('attention', 2 * B * H * S * k[2] * (D + v[3]));
        return [{ dims: [B, H, S, v[3]] }, {}, {}, {}];
      }
      const hq = attrInt(node, 'q_num_heads', 1);
      const hkv = attrInt(node, 'kv_num_heads', hq);
      const [B, S, QH] = q;
      const dv = v[2] / hkv;
      add('attention', 2 * B * hq * S * k[1] * (QH / hq + dv));
      return [{ dims: [B, S, hq * dv] }, {}, {}, {}];
    }
    case 'BiasSplitGelu': {
      if (!d) return undefined;
      return [{ dims: [...d.slice(0, -1), d[d.length - 1] / 2] }];
    }
    case 'Einsum':
    default:
      return undefined;
  }
}
