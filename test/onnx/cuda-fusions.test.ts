/**
 * The CUDA target's graph rewrite. Its fused ops have no CPU kernels, so this checks what a CPU can: on the full-size
 * SD 1.5 UNet and VAE decoder (built from tensor shapes alone, no weights read) how many of each op it emits and that
 * every shape in the rewritten graph still resolves to the same FLOPs; and, by running ORT on standard ops, that the
 * weight layouts it writes (packed QKV, OHWI convolution weights) are the layouts those ops read.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { buildUNetGraph, expectedUnetWeights, unetConfigFromJson } from '../../src/architectures/unet.js';
import { buildVaeDecoderGraph, expectedVaeWeights, vaeConfigFromJson } from '../../src/architectures/vae.js';
import type { WeightSource } from '../../src/checkpoint/weight-source.js';
import { convertCheckpoint } from '../../src/convert.js';
import { OnestepError } from '../../src/errors.js';
import { fuseForCuda } from '../../src/onnx/cuda-fusions.js';
import { OneStepEngine } from '../../src/runtime/engine.js';
import { countFlops } from '../../src/onnx/flops.js';
import { Graph } from '../../src/onnx/graph.js';
import { graphStructure, readModelStructure } from '../../src/onnx/read-model.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { FIXTURES, memoryWeights } from '../support/fixtures.js';

const SD15_UNET = unetConfigFromJson({ block_out_channels: [320, 640, 1280, 1280], layers_per_block: 2, attention_head_dim: 8, cross_attention_dim: 768, sample_size: 64 }, 'unet/config.json');
const SD15_VAE = vaeConfigFromJson({ block_out_channels: [128, 256, 512, 512], layers_per_block: 2, latent_channels: 4 }, 'vae/config.json');

/** Tensor shapes only: building a graph never reads weights. */
function shapesOnly(shapes: Map<string, number[]>): WeightSource {
  return {
    names: () => [...shapes.keys()].sort(),
    has: (n) => shapes.has(n),
    meta: (n) => ({ shape: shapes.get(n)!, dtype: 'F32' }),
    readF32: async (n) => {
      throw new Error(`read ${n}`);
    },
    close: async () => {},
  };
}


const count = (g: Graph, op: string) => g.nodes.filter((n) => n.opType === op).length;

describe('onnx/cuda-fusions', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-cuda-fusions-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('rewrites the full-size SD 1.5 UNet to the fused ops, keeping every shape (same FLOPs) and no plain group norm', () => {
    const g = buildUNetGraph(shapesOnly(expectedUnetWeights(SD15_UNET)), SD15_UNET, 'float16');
    const symbols = { batch: 2, sequence: 77, height: 64, width: 64 };
    const before = countFlops(graphStructure(g), symbols);
    // DESIGN.md's figure for SD 1.5's UNet at 512x512: 803 GFLOP per image (here 2 rows).
    assert.equal(Math.round(before.flops / 2e9), 803);
    const convs = count(g, 'Conv');
    const report = fuseForCuda(g);
    // 22 resnets (norm1 + SiLU; norm2 = conv1 + temb, + SiLU), 16 transformer norms, conv_norm_out + SiLU.
    assert.deepEqual(report, { nhwcConv: convs, groupNorm: 22 + 16 + 1, skipGroupNorm: 22, biasSplitGelu: 16, biasAdd: 3 * 16, packedQkv: 16 });
    assert.equal(count(g, 'Conv'), 0);
    assert.equal(count(g, 'ReduceMean'), 0);
    assert.equal(count(g, 'Sigmoid'), 2); // the time embedding's two SiLUs (no group norm before them)
    const after = countFlops(graphStructure(g), symbols);
    assert.deepEqual(after.unresolved, []);
    assert.deepEqual(after.byKind, before.byKind);
    // Every value a node reads is produced by a node before it, or is an input or initializer.
    const known = new Set([...g.inputs.map((i) => i.name), ...g.initializers.keys()]);
    for (const n of g.nodes) {
      for (const i of n.inputs) assert.ok(!i || known.has(i), `${n.name} reads ${i} before it exists`);
      for (const o of n.outputs) known.add(o);
    }
    assert.ok(g.domains.has('com.microsoft'));
  });

  it('rewrites the full-size SD 1.5 VAE decoder (group norms, SiLU, convs; its attention has biases and stays)', () => {
    const g = buildVaeDecoderGraph(shapesOnly(expectedVaeWeights(SD15_VAE)), SD15_VAE, 'float16');
    const symbols = { batch: 1, height: 64, width: 64 };
    const before = countFlops(graphStructure(g), symbols);
    assert.deepEqual(before.unresolved, []);
    assert.equal(Math.round(before.flops / 1e9), 2515); // DESIGN.md: the SD VAE decoder, 2515 GFLOP per 512x512 image
    const report = fuseForCuda(g);
    assert.equal(report.skipGroupNorm, 0);
    assert.equal(report.groupNorm, count(g, 'GroupNorm'));
    assert.ok(report.groupNorm >= 30 && report.nhwcConv >= 30);
    assert.equal(report.packedQkv, 0);
    const after = countFlops(graphStructure(g), symbols);
    assert.deepEqual(after.unresolved, []);
    assert.deepEqual(after.byKind, before.byKind);
  });

  it('writes the packed QKV weight in the layout MultiHeadAttention reads: [B, S, heads, 3, head_dim]', async () => {
    const heads = 2;
    const C = 8;
    const w = (seed: number) => ({ shape: [C, C], data: Array.from({ length: C * C }, (_, i) => Math.sin(seed + i * 0.7)) });
    const weights = memoryWeights({ 'a.to_q.weight': w(1), 'a.to_k.weight': w(2), 'a.to_v.weight': w(3) });
    const g = new Graph('packed', weights);
    const x = g.input('x', 'float32', [1, 5, C]);
    const [q, k, v] = ['to_q', 'to_k', 'to_v'].map((p) => g.linear(x, `a.${p}`));
    g.output(g.attention(q, k, v, heads), 'y', [1, 5, C]);
    fuseForCuda(g);
    // Replace the (CPU-less) packed attention by standard ops that pick q, k, v out of the packed tensor again.
    const mha = g.nodes.findIndex((n) => n.opType === 'MultiHeadAttention');
    const packed = g.nodes[mha].inputs[0];
    const mhaOut = g.nodes[mha].outputs[0];
    g.nodes.splice(0, g.nodes.length, ...g.nodes.filter((n, i) => i !== mha && !n.inputs.includes(mhaOut)));
    g.outputs.length = 0;
    ['q', 'k', 'v'].forEach((name, j) => {
      const picked = g.node('Slice', [{ name: packed, type: 'float32' }, g.ints([j]), g.ints([j + 1]), g.ints([3])])[0];
      g.output(g.reshape(picked, [1, 5, C]), name, [1, 5, C]);
    });
    const fused = (await writeModel(g, tmp, 'packed')).onnxPath;
    const ref = new Graph('ref', weights);
    const rx = ref.input('x', 'float32', [1, 5, C]);
    for (const [name, p] of [['q', 'to_q'], ['k', 'to_k'], ['v', 'to_v']]) ref.output(ref.linear(rx, `a.${p}`), name, [1, 5, C]);
    const plain = (await writeModel(ref, tmp, 'ref')).onnxPath;
    const input = new ort.Tensor('float32', Float32Array.from({ length: 5 * C }, (_, i) => Math.cos(i)), [1, 5, C]);
    const [a, b] = await Promise.all([fused, plain].map(async (f) => (await ort.InferenceSession.create(f)).run({ x: input })));
    for (const name of ['q', 'k', 'v']) {
      const got = a[name].data as Float32Array;
      const want = b[name].data as Float32Array;
      for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i] - want[i]) <= 1e-6 * (1 + Math.abs(want[i])), `${name}[${i}]`);
    }
  });

  it('writes NhwcConv weights as OHWI ([out, kh, kw, in]), read back from the written file', async () => {
    const data = Array.from({ length: 6 * 3 * 3 * 3 }, (_, i) => Math.sin(i * 0.3));
    const weights = memoryWeights({ 'c.weight': { shape: [6, 3, 3, 3], data }, 'c.bias': { shape: [6], data: [1, 2, 3, 4, 5, 6] } });
    const g = new Graph('conv', weights);
    g.output(g.conv2d(g.input('x', 'float32', [1, 3, 5, 5]), 'c'), 'y', [1, 6, 5, 5]);
    fuseForCuda(g);
    const ohwi = [...g.initializers.values()].find((i) => i.name.endsWith('.ohwi'))!;
    assert.deepEqual(ohwi.dims, [6, 3, 3, 3]);
    await writeModel(g, tmp, 'conv');
    const m = await readModelStructure(path.join(tmp, 'conv.onnx'));
    assert.ok(m.nodes.some((n) => n.opType === 'NhwcConv' && n.domain === 'com.microsoft'));
    // The stored OHWI bytes against the OIHW weight: element [o, h, w, i] is OIHW [o, i, h, w].
    const at = m.initializers.get(ohwi.name)!.external!;
    assert.equal(at.length, 6 * 27 * 4);
    const file = fs.readFileSync(path.join(tmp, at.location));
    const raw = new Float32Array(file.buffer.slice(file.byteOffset + at.offset, file.byteOffset + at.offset + at.length));
    for (let o = 0; o < 6; o++)
      for (let h = 0; h < 3; h++)
        for (let w = 0; w < 3; w++)
          for (let i = 0; i < 3; i++) assert.equal(raw[((o * 3 + h) * 3 + w) * 3 + i], Math.fround(data[((o * 3 + i) * 3 + h) * 3 + w]));
  });

  it('convert --target cuda writes fp16 fused graphs marked for CUDA; the CPU target keeps standard ops; CPU refuses a CUDA model', async function () {
    this.timeout(120_000);
    const cuda = path.join(tmp, 'tiny-cuda');
    const cpu = path.join(tmp, 'tiny-cpu');
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: cuda, target: 'cuda' });
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: cpu });
    const manifest = JSON.parse(fs.readFileSync(path.join(cuda, 'model.json'), 'utf8'));
    assert.equal(manifest.target, 'cuda');
    assert.equal(manifest.dtype, 'float16');
    assert.equal(JSON.parse(fs.readFileSync(path.join(cpu, 'model.json'), 'utf8')).target, undefined);
    const ops = async (dir: string, file: string) => new Set((await readModelStructure(path.join(dir, file))).nodes.map((n) => `${n.domain}:${n.opType}`));
    for (const file of ['unet.onnx', 'vae_decoder.onnx']) {
      const fused = await ops(cuda, file);
      for (const op of ['com.microsoft:GroupNorm', 'com.microsoft:NhwcConv']) assert.ok(fused.has(op), `${file} lacks ${op}`);
      assert.ok(!fused.has(':Conv'));
      const plain = await ops(cpu, file);
      assert.ok(![...plain].some((op) => /GroupNorm|NhwcConv|BiasAdd|BiasSplitGelu/.test(op)), `${file} (cpu) has fused ops`);
    }
    assert.ok((await ops(cuda, 'unet.onnx')).has('com.microsoft:SkipGroupNorm'));
    await assert.rejects(OneStepEngine.load(cuda, { device: 'cpu' }), (e: OnestepError) => {
      assert.ok(e instanceof OnestepError);
      assert.match(e.message, /converted for CUDA/);
      assert.match(e.hint ?? '', /without --target cuda/);
      return true;
    });
  });
});
