/**
 * UNet2DConditionModel as Stable Diffusion 1.x / 2.x, SDXL (added text_time conditioning) and SDXS (no mid block)
 * use it, built as an ONNX graph. Each function mirrors the
 * diffusers module of the same name and reads its weights under the prefix it receives, so the function tree is the
 * module tree (`unet.down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_q.weight`).
 */
import type { UNetConfig } from '../checkpoint/configs.js';
import type { WeightSource } from '../checkpoint/weight-source.js';
import { OnestepError } from '../errors.js';
import { Graph, type Module, type Value } from '../onnx/graph.js';
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

/** Config fields of diffusers' UNet2DConditionModel that change the network in ways this file does not build. */
const UNSUPPORTED: [field: string, isDefault: (v: unknown) => boolean][] = [
  ['addition_embed_type', (v) => v == null || v === 'text_time'],
  ['class_embed_type', (v) => v == null],
  ['num_class_embeds', (v) => v == null],
  ['encoder_hid_dim', (v) => v == null],
  ['encoder_hid_dim_type', (v) => v == null],
  ['time_cond_proj_dim', (v) => v == null || v === 0],
  ['time_embedding_type', (v) => v == null || v === 'positional'],
  ['time_embedding_dim', (v) => v == null],
  ['time_embedding_act_fn', (v) => v == null],
  ['timestep_post_act', (v) => v == null],
  ['resnet_time_scale_shift', (v) => v == null || v === 'default'],
  ['resnet_skip_time_act', (v) => v == null || v === false],
  ['resnet_out_scale_factor', (v) => v == null || v === 1],
  ['mid_block_type', (v) => v == null || v === 'UNetMidBlock2DCrossAttn'],
  ['only_cross_attention', (v) => v == null || typeof v === 'boolean' || (Array.isArray(v) && v.every((x) => typeof x === 'boolean'))],
  ['dual_cross_attention', (v) => v == null || v === false],
  ['attention_type', (v) => v == null || v === 'default'],
  ['cross_attention_norm', (v) => v == null],
  ['center_input_sample', (v) => v == null || v === false],
  ['act_fn', (v) => v == null || v === 'silu'],
  ['class_embeddings_concat', (v) => v == null || v === false],
];

function perBlock<T>(v: T | T[], n: number, field: string, source: string): T[] {
  const list = Array.isArray(v) ? v : Array.from({ length: n }, () => v);
  if (list.length !== n) throw new OnestepError(`${source}: ${field} has ${list.length} entries for ${n} down blocks`);
  return list;
}

/**
 * A diffusers UNet config.json (as parsed JSON) -> UNetConfig with diffusers' defaults filled in and per-block
 * fields as lists. Throws OnestepError for variants this builder does not support (SDXL's added conditions, ...).
 */
export function normalizeUNetConfig(json: Record<string, any>, source = 'unet config'): UNetConfig {
  for (const [field, isDefault] of UNSUPPORTED) {
    if (field in json && !isDefault(json[field])) {
      throw new OnestepError(
        `${source}: ${field} = ${JSON.stringify(json[field])} is not supported (onestep builds SD 1.x / 2.x UNets)`,
        'Use a Stable Diffusion 1.x or 2.x checkpoint.',
      );
    }
  }
  const blockOut: number[] = json.block_out_channels ?? [320, 640, 1280, 1280];
  const n = blockOut.length;
  const down: string[] = json.down_block_types ?? ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'];
  const up: string[] = json.up_block_types ?? ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'];
  if (down.length !== n || up.length !== n) {
    throw new OnestepError(`${source}: ${n} block_out_channels but ${down.length} down and ${up.length} up block types`);
  }
  for (const t of down) if (!DOWN_BLOCKS.includes(t)) throw new OnestepError(`${source}: down block type ${t} is not supported`);
  for (const t of up) if (!UP_BLOCKS.includes(t)) throw new OnestepError(`${source}: up block type ${t} is not supported`);
  if (Array.isArray(json.layers_per_block)) throw new OnestepError(`${source}: per-block layers_per_block is not supported`);
  if (json.reverse_transformer_layers_per_block != null) {
    throw new OnestepError(`${source}: reverse_transformer_layers_per_block is not supported`);
  }
  const headDim = perBlock<number>(json.attention_head_dim ?? 8, n, 'attention_head_dim', source);
  const heads = json.num_attention_heads == null ? null : perBlock<number>(json.num_attention_heads, n, 'num_attention_heads', source);
  const textTime = json.addition_embed_type === 'text_time';
  if (textTime && (typeof json.addition_time_embed_dim !== 'number' || typeof json.projection_class_embeddings_input_dim !== 'number')) {
    throw new OnestepError(`${source}: addition_embed_type text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim`);
  }
  return {
    in_channels: json.in_channels ?? 4,
    out_channels: json.out_channels ?? 4,
    block_out_channels: blockOut,
    down_block_types: down,
    up_block_types: up,
    layers_per_block: json.layers_per_block ?? 2,
    attention_head_dim: headDim,
    num_attention_heads: heads,
    cross_attention_dim: json.cross_attention_dim ?? 1280,
    transformer_layers_per_block: perBlock<number>(json.transformer_layers_per_block ?? 1, n, 'transformer_layers_per_block', source),
    use_linear_projection: json.use_linear_projection ?? false,
    upcast_attention: json.upcast_attention ?? false,
    norm_num_groups: json.norm_num_groups ?? 32,
    norm_eps: json.norm_eps ?? 1e-5,
    flip_sin_to_cos: json.flip_sin_to_cos ?? true,
    freq_shift: json.freq_shift ?? 0,
    downsample_padding: json.downsample_padding ?? 1,
    mid_block_scale_factor: json.mid_block_scale_factor ?? 1,
    act_fn: json.act_fn ?? 'silu',
    time_cond_proj_dim: json.time_cond_proj_dim ?? null,
    sample_size: json.sample_size ?? 64,
    // diffusers: an explicit null means no mid block (SDXS); absent means the default cross-attention mid block.
    mid_block_type: 'mid_block_type' in json && json.mid_block_type === null ? null : 'UNetMidBlock2DCrossAttn',
    only_cross_attention: perBlock<boolean>(json.only_cross_attention ?? false, n, 'only_cross_attention', source),
    addition_embed_type: textTime ? 'text_time' : null,
    addition_time_embed_dim: textTime ? json.addition_time_embed_dim : null,
    projection_class_embeddings_input_dim: textTime ? json.projection_class_embeddings_input_dim : null,
  };
}

/** Transformer2DModel (continuous input): GroupNorm -> proj_in -> transformer blocks -> proj_out -> + residual. */
function transformer2DModel(m: Module, cfg: UNetConfig, x: Value, context: Value, heads: number, layers: number, onlyCross = false): Value {
  const { g } = m;
  const inner = m.shape('proj_in.weight')[0];
  let h = m.groupNorm(x, 'norm', cfg.norm_num_groups, 1e-6);
  h = cfg.use_linear_projection ? linearOrConv1x1(m, toTokens(m, h, inner), 'proj_in') : toTokens(m, m.conv2d(h, 'proj_in'), inner);
  for (let i = 0; i < layers; i++) {
    h = m.with(`transformer_blocks.${i}`, (b) => basicTransformerBlock(b, h, { heads, context, upcast: cfg.upcast_attention, onlyCrossAttention: onlyCross }));
  }
  h = cfg.use_linear_projection ? toImage(m, linearOrConv1x1(m, h, 'proj_out'), x) : m.conv2d(toImage(m, h, x), 'proj_out');
  return g.add(h, x);
}

/** A linear projection on tokens; also accepts 1x1-conv-shaped weights ([C, C, 1, 1]) that some converters keep. */
function linearOrConv1x1(m: Module, x: Value, name: string): Value {
  const shape = m.shape(`${name}.weight`);
  if (shape.length === 2) return m.linear(x, name);
  return m.g.scope(name, () => {
    const y = m.g.matmul(x, m.weight(`${name}.weight`, { reshape: [shape[0], shape[1]], transpose: true }));
    return m.has(`${name}.bias`) ? m.g.add(y, m.weight(`${name}.bias`)) : y;
  });
}

function downsample2D(m: Module, cfg: UNetConfig, x: Value): Value {
  return m.conv2d(x, 'conv', { stride: 2, padding: cfg.downsample_padding });
}

/** Nearest upsampling to the spatial size of the skip connection that comes next (2x for sizes divisible by 8). */
function upsample2D(m: Module, x: Value, sizeOf: Value): Value {
  const { g } = m;
  const sizes = g.concat([g.shape(x, 0, 2), g.shape(sizeOf, 2, 4)], 0);
  const up = g.node('Resize', [x, undefined, undefined, sizes], {
    mode: 'nearest',
    nearest_mode: 'floor',
    coordinate_transformation_mode: 'asymmetric',
  })[0];
  return m.conv2d(up, 'conv');
}

/** Heads per down block: num_attention_heads when set, else attention_head_dim (which SD configs use for the count). */
function headsPerBlock(cfg: UNetConfig): number[] {
  return cfg.num_attention_heads ?? cfg.attention_head_dim;
}

/** The UNet on graph values; returns the output sample [batch, out_channels, h, w] in the graph's dtype. */
export function unet(g: Graph, cfg: UNetConfig, x: UNetInputs, prefix = 'unet'): Value {
  if (cfg.time_cond_proj_dim) throw new OnestepError('UNets with a guidance embedding (time_cond_proj_dim) are not supported');
  return g.scope(prefix, () => {
    const m = g.module(prefix);
    const heads = headsPerBlock(cfg);
    const n = cfg.block_out_channels.length;
    const context = g.cast(x.encoderHiddenStates, g.dtype);
    const norm = { groups: cfg.norm_num_groups, eps: cfg.norm_eps };

    const tEmb = timestepProjection(g, g.cast(x.timestep, 'float32'), cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift);
    let temb = m.with('time_embedding', (t) => timestepEmbedding(t, g.cast(tEmb, g.dtype)));
    if (cfg.addition_embed_type === 'text_time') temb = g.add(temb, addTextTimeEmbedding(g, cfg, x, prefix));
    const tembAct = g.silu(temb);
    const resnet = { ...norm, tembAct };

    let h = m.conv2d(g.cast(x.sample, g.dtype), 'conv_in');
    const skips: Value[] = [h];

    for (let i = 0; i < n; i++) {
      h = m.with(`down_blocks.${i}`, (block) => {
        let y = h;
        for (let j = 0; j < cfg.layers_per_block; j++) {
          y = block.with(`resnets.${j}`, (r) => resnetBlock2D(r, y, resnet));
          if (cfg.down_block_types[i] === 'CrossAttnDownBlock2D') {
            y = block.with(`attentions.${j}`, (a) => transformer2DModel(a, cfg, y, context, heads[i], cfg.transformer_layers_per_block[i], cfg.only_cross_attention[i]));
          }
          skips.push(y);
        }
        if (i < n - 1) {
          y = block.with('downsamplers.0', (d) => downsample2D(d, cfg, y));
          skips.push(y);
        }
        return y;
      });
    }

    // SDXS (mid_block_type null) has none: the deepest down output goes straight to the up path.
    if (cfg.mid_block_type !== null) {
      h = m.with('mid_block', (mid) => {
        const midResnet = { ...resnet, outputScale: cfg.mid_block_scale_factor };
        let y = mid.with('resnets.0', (r) => resnetBlock2D(r, h, midResnet));
        y = mid.with('attentions.0', (a) => transformer2DModel(a, cfg, y, context, heads[n - 1], cfg.transformer_layers_per_block[n - 1]));
        return mid.with('resnets.1', (r) => resnetBlock2D(r, y, midResnet));
      });
    }

    const upHeads = [...heads].reverse();
    const upLayers = [...cfg.transformer_layers_per_block].reverse();
    const upOnlyCross = [...cfg.only_cross_attention].reverse();
    for (let i = 0; i < n; i++) {
      h = m.with(`up_blocks.${i}`, (block) => {
        let y = h;
        for (let j = 0; j < cfg.layers_per_block + 1; j++) {
          y = g.concat([y, skips.pop()!], 1);
          y = block.with(`resnets.${j}`, (r) => resnetBlock2D(r, y, resnet));
          if (cfg.up_block_types[i] === 'CrossAttnUpBlock2D') {
            y = block.with(`attentions.${j}`, (a) => transformer2DModel(a, cfg, y, context, upHeads[i], upLayers[i], upOnlyCross[i]));
          }
        }
        if (i < n - 1) y = block.with('upsamplers.0', (u) => upsample2D(u, y, skips[skips.length - 1]));
        return y;
      });
    }

    h = g.silu(m.groupNorm(h, 'conv_norm_out', cfg.norm_num_groups, cfg.norm_eps));
    return m.conv2d(h, 'conv_out');
  });
}

/**
 * SDXL's added conditioning (addition_embed_type text_time): add_time_proj, the sinusoidal embedding of each of the
 * six time ids, flattened and concatenated after the pooled text embedding, then add_embedding (linear, silu, linear).
 */
function addTextTimeEmbedding(g: Graph, cfg: UNetConfig, x: UNetInputs, prefix: string): Value {
  if (!x.textEmbeds || !x.timeIds) throw new OnestepError('a text_time UNet needs text_embeds and time_ids inputs');
  const dim = cfg.addition_time_embed_dim!;
  return g.scope('add_embedding', () => {
    const ids = g.reshape(g.cast(x.timeIds!, 'float32'), [-1]);
    const timeEmbeds = g.reshape(timestepProjection(g, ids, dim, cfg.flip_sin_to_cos, cfg.freq_shift), [-1, 6 * dim]);
    const addEmbeds = g.concat([g.cast(x.textEmbeds!, g.dtype), g.cast(timeEmbeds, g.dtype)], 1);
    return g.linear(g.silu(g.linear(addEmbeds, `${prefix}.add_embedding.linear_1`)), `${prefix}.add_embedding.linear_2`);
  });
}

/** Width of SDXL's pooled text embedding input: projection_class_embeddings_input_dim less the six time embeddings. */
export function textEmbedsDim(cfg: UNetConfig): number | null {
  if (cfg.addition_embed_type !== 'text_time') return null;
  return cfg.projection_class_embeddings_input_dim! - 6 * cfg.addition_time_embed_dim!;
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
