/**
 * AutoencoderKL (diffusers' autoencoders/vae.py Encoder / Decoder and their blocks), as Stable Diffusion 1.x/2.x,
 * SDXL and PixArt use it. Every GroupNorm in the VAE uses eps 1e-6 and `norm_num_groups` groups.
 */
import { ConfigFields, countDistinct, requiredShape, type ShapeView, type VaeConfig } from '../checkpoint/configs.js';
import type { WeightSource } from '../checkpoint/weight-source.js';
import { BadInputError } from '../errors.js';
import { expectedWeights, Graph, type Module, type Value } from '../onnx/graph.js';
import { attention, resnetBlock2D, toImage, toTokens } from './blocks.js';

const EPS = 1e-6;

/**
 * A diffusers AutoencoderKL config.json -> VaeConfig with AutoencoderKL's defaults for absent fields; one
 * BadInputError naming `file` and the field for what this file does not build or a malformed value. A single file's
 * inferred config plus a config folder's fields is `vaeConfigFromJson({ ...inferred, ...json }, file)`.
 */
export function vaeConfigFromJson(raw: Readonly<Record<string, unknown>>, file: string): VaeConfig {
  const f = new ConfigFields(raw, file);
  f.refuse({ act_fn: (v) => v === 'silu' }, 'AutoencoderKL with silu', 'Use an AutoencoderKL as SD, SDXL and PixArt ship it.');
  const block_out_channels = f.countList('block_out_channels', [64]);
  for (const [key, type] of [
    ['down_block_types', 'DownEncoderBlock2D'],
    ['up_block_types', 'UpDecoderBlock2D'],
  ] as const) {
    const types = f.strList(key, Array(block_out_channels.length).fill(type));
    if (types.some((t) => t !== type)) f.fail(key, `is not supported (onestep builds ${type} blocks only)`, 'Use an AutoencoderKL as SD, SDXL and PixArt ship it.');
    if (types.length !== block_out_channels.length) f.fail(key, `has ${types.length} entries for ${block_out_channels.length} block_out_channels`);
  }
  const norm_num_groups = f.count('norm_num_groups', 32);
  const bad = block_out_channels.find((c) => c % norm_num_groups !== 0);
  if (bad !== undefined) f.fail('block_out_channels', `has ${bad} channels, which do not divide into norm_num_groups ${norm_num_groups}`);
  return {
    in_channels: f.count('in_channels', 3),
    out_channels: f.count('out_channels', 3),
    latent_channels: f.count('latent_channels', 4),
    block_out_channels,
    layers_per_block: f.count('layers_per_block', 1),
    norm_num_groups,
    scaling_factor: f.num('scaling_factor', 0.18215),
    shift_factor: f.numOrNull('shift_factor', null),
    use_quant_conv: f.bool('use_quant_conv', true),
    use_post_quant_conv: f.bool('use_post_quant_conv', true),
    mid_block_add_attention: f.bool('mid_block_add_attention', true),
    sample_size: f.count('sample_size', 32),
  };
}

/**
 * VaeConfig from the shapes of `vae.*` canonical tensors. Not visible in shapes: the latent scale (SD's 0.18215
 * here; a family with another one sets it), norm groups (32) and the sample size (512).
 */
export function vaeConfigFromShapes(view: ShapeView): VaeConfig {
  const { names, metaOf } = view;
  const shape = (name: string) => requiredShape(view, name);
  const levels = countDistinct(names, /^vae\.encoder\.down_blocks\.(\d+)\./);
  if (levels === 0) throw new BadInputError(view.file, `no VAE encoder blocks found`);
  return {
    in_channels: shape('vae.encoder.conv_in.weight')[1],
    out_channels: shape('vae.decoder.conv_out.weight')[0],
    latent_channels: shape('vae.decoder.conv_in.weight')[1],
    block_out_channels: Array.from({ length: levels }, (_, i) => shape(`vae.encoder.down_blocks.${i}.resnets.0.conv2.weight`)[0]),
    layers_per_block: countDistinct(names, /^vae\.encoder\.down_blocks\.0\.resnets\.(\d+)\./),
    norm_num_groups: 32,
    scaling_factor: 0.18215,
    shift_factor: null,
    use_quant_conv: metaOf('vae.quant_conv.weight') !== undefined,
    use_post_quant_conv: metaOf('vae.post_quant_conv.weight') !== undefined,
    mid_block_add_attention: names.some((n) => n.startsWith('vae.decoder.mid_block.attentions.')),
    sample_size: 512,
  };
}

/** How many times the encoder halves (and the decoder doubles) the spatial size: 8 for Stable Diffusion. */
export function vaeScaleFactor(cfg: VaeConfig): number {
  return 2 ** (cfg.block_out_channels.length - 1);
}

/** Single-head self-attention over the H*W positions (diffusers Attention with group_norm and residual_connection). */
function attentionBlock(m: Module, cfg: VaeConfig, x: Value, channels: number): Value {
  const normed = m.groupNorm(x, 'group_norm', channels, cfg.norm_num_groups, EPS);
  const tokens = toTokens(m, normed, channels);
  return m.g.add(toImage(m, attention(m, tokens, channels, 1, { projectionBias: true }), x), x);
}

/** UNetMidBlock2D without time embedding on `channels` channels: resnet, (attention, resnet). */
function midBlock(m: Module, cfg: VaeConfig, x: Value, channels: number): Value {
  const norm = { groups: cfg.norm_num_groups, eps: EPS };
  let h = m.with('resnets.0', (r) => resnetBlock2D(r, x, channels, channels, norm));
  if (cfg.mid_block_add_attention) h = m.with('attentions.0', (a) => attentionBlock(a, cfg, h, channels));
  return m.with('resnets.1', (r) => resnetBlock2D(r, h, channels, channels, norm));
}

/** Downsample2D with a conv: torch pads (0, 1, 0, 1) (right and bottom only), then a 3x3 stride-2 conv without padding. */
function downsample2D(m: Module, x: Value, channels: number): Value {
  return m.g.scope('conv', () => {
    const weight = m.weight('conv.weight', [channels, channels, 3, 3]);
    return m.g.node('Conv', [x, weight, m.weight('conv.bias', [channels])], {
      kernel_shape: [3, 3],
      pads: [0, 0, 1, 1], // [top, left, bottom, right]
      strides: [2, 2],
    })[0];
  });
}

/** diffusers' Encoder: image [B, in_channels, H, W] -> [B, 2 * latent_channels, H/f, W/f] (mean and logvar). */
function encoder(m: Module, cfg: VaeConfig, sample: Value): Value {
  const norm = { groups: cfg.norm_num_groups, eps: EPS };
  const ch = cfg.block_out_channels;
  const blocks = ch.length;
  const last = ch[blocks - 1];
  let h = m.conv2d(sample, 'conv_in', cfg.in_channels, ch[0]);
  for (let i = 0; i < blocks; i++) {
    h = m.with(`down_blocks.${i}`, (block) => {
      let x = h;
      for (let j = 0; j < cfg.layers_per_block; j++) {
        const cin = j > 0 ? ch[i] : i > 0 ? ch[i - 1] : ch[0];
        x = block.with(`resnets.${j}`, (r) => resnetBlock2D(r, x, cin, ch[i], norm));
      }
      return i < blocks - 1 ? block.with('downsamplers.0', (d) => downsample2D(d, x, ch[i])) : x;
    });
  }
  h = m.with('mid_block', (mid) => midBlock(mid, cfg, h, last));
  h = m.g.silu(m.groupNorm(h, 'conv_norm_out', last, cfg.norm_num_groups, EPS));
  return m.conv2d(h, 'conv_out', last, 2 * cfg.latent_channels);
}

/** diffusers' Decoder: latents [B, latent_channels, h, w] -> image [B, out_channels, h*f, w*f]. */
function decoder(m: Module, cfg: VaeConfig, z: Value): Value {
  const norm = { groups: cfg.norm_num_groups, eps: EPS };
  const ch = [...cfg.block_out_channels].reverse();
  const blocks = ch.length;
  let h = m.conv2d(z, 'conv_in', cfg.latent_channels, ch[0]);
  h = m.with('mid_block', (mid) => midBlock(mid, cfg, h, ch[0]));
  for (let i = 0; i < blocks; i++) {
    h = m.with(`up_blocks.${i}`, (block) => {
      let x = h;
      for (let j = 0; j <= cfg.layers_per_block; j++) {
        const cin = j > 0 ? ch[i] : i > 0 ? ch[i - 1] : ch[0];
        x = block.with(`resnets.${j}`, (r) => resnetBlock2D(r, x, cin, ch[i], norm));
      }
      return i < blocks - 1 ? block.with('upsamplers.0', (u) => u.conv2d(u.g.upsampleNearest2x(x), 'conv', ch[i], ch[i])) : x;
    });
  }
  const out = ch[blocks - 1];
  h = m.g.silu(m.groupNorm(h, 'conv_norm_out', out, cfg.norm_num_groups, EPS));
  return m.conv2d(h, 'conv_out', out, cfg.out_channels);
}

/**
 * The VAE decoder: `latentSample` (latents already divided by scaling_factor) -> raw decoded image in the graph's
 * dtype, NCHW, roughly in [-1, 1] and not clamped.
 */
export function vaeDecoder(g: Graph, cfg: VaeConfig, latentSample: Value, prefix = 'vae'): Value {
  return g.scope('vae', () => {
    const m = g.module(prefix);
    let z = g.cast(latentSample, g.dtype);
    if (cfg.use_post_quant_conv) z = m.conv2d(z, 'post_quant_conv', cfg.latent_channels, cfg.latent_channels, { kernel: 1 });
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
    if (cfg.use_quant_conv) moments = m.conv2d(moments, 'quant_conv', 2 * cfg.latent_channels, 2 * cfg.latent_channels, { kernel: 1 });
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

/** The weights (canonical name -> shape) an AutoencoderKL of this config has: the dry run of both its graphs. */
export function expectedVaeWeights(cfg: VaeConfig): Map<string, number[]> {
  return expectedWeights(
    (w) => buildVaeEncoderGraph(w, cfg),
    (w) => buildVaeDecoderGraph(w, cfg),
  );
}
