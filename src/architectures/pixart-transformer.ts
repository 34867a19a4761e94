/**
 * PixArtTransformer2DModel (diffusers), the DiT of PixArt-alpha and PixArt-sigma, built as an ONNX graph: patch
 * embedding plus a 2D sin-cos position embedding for the actual latent size, adaLN-single (one timestep embedding
 * and t_block shared by all blocks, each block adding its own scale_shift_table), caption projection, transformer
 * blocks (self-attention, cross-attention on the caption with the tokenizer's mask, feed-forward), the final
 * modulated LayerNorm and projection, and unpatchify. The blocks are the shared BasicTransformerBlock
 * (architectures/blocks.ts) in its ada_norm_single form. Weights are read under `transformer.` as diffusers names them.
 */
import type { WeightSource } from '../checkpoint/weight-source.js';
import { OnestepError } from '../errors.js';
import { expectedWeights, Graph, Module, type Value } from '../onnx/graph.js';
import { basicTransformerBlock, layerNormOf, timestepEmbedding, timestepProjection } from './blocks.js';

export interface PixArtConfig {
  in_channels: number;
  out_channels: number;
  num_layers: number;
  num_attention_heads: number;
  attention_head_dim: number;
  patch_size: number;
  sample_size: number;
  caption_channels: number;
  cross_attention_dim: number;
  norm_eps: number;
  norm_elementwise_affine: boolean;
  /** interpolation_scale for the position embedding: the config's, else max(sample_size // 64, 1). */
  interpolation_scale: number;
  /** micro-conditions (resolution, aspect ratio): PixArt-alpha 1024's adaLN-single. */
  use_additional_conditions: boolean;
}

/** Config fields whose non-default values change the network in ways this file does not build. */
const UNSUPPORTED: [field: string, isDefault: (v: unknown) => boolean][] = [
  ['norm_type', (v) => v == null || v === 'ada_norm_single'],
  ['attention_type', (v) => v == null || v === 'default'],
  ['activation_fn', (v) => v == null || v === 'gelu-approximate'],
  ['upcast_attention', (v) => v == null || v === false],
  ['attention_bias', (v) => v == null || v === true],
  ['num_vector_embeds', (v) => v == null],
  ['use_linear_projection', (v) => v == null || v === false],
  ['only_cross_attention', (v) => v == null || v === false],
  ['double_self_attention', (v) => v == null || v === false],
  ['num_embeds_ada_norm', (v) => v == null || v === 1000],
];

/** A diffusers PixArtTransformer2DModel config.json -> PixArtConfig with diffusers' defaults; refuses other variants. */
export function normalizePixArtConfig(json: Record<string, any>, source = 'transformer config'): PixArtConfig {
  for (const [field, isDefault] of UNSUPPORTED) {
    if (field in json && !isDefault(json[field])) {
      throw new OnestepError(`${source}: ${field} = ${JSON.stringify(json[field])} is not supported (onestep builds PixArtTransformer2DModel as PixArt-alpha and -sigma configure it)`, 'Use a PixArt-alpha or PixArt-sigma transformer.');
    }
  }
  const sampleSize = json.sample_size ?? 128;
  const heads = json.num_attention_heads ?? 16;
  const headDim = json.attention_head_dim ?? 72;
  const inChannels = json.in_channels ?? 4;
  const useAdditional = json.use_additional_conditions ?? sampleSize === 128; // diffusers' rule when unset
  if (json.pos_embed_max_size != null) throw new OnestepError(`${source}: pos_embed_max_size is not supported`);
  if (useAdditional && (heads * headDim) % 3) throw new OnestepError(`${source}: micro-conditions need an inner dimension divisible by 3, got ${heads * headDim}`);
  return {
    in_channels: inChannels,
    out_channels: json.out_channels ?? inChannels,
    num_layers: json.num_layers ?? 28,
    num_attention_heads: heads,
    attention_head_dim: headDim,
    patch_size: json.patch_size ?? 2,
    sample_size: sampleSize,
    caption_channels: json.caption_channels ?? 4096,
    cross_attention_dim: json.cross_attention_dim ?? heads * headDim,
    norm_eps: json.norm_eps ?? 1e-6,
    norm_elementwise_affine: json.norm_elementwise_affine ?? false,
    interpolation_scale: json.interpolation_scale ?? Math.max(Math.floor(sampleSize / 64), 1),
    use_additional_conditions: useAdditional,
  };
}

export interface PixArtInputs {
  /** [B, in_channels, H, W] latents */
  sample: Value;
  /** [B] float32 */
  timestep: Value;
  /** [B, L, caption_channels] T5 hidden states */
  encoderHiddenStates: Value;
  /** [B, L] int64, 1 keep / 0 pad */
  encoderAttentionMask: Value;
  /** [B, 2] (height, width in pixels) and [B, 1] (height / width): only with use_additional_conditions */
  resolution?: Value;
  aspectRatio?: Value;
}

/**
 * get_2d_sincos_pos_embed for the latent's patch grid (h, w), computed in the graph so any size works: grid
 * coordinates in float32 (arange / (n / base_size) / interpolation_scale, as numpy does), the sin/cos in float64, the
 * result [1, h*w, D] in float32. The first half of D encodes the column, the second the row.
 */
export function positionEmbedding(g: Graph, cfg: PixArtConfig, h: Value, w: Value, dim: number): Value {
  return g.scope('pos_embed', () => {
    const base = Math.floor(cfg.sample_size / cfg.patch_size);
    const quarter = dim / 4;
    const omega = Float64Array.from({ length: quarter }, (_, k) => 1 / 10000 ** (k / quarter));
    const coords = (n: Value) => {
      const range = g.cast(g.node('Range', [g.constant([0], [], 'int64'), g.node('Squeeze', [n])[0], g.constant([1], [], 'int64')])[0], 'float32');
      const step = g.cast(g.div(g.cast(n, 'float64'), g.constant([base], [1], 'float64')), 'float32');
      const grid = g.div(g.div(range, step), g.constant([cfg.interpolation_scale], [1], 'float32'));
      const out = g.mul(g.unsqueeze(g.cast(grid, 'float64'), [1]), g.constant(omega, [1, quarter], 'float64'));
      return g.concat([g.sin(out), g.cos(out)], 1); // [n, D/2]
    };
    const cols = coords(w); // [w, D/2]
    const rows = coords(h); // [h, D/2]
    const shape = g.concat([h, w, g.ints([dim / 2])], 0);
    const colPart = g.node('Expand', [g.unsqueeze(cols, [0]), shape])[0];
    const rowPart = g.node('Expand', [g.unsqueeze(rows, [1]), shape])[0];
    const emb = g.reshape(g.concat([colPart, rowPart], 2), [1, -1, dim]);
    return g.cast(emb, 'float32');
  });
}

/** The transformer on graph values; returns [B, out_channels, H, W] in the graph's dtype. */
export function pixartTransformer(g: Graph, cfg: PixArtConfig, x: PixArtInputs, prefix = 'transformer'): Value {
  return g.scope(prefix, () => {
    const p = cfg.patch_size;
    const dim = cfg.num_attention_heads * cfg.attention_head_dim;
    const sampleShape = g.shape(x.sample);
    const patch = g.constant([p], [1], 'int64');
    const h = g.div(g.shape(x.sample, 2, 3), patch);
    const w = g.div(g.shape(x.sample, 3, 4), patch);

    // PatchEmbed: conv with stride p, flattened to tokens [B, h*w, D], plus the position embedding.
    let hidden = g.scope('pos_embed', () => {
      const proj = `${prefix}.pos_embed.proj`;
      const conv = g.node('Conv', [g.cast(x.sample, g.dtype), g.weight(`${proj}.weight`, {}, g.dtype, [dim, cfg.in_channels, p, p]), g.weight(`${proj}.bias`, {}, g.dtype, [dim])], {
        kernel_shape: [p, p],
        strides: [p, p],
      })[0];
      return g.transpose(g.reshape(conv, [0, dim, -1]), [0, 2, 1]);
    });
    hidden = g.add(hidden, g.cast(positionEmbedding(g, cfg, h, w, dim), g.dtype));

    // adaLN-single: embedded timestep (plus micro-conditions) -> silu -> linear to the six modulations of every block.
    const embedded = g.scope('adaln_single', () => {
      const e = `${prefix}.adaln_single.emb`;
      const emb0 = new Module(g, e);
      const project = (t: Value) => g.cast(timestepProjection(g, t, 256, true, 0), g.dtype);
      let emb = emb0.with('timestep_embedder', (t) => timestepEmbedding(t, project(g.cast(x.timestep, 'float32')), 256, dim));
      if (cfg.use_additional_conditions) {
        if (!x.resolution || !x.aspectRatio) throw new OnestepError('this PixArt transformer needs the resolution and aspect_ratio inputs');
        const condition = (v: Value, key: string, n: number) => {
          const flat = g.reshape(g.cast(v, 'float32'), [-1]);
          const embedded = emb0.with(key, (t) => timestepEmbedding(t, project(flat), 256, dim / 3));
          return g.reshape(embedded, [-1, n * (dim / 3)]);
        };
        emb = g.add(emb, g.concat([condition(x.resolution, 'resolution_embedder', 2), condition(x.aspectRatio, 'aspect_ratio_embedder', 1)], 1));
      }
      return emb;
    });
    const tBlock = g.scope('adaln_single', () => g.linear(g.silu(embedded), `${prefix}.adaln_single.linear`, { features: [dim, 6 * dim] }));

    const context = g.scope('caption_projection', () => {
      const c = `${prefix}.caption_projection`;
      return g.linear(g.gelu(g.linear(g.cast(x.encoderHiddenStates, g.dtype), `${c}.linear_1`, { features: [cfg.caption_channels, dim] }), 'tanh'), `${c}.linear_2`, { features: [dim, dim] });
    });
    // (1 - mask) * -10000 on the caption tokens, [B, 1, h*w, L] as MultiHeadAttention takes it.
    const contextBias = g.scope('encoder_attention_mask', () => {
      const bias = g.mul(g.sub(g.scalar(1), g.cast(x.encoderAttentionMask, g.dtype)), g.scalar(-10000));
      const shape = g.concat([g.shape(x.encoderAttentionMask, 0, 1), g.ints([1]), g.shape(hidden, 1, 2), g.shape(x.encoderAttentionMask, 1, 2)], 0);
      return g.node('Expand', [g.unsqueeze(bias, [1, 2]), shape])[0];
    });

    const m = new Module(g, prefix);
    const adaNormSingle = { tBlock, affine: cfg.norm_elementwise_affine };
    // caption_projection gives the context in the transformer's own width.
    const caption = { value: context, dim };
    for (let i = 0; i < cfg.num_layers; i++) {
      hidden = m.with(`transformer_blocks.${i}`, (b) =>
        basicTransformerBlock(b, hidden, { dim, heads: cfg.num_attention_heads, context: caption, contextBias, eps: cfg.norm_eps, adaNormSingle, activation: 'gelu-tanh', projectionBias: true }),
      );
    }

    // Final layer: LayerNorm modulated by the table plus the embedded timestep (not t_block), then the projection.
    const out = g.scope('proj_out', () => {
      const [shift, scale] = g.split(g.add(g.unsqueeze(g.weight(`${prefix}.scale_shift_table`, {}, g.dtype, [2, dim]), [0]), g.unsqueeze(embedded, [1])), [1, 1], 1);
      const normed = layerNormOf(new Module(g, prefix), hidden, 'norm_out', 1e-6, dim, false);
      return g.linear(g.add(g.mul(normed, g.add(g.scalar(1), scale)), shift), `${prefix}.proj_out`, { features: [dim, p * p * cfg.out_channels] });
    });

    // Unpatchify: [B, h*w, p*p*C] -> [B, h, w, p, p, C] -> [B, C, h, p, w, p] -> [B, C, H, W].
    return g.scope('unpatchify', () => {
      const c = cfg.out_channels;
      const six = g.concat([g.shape(x.sample, 0, 1), h, w, g.ints([p, p, c])], 0);
      const t = g.transpose(g.node('Reshape', [out, six])[0], [0, 5, 1, 3, 2, 4]);
      const shape = g.concat([g.node('Slice', [sampleShape, g.ints([0]), g.ints([1]), g.ints([0])])[0], g.ints([c]), g.node('Slice', [sampleShape, g.ints([2]), g.ints([4]), g.ints([0])])[0]], 0);
      return g.node('Reshape', [t, shape])[0];
    });
  });
}

/**
 * The standalone denoiser graph (CONTRACTS.md): float32 `sample`, `timestep`, `encoder_hidden_states`, int64
 * `encoder_attention_mask`, and with micro-conditions float32 `resolution` [B, 2], `aspect_ratio` [B, 1];
 * float32 `out_sample` [B, out_channels, H, W].
 */
export function buildPixArtTransformerGraph(weights: WeightSource, cfg: PixArtConfig, dtype: 'float32' | 'float16'): Graph {
  const g = new Graph('transformer', weights, dtype);
  const sample = g.input('sample', 'float32', ['batch', cfg.in_channels, 'height', 'width']);
  const timestep = g.input('timestep', 'float32', ['batch']);
  const encoderHiddenStates = g.input('encoder_hidden_states', 'float32', ['batch', 'sequence', cfg.caption_channels]);
  const encoderAttentionMask = g.input('encoder_attention_mask', 'int64', ['batch', 'sequence']);
  const extra = cfg.use_additional_conditions
    ? { resolution: g.input('resolution', 'float32', ['batch', 2]), aspectRatio: g.input('aspect_ratio', 'float32', ['batch', 1]) }
    : {};
  const out = pixartTransformer(g, cfg, { sample, timestep, encoderHiddenStates, encoderAttentionMask, ...extra });
  g.output(g.cast(out, 'float32'), 'out_sample', ['batch', cfg.out_channels, 'height', 'width']);
  return g;
}

/** The tensors a PixArt transformer of this config reads, with their shapes (the builder's dry run). */
export function expectedPixArtTransformerWeights(cfg: PixArtConfig): Map<string, number[]> {
  return expectedWeights((w) => buildPixArtTransformerGraph(w, cfg, 'float32'));
}
