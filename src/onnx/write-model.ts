import { open } from 'node:fs/promises';
import path from 'node:path';
import { OnestepError } from '../errors.js';
import { writeAll } from '../io/atomic.js';
import { BufferPool, type Allocator } from '../io/buffers.js';
import { DirectFileWriter } from '../io/direct-writer.js';
import { allocLike, transpose2d, type WeightArray } from '../checkpoint/sources.js';
import { countF16NonFinite, countF16Overflow, countF32NonFinite, f32ToF16, hasF16NonFinite } from '../safetensors/dtypes.js';
import type { Graph, InitializerSpec } from './graph.js';
import { quantizedInitializerBytes } from './int8.js';
import { encodeModel, type NodeProtoData, type TensorProtoData, type ValueInfoData } from './proto.js';

export const OPSET = 21;
export const IR_VERSION = 10;
/** External data offsets are aligned so that weights can be memory-mapped and read with aligned loads. */
const ALIGN = 64;

export interface WriteProgress {
  tensors: number;
  totalTensors: number;
  bytes: number;
}

/** Reads the stored weight and applies its view (reshape, transpose), in float32. */
export function materialize(graph: Graph, init: InitializerSpec): Promise<Float32Array> {
  return withView(graph, init, (k) => graph.weights.readF32(k));
}

/**
 * The weight as float16 bits with its view applied: the stored bits of a float16 checkpoint, moved (transposed,
 * packed) as 16-bit values, never widened to float32 and back (the same bits, at a fraction of the cost).
 */
export function materializeF16(graph: Graph, init: InitializerSpec, alloc?: Allocator): Promise<Uint16Array> {
  const { weights } = graph;
  return withView(graph, init, (k) => (weights.readF16 ? weights.readF16(k, alloc) : weights.readF32(k).then((v) => f32ToF16(v))), alloc);
}

async function withView<T extends WeightArray>(graph: Graph, init: InitializerSpec, read: (key: string) => Promise<T>, alloc?: Allocator): Promise<T> {
  const { key, view } = init.weight!;
  if (view.pack) return packHeads(await Promise.all(view.pack.keys.map(read)), view.pack.keys.map((k) => graph.weightShape(k)), view.pack.heads, alloc);
  const data = await read(key);
  if (view.permute) return permute4d(data, graph.weightShape(key), view.permute, alloc);
  if (!view.transpose) return data;
  const [rows, cols] = view.reshape ?? graph.weightShape(key);
  return transpose2d(data, rows, cols, alloc);
}

/** Reorders the axes of a 4-D tensor: out[i_p0, i_p1, i_p2, i_p3] = in[i0, i1, i2, i3]. */
function permute4d<T extends WeightArray>(data: T, dims: number[], perm: number[], alloc?: Allocator): T {
  const stride = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
  const outDims = perm.map((p) => dims[p]);
  const out = allocLike(data, data.length, alloc);
  let o = 0;
  const idx = [0, 0, 0, 0];
  for (idx[0] = 0; idx[0] < outDims[0]; idx[0]++) {
    for (idx[1] = 0; idx[1] < outDims[1]; idx[1]++) {
      for (idx[2] = 0; idx[2] < outDims[2]; idx[2]++) {
        const base = idx[0] * stride[perm[0]] + idx[1] * stride[perm[1]] + idx[2] * stride[perm[2]];
        const step = stride[perm[3]];
        for (let i = 0; i < outDims[3]; i++) out[o++] = data[base + i * step];
      }
    }
  }
  return out;
}

/**
 * Linear weights W_j [out_j, in] -> one [in, sum(out_j)] matrix (x @ it = every projection at once) whose columns go
 * head by head: for head h, W_0's h-th slice of out_0 / heads columns, then W_1's, ... (MultiHeadAttention's packed
 * QKV input [B, S, heads, 3, head_dim] is this product reshaped).
 */
function packHeads<T extends WeightArray>(ws: T[], shapes: number[][], heads: number, alloc?: Allocator): T {
  const inF = shapes[0][1];
  const per = shapes.map((s) => s[0] / heads);
  const total = shapes.reduce((a, s) => a + s[0], 0);
  const out = allocLike(ws[0], inF * total, alloc);
  // Column by column: each source row (one output column) is read contiguously, the output written at a stride.
  let c = 0;
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < ws.length; j++) {
      const w = ws[j];
      for (let d = 0; d < per[j]; d++, c++) {
        const row = (h * per[j] + d) * inF;
        for (let r = 0, o = c; r < inF; r++, o += total) out[o] = w[row + r];
      }
    }
  }
  return out;
}

const bytesOf = (a: WeightArray): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/**
 * The initializer's bytes as written: float32 values, float16 bits, or an int8 form (onnx/int8.ts). NaN, Inf and
 * float16 overflow are refused.
 */
async function encodeWeight(graph: Graph, init: InitializerSpec, alloc: Allocator): Promise<Uint8Array> {
  const { key, view } = init.weight!;
  const quant = view.quant;
  if (quant) {
    const [data, weight] = await Promise.all([materialize(graph, init), quant.weight && materialize(graph, { ...init, weight: quant.weight })]);
    if (countF32NonFinite(data)) throw nonFinite(key, countF32NonFinite(data));
    return quantizedInitializerBytes(quant, data, weight);
  }
  if (init.type === 'float32') {
    const data = await materialize(graph, init);
    if (countF32NonFinite(data)) throw nonFinite(key, countF32NonFinite(data));
    return bytesOf(data);
  }
  if (init.type !== 'float16') throw new OnestepError(`weight ${key}: unsupported initializer type ${init.type}`);
  const bits = await materializeF16(graph, init, alloc);
  if (hasF16NonFinite(bits)) {
    // Rare: tell finite values beyond the float16 range (the float32 fallback helps) from NaN/Inf in the checkpoint.
    const overflow = countF16Overflow(await materialize(graph, init));
    if (overflow) throw new OnestepError(`weight ${key}: ${overflow} values exceed the float16 range`, 'Convert with --dtype fp32.');
    throw nonFinite(key, countF16NonFinite(bits));
  }
  return bytesOf(bits);
}

function nonFinite(key: string, count: number): OnestepError {
  return new OnestepError(
    `weight ${key}: ${count} values are NaN or infinite, so every image from this model would be too`,
    'The checkpoint is damaged (or was trained into NaN): re-download it or use another one.',
  );
}

/**
 * Writes `<dir>/<name>.onnx` and its weights into `<dir>/<name>.onnx.data`, streaming tensor by tensor (the next
 * one is read while the current one is written, so at most two are in memory).
 * Bytes depend only on the graph and the weight values, never on paths or time.
 */
export async function writeModel(
  graph: Graph,
  dir: string,
  name: string,
  onProgress?: (p: WriteProgress) => void,
): Promise<WrittenModel> {
  const dataName = `${name}.onnx.data`;
  const out = await DirectFileWriter.create(path.join(dir, dataName));
  const initializers: TensorProtoData[] = [];
  let offset = 0;
  let done = 0;
  const total = graph.initializers.size;
  const specs = [...graph.initializers.values()];
  // The next weight is read (and converted) while the current one is written: at most two tensors in memory, in two
  // slots of reused buffers (load(i) starts once tensor i - 2, the slot's last user, is written).
  const pool = new BufferPool(2);
  const load = (i: number): Promise<Uint8Array> | undefined => {
    const init = specs[i];
    if (!init || init.raw) return undefined;
    const p = encodeWeight(graph, init, pool.recycle(i % 2));
    p.catch(() => undefined); // awaited in order below; this only keeps an early failure from being unhandled
    return p;
  };
  let next = load(0);
  try {
    for (let i = 0; i < specs.length; i++) {
      const init = specs[i];
      const current = next;
      next = load(i + 1);
      if (init.raw) {
        initializers.push({ name: init.name, type: init.type, dims: init.dims, raw: init.raw });
      } else {
        const bytes = await current!;
        const pad = (ALIGN - (offset % ALIGN)) % ALIGN;
        await out.zeros(pad);
        offset += pad;
        await out.write(bytes);
        initializers.push({ name: init.name, type: init.type, dims: init.dims, external: { location: dataName, offset, length: bytes.length } });
        offset += bytes.length;
      }
      done++;
      onProgress?.({ tensors: done, totalTensors: total, bytes: offset });
    }
  } catch (e) {
    await next?.catch(() => undefined);
    await out.abort();
    throw e;
  }
  await out.close();
  const onnxPath = path.join(dir, `${name}.onnx`);
  await writeGraphProto(graph, initializers, graph.outputs, onnxPath);
  return { onnxPath, dataBytes: offset, initializers };
}

export interface WrittenModel {
  onnxPath: string;
  dataBytes: number;
  /** The initializers as written (weights referencing `<name>.onnx.data`), for another proto over the same data. */
  initializers: TensorProtoData[];
}

/** Writes the graph's proto with the given outputs (the weights stay where `initializers` say), and `extraNodes` after its own. */
export async function writeGraphProto(graph: Graph, initializers: TensorProtoData[], outputs: ValueInfoData[], onnxPath: string, extraNodes: NodeProtoData[] = []): Promise<void> {
  const opsets = [{ domain: '', version: OPSET }];
  if (graph.domains.has('com.microsoft')) opsets.push({ domain: 'com.microsoft', version: 1 });
  const proto = encodeModel({
    irVersion: IR_VERSION,
    producerName: 'onestep',
    producerVersion: '1',
    opsets,
    graph: { name: graph.name, nodes: extraNodes.length ? [...graph.nodes, ...extraNodes] : graph.nodes, initializers, inputs: graph.inputs, outputs },
    metadata: [],
  });
  const out = await open(onnxPath, 'w');
  try {
    await writeAll(out, proto);
  } finally {
    await out.close();
  }
}
