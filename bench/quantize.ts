/**
 * Does a lower CPU precision pay? Single layers of SD 1.5's shapes, built with onestep's graph builder, run through
 * onnxruntime-node's CPU EP in float32 and in the low-precision forms ORT offers on x86:
 *
 *   qdq-u8 / qdq-s8   static QDQ: QuantizeLinear -> DequantizeLinear around Conv / MatMul, per-channel int8 weights
 *                     (symmetric), uint8 (asymmetric) or int8 (symmetric) activations with scales calibrated on the
 *                     layer's own input and output; ORT fuses DQ -> op -> Q into QLinearConv / QLinearMatMul.
 *   qdq-u8-fout       the same without the output Q (a float output, as a conv feeding a GroupNorm or a residual Add
 *                     would have): ORT fuses DQ -> MatMul into MatMulIntegerToFloat; a Conv stays unfused.
 *   dyn               dynamic: DynamicQuantizeLinear (uint8, per tensor, at run time) + ConvInteger / MatMulInteger,
 *                     then Cast and the scales; for MatMul also com.microsoft DynamicQuantizeMatMul.
 *   nbits8 / nbits4   weight-only com.microsoft MatMulNBits (block 32), accuracy_level 4 (int8 compute) and 0.
 *   fp16              Cast -> float16 op -> Cast (ORT's CPU kernels for float16 Conv/MatMul, if any).
 *
 * Each form: median ms of several warm runs (2 intra-op threads, graph optimizations `all`), its speedup over
 * float32, the ops left in ORT's optimized graph (did the fusion happen?), and its error against the float32 output as
 * an SNR in dB. Then the projected per-image gain: each measured speedup applied to its FLOP share of the UNet and the
 * VAE decoder of SD 1.5 at 512x512 (counted on onestep's own graphs, src/onnx/flops.ts), attention unchanged.
 *
 * Run: node --import tsx bench/quantize.ts [--quick]   (or `npm run bench quantize`). Prints figures only.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { WeightSource } from '../src/checkpoint/weight-source.js';
import { Graph, type Value } from '../src/onnx/graph.js';
import type { ElemType } from '../src/onnx/proto.js';
import { decodeModelStructure, graphStructure } from '../src/onnx/read-model.js';
import { countFlops } from '../src/onnx/flops.js';
import { buildUNetGraph, expectedUnetWeights } from '../src/architectures/unet.js';
import { buildVaeDecoderGraph, expectedVaeWeights } from '../src/architectures/vae.js';
import { generateSd15, SD15_UNET, SD15_VAE } from './sd15-generator.js';
import { writeModel } from '../src/onnx/write-model.js';
import { cpuInfo } from '../src/runtime/machine.js';
import { convertCheckpoint } from '../src/convert.js';
import { OneStepEngine, type StageTimes } from '../src/runtime/engine.js';
import { ROOT } from './measure.js';

const THREADS = 2;

/** Deterministic standard normal numbers (xorshift32 + Box-Muller). */
function normals(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const u = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) + 0.5) / 2 ** 32;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u()));
    const t = 2 * Math.PI * u();
    out[i] = r * Math.cos(t);
    if (i + 1 < n) out[i + 1] = r * Math.sin(t);
  }
  return out;
}

function tensorSource(tensors: Record<string, { shape: number[]; data: Float32Array }>): WeightSource {
  return {
    names: () => Object.keys(tensors).sort(),
    has: (n) => n in tensors,
    meta: (n) => ({ shape: tensors[n].shape, dtype: 'F32' }),
    readF32: async (n) => tensors[n].data,
    close: async () => {},
  };
}

function rawInit(g: Graph, name: string, type: ElemType, dims: number[], bytes: Uint8Array): Value {
  g.initializers.set(name, { name, type, dims, raw: bytes });
  return { name, type };
}
const f32Bytes = (a: ArrayLike<number>) => new Uint8Array(Float32Array.from(a).buffer);

/** Per-output-channel symmetric int8 quantization of a weight whose output channels are `outAxis`'s index. */
function quantizeWeight(w: Float32Array, outs: number, outerStride: number, outIsRow: boolean): { q: Int8Array; scale: Float32Array } {
  // outIsRow: w is [out, rest] (conv OIHW); else w is [in, out] (MatMul's B) and the channel is the column.
  const q = new Int8Array(w.length);
  const scale = new Float32Array(outs);
  const idx = (c: number, i: number) => (outIsRow ? c * outerStride + i : i * outs + c);
  const per = w.length / outs;
  for (let c = 0; c < outs; c++) {
    let m = 0;
    for (let i = 0; i < per; i++) m = Math.max(m, Math.abs(w[idx(c, i)]));
    const s = m / 127 || 1;
    scale[c] = s;
    for (let i = 0; i < per; i++) q[idx(c, i)] = Math.max(-127, Math.min(127, Math.round(w[idx(c, i)] / s)));
  }
  return { q, scale };
}

function minMax(a: Float32Array): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of a) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

/** Activation quantization parameters from a calibration tensor: uint8 asymmetric over [min, max] (with 0) or int8 symmetric. */
function actParams(a: Float32Array, kind: 'u8' | 's8'): { scale: number; zero: number } {
  const [lo0, hi0] = minMax(a);
  const lo = Math.min(lo0, 0);
  const hi = Math.max(hi0, 0);
  if (kind === 's8') return { scale: Math.max(-lo, hi) / 127 || 1, zero: 0 };
  const scale = (hi - lo) / 255 || 1;
  return { scale, zero: Math.max(0, Math.min(255, Math.round(-lo / scale))) };
}

interface Layer {
  label: string;
  kind: 'conv' | 'matmul';
  /** conv: [cin, cout, h, w, k]; matmul: [m, k, n]. */
  dims: number[];
}

/** The ops a form is built from: the layer's float32 input, weight and bias, and calibrated output range. */
interface Ctx {
  g: Graph;
  x: Value;
  layer: Layer;
  w: Float32Array;
  b: Float32Array;
  xCal: Float32Array;
  yCal: Float32Array;
}

function qdqAct(c: Ctx, v: Value, cal: Float32Array, kind: 'u8' | 's8', tag: string): Value {
  const p = actParams(cal, kind);
  const t: ElemType = kind === 'u8' ? 'uint8' : 'int8';
  const scale = c.g.scalar(p.scale, 'float32');
  const zero = rawInit(c.g, `${tag}.zero`, t, [], kind === 'u8' ? Uint8Array.of(p.zero) : new Uint8Array(Int8Array.of(0).buffer));
  const q = c.g.node('QuantizeLinear', [v, scale, zero], {}, { outTypes: [t] })[0];
  return c.g.node('DequantizeLinear', [q, scale, zero], {}, { outTypes: ['float32'] })[0];
}

/** DequantizeLinear of the per-channel int8 weight (zero points 0), and for a conv the bias as int32 at scale sx * sw. */
function qdqWeight(c: Ctx, xScale: number): { w: Value; bias?: Value } {
  const { g, layer, w, b } = c;
  if (layer.kind === 'conv') {
    const [cin, cout, , , k] = layer.dims;
    const { q, scale } = quantizeWeight(w, cout, cin * k * k, true);
    const wq = rawInit(g, 'w.q', 'int8', [cout, cin, k, k], new Uint8Array(q.buffer));
    const ws = rawInit(g, 'w.scale', 'float32', [cout], f32Bytes(scale));
    const wz = rawInit(g, 'w.zero', 'int8', [cout], new Uint8Array(cout));
    const wd = g.node('DequantizeLinear', [wq, ws, wz], { axis: 0 }, { outTypes: ['float32'] })[0];
    const bScale = scale.map((s) => s * xScale);
    const bq = rawInit(g, 'b.q', 'int32', [cout], new Uint8Array(Int32Array.from(b, (v, i) => Math.round(v / bScale[i])).buffer));
    const bs = rawInit(g, 'b.scale', 'float32', [cout], f32Bytes(bScale));
    const bz = rawInit(g, 'b.zero', 'int32', [cout], new Uint8Array(4 * cout));
    const bd = g.node('DequantizeLinear', [bq, bs, bz], { axis: 0 }, { outTypes: ['float32'] })[0];
    return { w: wd, bias: bd };
  }
  const [, kk, n] = layer.dims;
  const { q, scale } = quantizeWeight(w, n, 0, false);
  const wq = rawInit(g, 'w.q', 'int8', [kk, n], new Uint8Array(q.buffer));
  const ws = rawInit(g, 'w.scale', 'float32', [n], f32Bytes(scale));
  const wz = rawInit(g, 'w.zero', 'int8', [n], new Uint8Array(n));
  return { w: g.node('DequantizeLinear', [wq, ws, wz], { axis: 1 }, { outTypes: ['float32'] })[0] };
}

function convAttrs(layer: Layer) {
  const k = layer.dims[4];
  return { kernel_shape: [k, k], pads: Array(4).fill(Math.floor(k / 2)), strides: [1, 1] };
}

type Form = (c: Ctx) => Value;

const FORMS: Record<string, Form> = {
  fp32: (c) => (c.layer.kind === 'conv' ? c.g.conv2d(c.x, 'l', { padding: Math.floor(c.layer.dims[4] / 2) }) : c.g.linear(c.x, 'l', { bias: true })),

  'qdq-u8': (c) => qdqForm(c, 'u8', true),
  'qdq-s8': (c) => qdqForm(c, 's8', true),
  'qdq-u8-fout': (c) => qdqForm(c, 'u8', false),

  dyn: (c) => {
    const { g, layer } = c;
    const [xq, xs, xz] = g.node('DynamicQuantizeLinear', [c.x], {}, { outputs: 3, outTypes: ['uint8', 'float32', 'uint8'] });
    if (layer.kind === 'conv') {
      // ORT's ConvInteger CPU kernel takes uint8 weights: the symmetric int8 weight shifted by 128 (zero point 128).
      const [cin, cout, , , k] = layer.dims;
      const { q, scale } = quantizeWeight(c.w, cout, cin * k * k, true);
      const wq = rawInit(g, 'w.u8', 'uint8', [cout, cin, k, k], Uint8Array.from(q, (v) => v + 128));
      const wz = rawInit(g, 'w.zero', 'uint8', [], Uint8Array.of(128));
      const acc = g.node('ConvInteger', [xq, wq, xz, wz], convAttrs(layer), { outTypes: ['int32'] })[0];
      const ws = rawInit(g, 'w.scale', 'float32', [cout, 1, 1], f32Bytes(scale));
      const y = g.mul(g.mul(g.cast(acc, 'float32'), xs), ws);
      return g.add(y, rawInit(g, 'b', 'float32', [cout, 1, 1], f32Bytes(c.b)));
    }
    const [, kk, n] = layer.dims;
    const { q, scale } = quantizeWeight(c.w, n, 0, false);
    const wq = rawInit(g, 'w.q', 'int8', [kk, n], new Uint8Array(q.buffer));
    const acc = g.node('MatMulInteger', [xq, wq, xz], {}, { outTypes: ['int32'] })[0];
    const y = g.mul(g.mul(g.cast(acc, 'float32'), xs), rawInit(g, 'w.scale', 'float32', [n], f32Bytes(scale)));
    return g.add(y, rawInit(g, 'b', 'float32', [n], f32Bytes(c.b)));
  },

  'dyn-msft': (c) => {
    const { g, layer } = c;
    const [, kk, n] = layer.dims;
    const { q, scale } = quantizeWeight(c.w, n, 0, false);
    const wq = rawInit(g, 'w.q', 'int8', [kk, n], new Uint8Array(q.buffer));
    const ws = rawInit(g, 'w.scale', 'float32', [n], f32Bytes(scale));
    const wz = rawInit(g, 'w.zero', 'int8', [n], new Uint8Array(n));
    const b = rawInit(g, 'b', 'float32', [n], f32Bytes(c.b));
    return g.node('DynamicQuantizeMatMul', [c.x, wq, ws, wz, b], {}, { domain: 'com.microsoft', outTypes: ['float32'] })[0];
  },

  'nbits8-acc4': (c) => nbits(c, 8, 4),
  'nbits4-acc4': (c) => nbits(c, 4, 4),
  'nbits4-acc0': (c) => nbits(c, 4, 0),

  fp16: (c) => {
    const { g, layer } = c;
    const h = g.cast(c.x, 'float16');
    const w16 = g.cast(rawInit(g, 'w', 'float32', layer.kind === 'conv' ? [layer.dims[1], layer.dims[0], layer.dims[4], layer.dims[4]] : [layer.dims[1], layer.dims[2]], f32Bytes(c.w)), 'float16');
    const b16 = g.cast(rawInit(g, 'b', 'float32', [layer.dims[1 + (layer.kind === 'conv' ? 0 : 1)]], f32Bytes(c.b)), 'float16');
    const y = layer.kind === 'conv' ? g.node('Conv', [h, w16, b16], convAttrs(layer))[0] : g.add(g.matmul(h, w16), b16);
    return g.cast(y, 'float32');
  },
};

function qdqForm(c: Ctx, kind: 'u8' | 's8', quantizeOutput: boolean): Value {
  const { g, layer } = c;
  const xIn = qdqAct(c, c.x, c.xCal, kind, 'x');
  const { w, bias } = qdqWeight(c, actParams(c.xCal, kind).scale);
  let y: Value;
  if (layer.kind === 'conv') y = g.node('Conv', [xIn, w, bias], convAttrs(layer))[0];
  else y = g.add(g.matmul(xIn, w), rawInit(g, 'b', 'float32', [layer.dims[2]], f32Bytes(c.b)));
  return quantizeOutput ? qdqAct(c, y, c.yCal, kind, 'y') : y;
}

/** MatMulNBits: B as [N, K / 32, 32 * bits / 8] uint8, asymmetric per block of 32 (zero points uint8, packed for 4 bits). */
function nbits(c: Ctx, bits: 4 | 8, accuracy: number): Value {
  const { g } = c;
  const [, K, N] = c.layer.dims;
  const block = 32;
  const blocks = K / block;
  const levels = 2 ** bits - 1;
  const packed = new Uint8Array((N * K * bits) / 8);
  const scales = new Float32Array(N * blocks);
  const zeros = new Uint8Array(bits === 8 ? N * blocks : N * Math.ceil(blocks / 2));
  for (let n = 0; n < N; n++) {
    for (let bl = 0; bl < blocks; bl++) {
      let lo = 0;
      let hi = 0;
      for (let i = 0; i < block; i++) {
        const v = c.w[(bl * block + i) * N + n];
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
      const s = (hi - lo) / levels || 1;
      const z = Math.round(-lo / s);
      scales[n * blocks + bl] = s;
      if (bits === 8) zeros[n * blocks + bl] = z;
      else zeros[n * Math.ceil(blocks / 2) + (bl >> 1)] |= z << ((bl & 1) * 4);
      for (let i = 0; i < block; i++) {
        const qv = Math.max(0, Math.min(levels, Math.round(c.w[(bl * block + i) * N + n] / s) + z));
        const k = bl * block + i;
        if (bits === 8) packed[n * K + k] = qv;
        else packed[(n * K + k) >> 1] |= qv << ((k & 1) * 4);
      }
    }
  }
  const bq = rawInit(g, 'w.nbits', 'uint8', [N, blocks, (block * bits) / 8], packed);
  const bs = rawInit(g, 'w.scales', 'float32', [N * blocks], f32Bytes(scales));
  const bz = rawInit(g, 'w.zeros', 'uint8', [zeros.length], zeros);
  const bias = rawInit(g, 'b', 'float32', [N], f32Bytes(c.b));
  return g.node('MatMulNBits', [c.x, bq, bs, bz, undefined, bias], { K, N, bits, block_size: block, accuracy_level: accuracy }, { domain: 'com.microsoft', outTypes: ['float32'] })[0];
}

const CONV_FORMS = ['fp32', 'qdq-u8', 'qdq-s8', 'qdq-u8-fout', 'dyn', 'fp16'];
const MATMUL_FORMS = ['fp32', 'qdq-u8', 'qdq-s8', 'qdq-u8-fout', 'dyn', 'dyn-msft', 'nbits8-acc4', 'nbits4-acc4', 'nbits4-acc0', 'fp16'];

/** The layers that carry SD 1.5's compute at 512x512 (the decoder's 3x3 convs at each resolution, the UNet's convs and linears). */
const LAYERS: Layer[] = [
  { label: 'VAE conv 128->128 @512', kind: 'conv', dims: [128, 128, 512, 512, 3] },
  { label: 'VAE conv 256->256 @256', kind: 'conv', dims: [256, 256, 256, 256, 3] },
  { label: 'VAE conv 512->512 @128', kind: 'conv', dims: [512, 512, 128, 128, 3] },
  { label: 'VAE conv 512->512 @64', kind: 'conv', dims: [512, 512, 64, 64, 3] },
  { label: 'UNet conv 320->320 @64', kind: 'conv', dims: [320, 320, 64, 64, 3] },
  { label: 'UNet conv 640->640 @32', kind: 'conv', dims: [640, 640, 32, 32, 3] },
  { label: 'UNet conv 1280->1280 @16', kind: 'conv', dims: [1280, 1280, 16, 16, 3] },
  { label: 'UNet linear [4096,320]x[320,1280]', kind: 'matmul', dims: [4096, 320, 1280] },
  { label: 'UNet linear [4096,320]x[320,320]', kind: 'matmul', dims: [4096, 320, 320] },
  { label: 'UNet linear [1024,640]x[640,2560]', kind: 'matmul', dims: [1024, 640, 2560] },
];

export interface LayerResult {
  layer: string;
  form: string;
  ms?: number;
  speedup?: number;
  snrDb?: number;
  ops?: string;
  error?: string;
}

const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

function snr(y: Float32Array, ref: Float32Array): number {
  let s = 0;
  let e = 0;
  for (let i = 0; i < ref.length; i++) {
    s += ref[i] * ref[i];
    e += (y[i] - ref[i]) ** 2;
  }
  return e === 0 ? Infinity : 10 * Math.log10(s / e);
}

async function runForm(dir: string, layer: Layer, form: string, x: Float32Array, w: Float32Array, b: Float32Array, yRef: Float32Array | undefined, runs: number) {
  const xDims = layer.kind === 'conv' ? [1, layer.dims[0], layer.dims[2], layer.dims[3]] : [layer.dims[0], layer.dims[1]];
  const wShape = layer.kind === 'conv' ? [layer.dims[1], layer.dims[0], layer.dims[4], layer.dims[4]] : [layer.dims[2], layer.dims[1]];
  // The float32 form reads torch's layout through the builder (Linear: W [out, in], transposed when written).
  const wTorch = layer.kind === 'conv' ? w : transpose(w, layer.dims[1], layer.dims[2]);
  const g = new Graph(form, tensorSource({ 'l.weight': { shape: wShape, data: wTorch }, 'l.bias': { shape: [wShape[0]], data: b } }));
  const xv = g.input('x', 'float32', xDims);
  const ctx: Ctx = { g, x: xv, layer, w, b, xCal: x, yCal: yRef ?? new Float32Array(1) };
  g.output(FORMS[form](ctx), 'y', layer.kind === 'conv' ? [1, layer.dims[1], layer.dims[2], layer.dims[3]] : [layer.dims[0], layer.dims[2]]);
  const name = form.replace(/[^a-z0-9]/g, '_');
  const { onnxPath } = await writeModel(g, dir, name);
  const optimized = join(dir, `${name}.opt.onnx`);
  const session = await ort.InferenceSession.create(onnxPath, { intraOpNumThreads: THREADS, interOpNumThreads: 1, graphOptimizationLevel: 'all', optimizedModelFilePath: optimized, logSeverityLevel: 3 });
  try {
    const opt = decodeModelStructure(await readFile(optimized));
    const counts = new Map<string, number>();
    for (const n of opt.nodes) counts.set(n.opType, (counts.get(n.opType) ?? 0) + 1);
    const ops = [...counts].map(([k, v]) => (v > 1 ? `${k}x${v}` : k)).join(' ');
    const feeds = { x: new ort.Tensor('float32', x, xDims) };
    let y = (await session.run(feeds)).y.data as Float32Array; // warm-up
    const times: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t = performance.now();
      y = (await session.run(feeds)).y.data as Float32Array;
      times.push(performance.now() - t);
    }
    return { ms: median(times), y, ops };
  } finally {
    await session.release();
  }
}

function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

function flopsOf(l: Layer): number {
  return l.kind === 'conv' ? 2 * l.dims[0] * l.dims[1] * l.dims[2] * l.dims[3] * l.dims[4] ** 2 : 2 * l.dims[0] * l.dims[1] * l.dims[2];
}

export async function benchLayers(opts: { quick?: boolean; layers?: Layer[]; forms?: string[] } = {}): Promise<LayerResult[]> {
  const dir = await mkdtemp(join(os.tmpdir(), 'onestep-quantize-'));
  const results: LayerResult[] = [];
  try {
    for (const [li, layer] of (opts.layers ?? LAYERS).entries()) {
      const xLen = layer.kind === 'conv' ? layer.dims[0] * layer.dims[2] * layer.dims[3] : layer.dims[0] * layer.dims[1];
      const fanIn = layer.kind === 'conv' ? layer.dims[0] * layer.dims[4] ** 2 : layer.dims[1];
      const wLen = layer.kind === 'conv' ? layer.dims[0] * layer.dims[1] * layer.dims[4] ** 2 : layer.dims[1] * layer.dims[2];
      // The input a conv sees in SD: SiLU(GroupNorm(h)), so silu of standard normals; weights at 1/sqrt(fan_in).
      const x = normals(xLen, 11 + li).map((v) => v / (1 + Math.exp(-v)));
      const w = normals(wLen, 101 + li).map((v) => v / Math.sqrt(fanIn));
      const b = normals(layer.kind === 'conv' ? layer.dims[1] : layer.dims[2], 1001 + li).map((v) => 0.1 * v);
      const gflop = flopsOf(layer) / 1e9;
      const runs = opts.quick ? 3 : gflop > 30 ? 5 : 9;
      let ref: { ms: number; y: Float32Array } | undefined;
      const forms = (opts.forms ?? (layer.kind === 'conv' ? CONV_FORMS : MATMUL_FORMS)).filter((f) => (layer.kind === 'conv' ? CONV_FORMS : MATMUL_FORMS).includes(f));
      for (const form of ['fp32', ...forms.filter((f) => f !== 'fp32')]) {
        try {
          const r = await runForm(dir, layer, form, x, w, b, ref?.y, runs);
          if (!ref) ref = r;
          const row: LayerResult = { layer: layer.label, form, ms: r.ms, speedup: ref.ms / r.ms, snrDb: form === 'fp32' ? undefined : snr(r.y, ref.y), ops: r.ops };
          results.push(row);
          console.log(
            `${layer.label.padEnd(36)} ${form.padEnd(12)} ${r.ms.toFixed(1).padStart(8)} ms  ${(gflop / (r.ms / 1000)).toFixed(0).padStart(4)} GFLOP/s  x${row.speedup!.toFixed(2)}  ${row.snrDb === undefined ? '' : `SNR ${row.snrDb.toFixed(1)} dB  `}[${r.ops}]`,
          );
        } catch (e) {
          const msg = (e as Error).message.split('\n')[0].slice(0, 160);
          results.push({ layer: layer.label, form, error: msg });
          console.log(`${layer.label.padEnd(36)} ${form.padEnd(12)} failed: ${msg}`);
          if (form === 'fp32') break;
        }
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return results;
}

function shapesOnly(shapes: Map<string, number[]>): WeightSource {
  return {
    names: () => [...shapes.keys()].sort(),
    has: (n) => shapes.has(n),
    meta: (n) => ({ shape: shapes.get(n)!, dtype: 'F32' }),
    readF32: (n) => Promise.reject(new Error(`built from shapes only (read ${n})`)),
    close: async () => {},
  };
}

/** GFLOP per kind (conv, matmul, attention) of SD 1.5's UNet and VAE decoder at 512x512, counted on onestep's graphs. */
export function sd15Classes(): { model: string; cls: string; gflop: number }[] {
  const graphs: [string, Graph, Record<string, number>][] = [
    ['unet', buildUNetGraph(shapesOnly(expectedUnetWeights(SD15_UNET)), SD15_UNET, 'float32'), { batch: 1, sequence: 77, height: 64, width: 64 }],
    ['vae', buildVaeDecoderGraph(shapesOnly(expectedVaeWeights(SD15_VAE)), SD15_VAE, 'float32'), { batch: 1, height: 64, width: 64 }],
  ];
  return graphs.flatMap(([model, g, symbols]) => Object.entries(countFlops(graphStructure(g), symbols).byKind).map(([cls, f]) => ({ model, cls, gflop: f / 1e9 })));
}

export async function benchQuantize(opts: { quick?: boolean } = {}): Promise<void> {
  const cpu = cpuInfo();
  console.log(`CPU: ${cpu.model}, ${cpu.cores} cores, ISA ${cpu.isa.join(' ')}; onnxruntime-node ${ort.env.versions.node}, ${THREADS} threads; load average ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);
  const results = await benchLayers(opts);
  console.log(`load average after: ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);

  // Projection: the best speedup per form over the measured layers of each class, applied to the class's FLOP share.
  const classes = sd15Classes();
  for (const model of ['unet', 'vae']) {
    const total = classes.filter((c) => c.model === model).reduce((a, c) => a + c.gflop, 0);
    console.log(`\n${model}: ${total.toFixed(0)} GFLOP per 512x512 image: ${classes.filter((c) => c.model === model).map((c) => `${c.cls} ${((100 * c.gflop) / total).toFixed(1)}%`).join(', ')}`);
  }
  const prefix = (m: string) => (m === 'vae' ? 'VAE conv' : 'UNet conv');
  for (const form of [...new Set([...CONV_FORMS, ...MATMUL_FORMS])].filter((f) => f !== 'fp32')) {
    const speed = (m: string, kind: string) => {
      const rows = results.filter((r) => r.form === form && r.speedup && r.layer.startsWith(kind === 'conv' ? prefix(m) : 'UNet linear'));
      // FLOP-weighted harmonic mean: the class's time falls by the measured time ratio of its representatives.
      if (!rows.length) return undefined;
      const base = rows.reduce((a, r) => a + r.ms! * r.speedup!, 0);
      const now = rows.reduce((a, r) => a + r.ms!, 0);
      return base / now;
    };
    const proj = ['unet', 'vae'].map((m) => {
      const cs = classes.filter((c) => c.model === m);
      const total = cs.reduce((a, c) => a + c.gflop, 0);
      let after = 0;
      for (const c of cs) {
        const s = c.cls === 'attention' ? 1 : speed(m, c.cls) ?? 1;
        after += c.gflop / s;
      }
      return total / after;
    });
    console.log(`projected per-stage speedup, ${form.padEnd(12)} where measured (convs, linears): UNet x${proj[0].toFixed(2)}, VAE decoder x${proj[1].toFixed(2)} (time taken as proportional to FLOPs)`);
  }
}

function psnr(a: Uint8Array, b: Uint8Array): number {
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i] - b[i]) ** 2;
  return se === 0 ? Infinity : 10 * Math.log10((255 * 255) / (se / a.length));
}

/**
 * End to end on the full-size random-weight SD 1.5 (bench/sd15-generator.ts): converted in float32 and with
 * `--quantize int8` into `dir` (kept there and reused), then 512x512 images, one step, no guidance, on both: per-stage
 * ms (median of `images` warm images after one warm-up) and each int8 image's PSNR against the float32 image of the same
 * prompt and seed.
 */
export async function benchQuantizedModel(opts: { dir?: string; images?: number } = {}): Promise<void> {
  const dir = opts.dir ?? join(ROOT, 'bench', '.work');
  const images = opts.images ?? 3;
  await mkdir(dir, { recursive: true });
  const input = join(dir, 'sd15-random-f32.safetensors');
  if (!existsSync(input)) await generateSd15(input, { dtype: 'f32' });
  const cpu = cpuInfo();
  console.log(`CPU: ${cpu.model}, ${cpu.cores} cores, ISA ${cpu.isa.join(' ')}; load average ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);
  const rgb = new Map<string, Uint8Array[]>();
  for (const quantize of [undefined, 'int8'] as const) {
    const label = quantize ?? 'fp32';
    const out = join(dir, `sd15-${label}`);
    if (!existsSync(join(out, 'model.json'))) {
      const t = performance.now();
      const r = await convertCheckpoint(input, { out, quantize });
      console.log(`convert ${label}: ${((performance.now() - t) / 1000).toFixed(0)} s, ${(r.bytes / 2 ** 30).toFixed(2)} GiB of weights${r.notes.length ? `; ${r.notes.join('; ')}` : ''}`);
    }
    const engine = await OneStepEngine.load(out, { device: 'cpu', threads: THREADS });
    try {
      const request = (i: number) => ({ index: i, prompt: `a photograph of a lighthouse on a cliff, variant ${i}`, negativePrompt: '', seed: BigInt(100 + i), width: 512, height: 512, guidance: 0 });
      await engine.generate([request(images)]); // warm-up
      const ms: StageTimes[] = [];
      const got: Uint8Array[] = [];
      for (let i = 0; i < images; i++) {
        const [img] = await engine.generate([request(i)]);
        ms.push(img.ms);
        got.push(img.rgb);
      }
      rgb.set(label, got);
      const med = (k: keyof StageTimes) => (median(ms.map((m) => m[k])) / 1000).toFixed(2);
      console.log(`${label}: text ${med('textEncoder')} s, UNet ${med('denoiser')} s, VAE decoder ${med('decoder')} s, per image ${med('total')} s (median of ${images}; load average ${os.loadavg().map((v) => v.toFixed(2)).join(' ')})`);
    } finally {
      await engine.close();
    }
  }
  const f = rgb.get('fp32')!;
  const q = rgb.get('int8')!;
  console.log(`int8 against fp32, PSNR per image: ${q.map((img, i) => psnr(img, f[i]).toFixed(1)).join(', ')} dB`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  if (process.argv.includes('--model')) await benchQuantizedModel({ dir: process.env.ONESTEP_BENCH_DIR });
  else await benchQuantize({ quick: process.argv.includes('--quick') });
}
