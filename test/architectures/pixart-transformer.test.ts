import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { buildPixArtTransformerGraph, expectedPixArtTransformerWeights, normalizePixArtConfig, positionEmbedding, type PixArtConfig } from '../../src/architectures/pixart-transformer.js';
import { Graph } from '../../src/onnx/graph.js';
import { OnestepError } from '../../src/errors.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { folderConfig, folderWeights, goldens, memoryWeights, relErr } from '../support/fixtures.js';
import { signedRandom } from '../support/random.js';
import { caseBound, ulpSensitivity } from '../support/bounds.js';

/** Random weights for a PixArt transformer of inner dimension `dim` (one block), micro-condition embedders included. */
function randomPixArt(dim: number, caption: number, seed: number): Record<string, { shape: number[]; data: number[] }> {
  const rand = signedRandom(seed);
  const shapes: Record<string, number[]> = {
    'pos_embed.proj.weight': [dim, 4, 2, 2],
    'pos_embed.proj.bias': [dim],
    'adaln_single.linear.weight': [6 * dim, dim],
    'adaln_single.linear.bias': [6 * dim],
    'caption_projection.linear_1.weight': [dim, caption],
    'caption_projection.linear_1.bias': [dim],
    'caption_projection.linear_2.weight': [dim, dim],
    'caption_projection.linear_2.bias': [dim],
    scale_shift_table: [2, dim],
    'proj_out.weight': [32, dim],
    'proj_out.bias': [32],
    'transformer_blocks.0.scale_shift_table': [6, dim],
    'transformer_blocks.0.ff.net.0.proj.weight': [4 * dim, dim],
    'transformer_blocks.0.ff.net.0.proj.bias': [4 * dim],
    'transformer_blocks.0.ff.net.2.weight': [dim, 4 * dim],
    'transformer_blocks.0.ff.net.2.bias': [dim],
  };
  for (const [name, out, inp] of [['timestep_embedder', dim, 256], ['resolution_embedder', dim / 3, 256], ['aspect_ratio_embedder', dim / 3, 256]] as const) {
    shapes[`adaln_single.emb.${name}.linear_1.weight`] = [out, inp];
    shapes[`adaln_single.emb.${name}.linear_1.bias`] = [out];
    shapes[`adaln_single.emb.${name}.linear_2.weight`] = [out, out];
    shapes[`adaln_single.emb.${name}.linear_2.bias`] = [out];
  }
  for (const a of ['attn1', 'attn2']) {
    for (const l of ['to_q', 'to_k', 'to_v', 'to_out.0']) {
      shapes[`transformer_blocks.0.${a}.${l}.weight`] = [dim, dim];
      shapes[`transformer_blocks.0.${a}.${l}.bias`] = [dim];
    }
  }
  return Object.fromEntries(
    Object.entries(shapes).map(([k, shape]) => {
      const fanIn = shape.length > 1 ? shape.slice(1).reduce((x, y) => x * y, 1) : 4;
      return [`transformer.${k}`, { shape, data: Array.from({ length: shape.reduce((x, y) => x * y, 1) }, () => rand() / Math.sqrt(fanIn)) }];
    }),
  );
}

/** float64: linear_2(silu(linear_1(sinusoid_256(v)))) of one value, diffusers' Timesteps(256, flip_sin_to_cos) + TimestepEmbedding. */
function embedValue(w: Record<string, { shape: number[]; data: number[] }>, prefix: string, v: number): number[] {
  const half = 128;
  const sinusoid = [...Array(half).keys()].map((i) => Math.cos(v * Math.exp((-Math.log(10000) * i) / half))).concat([...Array(half).keys()].map((i) => Math.sin(v * Math.exp((-Math.log(10000) * i) / half))));
  const linear = (x: number[], key: string) => {
    const { shape, data } = w[`${key}.weight`];
    return Array.from({ length: shape[0] }, (_, o) => x.reduce((acc, xi, i) => acc + xi * data[o * shape[1] + i], w[`${key}.bias`].data[o]));
  };
  const h = linear(sinusoid, `${prefix}.linear_1`).map((x) => x / (1 + Math.exp(-x)));
  return linear(h, `${prefix}.linear_2`);
}

const cfg = normalizePixArtConfig(folderConfig('tiny-pixart', 'transformer'));
const gold = goldens('tiny-pixart');
const get = (n: string) => gold.get(n)!;

describe('architectures/pixart-transformer', () => {
  const dirs: string[] = [];
  const sessions: ort.InferenceSession[] = [];
  let fp32: ort.InferenceSession | undefined;
  after(async () => {
    for (const s of sessions) await s.release();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });
  async function session(c: PixArtConfig, dtype: 'float32' | 'float16', weights = folderWeights('tiny-pixart', ['transformer'])): Promise<ort.InferenceSession> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-pixart-'));
    dirs.push(dir);
    const { onnxPath } = await writeModel(buildPixArtTransformerGraph(weights, c, dtype), dir, 'transformer');
    const s = await ort.InferenceSession.create(onnxPath);
    sessions.push(s);
    return s;
  }
  async function run(s: ort.InferenceSession, t: number, sample = get('transformer.sample')) {
    const ctx = get('transformer.encoder_hidden_states');
    const mask = get('transformer.encoder_attention_mask');
    const out = await s.run({
      sample: new ort.Tensor('float32', sample.data, sample.shape),
      timestep: new ort.Tensor('float32', Float32Array.from([t, t]), [2]),
      encoder_hidden_states: new ort.Tensor('float32', ctx.data, ctx.shape),
      encoder_attention_mask: new ort.Tensor('int64', BigInt64Array.from(mask.data, (v) => BigInt(v)), mask.shape),
    });
    return out.out_sample;
  }

  it('reads the fixture config and fills diffusers defaults', () => {
    assert.deepEqual([cfg.num_layers, cfg.num_attention_heads, cfg.attention_head_dim, cfg.patch_size, cfg.out_channels, cfg.interpolation_scale, cfg.use_additional_conditions], [2, 2, 32, 2, 8, 1, false]);
    const xl1024 = normalizePixArtConfig({ sample_size: 128 });
    assert.deepEqual([xl1024.interpolation_scale, xl1024.use_additional_conditions, xl1024.num_layers, xl1024.caption_channels], [2, true, 28, 4096]);
    const xl512 = normalizePixArtConfig({ sample_size: 64, use_additional_conditions: false });
    assert.deepEqual([xl512.interpolation_scale, xl512.use_additional_conditions], [1, false]);
    // PixArt-XL-2-1024-MS as first published (and YOSO's transformer): a Transformer2DModel config with ada_norm_single
    const legacy = normalizePixArtConfig({
      _class_name: 'Transformer2DModel', activation_fn: 'gelu-approximate', attention_bias: true, attention_head_dim: 72, caption_channels: 4096,
      cross_attention_dim: 1152, double_self_attention: false, in_channels: 4, norm_elementwise_affine: false, norm_eps: 1e-6, norm_num_groups: 32,
      norm_type: 'ada_norm_single', num_attention_heads: 16, num_embeds_ada_norm: 1000, num_layers: 28, num_vector_embeds: null, only_cross_attention: false,
      out_channels: 8, patch_size: 2, sample_size: 128, upcast_attention: false, use_linear_projection: false,
    });
    assert.deepEqual([legacy.interpolation_scale, legacy.use_additional_conditions, legacy.caption_channels], [2, true, 4096]);
    assert.throws(() => normalizePixArtConfig({ norm_type: 'ada_norm_zero' }, 'x/config.json'), (e: unknown) => e instanceof OnestepError && /x\/config.json: norm_type/.test(e.message));
  });

  it('expects exactly the tensors diffusers saves, with their shapes (the builder declares every one)', () => {
    const stored = folderWeights('tiny-pixart', ['transformer']);
    const expectedShapes = expectedPixArtTransformerWeights(cfg);
    assert.deepEqual([...expectedShapes.keys()].sort(), stored.names());
    for (const [name, shape] of expectedShapes) assert.deepEqual(shape, stored.meta(name).shape, name);
  });

  it('micro-conditions add cat(resolution_embedder(h), resolution_embedder(w), aspect_ratio_embedder(h/w)) to the timestep embedding', async () => {
    // Adding a constant vector c to the embedded timestep is the same network as adding c to
    // timestep_embedder.linear_2.bias; c is computed here in float64, the graphs are compared per sample.
    const dim = 48;
    const base = { ...cfg, num_layers: 1, num_attention_heads: 2, attention_head_dim: 24, caption_channels: 16, cross_attention_dim: 48 };
    const w = randomPixArt(dim, 16, 7);
    const withConditions = await session({ ...base, use_additional_conditions: true }, 'float32', memoryWeights(w));
    const rand = signedRandom(8);
    const sample = Float32Array.from({ length: 4 * 8 * 8 }, rand);
    const context = Float32Array.from({ length: 6 * 16 }, rand);
    const feed = (extra: Record<string, ort.Tensor>) => ({
      sample: new ort.Tensor('float32', sample, [1, 4, 8, 8]),
      timestep: new ort.Tensor('float32', Float32Array.from([999]), [1]),
      encoder_hidden_states: new ort.Tensor('float32', context, [1, 6, 16]),
      encoder_attention_mask: new ort.Tensor('int64', BigInt64Array.from([1n, 1n, 1n, 1n, 0n, 0n]), [1, 6]),
      ...extra,
    });
    for (const [height, width] of [[1024, 1024], [768, 1344]]) {
      const e = 'transformer.adaln_single.emb';
      const c = [...embedValue(w, `${e}.resolution_embedder`, height), ...embedValue(w, `${e}.resolution_embedder`, width), ...embedValue(w, `${e}.aspect_ratio_embedder`, height / width)];
      const shifted = { ...w, [`${e}.timestep_embedder.linear_2.bias`]: { shape: [dim], data: w[`${e}.timestep_embedder.linear_2.bias`].data.map((b, i) => b + c[i]) } };
      const plain = await session({ ...base, use_additional_conditions: false }, 'float32', memoryWeights(shifted));
      const want = (await plain.run(feed({}))).out_sample.data as Float32Array;
      const got = (
        await withConditions.run(
          feed({ resolution: new ort.Tensor('float32', Float32Array.from([height, width]), [1, 2]), aspect_ratio: new ort.Tensor('float32', Float32Array.from([height / width]), [1, 1]) }),
        )
      ).out_sample.data as Float32Array;
      const err = relErr(got, want);
      console.log(`      ${height}x${width}: relErr ${err.toExponential(2)}`);
      assert.ok(err <= 1e-4, `relErr ${err}`);
    }
  });

  it('2D sin-cos position embedding for any patch grid (base_size, interpolation_scale) as get_2d_sincos_pos_embed', async () => {
    // float64 reference of diffusers' formula: grid = arange(n) / (n / base) / scale; first half of D the column
    // coordinate, second half the row, each [sin(pos * omega), cos(pos * omega)], omega_k = 10000^(-k / (D/4)).
    const dim = 16;
    for (const [sampleSize, h, w] of [[8, 4, 4], [8, 3, 5], [128, 6, 2]]) {
      const c = normalizePixArtConfig({ sample_size: sampleSize });
      const g = new Graph('pos', memoryWeights({}));
      const hv = g.input('h', 'int64', [1]);
      const wv = g.input('w', 'int64', [1]);
      g.output(positionEmbedding(g, c, hv, wv, dim), 'pos', [1, 'n', dim]);
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-pos-'));
      dirs.push(dir);
      const s = await ort.InferenceSession.create((await writeModel(g, dir, 'pos')).onnxPath);
      sessions.push(s);
      const out = (await s.run({ h: new ort.Tensor('int64', BigInt64Array.from([BigInt(h)]), [1]), w: new ort.Tensor('int64', BigInt64Array.from([BigInt(w)]), [1]) })).pos;
      assert.deepEqual(out.dims, [1, h * w, dim]);
      const base = sampleSize / 2;
      const scale = Math.max(Math.floor(sampleSize / 64), 1);
      const want: number[] = [];
      for (let r = 0; r < h; r++) {
        for (let col = 0; col < w; col++) {
          for (const pos of [col / (w / base) / scale, r / (h / base) / scale]) {
            const omega = [0, 1, 2, 3].map((k) => 10000 ** (-k / 4));
            want.push(...omega.map((o) => Math.sin(pos * o)), ...omega.map((o) => Math.cos(pos * o)));
          }
        }
      }
      const err = relErr(out.data as Float32Array, want);
      assert.ok(err <= 1e-6, `grid ${h}x${w} (sample_size ${sampleSize}): relErr ${err}`);
    }
  });

  // The bound is the case's (test/support/bounds.ts): 1e-4, or 16x the graph's own change for a 1-ulp change of the
  // latents, whichever is larger, so that another CPU's summation order cannot fail a correct graph.
  for (const t of [999, 500]) {
    it(`float32 reproduces transformer.out_t${t} (8 channels: epsilon + learned variance) within the case bound`, async () => {
      const s = (fp32 ??= await session(cfg, 'float32'));
      const sample = get('transformer.sample');
      const runAt = async (x: Float32Array) => (await run(s, t, { ...sample, data: x })).data as Float32Array;
      const out = await run(s, t);
      assert.deepEqual(out.dims, get(`transformer.out_t${t}`).shape);
      const err = relErr(out.data as Float32Array, get(`transformer.out_t${t}`).data);
      const sensitivity = await ulpSensitivity(runAt, sample.data);
      const bound = caseBound(1e-4, sensitivity);
      console.log(`      relErr ${err.toExponential(2)} (1-ulp sensitivity ${sensitivity.toExponential(2)}, bound ${bound.toExponential(2)})`);
      assert.ok(err <= bound, `relErr ${err} > ${bound}`);
    });
  }

  it('float16 reproduces transformer.out_t999 within 2e-2', async () => {
    const s = await session(cfg, 'float16');
    const err = relErr((await run(s, 999)).data as Float32Array, get('transformer.out_t999').data);
    console.log(`      relErr ${err.toExponential(2)}`);
    assert.ok(err <= 2e-2, `relErr ${err}`);
  });
});
