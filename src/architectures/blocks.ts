/**
 * The building blocks several networks share, each mirroring the diffusers / transformers module of the same name and
 * reading its weights through a Module handle (onnx/graph.ts): the caller opens the block's scope with
 * `parent.with('resnets.1', (m) => resnetBlock2D(m, ...))`, so node names follow weight paths.
 */
import type { Module, Value } from '../onnx/graph.js';

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
  /** silu(time embedding), computed once for all resnets (diffusers applies the silu in each); absent in VAEs. */
  tembAct?: Value;
  /** diffusers' output_scale_factor. */
  outputScale?: number;
}

/** ResnetBlock2D: norm1, silu, conv1, (+ time_emb_proj), norm2, silu, conv2, plus a 1x1 conv_shortcut when channels change. */
export function resnetBlock2D(m: Module, x: Value, o: ResnetOptions): Value {
  const { g } = m;
  let h = g.silu(m.groupNorm(x, 'norm1', o.groups, o.eps));
  h = m.conv2d(h, 'conv1');
  if (o.tembAct) h = g.add(h, g.unsqueeze(m.linear(o.tembAct, 'time_emb_proj'), [2, 3]));
  h = g.silu(m.groupNorm(h, 'norm2', o.groups, o.eps));
  h = m.conv2d(h, 'conv2');
  const shortcut = m.has('conv_shortcut.weight') ? m.conv2d(x, 'conv_shortcut') : x;
  const y = g.add(shortcut, h);
  return o.outputScale === undefined || o.outputScale === 1 ? y : g.div(y, g.scalar(o.outputScale));
}

export interface AttentionOptions {
  /** The sequence attended to; self-attention when absent. */
  context?: Value;
  /** Additive bias broadcastable to [B, heads, S, L] (causal or padding masks). */
  bias?: Value;
  /** Run the attention core in float32 in a float16 graph (diffusers' upcast_attention: scores overflow fp16). */
  upcast?: boolean;
  /** Projection names: diffusers' Attention (default) or CLIP's q_proj / k_proj / v_proj / out_proj. */
  names?: { q: string; k: string; v: string; out: string };
}

const DIFFUSERS_ATTENTION = { q: 'to_q', k: 'to_k', v: 'to_v', out: 'to_out.0' };

/** Multi-head attention: q/k/v projections (biases where the weights have them), scaled dot product, output projection. */
export function attention(m: Module, x: Value, heads: number, o: AttentionOptions = {}): Value {
  const { g } = m;
  const names = o.names ?? DIFFUSERS_ATTENTION;
  const kv = o.context ?? x;
  let q = m.linear(x, names.q);
  let k = m.linear(kv, names.k);
  let v = m.linear(kv, names.v);
  const upcast = !!o.upcast && g.dtype === 'float16';
  if (upcast) [q, k, v] = [q, k, v].map((t) => g.cast(t, 'float32'));
  let out = g.attention(q, k, v, heads, { attentionBias: o.bias });
  if (upcast) out = g.cast(out, 'float16');
  return m.linear(out, names.out);
}

/**
 * FeedForward: net.0 (GEGLU: proj to 2*inner, hidden * gelu(gate); or GELU / tanh-approximated GELU after proj), then
 * the output linear net.2.
 */
export function feedForward(m: Module, x: Value, activation: 'geglu' | 'gelu' | 'gelu-tanh' = 'geglu'): Value {
  const { g } = m;
  const projected = m.linear(x, 'net.0.proj');
  if (activation !== 'geglu') return m.linear(g.gelu(projected, activation === 'gelu-tanh' ? 'tanh' : 'none'), 'net.2');
  const inner = m.shape('net.0.proj.weight')[0] / 2;
  const [hidden, gate] = g.split(projected, [inner, inner], -1);
  return m.linear(g.mul(hidden, g.gelu(gate)), 'net.2');
}

export interface TransformerBlockOptions {
  heads: number;
  /** The cross-attention context (encoder hidden states). */
  context: Value;
  /** Additive bias on the cross-attention scores (padding mask of the context). */
  contextBias?: Value;
  upcast?: boolean;
  eps?: number;
  /** attn1 attends to the context too (diffusers' only_cross_attention, SDXS). */
  onlyCrossAttention?: boolean;
}

/** BasicTransformerBlock with layer norms: self-attention, cross-attention, feed-forward, each pre-normed and residual. */
export function basicTransformerBlock(m: Module, x: Value, o: TransformerBlockOptions): Value {
  const { g } = m;
  const eps = o.eps ?? 1e-5;
  const norm1 = m.layerNorm(x, 'norm1', eps);
  let h = g.add(m.with('attn1', (a) => attention(a, norm1, o.heads, { context: o.onlyCrossAttention ? o.context : undefined, upcast: o.upcast })), x);
  const norm2 = m.layerNorm(h, 'norm2', eps);
  h = g.add(m.with('attn2', (a) => attention(a, norm2, o.heads, { context: o.context, bias: o.contextBias, upcast: o.upcast })), h);
  const norm3 = m.layerNorm(h, 'norm3', eps);
  return g.add(m.with('ff', (f) => feedForward(f, norm3)), h);
}
