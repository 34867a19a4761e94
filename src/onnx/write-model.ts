import { open } from 'node:fs/promises';
import path from 'node:path';
import { OnestepError } from '../errors.js';
import { countF16Overflow, f32ToF16 } from '../safetensors/dtypes.js';
import type { Graph, InitializerSpec } from './graph.js';
import { encodeModel, type TensorProtoData } from './proto.js';

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
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  return out;
}

function encodeAs(init: InitializerSpec, data: Float32Array): Uint8Array {
  if (init.type === 'float32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (init.type === 'float16') {
    const overflow = countF16Overflow(data);
    if (overflow) {
      throw new OnestepError(
        `weight ${init.weight!.key}: ${overflow} values exceed the float16 range`,
        'convert with --dtype fp32',
      );
    }
    const h = f32ToF16(data);
    return new Uint8Array(h.buffer);
  }
  throw new OnestepError(`weight ${init.weight!.key}: unsupported initializer type ${init.type}`);
}

/**
 * Writes `<dir>/<name>.onnx` and its weights into `<dir>/<name>.onnx.data`, streaming one tensor at a time.
 * Bytes depend only on the graph and the weight values, never on paths or time.
 */
export async function writeModel(
  graph: Graph,
  dir: string,
  name: string,
  onProgress?: (p: WriteProgress) => void,
): Promise<{ onnxPath: string; dataBytes: number }> {
  const dataName = `${name}.onnx.data`;
  const fh = await open(path.join(dir, dataName), 'w');
  const initializers: TensorProtoData[] = [];
  let offset = 0;
  let done = 0;
  const total = graph.initializers.size;
  try {
    for (const init of graph.initializers.values()) {
      if (init.raw) {
        initializers.push({ name: init.name, type: init.type, dims: init.dims, raw: init.raw });
      } else {
        const bytes = encodeAs(init, await materialize(graph, init));
        const pad = (ALIGN - (offset % ALIGN)) % ALIGN;
        if (pad) await fh.write(new Uint8Array(pad), 0, pad, offset);
        offset += pad;
        await fh.write(bytes, 0, bytes.length, offset);
        initializers.push({ name: init.name, type: init.type, dims: init.dims, external: { location: dataName, offset, length: bytes.length } });
        offset += bytes.length;
      }
      done++;
      onProgress?.({ tensors: done, totalTensors: total, bytes: offset });
    }
  } finally {
    await fh.close();
  }
  const opsets = [{ domain: '', version: OPSET }];
  if (graph.domains.has('com.microsoft')) opsets.push({ domain: 'com.microsoft', version: 1 });
  const proto = encodeModel({
    irVersion: IR_VERSION,
    producerName: 'onestep',
    producerVersion: '1',
    opsets,
    graph: { name: graph.name, nodes: graph.nodes, initializers, inputs: graph.inputs, outputs: graph.outputs },
    metadata: [],
  });
  const onnxPath = path.join(dir, `${name}.onnx`);
  const out = await open(onnxPath, 'w');
  try {
    await out.write(proto);
  } finally {
    await out.close();
  }
  return { onnxPath, dataBytes: offset };
}
