/**
 * T5 encoder (transformers' T5EncoderModel, T5 v1.1 as PixArt uses it: T5-XXL). Relative position buckets
 * (bidirectional; the bias is computed in block 0 and shared by all blocks, with the attention mask added to it),
 * RMS layer norms with the variance in float32, gated-GELU feed-forward, attention without the 1/sqrt(d) scaling.
 */
import type { WeightSource } from '../checkpoint/weight-source.js';
import { OnestepError } from '../errors.js';
import { expectedWeights, Graph, type Value } from '../onnx/graph.js';

export interface T5Config {
  vocab_size: number;
  d_model: number;
  d_kv: number;
  d_ff: number;
  num_layers: number;
  num_heads: number;
  relative_attention_num_buckets: number;
  relative_attention_max_distance: number;
  layer_norm_epsilon: number;
  /** 'gated-gelu' (T5 v1.1: gelu_new(wi_0 x) * wi_1 x) or 'relu' (T5 v1.0: relu(wi x)). */
  feed_forward_proj: 'gated-gelu' | 'relu';
}

/** A transformers T5 config.json (as parsed JSON) -> T5Config with T5Config's defaults; refuses what is not built. */
export function normalizeT5Config(json: Record<string, any>, source = 'text_encoder config'): T5Config {
  const ff = json.feed_forward_proj ?? 'relu';
  const act = json.dense_act_fn;
  const gated = ff === 'gated-gelu' && (act == null || act === 'gelu_new');
  if (!gated && ff !== 'relu') {
    throw new OnestepError(`${source}: feed_forward_proj ${JSON.stringify(ff)}${act ? ` with ${act}` : ''} is not supported (onestep builds T5 with gated-gelu or relu)`, 'Use a T5 v1.1 encoder as PixArt ships it.');
  }
  if (json.is_decoder === true) throw new OnestepError(`${source}: a T5 decoder is not a text encoder`);
  const dModel = json.d_model ?? 512;
  const heads = json.num_heads ?? 8;
  return {
    vocab_size: json.vocab_size ?? 32128,
    d_model: dModel,
    d_kv: json.d_kv ?? 64,
    d_ff: json.d_ff ?? 2048,
    num_layers: json.num_layers ?? 6,
    num_heads: heads,
    relative_attention_num_buckets: json.relative_attention_num_buckets ?? 32,
    relative_attention_max_distance: json.relative_attention_max_distance ?? 128,
    layer_norm_epsilon: json.layer_norm_epsilon ?? 1e-6,
    feed_forward_proj: gated ? 'gated-gelu' : 'relu',
  };
}

/**
 * T5Attention._relative_position_bucket (bidirectional) for key - query offsets -D..D (D = max_distance; beyond it
 * the bucket no longer changes), evaluated in float32 step by step as torch does, so boundary offsets (16, 32, 64)
 * land in the same bucket.
 */
export function relativePositionBuckets(numBuckets: number, maxDistance: number): Int32Array {
  const half = Math.floor(numBuckets / 2);
  const maxExact = Math.floor(half / 2);
  const logRange = Math.fround(Math.log(maxDistance / maxExact));
  const table = new Int32Array(2 * maxDistance + 1);
  for (let offset = -maxDistance; offset <= maxDistance; offset++) {
    let bucket = offset > 0 ? half : 0;
    const rel = Math.abs(offset);
    if (rel < maxExact) bucket += rel;
    else {
      const scaled = Math.fround(Math.fround(Math.fround(Math.log(Math.fround(rel / maxExact))) / logRange) * (half - maxExact));
      bucket += Math.min(maxExact + Math.trunc(scaled), half - 1);
    }
    table[offset + maxDistance] = bucket;
  }
  return table;
}

/** T5LayerNorm: x / sqrt(mean(x^2) + eps) in float32 (no mean subtraction, no bias), back to the graph dtype, times weight. */
function t5LayerNorm(g: Graph, cfg: T5Config, x: Value, prefix: string): Value {
  const eps = cfg.layer_norm_epsilon;
  return g.scope(prefix.slice(prefix.lastIndexOf('.') + 1), () => {
    const x32 = g.cast(x, 'float32');
    const variance = g.node('ReduceMean', [g.mul(x32, x32), g.ints([-1])], { keepdims: 1 })[0];
    const normed = g.mul(x32, g.node('Reciprocal', [g.node('Sqrt', [g.add(variance, g.scalar(eps, 'float32'))])[0]])[0]);
    return g.mul(g.weight(`${prefix}.weight`, {}, g.dtype, [cfg.d_model]), g.cast(normed, g.dtype));
  });
}

/** Position bias [1, heads, S, S] from block 0's relative_attention_bias, for a sequence of length `seqLen` ([1] int64). */
function positionBias(g: Graph, cfg: T5Config, seqLen: Value, key: string): Value {
  return g.scope('relative_attention_bias', () => {
    const d = cfg.relative_attention_max_distance;
    const table = g.constant(relativePositionBuckets(cfg.relative_attention_num_buckets, d), [2 * d + 1], 'int64');
    const positions = g.node('Range', [g.constant([0], [], 'int64'), g.node('Squeeze', [seqLen])[0], g.constant([1], [], 'int64')])[0];
    const offsets = g.sub(g.unsqueeze(positions, [0]), g.unsqueeze(positions, [1])); // [q, k] = k - q
    const clamped = g.node('Min', [g.node('Max', [offsets, g.constant([-d], [], 'int64')])[0], g.constant([d], [], 'int64')])[0];
    const buckets = g.gather(table, g.add(clamped, g.constant([d], [], 'int64')));
    const bias = g.gather(g.weight(key, {}, g.dtype, [cfg.relative_attention_num_buckets, cfg.num_heads]), buckets); // [S, S, heads]
    return g.unsqueeze(g.transpose(bias, [2, 0, 1]), [0]);
  });
}

function selfAttention(g: Graph, cfg: T5Config, x: Value, bias: Value, prefix: string): Value {
  return g.scope('SelfAttention', () => {
    const inner: [number, number] = [cfg.d_model, cfg.num_heads * cfg.d_kv];
    const q = g.linear(x, `${prefix}.q`, { bias: false, features: inner });
    const k = g.linear(x, `${prefix}.k`, { bias: false, features: inner });
    const v = g.linear(x, `${prefix}.v`, { bias: false, features: inner });
    return g.linear(g.attention(q, k, v, cfg.num_heads, { attentionBias: bias, scale: 1 }), `${prefix}.o`, { bias: false, features: [inner[1], inner[0]] });
  });
}

function feedForward(g: Graph, cfg: T5Config, x: Value, prefix: string): Value {
  return g.scope('DenseReluDense', () => {
    const up = { bias: false, features: [cfg.d_model, cfg.d_ff] as const };
    const down = { bias: false, features: [cfg.d_ff, cfg.d_model] as const };
    if (cfg.feed_forward_proj === 'relu') return g.linear(g.node('Relu', [g.linear(x, `${prefix}.wi`, up)])[0], `${prefix}.wo`, down);
    const gate = g.gelu(g.linear(x, `${prefix}.wi_0`, up), 'tanh');
    return g.linear(g.mul(gate, g.linear(x, `${prefix}.wi_1`, up)), `${prefix}.wo`, down);
  });
}

/**
 * In float16 transformers clamps the hidden states after each sublayer to finfo.max - 1000 once an inf appears (T5
 * v1.1's activations exceed float16's range); onestep clamps always, which differs only for values within 1000 of
 * the float16 maximum.
 */
function clampF16(g: Graph, x: Value): Value {
  return g.dtype === 'float16' ? g.clip(x, -64504, 64504) : x;
}

/**
 * Where a T5 encoder's token embedding is stored: T5EncoderModel.shared, which encoder.embed_tokens ties to; files
 * saved with the tie broken keep only the latter.
 */
export type T5Embedding = 'shared' | 'encoder.embed_tokens';

/** The stored embedding of a component's weights (`shared` when present). */
export function t5EmbeddingOf(weights: WeightSource, prefix = 'text_encoder'): T5Embedding {
  return !weights.has(`${prefix}.shared.weight`) && weights.has(`${prefix}.encoder.embed_tokens.weight`) ? 'encoder.embed_tokens' : 'shared';
}

/**
 * input ids [B, S] int64 and attention mask [B, S] int64 (1 keep, 0 pad) -> last_hidden_state [B, S, d_model] in the
 * graph's dtype; the mask is added to the position bias of every block, as transformers does.
 */
export function t5Encoder(g: Graph, cfg: T5Config, inputIds: Value, attentionMask: Value, embedding: T5Embedding = 'shared', prefix = 'text_encoder'): Value {
  return g.scope('text_encoder', () => {
    let x = g.gather(g.weight(`${prefix}.${embedding}.weight`, {}, g.dtype, [cfg.vocab_size, cfg.d_model]), inputIds);
    const seqLen = g.shape(inputIds, 1, 2);
    // (1 - mask) * finfo(dtype).min, broadcast over heads and queries: [B, 1, 1, S].
    const min = g.dtype === 'float16' ? -65504 : -3.4028234663852886e38;
    const keep = g.cast(attentionMask, g.dtype);
    const maskBias = g.unsqueeze(g.mul(g.sub(g.scalar(1), keep), g.scalar(min)), [1, 2]);
    const bias = g.add(positionBias(g, cfg, seqLen, `${prefix}.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight`), maskBias);
    for (let i = 0; i < cfg.num_layers; i++) {
      const p = `${prefix}.encoder.block.${i}`;
      x = g.scope(`block.${i}`, () => {
        let h = clampF16(g, g.add(x, selfAttention(g, cfg, t5LayerNorm(g, cfg, x, `${p}.layer.0.layer_norm`), bias, `${p}.layer.0.SelfAttention`)));
        h = clampF16(g, g.add(h, feedForward(g, cfg, t5LayerNorm(g, cfg, h, `${p}.layer.1.layer_norm`), `${p}.layer.1.DenseReluDense`)));
        return h;
      });
    }
    return t5LayerNorm(g, cfg, x, `${prefix}.encoder.final_layer_norm`);
  });
}

/** Standalone text-encoder graph: `input_ids`, `attention_mask` int64 [batch, sequence] -> `last_hidden_state` float32. */
export function buildT5EncoderGraph(weights: WeightSource, cfg: T5Config, dtype: 'float32' | 'float16' = 'float32', embedding: T5Embedding = 'shared'): Graph {
  const g = new Graph('text_encoder', weights, dtype);
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence']);
  const mask = g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const out = t5Encoder(g, cfg, ids, mask, embedding);
  g.output(g.cast(out, 'float32'), 'last_hidden_state', ['batch', 'sequence', cfg.d_model]);
  return g;
}

/** The tensors a T5 encoder of this config reads, with their shapes (the builder's dry run). */
export function expectedT5Weights(cfg: T5Config, embedding: T5Embedding = 'shared'): Map<string, number[]> {
  return expectedWeights((w) => buildT5EncoderGraph(w, cfg, 'float32', embedding));
}
