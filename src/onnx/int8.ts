/**
 * int8 graphs for the CPU (`convert --quantize int8`): static QDQ quantization of a built float32 graph.
 *
 * Every Conv and every MatMul with a weight initializer becomes
 *
 *   x -> QuantizeLinear(sx, zx) -> DequantizeLinear -> Conv / MatMul(DequantizeLinear(W int8, sw per channel))
 *     -> QuantizeLinear(sy, zy) -> DequantizeLinear -> y
 *
 * which ONNX Runtime's CPU provider fuses into QLinearConv / QLinearMatMul (int8 GEMMs: 2.3-3.8x the float32 convs of
 * SD 1.5 on an AVX-512 VNNI CPU, bench/quantize.ts). Weights: symmetric per output channel in 7 bits, [-63, 63] (scale
 * max|w| / 63, zero point 0): CPUs without VNNI multiply uint8 by int8 with VPMADDUBSW, whose pairwise int16 sums
 * saturate beyond 2 * 255 * 64, so full-range weights would give other numbers there (ORT's reduce_range); 7 bits
 * keep the integer math exact on every x86 CPU; a conv's bias: int32 at scale sx * sw. Activations: uint8 per tensor, asymmetric over the calibrated
 * [min, max] (widened to hold 0). Without the output Q, ORT leaves a Conv unfused (slower than float32), so the output
 * is quantized too. A Conv's output range comes from calibration: the float32 graph run once on a reference input with
 * every quantized op's input and output reduced to its min and max (rangeProbes).
 */
import { numel } from '../checkpoint/weight-source.js';
import { OnestepError } from '../errors.js';
import { isMatMulTransB, type Graph, type InitializerSpec, type WeightView } from './graph.js';
import type { NodeProtoData, ValueInfoData } from './proto.js';

export interface Range {
  min: number;
  max: number;
  /** Elements of the value on the calibration input (probed for MatMul inputs). */
  size?: number;
}

/** uint8 asymmetric quantization of an activation over `r`, widened to hold 0 (so that padding zeros are exact). */
export function activationParams(r: Range): { scale: number; zero: number } {
  const lo = Math.min(r.min, 0);
  const hi = Math.max(r.max, 0);
  const scale = Math.fround((hi - lo) / 255) || 1;
  return { scale, zero: Math.max(0, Math.min(255, Math.round(-lo / scale))) };
}

/** The channel index of flat element i of a tensor of `dims`, channels along `axis`. */
function channelIndexer(dims: readonly number[], axis: number): (i: number) => number {
  const inner = numel(dims.slice(axis + 1));
  const n = dims[axis];
  return (i) => Math.floor(i / inner) % n;
}

/** The largest weight magnitude stored: 7 bits, so that no CPU's uint8 x int8 pair sum saturates (see above). */
export const WEIGHT_MAX = 63;

/** Per-channel symmetric scales along `axis`: max |w| / WEIGHT_MAX (1 for an all-zero channel), as float32. */
export function int8Scales(w: Float32Array, dims: readonly number[], axis: number): Float32Array {
  const channelOf = channelIndexer(dims, axis);
  const max = new Float64Array(dims[axis]);
  for (let i = 0; i < w.length; i++) {
    const c = channelOf(i);
    max[c] = Math.max(max[c], Math.abs(w[i]));
  }
  return Float32Array.from(max, (m) => Math.fround(m / WEIGHT_MAX) || 1);
}

/** w / scale of its channel, rounded and clamped to [-WEIGHT_MAX, WEIGHT_MAX]. */
export function int8Values(w: Float32Array, dims: readonly number[], axis: number, scales = int8Scales(w, dims, axis)): Int8Array {
  const channelOf = channelIndexer(dims, axis);
  const q = new Int8Array(w.length);
  for (let i = 0; i < w.length; i++) q[i] = Math.max(-WEIGHT_MAX, Math.min(WEIGHT_MAX, Math.round(w[i] / scales[channelOf(i)])));
  return q;
}

/** A conv bias as int32 at scale inputScale * weightScale[c] (QLinearConv adds it to the int32 accumulator). */
export function int32Bias(b: Float32Array, weightScales: Float32Array, inputScale: number): Int32Array {
  return Int32Array.from(b, (v, c) => Math.round(v / (inputScale * weightScales[c])));
}

/**
 * The int8 form of a weight initializer (WeightView.quant), from its float32 values as viewed (transposed etc.):
 * 'values' int8, 'scales' float32 (times `times`), 'bias' int32 of the bias `data` against the weight `weightData`.
 */
export function quantizedInitializerBytes(view: NonNullable<WeightView['quant']>, data: Float32Array, weightData?: Float32Array): Uint8Array {
  if (view.part === 'values') return new Uint8Array(int8Values(data, view.dims, view.axis).buffer);
  if (view.part === 'scales') {
    const s = int8Scales(data, view.dims, view.axis);
    return new Uint8Array((view.times === undefined ? s : s.map((v) => v * view.times!)).buffer);
  }
  if (!weightData || view.times === undefined) throw new OnestepError('internal: an int32 bias needs its weight and input scale');
  return new Uint8Array(int32Bias(data, int8Scales(weightData, view.dims, view.axis), view.times).buffer);
}

/**
 * A Conv or MatMul that becomes int8: its node, its weight (and conv bias) initializers, its activation in and out. A
 * linear layer's x @ W^T (Graph.matmulTransB) is a MatMul site on W^T, as the QDQ form that ONNX Runtime fuses needs.
 */
export interface Int8Site {
  node: NodeProtoData;
  kind: 'conv' | 'matmul';
  /** For a MatMul, its B as [K, N]. */
  weight: InitializerSpec;
  bias?: InitializerSpec;
  x: string;
  y: string;
}

/**
 * Convs with this few input or output channels stay float32: a network's first and last convs (latents or RGB in or
 * out), where int8 error goes straight into the image, for little compute.
 */
const KEEP_FLOAT_CHANNELS = 8;

/** The Convs (group 1) and MatMuls of `g` whose weight is a stored float32 initializer. */
export function int8Sites(g: Graph): Int8Site[] {
  const sites: Int8Site[] = [];
  const stored = (name: string | undefined) => {
    const init = name ? g.initializers.get(name) : undefined;
    return init?.weight && init.type === 'float32' && !init.weight.view.quant && !init.weight.view.pack ? init : undefined;
  };
  for (const node of g.nodes) {
    const transB = isMatMulTransB(node);
    if (node.domain && !transB) continue;
    const [x, w, b] = node.inputs;
    const weight = stored(w);
    if (!weight || (g.valueTypes.get(x) ?? g.inputs.find((i) => i.name === x)?.type) !== 'float32') continue;
    if (node.opType === 'Conv') {
      const group = node.attributes.find(([k]) => k === 'group')?.[1];
      if (weight.dims.length !== 4 || (group && group.type === 'int' && Number(group.value) !== 1)) continue;
      if (Math.min(weight.dims[0], weight.dims[1]) <= KEEP_FLOAT_CHANNELS) continue;
      const bias = b ? stored(b) : undefined;
      if (b && !bias) continue;
      sites.push({ node, kind: 'conv', weight, bias, x, y: node.outputs[0] });
    } else if ((node.opType === 'MatMul' || transB) && weight.dims.length === 2) {
      sites.push({ node, kind: 'matmul', weight: transB ? transposed(weight) : weight, x, y: node.outputs[0] });
    }
  }
  return sites;
}

/** The initializer W^T of a stored 2-D weight W. */
function transposed(w: InitializerSpec): InitializerSpec {
  const { key, view } = w.weight!;
  return { name: `${w.name}.T`, type: w.type, dims: [w.dims[1], w.dims[0]], weight: { key, view: { ...view, transpose: true } } };
}

export const rangeName = (value: string, end: 'min' | 'max' | 'size') => `${value}::${end}`;

/**
 * MatMuls over fewer rows than this stay float32: the time embedding's (one row) and cross-attention's key/value
 * projections of the text (77 rows) cost nothing next to the image tokens', and their inputs have the outliers.
 */
const KEEP_FLOAT_ROWS = 256;

/**
 * Nodes and outputs that reduce every quantized op's input and output to its min and max (for a probe proto over the
 * float32 graph's weights), named by rangeName.
 */
export function rangeProbes(g: Graph): { nodes: NodeProtoData[]; outputs: ValueInfoData[] } {
  const sites = int8Sites(g);
  const values = [...new Set(sites.flatMap((s) => [s.x, s.y]))];
  const nodes: NodeProtoData[] = [];
  const outputs: ValueInfoData[] = [];
  for (const v of new Set(sites.filter((s) => s.kind === 'matmul').map((s) => s.x))) {
    const name = rangeName(v, 'size');
    nodes.push({ name: `/int8-probe/${name}`, opType: 'Size', domain: '', inputs: [v], outputs: [name], attributes: [] });
    outputs.push({ name, type: 'int64', dims: [] });
  }
  for (const v of values) {
    for (const end of ['min', 'max'] as const) {
      const name = rangeName(v, end);
      nodes.push({ name: `/int8-probe/${name}`, opType: end === 'min' ? 'ReduceMin' : 'ReduceMax', domain: '', inputs: [v], outputs: [name], attributes: [['keepdims', { type: 'int', value: 0 }]] });
      outputs.push({ name, type: 'float32', dims: [] });
    }
  }
  return { nodes, outputs };
}

export interface Int8Report {
  convs: number;
  matmuls: number;
}

/**
 * Rewrites `g` (float32) in place into its QDQ int8 form, with activation ranges by value name (every site's input and
 * output: rangeProbes' values). The float32 weights the rewritten ops read are dropped from the graph. MatMuls whose
 * calibrated input has under KEEP_FLOAT_ROWS rows stay float32.
 */
export function quantizeGraphInt8(g: Graph, ranges: ReadonlyMap<string, Range>): Int8Report {
  if (g.dtype !== 'float32') throw new OnestepError(`int8 quantization starts from a float32 graph (${g.name} is ${g.dtype})`, 'Convert with --dtype fp32 (the default) to quantize.');
  const sites = int8Sites(g);
  const report: Int8Report = { convs: 0, matmuls: 0 };
  const replaced = new Map<NodeProtoData, NodeProtoData[]>();
  const range = (v: string) => {
    const r = ranges.get(v);
    if (!r || !Number.isFinite(r.min) || !Number.isFinite(r.max)) throw new OnestepError(`int8: no finite calibrated range for ${v} in ${g.name}`);
    return r;
  };
  for (const s of sites) {
    const { node, weight } = s;
    const size = ranges.get(s.x)?.size;
    if (s.kind === 'matmul' && size !== undefined && size / weight.dims[0] < KEEP_FLOAT_ROWS) continue;
    const at = node.name;
    const px = activationParams(range(s.x));
    const py = activationParams(range(s.y));
    const qdq = (input: string, p: { scale: number; zero: number }, out: string, tag: string): NodeProtoData[] => {
      const scale = g.scalar(p.scale, 'float32').name;
      const zero = g.constant([p.zero], [], 'uint8').name;
      const q = `${at}/${tag}_q`;
      return [
        { name: `${at}/${tag}/QuantizeLinear`, opType: 'QuantizeLinear', domain: '', inputs: [input, scale, zero], outputs: [q], attributes: [] },
        { name: `${at}/${tag}/DequantizeLinear`, opType: 'DequantizeLinear', domain: '', inputs: [q, scale, zero], outputs: [out], attributes: [] },
      ];
    };
    const conv = s.kind === 'conv';
    const axis = conv ? 0 : 1;
    const channels = weight.dims[axis];
    const src = weight.weight!;
    const add = (spec: InitializerSpec) => {
      g.initializers.set(spec.name, spec);
      return spec.name;
    };
    const wq = add({ name: `${weight.name}.int8`, type: 'int8', dims: weight.dims, weight: { key: src.key, view: { ...src.view, quant: { part: 'values', axis, dims: weight.dims } } } });
    const ws = add({ name: `${weight.name}.int8_scale`, type: 'float32', dims: [channels], weight: { key: src.key, view: { ...src.view, quant: { part: 'scales', axis, dims: weight.dims } } } });
    const wz = g.constant(new Array(channels).fill(0), [channels], 'int8').name;
    const xd = `${at}/x_dq`;
    const wd = `${at}/w_dq`;
    const yf = `${at}/y_float`;
    const nodes: NodeProtoData[] = [
      ...qdq(s.x, px, xd, 'x'),
      { name: `${at}/w/DequantizeLinear`, opType: 'DequantizeLinear', domain: '', inputs: [wq, ws, wz], outputs: [wd], attributes: [['axis', { type: 'int', value: axis }]] },
    ];
    const inputs = [xd, wd];
    if (s.bias) {
      const b = s.bias.weight!;
      const bq = add({ name: `${s.bias.name}.int32`, type: 'int32', dims: [channels], weight: { key: b.key, view: { ...b.view, quant: { part: 'bias', axis, dims: weight.dims, times: px.scale, weight: src } } } });
      const bs = add({ name: `${weight.name}.bias_scale.${px.scale}`, type: 'float32', dims: [channels], weight: { key: src.key, view: { ...src.view, quant: { part: 'scales', axis, dims: weight.dims, times: px.scale } } } });
      const bz = g.constant(new Array(channels).fill(0), [channels], 'int32').name;
      const bd = `${at}/b_dq`;
      nodes.push({ name: `${at}/b/DequantizeLinear`, opType: 'DequantizeLinear', domain: '', inputs: [bq, bs, bz], outputs: [bd], attributes: [['axis', { type: 'int', value: 0 }]] });
      inputs.push(bd);
    }
    nodes.push(conv ? { ...node, inputs, outputs: [yf] } : { name: node.name, opType: 'MatMul', domain: '', inputs, outputs: [yf], attributes: [] });
    nodes.push(...qdq(yf, py, s.y, 'y'));
    replaced.set(node, nodes);
    if (conv) report.convs++;
    else report.matmuls++;
  }
  const rewritten = g.nodes.flatMap((n) => replaced.get(n) ?? [n]);
  g.nodes.length = 0;
  g.nodes.push(...rewritten);
  const used = new Set(g.nodes.flatMap((n) => n.inputs));
  for (const name of [...g.initializers.keys()]) if (!used.has(name)) g.initializers.delete(name);
  return report;
}
