/**
 * AutoencoderKL (diffusers' autoencoders/vae.py Encoder / Decoder and their blocks), as Stable Diffusion 1.x/2.x,
 * SDXL and PixArt use it. Every GroupNorm in the VAE uses eps 1e-6 and `norm_num_groups` groups.
 */
import type { VaeConfig } from '../checkpoint/configs.js';
import type { WeightSource } from '../checkpoint/weight-source.js';
import { OnestepError } from '../errors.js';
import { Graph, type Module, type Value } from '../onnx/graph.js';
import { attention, resnetBlock2D, toImage, toTokens } from './blocks.js';

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

/** Single-head self-attention over the H*W positions (diffusers Attention with group_norm and residual_connection). */
function attentionBlock(m: Module, cfg: VaeConfig, x: Value): Value {
  const normed = m.groupNorm(x, 'group_norm', cfg.norm_num_groups, EPS);
  const tokens = toTokens(m, normed, m.shape('to_q.weight')[0]);
  return m.g.add(toImage(m, attention(m, tokens, 1), x), x);
}

/** UNetMidBlock2D without time embedding: resnet, (attention, resnet). */
function midBlock(m: Module, cfg: VaeConfig, x: Value): Value {
  const norm = { groups: cfg.norm_num_groups, eps: EPS };
  let h = m.with('resnets.0', (r) => resnetBlock2D(r, x, norm));
  if (cfg.mid_block_add_attention) h = m.with('attentions.0', (a) => attentionBlock(a, cfg, h));
  return m.with('resnets.1', (r) => resnetBlock2D(r, h, norm));
}

/** Downsample2D with a conv: torch pads (0, 1, 0, 1) (right and bottom only), then a 3x3 stride-2 conv without padding. */
function downsample2D(m: Module, x: Value): Value {
  return m.g.scope('conv', () => {
    const [, , kh, kw] = m.shape('conv.weight');
    return m.g.node('Conv', [x, m.weight('conv.weight'), m.weight('conv.bias')], {
      kernel_shape: [kh, kw],
      pads: [0, 0, 1, 1], // [top, left, bottom, right]
      strides: [2, 2],
    })[0];
  });
}

/** diffusers' Encoder: image [B, in_channels, H, W] -> [B, 2 * latent_channels, H/f, W/f] (mean and logvar). */
function encoder(m: Module, cfg: VaeConfig, sample: Value): Value {
  const norm = { groups: cfg.norm_num_groups, eps: EPS };
  let h = m.conv2d(sample, 'conv_in');
  const blocks = cfg.block_out_channels.length;
  for (let i = 0; i < blocks; i++) {
    h = m.with(`down_blocks.${i}`, (block) => {
      let x = h;
      for (let j = 0; j < cfg.layers_per_block; j++) x = block.with(`resnets.${j}`, (r) => resnetBlock2D(r, x, norm));
      return i < blocks - 1 ? block.with('downsamplers.0', (d) => downsample2D(d, x)) : x;
    });
  }
  h = m.with('mid_block', (mid) => midBlock(mid, cfg, h));
  h = m.g.silu(m.groupNorm(h, 'conv_norm_out', cfg.norm_num_groups, EPS));
  return m.conv2d(h, 'conv_out');
}

/** diffusers' Decoder: latents [B, latent_channels, h, w] -> image [B, out_channels, h*f, w*f]. */
function decoder(m: Module, cfg: VaeConfig, z: Value): Value {
  const norm = { groups: cfg.norm_num_groups, eps: EPS };
  let h = m.conv2d(z, 'conv_in');
  h = m.with('mid_block', (mid) => midBlock(mid, cfg, h));
  const blocks = cfg.block_out_channels.length;
  for (let i = 0; i < blocks; i++) {
    h = m.with(`up_blocks.${i}`, (block) => {
      let x = h;
      for (let j = 0; j <= cfg.layers_per_block; j++) x = block.with(`resnets.${j}`, (r) => resnetBlock2D(r, x, norm));
      return i < blocks - 1 ? block.with('upsamplers.0', (u) => u.conv2d(u.g.upsampleNearest2x(x), 'conv')) : x;
    });
  }
  h = m.g.silu(m.groupNorm(h, 'conv_norm_out', cfg.norm_num_groups, EPS));
  return m.conv2d(h, 'conv_out');
}

/**
 * The VAE decoder: `latentSample` (latents already divided by scaling_factor) -> raw decoded image in the graph's
 * dtype, NCHW, roughly in [-1, 1] and not clamped.
 */
export function vaeDecoder(g: Graph, cfg: VaeConfig, latentSample: Value, prefix = 'vae'): Value {
  return g.scope('vae', () => {
    const m = g.module(prefix);
    let z = g.cast(latentSample, g.dtype);
    if (cfg.use_post_quant_conv) z = m.conv2d(z, 'post_quant_conv');
    return m.with('decoder', (d) => decoder(d, cfg, z));
  });
}

/**
 * The VAE encoder: image NCHW in [-1, 1] -> the latent distribution (unscaled): its mean and its standard deviation
 * exp(0.5 * clamp(logvar, -30, 20)) as diffusers' DiagonalGaussianDistribution computes it, the std in float32.
 */
export function vaeEncoder(g: Graph, cfg: VaeConfig, sample: Value, prefix = 'vae'): { mean: Value; std: Value } {
  return g.scope('vae', () => {
    const m = g.module(prefix);
    const x = g.cast(sample, g.dtype);
    let moments = m.with('encoder', (e) => encoder(e, cfg, x));
    if (cfg.use_quant_conv) moments = m.conv2d(moments, 'quant_conv');
    const C = cfg.latent_channels;
    const mean = g.slice(moments, [0], [C], [1]);
    const logvar = g.clip(g.cast(g.slice(moments, [C], [2 * C], [1]), 'float32'), -30, 20);
    return { mean, std: g.exp(g.mul(logvar, g.scalar(0.5, 'float32'))) };
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

/** Standalone encoder graph: `sample` float32 [batch, in_channels, height, width] -> `latent_dist_mean`, `latent_dist_std` float32. */
export function buildVaeEncoderGraph(weights: WeightSource, cfg: VaeConfig, dtype: 'float32' | 'float16' = 'float32'): Graph {
  const g = new Graph('vae_encoder', weights, dtype);
  const x = g.input('sample', 'float32', ['batch', cfg.in_channels, 'height', 'width']);
  const { mean, std } = vaeEncoder(g, cfg, x);
  const dims = ['batch', cfg.latent_channels, 'latent_height', 'latent_width'];
  g.output(g.cast(mean, 'float32'), 'latent_dist_mean', dims);
  g.output(std, 'latent_dist_std', dims);
  return g;
}
