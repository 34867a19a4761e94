/**
 * float16 safety. A float16 graph can overflow where its float32 twin does not: SDXL's stock VAE decoder does (its
 * activations pass 65504, which is why sdxl-vae-fp16-fix exists). convert runs each float16 graph once on a
 * reference input and keeps the float32 graph where a value holds NaN or Inf.
 *
 * Only the graph's outputs would not show it on a CPU: onnxruntime's CPU provider runs most float16 ops in float32
 * (it inserts casts around them), so an overflow inside stays hidden until a GPU computes it in float16. The check
 * therefore reads every float16 activation back as a float16 tensor (a probe proto over the same weight file, with
 * those values as extra outputs), where whatever does not fit float16 is Inf, as it is on a device computing in it.
 *
 * The reference input follows the graph's declared inputs: batch 1, text sequences of 77 tokens, 8x8 spatial sizes;
 * standard normal floats (torch's generator, seed 0) times a per-input scale, the one-step timestep 999, SDXL time ids
 * of a 1024 x 1024 image, token id 1 everywhere and a full attention mask.
 */
import { numel } from '../checkpoint/weight-source.js';
import { rm } from 'node:fs/promises';
import * as ort from 'onnxruntime-node';
import { torchRandn } from '../runtime/noise.js';
import type { Graph } from './graph.js';
import type { ValueInfoData } from './proto.js';
import { writeGraphProto, type WrittenModel } from './write-model.js';

/** Sizes of the dynamic dimensions of the reference input, by name; any other is 8 (a latent or image side). */
const DYNAMIC: Record<string, number> = { batch: 1, sequence: 77 };

/** Per float input, what the standard normal values are multiplied by (latent_sample: 1 / the VAE's scaling_factor). */
export type ReferenceScales = Record<string, number>;

function referenceTensor(input: ValueInfoData, scales: ReferenceScales): ort.Tensor {
  const dims = (input.dims ?? []).map((d) => (typeof d === 'number' ? d : (DYNAMIC[d] ?? 8)));
  const size = numel(dims);
  if (input.type === 'int64') {
    // Token id 1 exists in every vocabulary; an attention mask of ones keeps every position.
    return new ort.Tensor('int64', new BigInt64Array(size).fill(1n), dims);
  }
  if (input.type !== 'float32') throw new Error(`fp16 check: input ${input.name} of type ${input.type} has no reference value`);
  if (input.name === 'timestep') return new ort.Tensor('float32', new Float32Array(size).fill(999), dims);
  if (input.name === 'time_ids') {
    const row = [1024, 1024, 0, 0, 1024, 1024];
    return new ort.Tensor('float32', Float32Array.from({ length: size }, (_, i) => row[i % 6]), dims);
  }
  const scale = scales[input.name] ?? 1;
  return new ort.Tensor('float32', torchRandn(0, dims).map((v) => v * scale), dims);
}

/** The feeds convert evaluates a graph on. */
export function referenceFeeds(inputs: readonly ValueInfoData[], scales: ReferenceScales = {}): Record<string, ort.Tensor> {
  return Object.fromEntries(inputs.map((i) => [i.name, referenceTensor(i, scales)]));
}

/** Ops whose output has their first input's element type: the activations a float16 graph can overflow in. */
const PROBED_OPS = new Set([
  'Add', 'Sub', 'Mul', 'Div', 'MatMul', 'FusedMatMul', 'Gemm', 'Conv', 'MultiHeadAttention', 'LayerNormalization', 'Softmax', 'Concat',
  'Resize', 'Reshape', 'Transpose', 'Relu', 'Sigmoid', 'Tanh', 'Gelu', 'Erf', 'Sqrt', 'Identity',
]);

/**
 * Evaluates a written float16 graph once on the reference input. Returns the float16 values (graph outputs included)
 * that hold NaN or Inf, in graph order; empty when the graph is float16-safe on this input.
 */
export async function float16Overflows(graph: Graph, written: WrittenModel, scales: ReferenceScales = {}): Promise<string[]> {
  const declared = new Set(graph.outputs.map((o) => o.name));
  const probes: ValueInfoData[] = [];
  for (const node of graph.nodes) {
    if (node.domain && node.opType !== 'MultiHeadAttention' && node.opType !== 'FusedMatMul') continue;
    if (!PROBED_OPS.has(node.opType)) continue;
    for (const name of node.outputs) {
      if (!declared.has(name) && graph.valueTypes.get(name) === 'float16') probes.push({ name, type: 'float16', dims: null });
    }
  }
  const outputs = [...graph.outputs, ...probes];
  const probePath = written.onnxPath.replace(/\.onnx$/, '.fp16-probe.onnx');
  await writeGraphProto(graph, written.initializers, outputs, probePath);
  try {
    const session = await ort.InferenceSession.create(probePath, { graphOptimizationLevel: 'basic', executionMode: 'sequential' });
    try {
      const out = await session.run(referenceFeeds(graph.inputs, scales));
      const bad: string[] = [];
      for (const o of outputs) {
        const t = out[o.name];
        if (!t || (t.type !== 'float32' && t.type !== 'float16')) continue;
        if (!finite(t)) bad.push(o.name);
      }
      return bad;
    } finally {
      await session.release();
    }
  } finally {
    await rm(probePath, { force: true });
  }
}

const F16_EXP = 0x7c00;
function finite(t: ort.Tensor): boolean {
  if (t.type === 'float32') return (t.data as Float32Array).every(Number.isFinite);
  // float16 comes back as raw bits (Uint16Array): exponent all ones is Inf or NaN.
  return (t.data as Uint16Array).every((h) => (h & F16_EXP) !== F16_EXP);
}
