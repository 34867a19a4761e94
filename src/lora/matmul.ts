/**
 * up @ down for LoRA deltas through ONNX Runtime's MatMul (MLAS GEMM, all cores): a rank-64 LoRA over SD 1.5 is
 * ~40 GFLOP of products, minutes in a JavaScript loop, about a second here.
 */
import os from 'node:os';
import * as ort from 'onnxruntime-node';
import { OnestepError } from '../errors.js';
import { encodeModel } from '../onnx/proto.js';
import { IR_VERSION, OPSET } from '../onnx/write-model.js';

let session: Promise<ort.InferenceSession> | undefined;

function matmulModel(): Uint8Array {
  return encodeModel({
    irVersion: IR_VERSION,
    producerName: 'onestep',
    producerVersion: '1',
    opsets: [{ domain: '', version: OPSET }],
    graph: {
      name: 'matmul',
      nodes: [{ name: '/MatMul', opType: 'MatMul', domain: '', inputs: ['a', 'b'], outputs: ['c'], attributes: [] }],
      initializers: [],
      inputs: [
        { name: 'a', type: 'float32', dims: ['m', 'k'] },
        { name: 'b', type: 'float32', dims: ['k', 'n'] },
      ],
      outputs: [{ name: 'c', type: 'float32', dims: ['m', 'n'] }],
    },
    metadata: [],
  });
}

/** a [m, k] @ b [k, n] -> [m, n], float32. */
export async function matmul(a: Float32Array, b: Float32Array, m: number, k: number, n: number): Promise<Float32Array> {
  if (a.length !== m * k || b.length !== k * n) throw new OnestepError(`internal: matmul sizes ${a.length} vs ${m}x${k}, ${b.length} vs ${k}x${n}`);
  session ??= ort.InferenceSession.create(matmulModel(), {
    intraOpNumThreads: os.availableParallelism(),
    graphOptimizationLevel: 'disabled',
  });
  const out = await (await session).run({ a: new ort.Tensor('float32', a, [m, k]), b: new ort.Tensor('float32', b, [k, n]) });
  return out.c.data as Float32Array;
}
