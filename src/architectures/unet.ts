/**
 * UNet2DConditionModel as Stable Diffusion 1.x / 2.x, SDXL (added text_time conditioning) and SDXS (no mid block)
 * use it, built as an ONNX graph. Each function mirrors the
 * diffusers module of the same name and reads its weights under the prefix it receives, so the function tree is the
 * module tree (`unet.down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_q.weight`).
 */
import type { UNetConfig } from '../checkpoint/configs.js';
import type { WeightSource } from '../checkpoint/weight-source.js';
import { OnestepError } from '../errors.js';
import { Graph, type Value } from '../onnx/graph.js';

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

/** Timesteps [batch] (float32) -> sinusoidal embedding [batch, channels] (float32). */
function timestepEmbedding(g: Graph, timestep: Value, channels: number, flipSinToCos: boolean, freqShift: number): Value {
  if (channels % 2) throw new OnestepError(`timestep embedding of odd width ${channels} is not supported`);
  const freqs = timestepFrequencies(channels, freqShift);
  const args = g.mul(g.unsqueeze(timestep, [1]), g.constant(freqs, [1, freqs.length], 'float32'));
  const sin = g.sin(args);
  const cos = g.cos(args);
  return g.concat(flipSinToCos ? [cos, sin] : [sin, cos], 1);
}

/** TimestepEmbedding: linear_1 -> silu -> linear_2. */
function timeEmbedding(g: Graph, x: Value, prefix: string): Value {
  return g.scope('time_embedding', () => g.linear(g.silu(g.linear(x, `${prefix}.linear_1`)), `${prefix}.linear_2`));
}

/** `tembAct` is silu(temb), computed once for all resnets (diffusers applies it in each). */
function resnetBlock2D(g: Graph, cfg: UNetConfig, x: Value, tembAct: Value, prefix: string, outputScale = 1): Value {
  return g.scope(lastPart(prefix), () => {
    let h = g.silu(g.groupNorm(x, `${prefix}.norm1`, cfg.norm_num_groups, cfg.norm_eps));
    h = g.conv2d(h, `${prefix}.conv1`);
    const t = g.linear(tembAct, `${prefix}.time_emb_proj`);
    h = g.add(h, g.unsqueeze(t, [2, 3]));
    h = g.silu(g.groupNorm(h, `${prefix}.norm2`, cfg.norm_num_groups, cfg.norm_eps));
    h = g.conv2d(h, `${prefix}.conv2`);
    const shortcut = g.hasWeight(`${prefix}.conv_shortcut.weight`) ? g.conv2d(x, `${prefix}.conv_shortcut`) : x;
    const y = g.add(shortcut, h);
    return outputScale === 1 ? y : g.div(y, g.scalar(outputScale));
  });
}

/** Attention with bias-free to_q/to_k/to_v and to_out.0; `context` is the sequence attended to (self when absent). */
function attention(g: Graph, cfg: UNetConfig, x: Value, context: Value | undefined, heads: number, prefix: string): Value {
  return g.scope(lastPart(prefix), () => {
    const kv = context ?? x;
    let q = g.linear(x, `${prefix}.to_q`);
    let k = g.linear(kv, `${prefix}.to_k`);
    let v = g.linear(kv, `${prefix}.to_v`);
    // SD 2.1's upcast_attention: its attention scores overflow float16, so the core runs in float32.
    const upcast = cfg.upcast_attention && g.dtype === 'float16';
    if (upcast) [q, k, v] = [q, k, v].map((t) => g.cast(t, 'float32'));
    let out = g.attention(q, k, v, heads);
    if (upcast) out = g.cast(out, 'float16');
    return g.linear(out, `${prefix}.to_out.0`);
  });
}

/** FeedForward with GEGLU: proj to 2*inner, hidden * gelu(gate), then the output linear. */
function feedForward(g: Graph, x: Value, prefix: string): Value {
  return g.scope('ff', () => {
    const inner = g.weightShape(`${prefix}.net.0.proj.weight`)[0] / 2;
    const [hidden, gate] = g.split(g.linear(x, `${prefix}.net.0.proj`), [inner, inner], -1);
    return g.linear(g.mul(hidden, g.gelu(gate)), `${prefix}.net.2`);
  });
}

/** `onlyCross`: attn1 attends to the context too (diffusers' only_cross_attention). */
function basicTransformerBlock(g: Graph, cfg: UNetConfig, x: Value, context: Value, heads: number, prefix: string, onlyCross: boolean): Value {
  return g.scope(lastPart(prefix), () => {
    const eps = 1e-5;
    let h = g.add(attention(g, cfg, g.layerNorm(x, `${prefix}.norm1`, eps), onlyCross ? context : undefined, heads, `${prefix}.attn1`), x);
    h = g.add(attention(g, cfg, g.layerNorm(h, `${prefix}.norm2`, eps), context, heads, `${prefix}.attn2`), h);
    return g.add(feedForward(g, g.layerNorm(h, `${prefix}.norm3`, eps), `${prefix}.ff`), h);
  });
}

/** Transformer2DModel (continuous input): GroupNorm -> proj_in -> transformer blocks -> proj_out -> + residual. */
function transformer2DModel(g: Graph, cfg: UNetConfig, x: Value, context: Value, heads: number, layers: number, prefix: string, onlyCross = false): Value {
  return g.scope(lastPart(prefix), () => {
    const inner = g.weightShape(`${prefix}.proj_in.weight`)[0];
    const toTokens = (t: Value) => g.transpose(g.reshape(t, [0, inner, -1]), [0, 2, 1]); // NCHW -> [B, HW, C]
    const toImage = (t: Value) => g.node('Reshape', [g.transpose(t, [0, 2, 1]), g.shape(x)])[0];
    let h = g.groupNorm(x, `${prefix}.norm`, cfg.norm_num_groups, 1e-6);
    h = cfg.use_linear_projection ? linearOrConv1x1(g, toTokens(h), `${prefix}.proj_in`) : toTokens(g.conv2d(h, `${prefix}.proj_in`));
    for (let i = 0; i < layers; i++) h = basicTransformerBlock(g, cfg, h, context, heads, `${prefix}.transformer_blocks.${i}`, onlyCross);
    h = cfg.use_linear_projection ? toImage(linearOrConv1x1(g, h, `${prefix}.proj_out`)) : g.conv2d(toImage(h), `${prefix}.proj_out`);
    return g.add(h, x);
  });
}

/** A linear projection on tokens; also accepts 1x1-conv-shaped weights ([C, C, 1, 1]) that some converters keep. */
function linearOrConv1x1(g: Graph, x: Value, prefix: string): Value {
  const shape = g.weightShape(`${prefix}.weight`);
  if (shape.length === 2) return g.linear(x, prefix);
  return g.scope(lastPart(prefix), () => {
    const w = g.weight(`${prefix}.weight`, { reshape: [shape[0], shape[1]], transpose: true });
    const y = g.matmul(x, w);
    return g.hasWeight(`${prefix}.bias`) ? g.add(y, g.weight(`${prefix}.bias`)) : y;
  });
}

function downsample2D(g: Graph, cfg: UNetConfig, x: Value, prefix: string): Value {
  return g.scope('downsamplers.0', () => g.conv2d(x, `${prefix}.conv`, { stride: 2, padding: cfg.downsample_padding }));
}

/** Nearest upsampling to the spatial size of the skip connection that comes next (2x for sizes divisible by 8). */
function upsample2D(g: Graph, x: Value, sizeOf: Value, prefix: string): Value {
  return g.scope('upsamplers.0', () => {
    const sizes = g.concat([g.shape(x, 0, 2), g.shape(sizeOf, 2, 4)], 0);
    const up = g.node('Resize', [x, undefined, undefined, sizes], {
      mode: 'nearest',
      nearest_mode: 'floor',
      coordinate_transformation_mode: 'asymmetric',
    })[0];
    return g.conv2d(up, `${prefix}.conv`);
  });
}

/** Heads per down block: num_attention_heads when set, else attention_head_dim (which SD configs use for the count). */
function headsPerBlock(cfg: UNetConfig): number[] {
  return cfg.num_attention_heads ?? cfg.attention_head_dim;
}

/** The UNet on graph values; returns the output sample [batch, out_channels, h, w] in the graph's dtype. */
export function unet(g: Graph, cfg: UNetConfig, x: UNetInputs, prefix = 'unet'): Value {
  if (cfg.time_cond_proj_dim) throw new OnestepError('UNets with a guidance embedding (time_cond_proj_dim) are not supported');
  return g.scope(prefix, () => {
    const heads = headsPerBlock(cfg);
    const n = cfg.block_out_channels.length;
    const context = g.cast(x.encoderHiddenStates, g.dtype);

    const tEmb = timestepEmbedding(g, g.cast(x.timestep, 'float32'), cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift);
    let temb = timeEmbedding(g, g.cast(tEmb, g.dtype), `${prefix}.time_embedding`);
    if (cfg.addition_embed_type === 'text_time') temb = g.add(temb, addTextTimeEmbedding(g, cfg, x, prefix));
    const tembAct = g.silu(temb);

    let h = g.conv2d(g.cast(x.sample, g.dtype), `${prefix}.conv_in`);
    const skips: Value[] = [h];

    for (let i = 0; i < n; i++) {
      const p = `${prefix}.down_blocks.${i}`;
      h = g.scope(`down_blocks.${i}`, () => {
        let y = h;
        for (let j = 0; j < cfg.layers_per_block; j++) {
          y = resnetBlock2D(g, cfg, y, tembAct, `${p}.resnets.${j}`);
          if (cfg.down_block_types[i] === 'CrossAttnDownBlock2D') {
            y = transformer2DModel(g, cfg, y, context, heads[i], cfg.transformer_layers_per_block[i], `${p}.attentions.${j}`, cfg.only_cross_attention[i]);
          }
          skips.push(y);
        }
        if (i < n - 1) {
          y = downsample2D(g, cfg, y, `${p}.downsamplers.0`);
          skips.push(y);
        }
        return y;
      });
    }

    // SDXS (mid_block_type null) has none: the deepest down output goes straight to the up path.
    if (cfg.mid_block_type !== null) {
      h = g.scope('mid_block', () => {
        const p = `${prefix}.mid_block`;
        let y = resnetBlock2D(g, cfg, h, tembAct, `${p}.resnets.0`, cfg.mid_block_scale_factor);
        y = transformer2DModel(g, cfg, y, context, heads[n - 1], cfg.transformer_layers_per_block[n - 1], `${p}.attentions.0`);
        return resnetBlock2D(g, cfg, y, tembAct, `${p}.resnets.1`, cfg.mid_block_scale_factor);
      });
    }

    const upHeads = [...heads].reverse();
    const upLayers = [...cfg.transformer_layers_per_block].reverse();
    const upOnlyCross = [...cfg.only_cross_attention].reverse();
    for (let i = 0; i < n; i++) {
      const p = `${prefix}.up_blocks.${i}`;
      h = g.scope(`up_blocks.${i}`, () => {
        let y = h;
        for (let j = 0; j < cfg.layers_per_block + 1; j++) {
          y = g.concat([y, skips.pop()!], 1);
          y = resnetBlock2D(g, cfg, y, tembAct, `${p}.resnets.${j}`);
          if (cfg.up_block_types[i] === 'CrossAttnUpBlock2D') {
            y = transformer2DModel(g, cfg, y, context, upHeads[i], upLayers[i], `${p}.attentions.${j}`, upOnlyCross[i]);
          }
        }
        if (i < n - 1) y = upsample2D(g, y, skips[skips.length - 1], `${p}.upsamplers.0`);
        return y;
      });
    }

    h = g.silu(g.groupNorm(h, `${prefix}.conv_norm_out`, cfg.norm_num_groups, cfg.norm_eps));
    return g.conv2d(h, `${prefix}.conv_out`);
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
    const timeEmbeds = g.reshape(timestepEmbedding(g, ids, dim, cfg.flip_sin_to_cos, cfg.freq_shift), [-1, 6 * dim]);
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

function lastPart(prefix: string): string {
  const parts = prefix.split('.');
  const last = parts[parts.length - 1];
  return /^\d+$/.test(last) ? parts.slice(-2).join('.') : last;
}
