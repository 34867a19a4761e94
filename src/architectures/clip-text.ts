/** CLIP text transformer (transformers' CLIPTextModel), as Stable Diffusion 1.x (ViT-L) and 2.x (OpenCLIP ViT-H) use it. */
import type { ClipTextConfig } from '../checkpoint/configs.js';
import type { WeightSource } from '../checkpoint/weight-source.js';
import { Graph, type Value } from '../onnx/graph.js';

export interface ClipTextOutputs {
  lastHiddenState: Value;
  pooledOutput: Value;
}

export function normalizeClipTextConfig(json: Record<string, any>): ClipTextConfig {
  return {
    vocab_size: json.vocab_size,
    hidden_size: json.hidden_size,
    intermediate_size: json.intermediate_size,
    num_hidden_layers: json.num_hidden_layers,
    num_attention_heads: json.num_attention_heads,
    max_position_embeddings: json.max_position_embeddings ?? 77,
    hidden_act: json.hidden_act ?? 'quick_gelu',
    layer_norm_eps: json.layer_norm_eps ?? 1e-5,
    projection_dim: json.architectures?.includes('CLIPTextModelWithProjection') ? json.projection_dim : null,
    eos_token_id: json.eos_token_id ?? 2,
  };
}

function attention(g: Graph, cfg: ClipTextConfig, x: Value, causalBias: Value, prefix: string): Value {
  return g.scope('self_attn', () => {
    const q = g.linear(x, `${prefix}.q_proj`);
    const k = g.linear(x, `${prefix}.k_proj`);
    const v = g.linear(x, `${prefix}.v_proj`);
    const o = g.attention(q, k, v, cfg.num_attention_heads, { attentionBias: causalBias });
    return g.linear(o, `${prefix}.out_proj`);
  });
}

function mlp(g: Graph, cfg: ClipTextConfig, x: Value, prefix: string): Value {
  return g.scope('mlp', () => {
    const h = g.linear(x, `${prefix}.fc1`);
    const a = cfg.hidden_act === 'gelu' ? g.gelu(h) : g.quickGelu(h);
    return g.linear(a, `${prefix}.fc2`);
  });
}

function encoderLayer(g: Graph, cfg: ClipTextConfig, x: Value, causalBias: Value, prefix: string): Value {
  const eps = cfg.layer_norm_eps;
  const h = g.add(x, attention(g, cfg, g.layerNorm(x, `${prefix}.layer_norm1`, eps), causalBias, `${prefix}.self_attn`));
  return g.add(h, mlp(g, cfg, g.layerNorm(h, `${prefix}.layer_norm2`, eps), `${prefix}.mlp`));
}

/** Additive causal mask [1, 1, S, S] for the first S positions (0 on and below the diagonal, a large negative above). */
function causalMask(g: Graph, cfg: ClipTextConfig, seqLen: Value): Value {
  const n = cfg.max_position_embeddings;
  const big = g.dtype === 'float16' ? -65504 : -1e9;
  const values = new Float32Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) values[i * n + j] = big;
  const full = g.constant(values, [1, 1, n, n]);
  const zeros = g.ints([0, 0]);
  const ends = g.concat([seqLen, seqLen], 0);
  return g.node('Slice', [full, zeros, ends, g.ints([2, 3])])[0];
}

/**
 * input ids [batch, sequence] (int64) -> last_hidden_state [batch, sequence, hidden] and pooled output [batch, hidden]
 * (the hidden state at the EOS token; with the legacy eos_token_id 2, at the highest id, as transformers does).
 */
export function clipTextEncoder(g: Graph, cfg: ClipTextConfig, inputIds: Value, prefix = 'text_encoder.text_model'): ClipTextOutputs {
  return g.scope('text_encoder', () => {
    const seqLen = g.shape(inputIds, 1, 2);
    const tokens = g.gather(g.weight(`${prefix}.embeddings.token_embedding.weight`), inputIds);
    const positions = g.node('Slice', [g.weight(`${prefix}.embeddings.position_embedding.weight`), g.ints([0]), seqLen, g.ints([0])])[0];
    let x = g.add(tokens, positions);
    const bias = causalMask(g, cfg, seqLen);
    for (let i = 0; i < cfg.num_hidden_layers; i++) {
      x = g.scope(`layers.${i}`, () => encoderLayer(g, cfg, x, bias, `${prefix}.encoder.layers.${i}`));
    }
    const lastHiddenState = g.layerNorm(x, `${prefix}.final_layer_norm`, cfg.layer_norm_eps);
    const pooledOutput = g.scope('pooler', () => {
      const eosPosition =
        cfg.eos_token_id === 2
          ? g.node('ArgMax', [inputIds], { axis: -1, keepdims: 0 }, { outTypes: ['int64'] })[0]
          : g.node('ArgMax', [g.cast(g.node('Equal', [inputIds, g.constant([cfg.eos_token_id], [], 'int64')], {}, { outTypes: ['bool'] })[0], 'int32')], { axis: -1, keepdims: 0 }, { outTypes: ['int64'] })[0];
      const oneHot = g.node('OneHot', [eosPosition, g.node('Squeeze', [seqLen])[0], g.constant([0, 1], [2], g.dtype)], { axis: -1 }, { outTypes: [g.dtype] })[0];
      const picked = g.matmul(g.unsqueeze(oneHot, [1]), lastHiddenState);
      return g.node('Squeeze', [picked, g.ints([1])])[0];
    });
    return { lastHiddenState, pooledOutput };
  });
}

/** Standalone text-encoder graph: `input_ids` int64 -> `last_hidden_state`, `pooler_output` (float32). */
export function buildClipTextGraph(weights: WeightSource, cfg: ClipTextConfig, dtype: 'float32' | 'float16' = 'float32'): Graph {
  const g = new Graph('text_encoder', weights, dtype);
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence']);
  const { lastHiddenState, pooledOutput } = clipTextEncoder(g, cfg, ids);
  g.output(g.cast(lastHiddenState, 'float32'), 'last_hidden_state', ['batch', 'sequence', cfg.hidden_size]);
  g.output(g.cast(pooledOutput, 'float32'), 'pooler_output', ['batch', cfg.hidden_size]);
  return g;
}
