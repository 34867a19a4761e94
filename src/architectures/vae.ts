/**
 * AutoencoderKL (diffusers' autoencoders/vae.py Encoder / Decoder and their blocks), as Stable Diffusion 1.x/2.x,
 * SDXL and PixArt use it. Every GroupNorm in the VAE uses eps 1e-6 and `norm_num_groups` groups.
 */
import type { VaeConfig } from '../checkpoint/configs.js';
import type { WeightSource } from '../checkpoint/weight-source.js';
import { OnestepError } from '../errors.js';
import { Graph, type Value } from '../onnx/graph.js';

const EPS = 1e-6;

export function normalizeVaeConfig(json: Record<string, any>): VaeConfig {
  const cfg: VaeConfig = {
    in_channels: json.in_channels ?? 3,
    out_channels: json.out_channels ?? 3,
    latent_channels: json.latent_channels ?? 4,
    block_out_channels: json.block_out_channels ?? [64],
    layers_per_block: json.layers_per_block ?? 1,
    norm_num_groups: json.norm_num_groups ?? 32,
    scaling_factor: json.scaling_factor ?? 0.18215,
    shift_factor: json.shift_factor ?? null,
    use_quant_conv: json.use_quant_conv ?? true,
    use_post_quant_conv: json.use_post_quant_conv ?? true,
    mid_block_add_attention: json.mid_block_add_attention ?? true,
    sample_size: json.sample_size ?? 32,
  };
  const unsupported = [
    ...(json.down_block_types ?? []).filter((t: string) => t !== 'DownEncoderBlock2D'),
    ...(json.up_block_types ?? []).filter((t: string) => t !== 'UpDecoderBlock2D'),
    ...(json.act_fn && json.act_fn !== 'silu' ? [`act_fn ${json.act_fn}`] : []),
  ];
  if (unsupported.length) {
    throw new OnestepError(`VAE config: unsupported ${[...new Set(unsupported)].join(', ')}`, 'Only AutoencoderKL with DownEncoderBlock2D / UpDecoderBlock2D and silu is supported.');
  }
  const bad = cfg.block_out_channels.find((c) => c % cfg.norm_num_groups !== 0);
  if (bad !== undefined) throw new OnestepError(`VAE config: ${bad} channels do not divide into ${cfg.norm_num_groups} groups`);
  return cfg;
}

/** How many times the encoder halves (and the decoder doubles) the spatial size: 8 for Stable Diffusion. */
export function vaeScaleFactor(cfg: VaeConfig): number {
  return 2 ** (cfg.block_out_channels.length - 1);
}

/** ResnetBlock2D without time embedding: norm1, silu, conv1, norm2, silu, conv2, plus a 1x1 conv_shortcut when channels change. */
function resnetBlock2D(g: Graph, cfg: VaeConfig, x: Value, prefix: string): Value {
  let h = g.silu(g.groupNorm(x, `${prefix}.norm1`, cfg.norm_num_groups, EPS));
  h = g.conv2d(h, `${prefix}.conv1`);
  h = g.silu(g.groupNorm(h, `${prefix}.norm2`, cfg.norm_num_groups, EPS));
  h = g.conv2d(h, `${prefix}.conv2`);
  const shortcut = g.hasWeight(`${prefix}.conv_shortcut.weight`) ? g.conv2d(x, `${prefix}.conv_shortcut`) : x;
  return g.add(shortcut, h);
}

/** Single-head self-attention over the H*W positions (diffusers Attention with group_norm and residual_connection). */
function attention(g: Graph, cfg: VaeConfig, x: Value, prefix: string): Value {
  const channels = g.weightShape(`${prefix}.to_q.weight`)[0];
  const normed = g.groupNorm(x, `${prefix}.group_norm`, cfg.norm_num_groups, EPS);
  // [B, C, H, W] -> [B, H*W, C]
  const tokens = g.transpose(g.reshape(normed, [0, channels, -1]), [0, 2, 1]);
  const q = g.linear(tokens, `${prefix}.to_q`);
  const k = g.linear(tokens, `${prefix}.to_k`);
  const v = g.linear(tokens, `${prefix}.to_v`);
  const o = g.linear(g.attention(q, k, v, 1), `${prefix}.to_out.0`);
  const back = g.node('Reshape', [g.transpose(o, [0, 2, 1]), g.shape(x)])[0];
  return g.add(back, x);
}

/** UNetMidBlock2D without time embedding: resnet, (attention, resnet). */
function midBlock(g: Graph, cfg: VaeConfig, x: Value, prefix: string): Value {
  return g.scope('mid_block', () => {
    let h = g.scope('resnets.0', () => resnetBlock2D(g, cfg, x, `${prefix}.resnets.0`));
    if (cfg.mid_block_add_attention) h = g.scope('attentions.0', () => attention(g, cfg, h, `${prefix}.attentions.0`));
    return g.scope('resnets.1', () => resnetBlock2D(g, cfg, h, `${prefix}.resnets.1`));
  });
}

/** Downsample2D with a conv: torch pads (0, 1, 0, 1) (right and bottom only), then a 3x3 stride-2 conv without padding. */
function downsample2D(g: Graph, x: Value, prefix: string): Value {
  return g.scope('downsamplers.0', () =>
    g.scope('conv', () => {
      const key = `${prefix}.conv`;
      const [, , kh, kw] = g.weightShape(`${key}.weight`);
      return g.node('Conv', [x, g.weight(`${key}.weight`), g.weight(`${key}.bias`)], {
        kernel_shape: [kh, kw],
        pads: [0, 0, 1, 1], // [top, left, bottom, right]
        strides: [2, 2],
      })[0];
    }),
  );
}

/** Upsample2D with a conv: nearest 2x, then a 3x3 conv. */
function upsample2D(g: Graph, x: Value, prefix: string): Value {
  return g.scope('upsamplers.0', () => g.conv2d(g.upsampleNearest2x(x), `${prefix}.conv`));
}

/** diffusers' Encoder: image [B, in_channels, H, W] -> [B, 2 * latent_channels, H/f, W/f] (mean and logvar). */
function encoder(g: Graph, cfg: VaeConfig, sample: Value, prefix: string): Value {
  return g.scope('encoder', () => {
    let h = g.conv2d(sample, `${prefix}.conv_in`);
    const blocks = cfg.block_out_channels.length;
    for (let i = 0; i < blocks; i++) {
      const block = `${prefix}.down_blocks.${i}`;
      h = g.scope(`down_blocks.${i}`, () => {
        let x = h;
        for (let j = 0; j < cfg.layers_per_block; j++) x = g.scope(`resnets.${j}`, () => resnetBlock2D(g, cfg, x, `${block}.resnets.${j}`));
        return i < blocks - 1 ? downsample2D(g, x, `${block}.downsamplers.0`) : x;
      });
    }
    h = midBlock(g, cfg, h, `${prefix}.mid_block`);
    h = g.silu(g.groupNorm(h, `${prefix}.conv_norm_out`, cfg.norm_num_groups, EPS));
    return g.conv2d(h, `${prefix}.conv_out`);
  });
}

/** diffusers' Decoder: latents [B, latent_channels, h, w] -> image [B, out_channels, h*f, w*f]. */
function decoder(g: Graph, cfg: VaeConfig, z: Value, prefix: string): Value {
  return g.scope('decoder', () => {
    let h = g.conv2d(z, `${prefix}.conv_in`);
    h = midBlock(g, cfg, h, `${prefix}.mid_block`);
    const blocks = cfg.block_out_channels.length;
    for (let i = 0; i < blocks; i++) {
      const block = `${prefix}.up_blocks.${i}`;
      h = g.scope(`up_blocks.${i}`, () => {
        let x = h;
        for (let j = 0; j <= cfg.layers_per_block; j++) x = g.scope(`resnets.${j}`, () => resnetBlock2D(g, cfg, x, `${block}.resnets.${j}`));
        return i < blocks - 1 ? upsample2D(g, x, `${block}.upsamplers.0`) : x;
      });
    }
    h = g.silu(g.groupNorm(h, `${prefix}.conv_norm_out`, cfg.norm_num_groups, EPS));
    return g.conv2d(h, `${prefix}.conv_out`);
  });
}

/**
 * The VAE decoder: `latentSample` (latents already divided by scaling_factor) -> raw decoded image in the graph's
 * dtype, NCHW, roughly in [-1, 1] and not clamped.
 */
export function vaeDecoder(g: Graph, cfg: VaeConfig, latentSample: Value, prefix = 'vae'): Value {
  return g.scope('vae', () => {
    let z = g.cast(latentSample, g.dtype);
    if (cfg.use_post_quant_conv) z = g.conv2d(z, `${prefix}.post_quant_conv`);
    return decoder(g, cfg, z, `${prefix}.decoder`);
  });
}

/** The VAE encoder: image NCHW in [-1, 1] -> mean of the latent distribution (unscaled), in the graph's dtype. */
export function vaeEncoder(g: Graph, cfg: VaeConfig, sample: Value, prefix = 'vae'): Value {
  return g.scope('vae', () => {
    let moments = encoder(g, cfg, g.cast(sample, g.dtype), `${prefix}.encoder`);
    if (cfg.use_quant_conv) moments = g.conv2d(moments, `${prefix}.quant_conv`);
    return g.slice(moments, [0], [cfg.latent_channels], [1]);
  });
}

/**
 * Decoded sample NCHW -> uint8 RGB NHWC, as diffusers' VaeImageProcessor + PIL: clamp(x / 2 + 0.5, 0, 1), then
 * numpy's (x * 255).round() (half to even, like ONNX Round), computed in float32.
 */
export function toUint8Image(g: Graph, sample: Value): Value {
  return g.scope('to_uint8_image', () => {
    const x = g.cast(sample, 'float32');
    const unit = g.clip(g.add(g.div(x, g.scalar(2, 'float32')), g.scalar(0.5, 'float32')), 0, 1);
    const rounded = g.node('Round', [g.mul(unit, g.scalar(255, 'float32'))])[0];
    return g.transpose(g.cast(rounded, 'uint8'), [0, 2, 3, 1]);
  });
}

/**
 * Standalone decoder graph: `latent_sample` float32 [batch, latent_channels, height, width] -> `sample` float32
 * [batch, out_channels, height*f, width*f]; with `toImage`, `image` uint8 [batch, height*f, width*f, out_channels].
 */
export function buildVaeDecoderGraph(
  weights: WeightSource,
  cfg: VaeConfig,
  dtype: 'float32' | 'float16' = 'float32',
  opts: { toImage?: boolean } = {},
): Graph {
  const g = new Graph('vae_decoder', weights, dtype);
  const z = g.input('latent_sample', 'float32', ['batch', cfg.latent_channels, 'height', 'width']);
  const sample = vaeDecoder(g, cfg, z);
  if (opts.toImage) g.output(toUint8Image(g, sample), 'image', ['batch', 'image_height', 'image_width', cfg.out_channels]);
  else g.output(g.cast(sample, 'float32'), 'sample', ['batch', cfg.out_channels, 'image_height', 'image_width']);
  return g;
}

/** Standalone encoder graph: `sample` float32 [batch, in_channels, height, width] -> `latent_dist_mean` float32. */
export function buildVaeEncoderGraph(weights: WeightSource, cfg: VaeConfig, dtype: 'float32' | 'float16' = 'float32'): Graph {
  const g = new Graph('vae_encoder', weights, dtype);
  const x = g.input('sample', 'float32', ['batch', cfg.in_channels, 'height', 'width']);
  const mean = vaeEncoder(g, cfg, x);
  g.output(g.cast(mean, 'float32'), 'latent_dist_mean', ['batch', cfg.latent_channels, 'latent_height', 'latent_width']);
  return g;
}
