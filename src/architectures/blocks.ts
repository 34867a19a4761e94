/**
 * The building blocks several networks share, each mirroring the diffusers / transformers module of the same name and
 * reading its weights through a Module handle (onnx/graph.ts): the caller opens the block's scope with
 * `parent.with('resnets.1', (m) => resnetBlock2D(m, ...))`, so node names follow weight paths. Widths come from the
 * caller (the config), as the torch modules take them, so every weight's shape is declared (Graph.weight).
 */
import { OnestepError } from '../errors.js';
import type { Graph, Module, Value } from '../onnx/graph.js';

/**
 * Frequencies of diffusers' get_timestep_embedding, rounded to float32 at every step as torch computes them:
 * exp(-ln(10000) * i / (half - freq_shift)).
 */
export function timestepFrequencies(channels: number, freqShift: number): Float32Array {
  const half = Math.floor(channels / 2);
  const negLogPeriod = Math.fround(-Math.log(10000));
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    const exponent = Math.fround(Math.fround(negLogPeriod * i) / (half - freqShift));
    out[i] = Math.fround(Math.exp(exponent));
  }
  return out;
}

/** diffusers' Timesteps (get_timestep_embedding): values [N] (float32) -> sinusoidal embedding [N, channels] (float32). */
export function timestepProjection(g: Graph, t: Value, channels: number, flipSinToCos: boolean, freqShift: number): Value {
  if (channels % 2) throw new OnestepError(`timestep embedding of odd width ${channels} is not supported`);
  const freqs = timestepFrequencies(channels, freqShift);
  const args = g.mul(g.unsqueeze(t, [1]), g.constant(freqs, [1, freqs.length], 'float32'));
  const sin = g.sin(args);
  const cos = g.cos(args);
  return g.concat(flipSinToCos ? [cos, sin] : [sin, cos], 1);
}

/** TimestepEmbedding: linear_1 -> silu -> linear_2 (`inFeatures` -> `width` -> `width`). */
export function timestepEmbedding(m: Module, x: Value, inFeatures: number, width: number): Value {
  return m.linear(m.g.silu(m.linear(x, 'linear_1', inFeatures, width)), 'linear_2', width, width);
}

/** [B, C, H, W] -> [B, H*W, C] */
export function toTokens(m: Module, x: Value, channels: number): Value {
  return m.g.transpose(m.g.reshape(x, [0, channels, -1]), [0, 2, 1]);
}

/** [B, H*W, C] -> the shape of `like` ([B, C, H, W]) */
export function toImage(m: Module, tokens: Value, like: Value): Value {
  return m.g.node('Reshape', [m.g.transpose(tokens, [0, 2, 1]), m.g.shape(like)])[0];
}

export interface ResnetOptions {
  groups: number;
  eps: number;
  /** silu(time embedding) and its width, computed once for all resnets (diffusers applies the silu in each); absent in VAEs. */
  temb?: { act: Value; channels: number };
  /** diffusers' output_scale_factor. */
  outputScale?: number;
}

/** ResnetBlock2D: norm1, silu, conv1, (+ time_emb_proj), norm2, silu, conv2, plus a 1x1 conv_shortcut when channels change. */
export function resnetBlock2D(m: Module, x: Value, inChannels: number, outChannels: number, o: ResnetOptions): Value {
  const { g } = m;
  let h = g.silu(m.groupNorm(x, 'norm1', inChannels, o.groups, o.eps));
  h = m.conv2d(h, 'conv1', inChannels, outChannels);
  if (o.temb) h = g.add(h, g.unsqueeze(m.linear(o.temb.act, 'time_emb_proj', o.temb.channels, outChannels), [2, 3]));
  h = g.silu(m.groupNorm(h, 'norm2', outChannels, o.groups, o.eps));
  h = m.conv2d(h, 'conv2', outChannels, outChannels);
  const shortcut = inChannels !== outChannels ? m.conv2d(x, 'conv_shortcut', inChannels, outChannels, { kernel: 1 }) : x;
  const y = g.add(shortcut, h);
  return o.outputScale === undefined || o.outputScale === 1 ? y : g.div(y, g.scalar(o.outputScale));
}

export interface AttentionOptions {
  /** The sequence attended to, and its width; self-attention when absent. */
  context?: { value: Value; dim: number };
  /** Additive bias broadcastable to [B, heads, S, L] (causal or padding masks). */
  bias?: Value;
  /** Run the attention core in float32 in a float16 graph (diffusers' upcast_attention: scores overflow fp16). */
  upcast?: boolean;
  /** Projection names: diffusers' Attention (default) or CLIP's q_proj / k_proj / v_proj / out_proj. */
  names?: { q: string; k: string; v: string; out: string };
  /** Biases on the q/k/v projections too (diffusers' attention_bias; CLIP, the VAE and PixArt have them, SD's UNet not). */
  projectionBias?: boolean;
}

const DIFFUSERS_ATTENTION = { q: 'to_q', k: 'to_k', v: 'to_v', out: 'to_out.0' };

/** Multi-head attention on `dim`-wide tokens: q/k/v projections, scaled dot product, output projection (with a bias). */
export function attention(m: Module, x: Value, dim: number, heads: number, o: AttentionOptions = {}): Value {
  const { g } = m;
  const names = o.names ?? DIFFUSERS_ATTENTION;
  const kv = o.context?.value ?? x;
  const kvDim = o.context?.dim ?? dim;
  const bias = { bias: !!o.projectionBias };
  let q = m.linear(x, names.q, dim, dim, bias);
  let k = m.linear(kv, names.k, kvDim, dim, bias);
  let v = m.linear(kv, names.v, kvDim, dim, bias);
  const upcast = !!o.upcast && g.dtype === 'float16';
  if (upcast) [q, k, v] = [q, k, v].map((t) => g.cast(t, 'float32'));
  let out = g.attention(q, k, v, heads, { attentionBias: o.bias });
  if (upcast) out = g.cast(out, 'float16');
  return m.linear(out, names.out, dim, dim);
}

/**
 * FeedForward on `dim`-wide tokens, inner width 4 * dim (diffusers' mult 4), biases on both linears: net.0 (GEGLU:
 * proj to 2 * inner, hidden * gelu(gate); or GELU / tanh-approximated GELU after proj), then the output linear net.2.
 */
export function feedForward(m: Module, x: Value, dim: number, activation: 'geglu' | 'gelu' | 'gelu-tanh' = 'geglu'): Value {
  const { g } = m;
  const inner = 4 * dim;
  if (activation !== 'geglu') {
    const projected = m.linear(x, 'net.0.proj', dim, inner);
    return m.linear(g.gelu(projected, activation === 'gelu-tanh' ? 'tanh' : 'none'), 'net.2', inner, dim);
  }
  const projected = m.linear(x, 'net.0.proj', dim, 2 * inner);
  const [hidden, gate] = g.split(projected, [inner, inner], -1);
  return m.linear(g.mul(hidden, g.gelu(gate)), 'net.2', inner, dim);
}

export interface TransformerBlockOptions {
  /** Token width. */
  dim: number;
  heads: number;
  /** The cross-attention context (encoder hidden states) and its width. */
  context: { value: Value; dim: number };
  /** Additive bias on the cross-attention scores (padding mask of the context). */
  contextBias?: Value;
  upcast?: boolean;
  eps?: number;
  /** attn1 attends to the context too (diffusers' only_cross_attention, SDXS). */
  onlyCrossAttention?: boolean;
  /**
   * norm_type: layer norms (absent, SD's "layer_norm") or PixArt's "ada_norm_single": the shared t_block output
   * [B, 6 * dim] plus the block's own scale_shift_table give shift, scale and gate of the attention and the
   * feed-forward; `affine`: whether the norms have weights (norm_elementwise_affine).
   */
  adaNormSingle?: { tBlock: Value; affine: boolean };
  /** FeedForward's activation (default GEGLU; PixArt's gelu-approximate is 'gelu-tanh'). */
  activation?: 'geglu' | 'gelu' | 'gelu-tanh';
  /** The attention's q/k/v projections have biases (attention_bias). */
  projectionBias?: boolean;
}

/** LayerNorm over the last axis with statistics in float32, with or without the module's weight and bias. */
export function layerNormOf(m: Module, x: Value, name: string, eps: number, dim: number, affine: boolean): Value {
  if (affine) return m.layerNorm(x, name, dim, eps);
  const { g } = m;
  return g.scope(name, () => g.node('LayerNormalization', [x, g.constant(new Float32Array(dim).fill(1), [dim])], { axis: -1, epsilon: { float: eps }, stash_type: 1 })[0]);
}

/**
 * The ada_norm_single variant (PixArt): modulated norm1 -> gated self-attention; cross-attention on the hidden states
 * as they are (PixArt applies no norm before it); modulated norm2 -> gated feed-forward.
 */
function adaNormSingleBlock(m: Module, x: Value, o: TransformerBlockOptions & { adaNormSingle: NonNullable<TransformerBlockOptions['adaNormSingle']> }): Value {
  const { g } = m;
  const { tBlock, affine } = o.adaNormSingle;
  const { dim } = o;
  const eps = o.eps ?? 1e-6;
  const mod = g.add(g.unsqueeze(m.weight('scale_shift_table', [6, dim]), [0]), g.reshape(tBlock, [0, 6, dim])); // [B, 6, D]
  const [shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gateMlp] = g.split(mod, [1, 1, 1, 1, 1, 1], 1);
  const modulate = (t: Value, shift: Value, scale: Value) => g.add(g.mul(t, g.add(g.scalar(1), scale)), shift);
  const norm1 = modulate(layerNormOf(m, x, 'norm1', eps, dim, affine), shiftMsa, scaleMsa);
  const projectionBias = o.projectionBias;
  let h = g.add(g.mul(gateMsa, m.with('attn1', (a) => attention(a, norm1, dim, o.heads, { upcast: o.upcast, projectionBias }))), x);
  const attended = h;
  h = g.add(m.with('attn2', (a) => attention(a, attended, dim, o.heads, { context: o.context, bias: o.contextBias, upcast: o.upcast, projectionBias })), h);
  const norm2 = modulate(layerNormOf(m, h, 'norm2', eps, dim, affine), shiftMlp, scaleMlp);
  return g.add(g.mul(gateMlp, m.with('ff', (f) => feedForward(f, norm2, dim, o.activation ?? 'geglu'))), h);
}

/**
 * BasicTransformerBlock: self-attention, cross-attention, feed-forward, each residual; pre-normed with layer norms
 * (SD), or with PixArt's ada_norm_single modulation when `adaNormSingle` is given.
 */
export function basicTransformerBlock(m: Module, x: Value, o: TransformerBlockOptions): Value {
  if (o.adaNormSingle) return adaNormSingleBlock(m, x, { ...o, adaNormSingle: o.adaNormSingle });
  const { g } = m;
  const eps = o.eps ?? 1e-5;
  const { dim } = o;
  const norm1 = m.layerNorm(x, 'norm1', dim, eps);
  let h = g.add(m.with('attn1', (a) => attention(a, norm1, dim, o.heads, { context: o.onlyCrossAttention ? o.context : undefined, upcast: o.upcast })), x);
  const norm2 = m.layerNorm(h, 'norm2', dim, eps);
  h = g.add(m.with('attn2', (a) => attention(a, norm2, dim, o.heads, { context: o.context, bias: o.contextBias, upcast: o.upcast })), h);
  const norm3 = m.layerNorm(h, 'norm3', dim, eps);
  return g.add(m.with('ff', (f) => feedForward(f, norm3, dim, o.activation ?? 'geglu')), h);
}
