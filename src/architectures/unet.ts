/**
 * UNet2DConditionModel as Stable Diffusion 1.x / 2.x, SDXL (added text_time conditioning) and SDXS (no mid block)
 * use it, built as an ONNX graph. Each function mirrors the
 * diffusers module of the same name and reads its weights under the prefix it receives, so the function tree is the
 * module tree (`unet.down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_q.weight`).
 */
import { ConfigFields, countDistinct, requiredShape, type ShapeView, type UNetConfig } from '../checkpoint/configs.js';
import type { WeightSource } from '../checkpoint/weight-source.js';
import { BadInputError, OnestepError } from '../errors.js';
import { expectedWeights, Graph, type Module, type Value } from '../onnx/graph.js';
import { basicTransformerBlock, resnetBlock2D, timestepEmbedding, timestepProjection, toImage, toTokens } from './blocks.js';

export interface UNetInputs {
  /** [batch, in_channels, h, w] */
  sample: Value;
  /** [batch] float timesteps, one per sample. */
  timestep: Value;
  /** [batch, sequence, cross_attention_dim] */
  encoderHiddenStates: Value;
  /** addition_embed_type text_time (SDXL): pooled text embedding [batch, P] and the six time ids [batch, 6]. */
  textEmbeds?: Value;
  timeIds?: Value;
}

const DOWN_BLOCKS = ['CrossAttnDownBlock2D', 'DownBlock2D'];
const UP_BLOCKS = ['CrossAttnUpBlock2D', 'UpBlock2D'];

const isNull = (v: unknown) => v == null;
/** Config fields of diffusers' UNet2DConditionModel whose other values change the network in ways unet() does not build. */
const BUILDS: Record<string, (v: unknown) => boolean> = {
  addition_embed_type: (v) => v === 'text_time',
  class_embed_type: isNull,
  num_class_embeds: isNull,
  encoder_hid_dim: isNull,
  encoder_hid_dim_type: isNull,
  time_cond_proj_dim: (v) => v === 0,
  time_embedding_type: (v) => v === 'positional',
  time_embedding_dim: isNull,
  time_embedding_act_fn: isNull,
  timestep_post_act: isNull,
  resnet_time_scale_shift: (v) => v === 'default',
  resnet_skip_time_act: (v) => v === false,
  resnet_out_scale_factor: (v) => v === 1,
  mid_block_type: (v) => v === 'UNetMidBlock2DCrossAttn',
  dual_cross_attention: (v) => v === false,
  attention_type: (v) => v === 'default',
  cross_attention_norm: isNull,
  center_input_sample: (v) => v === false,
  act_fn: (v) => v === 'silu',
  class_embeddings_concat: (v) => v === false,
  conv_in_kernel: (v) => v === 3,
  conv_out_kernel: (v) => v === 3,
  reverse_transformer_layers_per_block: isNull,
  layers_per_block: (v) => typeof v === 'number',
};
const BUILDS_WHAT = 'the UNet2DConditionModel of SD 1.x / 2.x, SDXL and SDXS';
const BUILDS_HINT = 'Use a Stable Diffusion 1.x / 2.x, SDXL or SDXS UNet.';

/**
 * A diffusers UNet2DConditionModel config.json -> UNetConfig: diffusers' defaults for absent fields, per-block fields
 * as lists. `file` names the config in errors: one BadInputError naming the field for a variant unet() does not build
 * (SD 3's, LCM's guidance embedding, ...) or a malformed value. A single file's inferred config plus a config folder's
 * fields is `unetConfigFromJson({ ...inferred, ...json }, file)` (UNetConfig is config.json-shaped).
 */
export function unetConfigFromJson(raw: Readonly<Record<string, unknown>>, file: string): UNetConfig {
  const f = new ConfigFields(raw, file);
  f.refuse(BUILDS, BUILDS_WHAT, BUILDS_HINT);
  const block_out_channels = f.countList('block_out_channels', [320, 640, 1280, 1280]);
  const n = block_out_channels.length;
  const blockTypes = (key: string, fallback: string[], known: string[]): string[] => {
    const types = f.strList(key, fallback);
    if (types.length !== n) f.fail(key, `has ${types.length} entries for ${n} block_out_channels`);
    const bad = types.find((t) => !known.includes(t));
    if (bad) f.fail(key, `has ${bad}, which onestep does not build (${known.join(', ')})`, BUILDS_HINT);
    return types;
  };
  const textTime = raw.addition_embed_type === 'text_time';
  if (textTime && (!f.has('addition_time_embed_dim') || !f.has('projection_class_embeddings_input_dim'))) {
    f.fail('addition_embed_type', 'needs addition_time_embed_dim and projection_class_embeddings_input_dim');
  }
  const norm_num_groups = f.count('norm_num_groups', 32);
  const bad = block_out_channels.find((c) => c % norm_num_groups !== 0);
  if (bad !== undefined) f.fail('block_out_channels', `has ${bad} channels, which do not divide into norm_num_groups ${norm_num_groups}`);
  // SD configs' attention_head_dim is the head count (diffusers' naming bug), unless num_attention_heads is given.
  const headsKey = f.has('num_attention_heads') ? 'num_attention_heads' : 'attention_head_dim';
  const heads = f.perBlock(headsKey, n, 8);
  const uneven = block_out_channels.findIndex((c, i) => c % heads[i] !== 0);
  if (uneven >= 0) f.fail(headsKey, `(heads) does not divide block_out_channels[${uneven}] = ${block_out_channels[uneven]}`);
  return {
    in_channels: f.count('in_channels', 4),
    out_channels: f.count('out_channels', 4),
    block_out_channels,
    down_block_types: blockTypes('down_block_types', ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'], DOWN_BLOCKS),
    up_block_types: blockTypes('up_block_types', ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'], UP_BLOCKS),
    layers_per_block: f.count('layers_per_block', 2),
    attention_head_dim: f.perBlock('attention_head_dim', n, 8),
    num_attention_heads: f.has('num_attention_heads') ? f.perBlock('num_attention_heads', n, 1) : null,
    cross_attention_dim: f.count('cross_attention_dim', 1280),
    transformer_layers_per_block: f.perBlock('transformer_layers_per_block', n, 1),
    use_linear_projection: f.bool('use_linear_projection', false),
    upcast_attention: f.bool('upcast_attention', false),
    norm_num_groups,
    norm_eps: f.num('norm_eps', 1e-5),
    flip_sin_to_cos: f.bool('flip_sin_to_cos', true),
    freq_shift: f.num('freq_shift', 0),
    downsample_padding: f.num('downsample_padding', 1),
    mid_block_scale_factor: f.num('mid_block_scale_factor', 1),
    act_fn: 'silu',
    // diffusers' default is None (the pipeline then uses 64 x vae scale, as SD 1.x / 2.x do).
    sample_size: f.count('sample_size', 64),
    // An explicit null means no mid block (SDXS); absent means diffusers' default cross-attention mid block.
    mid_block_type: 'mid_block_type' in raw && raw.mid_block_type === null ? null : 'UNetMidBlock2DCrossAttn',
    only_cross_attention: f.perBlock('only_cross_attention', n, false),
    addition_embed_type: textTime ? 'text_time' : null,
    addition_time_embed_dim: textTime ? f.count('addition_time_embed_dim', 1) : null,
    projection_class_embeddings_input_dim: textTime ? f.count('projection_class_embeddings_input_dim', 1) : null,
  };
}

/** Heads per block for SD 2.x and SDXL (head dim 64). Channels below 64 (tiny test models) give 1 head. */
export function headsForHeadDim64(channels: number): number {
  return Math.max(1, Math.floor(channels / 64));
}

/** What a family's rules say of a UNet where its tensor shapes cannot (src/families/). */
export interface UnetShapeRules {
  /** Attention heads of a block with this many channels (SD 1.x: 8; SD 2.x: channels/64). */
  headsFor(channels: number): number;
  /** When no cross-attention weight shows it. */
  crossAttentionDim: number;
  /** When no proj_in weight shows it. */
  linearProjection: boolean;
  /** Latent size the family was trained at (SD 1.x/2.x 64, SDXL 128). */
  sampleSize: number;
}

/**
 * UNetConfig from the shapes of `unet.*` canonical tensors and the family's rules for what shapes do not show.
 * `pooledDim`: the pooled text embedding's width (SDXL), which tells add_embedding's input apart from the time ids.
 */
export function unetConfigFromShapes(view: ShapeView, rules: UnetShapeRules, pooledDim?: number): UNetConfig {
  const { names, metaOf } = view;
  const shape = (name: string) => requiredShape(view, name);
  const blocks = countDistinct(names, /^unet\.down_blocks\.(\d+)\./);
  if (blocks === 0) throw new BadInputError(view.file, `no UNet down blocks found`);
  if (metaOf('unet.time_embedding.cond_proj.weight')) {
    throw new BadInputError(view.file, 'has a UNet with a guidance embedding (time_embedding.cond_proj, diffusers\' time_cond_proj_dim), which onestep does not build', BUILDS_HINT);
  }
  const block_out_channels = Array.from({ length: blocks }, (_, i) => shape(`unet.down_blocks.${i}.resnets.0.conv2.weight`)[0]);
  const downAttn = Array.from({ length: blocks }, (_, i) => names.some((n) => n.startsWith(`unet.down_blocks.${i}.attentions.`)));
  const upAttn = Array.from({ length: blocks }, (_, i) => names.some((n) => n.startsWith(`unet.up_blocks.${i}.attentions.`)));
  const crossKey = names.find((n) => /\.attn2\.to_k\.weight$/.test(n));
  const projIn = names.find((n) => /\.attentions\.\d+\.proj_in\.weight$/.test(n));
  const addIn = metaOf('unet.add_embedding.linear_1.weight')?.shape[1];
  // SDXL: add_embedding's input is the pooled text embedding plus six time-id embeddings (SDXL base: 1280 + 6 x 256).
  const timeDim = addIn === undefined ? null : pooledDim !== undefined ? (addIn - pooledDim) / 6 : 256;
  if (timeDim !== null && !(Number.isInteger(timeDim) && timeDim > 0 && timeDim % 2 === 0)) {
    throw new BadInputError(view.file, `its UNet's add_embedding takes ${addIn} inputs, which are not the ${pooledDim}-wide pooled text embedding plus six time-id embeddings (SDXL's text_time conditioning)`, BUILDS_HINT);
  }
  return {
    in_channels: shape('unet.conv_in.weight')[1],
    out_channels: shape('unet.conv_out.weight')[0],
    block_out_channels,
    down_block_types: downAttn.map((a) => (a ? 'CrossAttnDownBlock2D' : 'DownBlock2D')),
    up_block_types: upAttn.map((a) => (a ? 'CrossAttnUpBlock2D' : 'UpBlock2D')),
    layers_per_block: countDistinct(names, /^unet\.down_blocks\.0\.resnets\.(\d+)\./),
    attention_head_dim: block_out_channels.map((c) => rules.headsFor(c)),
    num_attention_heads: null,
    cross_attention_dim: crossKey ? shape(crossKey)[1] : rules.crossAttentionDim,
    transformer_layers_per_block: Array.from({ length: blocks }, (_, i) =>
      downAttn[i] ? countDistinct(names, new RegExp(`^unet\\.down_blocks\\.${i}\\.attentions\\.0\\.transformer_blocks\\.(\\d+)\\.`)) : 1,
    ),
    use_linear_projection: projIn ? shape(projIn).length === 2 : rules.linearProjection,
    upcast_attention: false,
    norm_num_groups: 32,
    norm_eps: 1e-5,
    flip_sin_to_cos: true,
    freq_shift: 0,
    downsample_padding: 1,
    mid_block_scale_factor: 1,
    act_fn: 'silu',
    sample_size: rules.sampleSize,
    mid_block_type: names.some((n) => n.startsWith('unet.mid_block.')) ? 'UNetMidBlock2DCrossAttn' : null,
    only_cross_attention: Array(blocks).fill(false),
    addition_embed_type: addIn === undefined ? null : 'text_time',
    addition_time_embed_dim: timeDim,
    projection_class_embeddings_input_dim: addIn ?? null,
  };
}

/** What every Transformer2DModel of a UNet shares: the text context and the config. */
interface AttentionContext {
  cfg: UNetConfig;
  context: { value: Value; dim: number };
}

/**
 * Transformer2DModel (continuous input) on `channels` channels: GroupNorm -> proj_in -> transformer blocks ->
 * proj_out -> + residual. Its tokens are heads * (channels // heads) wide, as diffusers' UNet blocks configure it.
 */
function transformer2DModel(m: Module, c: AttentionContext, x: Value, channels: number, heads: number, layers: number, onlyCross = false): Value {
  const { g } = m;
  const { cfg, context } = c;
  const dim = heads * Math.floor(channels / heads);
  let h = m.groupNorm(x, 'norm', channels, cfg.norm_num_groups, 1e-6);
  h = cfg.use_linear_projection ? m.linear(toTokens(m, h, channels), 'proj_in', channels, dim) : toTokens(m, m.conv2d(h, 'proj_in', channels, dim, { kernel: 1 }), dim);
  for (let i = 0; i < layers; i++) {
    h = m.with(`transformer_blocks.${i}`, (b) => basicTransformerBlock(b, h, { dim, heads, context, upcast: cfg.upcast_attention, onlyCrossAttention: onlyCross }));
  }
  h = cfg.use_linear_projection ? toImage(m, m.linear(h, 'proj_out', dim, channels), x) : m.conv2d(toImage(m, h, x), 'proj_out', dim, channels, { kernel: 1 });
  return g.add(h, x);
}

function downsample2D(m: Module, cfg: UNetConfig, x: Value, channels: number): Value {
  return m.conv2d(x, 'conv', channels, channels, { stride: 2, padding: cfg.downsample_padding });
}

/** Nearest upsampling to the spatial size of the skip connection that comes next (2x for sizes divisible by 8). */
function upsample2D(m: Module, x: Value, sizeOf: Value, channels: number): Value {
  const { g } = m;
  const sizes = g.concat([g.shape(x, 0, 2), g.shape(sizeOf, 2, 4)], 0);
  const up = g.node('Resize', [x, undefined, undefined, sizes], {
    mode: 'nearest',
    nearest_mode: 'floor',
    coordinate_transformation_mode: 'asymmetric',
  })[0];
  return m.conv2d(up, 'conv', channels, channels);
}

/** Heads per down block: num_attention_heads when set, else attention_head_dim (which SD configs use for the count). */
function headsPerBlock(cfg: UNetConfig): number[] {
  return cfg.num_attention_heads ?? cfg.attention_head_dim;
}

/** The UNet on graph values; returns the output sample [batch, out_channels, h, w] in the graph's dtype. */
export function unet(g: Graph, cfg: UNetConfig, x: UNetInputs, prefix = 'unet'): Value {
  return g.scope(prefix, () => {
    const m = g.module(prefix);
    const heads = headsPerBlock(cfg);
    const ch = cfg.block_out_channels;
    const n = ch.length;
    const c: AttentionContext = { cfg, context: { value: g.cast(x.encoderHiddenStates, g.dtype), dim: cfg.cross_attention_dim } };
    const norm = { groups: cfg.norm_num_groups, eps: cfg.norm_eps };

    const tembWidth = 4 * ch[0];
    const tEmb = timestepProjection(g, g.cast(x.timestep, 'float32'), ch[0], cfg.flip_sin_to_cos, cfg.freq_shift);
    let temb = m.with('time_embedding', (t) => timestepEmbedding(t, g.cast(tEmb, g.dtype), ch[0], tembWidth));
    if (cfg.addition_embed_type === 'text_time') temb = g.add(temb, m.with('add_embedding', (a) => addTextTimeEmbedding(a, cfg, x, tembWidth)));
    const resnet = { ...norm, temb: { act: g.silu(temb), channels: tembWidth } };

    let h = m.conv2d(g.cast(x.sample, g.dtype), 'conv_in', cfg.in_channels, ch[0]);
    // The down path's outputs and their widths, which the up path concatenates back in reverse order.
    const skips: { value: Value; channels: number }[] = [{ value: h, channels: ch[0] }];

    for (let i = 0; i < n; i++) {
      h = m.with(`down_blocks.${i}`, (block) => {
        let y = h;
        for (let j = 0; j < cfg.layers_per_block; j++) {
          const cin = j > 0 ? ch[i] : i > 0 ? ch[i - 1] : ch[0];
          y = block.with(`resnets.${j}`, (r) => resnetBlock2D(r, y, cin, ch[i], resnet));
          if (cfg.down_block_types[i] === 'CrossAttnDownBlock2D') {
            y = block.with(`attentions.${j}`, (a) => transformer2DModel(a, c, y, ch[i], heads[i], cfg.transformer_layers_per_block[i], cfg.only_cross_attention[i]));
          }
          skips.push({ value: y, channels: ch[i] });
        }
        if (i < n - 1) {
          y = block.with('downsamplers.0', (d) => downsample2D(d, cfg, y, ch[i]));
          skips.push({ value: y, channels: ch[i] });
        }
        return y;
      });
    }

    // SDXS (mid_block_type null) has none: the deepest down output goes straight to the up path.
    const last = ch[n - 1];
    if (cfg.mid_block_type !== null) {
      h = m.with('mid_block', (mid) => {
        const midResnet = { ...resnet, outputScale: cfg.mid_block_scale_factor };
        let y = mid.with('resnets.0', (r) => resnetBlock2D(r, h, last, last, midResnet));
        y = mid.with('attentions.0', (a) => transformer2DModel(a, c, y, last, heads[n - 1], cfg.transformer_layers_per_block[n - 1]));
        return mid.with('resnets.1', (r) => resnetBlock2D(r, y, last, last, midResnet));
      });
    }

    const upCh = [...ch].reverse();
    const upHeads = [...heads].reverse();
    const upLayers = [...cfg.transformer_layers_per_block].reverse();
    const upOnlyCross = [...cfg.only_cross_attention].reverse();
    let channels = last;
    for (let i = 0; i < n; i++) {
      h = m.with(`up_blocks.${i}`, (block) => {
        let y = h;
        for (let j = 0; j < cfg.layers_per_block + 1; j++) {
          const skip = skips.pop()!;
          y = g.concat([y, skip.value], 1);
          const cin = channels + skip.channels;
          y = block.with(`resnets.${j}`, (r) => resnetBlock2D(r, y, cin, upCh[i], resnet));
          channels = upCh[i];
          if (cfg.up_block_types[i] === 'CrossAttnUpBlock2D') {
            y = block.with(`attentions.${j}`, (a) => transformer2DModel(a, c, y, upCh[i], upHeads[i], upLayers[i], upOnlyCross[i]));
          }
        }
        if (i < n - 1) y = block.with('upsamplers.0', (u) => upsample2D(u, y, skips[skips.length - 1].value, upCh[i]));
        return y;
      });
    }

    h = g.silu(m.groupNorm(h, 'conv_norm_out', ch[0], cfg.norm_num_groups, cfg.norm_eps));
    return m.conv2d(h, 'conv_out', ch[0], cfg.out_channels);
  });
}

/**
 * SDXL's added conditioning (addition_embed_type text_time): add_time_proj, the sinusoidal embedding of each of the
 * six time ids, flattened and concatenated after the pooled text embedding, then add_embedding (linear, silu, linear).
 */
function addTextTimeEmbedding(m: Module, cfg: UNetConfig, x: UNetInputs, width: number): Value {
  const { g } = m;
  if (!x.textEmbeds || !x.timeIds) throw new OnestepError('a text_time UNet needs text_embeds and time_ids inputs');
  const dim = cfg.addition_time_embed_dim!;
  const ids = g.reshape(g.cast(x.timeIds, 'float32'), [-1]);
  const timeEmbeds = g.reshape(timestepProjection(g, ids, dim, cfg.flip_sin_to_cos, cfg.freq_shift), [-1, 6 * dim]);
  const addEmbeds = g.concat([g.cast(x.textEmbeds, g.dtype), g.cast(timeEmbeds, g.dtype)], 1);
  return timestepEmbedding(m, addEmbeds, cfg.projection_class_embeddings_input_dim!, width);
}

/** Width of SDXL's pooled text embedding input: projection_class_embeddings_input_dim less the six time embeddings. */
export function textEmbedsDim(cfg: UNetConfig): number | null {
  if (cfg.addition_embed_type !== 'text_time') return null;
  return cfg.projection_class_embeddings_input_dim! - 6 * cfg.addition_time_embed_dim!;
}

/** The weights (canonical name -> shape) a UNet of this config has: the dry run of its builder (onnx/graph.ts). */
export function expectedUnetWeights(cfg: UNetConfig): Map<string, number[]> {
  return expectedWeights((w) => buildUNetGraph(w, cfg, 'float32'));
}

/**
 * The standalone UNet graph: float32 inputs `sample`, `timestep`, `encoder_hidden_states` (and for SDXL
 * `text_embeds`, `time_ids`); float32 `out_sample`.
 */
export function buildUNetGraph(weights: WeightSource, cfg: UNetConfig, dtype: 'float32' | 'float16'): Graph {
  const g = new Graph('unet', weights, dtype);
  const sample = g.input('sample', 'float32', ['batch', cfg.in_channels, 'height', 'width']);
  const timestep = g.input('timestep', 'float32', ['batch']);
  const encoderHiddenStates = g.input('encoder_hidden_states', 'float32', ['batch', 'sequence', cfg.cross_attention_dim]);
  const pooledDim = textEmbedsDim(cfg);
  const textEmbeds = pooledDim === null ? undefined : g.input('text_embeds', 'float32', ['batch', pooledDim]);
  const timeIds = pooledDim === null ? undefined : g.input('time_ids', 'float32', ['batch', 6]);
  const out = unet(g, cfg, { sample, timestep, encoderHiddenStates, textEmbeds, timeIds });
  g.output(g.cast(out, 'float32'), 'out_sample', ['batch', cfg.out_channels, 'height', 'width']);
  return g;
}
