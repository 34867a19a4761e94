import { open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { OnestepError } from '../errors.js';
import { transpose2d } from '../checkpoint/sources.js';
import { countF16Overflow, f32ToF16 } from '../safetensors/dtypes.js';
import type { Graph, InitializerSpec } from './graph.js';
import { encodeModel, type TensorProtoData, type ValueInfoData } from './proto.js';

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
export async function materialize(graph: Graph, init: InitializerSpec): Promise<Float32Array> {
  const { key, view } = init.weight!;
  const data = await graph.weights.readF32(key);
  if (!view.transpose) return data;
  const [rows, cols] = view.reshape ?? graph.weightShape(key);
  return transpose2d(data, rows, cols);
}

function encodeAs(init: InitializerSpec, data: Float32Array): Uint8Array {
  if (init.type === 'float32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (init.type === 'float16') {
    const overflow = countF16Overflow(data);
    if (overflow) {
      throw new OnestepError(
        `weight ${init.weight!.key}: ${overflow} values exceed the float16 range`,
        'Convert with --dtype fp32.',
      );
    }
    const h = f32ToF16(data);
    return new Uint8Array(h.buffer);
  }
  throw new OnestepError(`weight ${init.weight!.key}: unsupported initializer type ${init.type}`);
}

async function writeAll(fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, position + done);
    done += bytesWritten;
  }
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
  const fh = await open(path.join(dir, dataName), 'w');
  const initializers: TensorProtoData[] = [];
  let offset = 0;
  let done = 0;
  const total = graph.initializers.size;
  const specs = [...graph.initializers.values()];
  // The next weight is read (and converted) while the current one is written: at most two tensors in memory.
  const load = (i: number): Promise<Uint8Array> | undefined => {
    const init = specs[i];
    if (!init || init.raw) return undefined;
    const p = materialize(graph, init).then((data) => encodeAs(init, data));
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
        if (pad) await writeAll(fh, new Uint8Array(pad), offset);
        offset += pad;
        await writeAll(fh, bytes, offset);
        initializers.push({ name: init.name, type: init.type, dims: init.dims, external: { location: dataName, offset, length: bytes.length } });
        offset += bytes.length;
      }
      done++;
      onProgress?.({ tensors: done, totalTensors: total, bytes: offset });
    }
  } finally {
    await next?.catch(() => undefined);
    await fh.close();
  }
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

/** Writes the graph's proto with the given outputs (the weights stay where `initializers` say). */
export async function writeGraphProto(graph: Graph, initializers: TensorProtoData[], outputs: ValueInfoData[], onnxPath: string): Promise<void> {
  const opsets = [{ domain: '', version: OPSET }];
  if (graph.domains.has('com.microsoft')) opsets.push({ domain: 'com.microsoft', version: 1 });
  const proto = encodeModel({
    irVersion: IR_VERSION,
    producerName: 'onestep',
    producerVersion: '1',
    opsets,
    graph: { name: graph.name, nodes: graph.nodes, initializers, inputs: graph.inputs, outputs },
    metadata: [],
  });
  const out = await open(onnxPath, 'w');
  try {
    await writeAll(out, proto, 0);
  } finally {
    await out.close();
  }
}
