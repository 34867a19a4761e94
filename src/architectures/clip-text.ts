/**
 * CLIP text transformer (transformers' CLIPTextModel / CLIPTextModelWithProjection), as Stable Diffusion 1.x (ViT-L),
 * 2.x (OpenCLIP ViT-H) and SDXL (ViT-L and OpenCLIP bigG) use it.
 */
import { ConfigFields, countDistinct, requiredShape, type ClipTextConfig, type ShapeView } from '../checkpoint/configs.js';
import type { WeightSource } from '../checkpoint/weight-source.js';
import { OnestepError } from '../errors.js';
import { expectedWeights, Graph, type Module, type Value } from '../onnx/graph.js';
import { attention } from './blocks.js';

export interface ClipTextOutputs {
  hiddenState: Value;
  pooled?: Value;
}

/** What a text-encoder graph outputs (CONTRACTS.md: text encoder graphs). */
export interface ClipTextOutput {
  /** The hidden state, as transformers indexes hidden_states: -1 after every layer, -2 the penultimate layer's. */
  layer: number;
  /** Whether final_layer_norm is applied to it (SD 1.x / 2.x: yes; SDXL: no). */
  finalNorm: boolean;
  /** Its output name. */
  name: 'last_hidden_state' | 'hidden_states';
  /**
   * `pooler_output`: the hidden-state output's row at the EOS token (SD graphs carry it, nothing reads it);
   * `text_embeds`: the EOS row of the last layer after final_layer_norm times text_projection
   * (CLIPTextModelWithProjection, SDXL's pooled embedding), whatever `layer` is.
   */
  pooled: 'pooler_output' | 'text_embeds' | null;
}

/** SD 1.x: last_hidden_state (every layer + final norm). SD 2.x single files holding the whole OpenCLIP tower use layer -2. */
export const SD_TEXT_OUTPUT: ClipTextOutput = { layer: -1, finalNorm: true, name: 'last_hidden_state', pooled: 'pooler_output' };
/** SDXL's CLIP-L: hidden_states[-2], no final norm. */
export const SDXL_TEXT_OUTPUT: ClipTextOutput = { layer: -2, finalNorm: false, name: 'hidden_states', pooled: null };
/** SDXL's OpenCLIP bigG: hidden_states[-2] without final norm, and the projected pooled text_embeds. */
export const SDXL_TEXT2_OUTPUT: ClipTextOutput = { layer: -2, finalNorm: false, name: 'hidden_states', pooled: 'text_embeds' };

/** The token id CLIP's tokenizer uses for end-of-text. */
export const CLIP_EOS_TOKEN_ID = 49407;

/**
 * A transformers CLIPTextConfig config.json -> ClipTextConfig with CLIPTextConfig's defaults for absent fields; one
 * BadInputError naming `file` and the field for an activation this file does not build or a malformed value.
 */
export function clipTextConfigFromJson(raw: Readonly<Record<string, unknown>>, file: string): ClipTextConfig {
  const f = new ConfigFields(raw, file);
  f.refuse({ hidden_act: (v) => v === 'quick_gelu' || v === 'gelu' }, 'CLIP text encoders with quick_gelu or gelu', 'Use a CLIP text encoder as SD and SDXL ship it.');
  const withProjection = f.strList('architectures', []).includes('CLIPTextModelWithProjection');
  // transformers configs saved before 4.31 carry eos_token_id 2; transformers then pools at argmax(input_ids), which
  // for CLIP's vocabulary is the first end-of-text token (49407), the same as pooling at the first 49407.
  const eos = f.count('eos_token_id', CLIP_EOS_TOKEN_ID);
  return {
    vocab_size: f.count('vocab_size', 49408),
    hidden_size: f.count('hidden_size', 512),
    intermediate_size: f.count('intermediate_size', 2048),
    num_hidden_layers: f.count('num_hidden_layers', 12),
    num_attention_heads: f.count('num_attention_heads', 8),
    max_position_embeddings: f.count('max_position_embeddings', 77),
    hidden_act: f.str('hidden_act', 'quick_gelu') as ClipTextConfig['hidden_act'],
    layer_norm_eps: f.num('layer_norm_eps', 1e-5),
    projection_dim: withProjection ? f.count('projection_dim', 512) : null,
    eos_token_id: eos === 2 ? CLIP_EOS_TOKEN_ID : eos,
  };
}

/**
 * CLIP text config from the shapes of `<component>.*` canonical tensors; the activation is the family's (OpenAI
 * CLIP quick_gelu, OpenCLIP gelu); heads = hidden/64 (not visible in shapes).
 */
export function clipTextConfigFromShapes(view: ShapeView, hiddenAct: ClipTextConfig['hidden_act'], component = 'text_encoder'): ClipTextConfig {
  const shape = (name: string) => requiredShape(view, `${component}.${name}`);
  const [vocab, hidden] = shape('text_model.embeddings.token_embedding.weight');
  return {
    vocab_size: vocab,
    hidden_size: hidden,
    intermediate_size: shape('text_model.encoder.layers.0.mlp.fc1.weight')[0],
    num_hidden_layers: countDistinct(view.names, new RegExp(`^${component}\\.text_model\\.encoder\\.layers\\.(\\d+)\\.`)),
    num_attention_heads: Math.max(1, Math.floor(hidden / 64)),
    max_position_embeddings: shape('text_model.embeddings.position_embedding.weight')[0],
    hidden_act: hiddenAct,
    layer_norm_eps: 1e-5,
    projection_dim: null,
    eos_token_id: CLIP_EOS_TOKEN_ID,
  };
}

const CLIP_ATTENTION = { q: 'q_proj', k: 'k_proj', v: 'v_proj', out: 'out_proj' };

/** CLIPEncoderLayer: pre-norm causal self-attention and MLP, each residual. */
function encoderLayer(m: Module, cfg: ClipTextConfig, x: Value, causalBias: Value): Value {
  const { g } = m;
  const eps = cfg.layer_norm_eps;
  const dim = cfg.hidden_size;
  const norm1 = m.layerNorm(x, 'layer_norm1', dim, eps);
  const h = g.add(x, m.with('self_attn', (a) => attention(a, norm1, dim, cfg.num_attention_heads, { bias: causalBias, names: CLIP_ATTENTION, projectionBias: true })));
  const norm2 = m.layerNorm(h, 'layer_norm2', dim, eps);
  return g.add(
    h,
    m.with('mlp', (mlp) => {
      const fc1 = mlp.linear(norm2, 'fc1', dim, cfg.intermediate_size);
      return mlp.linear(cfg.hidden_act === 'gelu' ? g.gelu(fc1) : g.quickGelu(fc1), 'fc2', cfg.intermediate_size, dim);
    }),
  );
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
 * input ids [batch, sequence] (int64) -> the hidden state `output` asks for, and the pooled output it asks for.
 * Encoder layers after the ones any output needs are not built. Pooling takes the row at the first EOS token.
 */
export function clipTextEncoder(
  g: Graph,
  cfg: ClipTextConfig,
  inputIds: Value,
  output: ClipTextOutput = SD_TEXT_OUTPUT,
  component = 'text_encoder',
): ClipTextOutputs {
  const hiddenLayers = layersFor(cfg, output.layer);
  const h = cfg.hidden_size;
  return g.scope(component, () => {
    const root = g.module(component);
    const m = root.at('text_model');
    const seqLen = g.shape(inputIds, 1, 2);
    const tokens = g.gather(m.weight('embeddings.token_embedding.weight', [cfg.vocab_size, h]), inputIds);
    const positions = g.node('Slice', [m.weight('embeddings.position_embedding.weight', [cfg.max_position_embeddings, h]), g.ints([0]), seqLen, g.ints([0])])[0];
    let x = g.add(tokens, positions);
    const bias = causalMask(g, cfg, seqLen);
    const layer = (i: number): void => {
      x = m.with(`encoder.layers.${i}`, (l) => encoderLayer(l, cfg, x, bias));
    };
    for (let i = 0; i < hiddenLayers; i++) layer(i);
    const finalNorm = (t: Value): Value => m.layerNorm(t, 'final_layer_norm', h, cfg.layer_norm_eps);
    const hiddenState = output.finalNorm ? finalNorm(x) : x;
    let pooled: Value | undefined;
    if (output.pooled === 'pooler_output') {
      pooled = g.scope('pooler', () => eosRow(g, cfg, inputIds, seqLen, hiddenState));
    } else if (output.pooled === 'text_embeds') {
      for (let i = hiddenLayers; i < cfg.num_hidden_layers; i++) layer(i);
      const last = finalNorm(x);
      if (cfg.projection_dim === null) throw new OnestepError(`${component}: text_embeds need a text_projection (CLIPTextModelWithProjection)`);
      pooled = root.linear(g.scope('pooler', () => eosRow(g, cfg, inputIds, seqLen, last)), 'text_projection', h, cfg.projection_dim, { bias: false });
    }
    return { hiddenState, pooled };
  });
}

/** The row of `states` [batch, sequence, hidden] at each sequence's EOS token -> [batch, hidden]. */
function eosRow(g: Graph, cfg: ClipTextConfig, inputIds: Value, seqLen: Value, states: Value): Value {
  const isEos = g.node('Equal', [inputIds, g.constant([cfg.eos_token_id], [], 'int64')], {}, { outTypes: ['bool'] })[0];
  const eosPosition = g.node('ArgMax', [g.cast(isEos, 'int32')], { axis: -1, keepdims: 0 }, { outTypes: ['int64'] })[0];
  const oneHot = g.node('OneHot', [eosPosition, g.node('Squeeze', [seqLen])[0], g.constant([0, 1], [2], g.dtype)], { axis: -1 }, { outTypes: [g.dtype] })[0];
  const picked = g.matmul(g.unsqueeze(oneHot, [1]), states);
  return g.node('Squeeze', [picked, g.ints([1])])[0];
}

/** Encoder layers run before hidden_states[layer] (transformers' index: -1 after all layers, -2 after all but one). */
function layersFor(cfg: ClipTextConfig, layer: number): number {
  const n = cfg.num_hidden_layers + 1 + layer;
  if (!Number.isInteger(layer) || layer >= 0 || n < 1) {
    throw new OnestepError(`text encoder output layer ${layer} does not exist in a ${cfg.num_hidden_layers}-layer encoder`);
  }
  return n;
}

/**
 * Standalone text-encoder graph: `input_ids` int64 -> the hidden state named by `output.name` and, when asked for,
 * `pooler_output` or `text_embeds` (all float32).
 */
export function buildClipTextGraph(
  weights: WeightSource,
  cfg: ClipTextConfig,
  dtype: 'float32' | 'float16' = 'float32',
  output: ClipTextOutput = SD_TEXT_OUTPUT,
  component = 'text_encoder',
): Graph {
  const g = new Graph(component, weights, dtype);
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence']);
  const { hiddenState, pooled } = clipTextEncoder(g, cfg, ids, output, component);
  g.output(g.cast(hiddenState, 'float32'), output.name, ['batch', 'sequence', cfg.hidden_size]);
  if (pooled && output.pooled === 'pooler_output') g.output(g.cast(pooled, 'float32'), 'pooler_output', ['batch', cfg.hidden_size]);
  if (pooled && output.pooled === 'text_embeds') {
    if (cfg.projection_dim === null) throw new OnestepError(`${component}: text_embeds need a text_projection (CLIPTextModelWithProjection)`);
    g.output(g.cast(pooled, 'float32'), 'text_embeds', ['batch', cfg.projection_dim]);
  }
  return g;
}

/**
 * The weights (canonical name -> shape) a CLIP text model of this config has under `component`: the dry run of its
 * builder with every layer, the final norm and (CLIPTextModelWithProjection) the projection, whichever of them the
 * graph convert writes reads.
 */
export function expectedClipTextWeights(cfg: ClipTextConfig, component = 'text_encoder'): Map<string, number[]> {
  const all: ClipTextOutput = { layer: -1, finalNorm: true, name: 'last_hidden_state', pooled: cfg.projection_dim === null ? 'pooler_output' : 'text_embeds' };
  return expectedWeights((w) => buildClipTextGraph(w, cfg, 'float32', all, component));
}
