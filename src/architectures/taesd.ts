/**
 * TAESD, madebyollin's tiny autoencoder (diffusers `AutoencoderTiny`, its `DecoderTiny`), as a fast replacement for
 * the AutoencoderKL decoder: ~141 GFLOP per 512x512 image instead of ~2515.
 *
 * DecoderTiny is one nn.Sequential, so its weights are named by layer index: `decoder.layers.N...` in diffusers'
 * AutoencoderTiny, `N...` (decoder-only file) or `decoder.N...` (whole TAESD module) in madebyollin's own files, where
 * index 0 is the weightless Clamp and every index is one higher. Both map to the canonical `taesd.decoder.layers.N...`
 * with diffusers' numbering:
 *
 *   0 conv (latent -> C), 1 ReLU,
 *   per stage: num_decoder_blocks[i] x AutoencoderTinyBlock, then (not last stage) Upsample + conv without bias,
 *   last: conv (C -> out_channels) with bias.
 *
 * Latent scale: TAESD was trained on the latents the denoiser works in (SD latents * 0.18215, roughly in [-3, 3]);
 * AutoencoderTiny's own scaling_factor is 1.0, so a diffusers pipeline with it decodes the UNet's x0 as is. onestep's
 * decoder contract (runtime/model-dir.ts) is that `latent_sample` = x0 / scaling_factor + shift_factor of the
 * checkpoint's VAE, so the graph undoes that first: raw = (latent_sample - shift) * scaling_factor. The engine and
 * model.json's `latent` then stay the same whichever decoder was converted.
 *
 * Output: DecoderTiny's stack gives an image in about [0, 1]; diffusers' DecoderTiny.forward returns x * 2 - 1, and
 * so does this graph, so `sample` is in [-1, 1] like AutoencoderKL's.
 */
import type { WeightSource } from '../checkpoint/weight-source.js';
import { BadInputError, OnestepError } from '../errors.js';
import { Graph, expectedWeights, type Module, type Value } from '../onnx/graph.js';
import { toUint8Image } from './vae.js';

/** The decoder half of diffusers' AutoencoderTiny config (same field names). */
export interface TaesdDecoderConfig {
  latent_channels: number;
  out_channels: number;
  /** AutoencoderTinyBlocks per stage; diffusers' default (3, 3, 3, 1) = madebyollin's Decoder. */
  num_decoder_blocks: number[];
  upsampling_scaling_factor: number;
}

export const TAESD_PREFIX = 'taesd.decoder';

/** An AutoencoderTiny config.json -> the decoder config; rejects what DecoderTiny built here cannot mean. */
export function normalizeTaesdConfig(json: Record<string, any>, label = 'TAESD config'): TaesdDecoderConfig {
  if (json._class_name !== undefined && json._class_name !== 'AutoencoderTiny') {
    throw new BadInputError(label, `is a ${json._class_name} config, not AutoencoderTiny`, 'Pass the folder of a TAESD (AutoencoderTiny) model.');
  }
  const unsupported = [
    ...(json.act_fn !== undefined && json.act_fn !== 'relu' ? [`act_fn ${json.act_fn}`] : []),
    ...(json.upsample_fn !== undefined && json.upsample_fn !== 'nearest' ? [`upsample_fn ${json.upsample_fn}`] : []),
  ];
  if (unsupported.length) throw new BadInputError(label, `unsupported ${unsupported.join(', ')}`, 'Only TAESD with relu and nearest upsampling is supported.');
  const cfg: TaesdDecoderConfig = {
    latent_channels: json.latent_channels ?? 4,
    out_channels: json.out_channels ?? 3,
    num_decoder_blocks: json.num_decoder_blocks ?? [3, 3, 3, 1],
    upsampling_scaling_factor: json.upsampling_scaling_factor ?? 2,
  };
  if (!Number.isInteger(cfg.upsampling_scaling_factor) || cfg.upsampling_scaling_factor < 1) {
    throw new BadInputError(label, `upsampling_scaling_factor ${cfg.upsampling_scaling_factor} is not a positive integer`);
  }
  return cfg;
}

/** How many times larger the decoded image is than the latent: 8 for TAESD. */
export function taesdUpscale(cfg: TaesdDecoderConfig): number {
  return cfg.upsampling_scaling_factor ** (cfg.num_decoder_blocks.length - 1);
}

/**
 * The decoder config read off canonical weight names (madebyollin's files carry no config): walk the layer indices,
 * counting blocks (`layers.N.conv.0.weight`) per stage; a weightless index followed by a conv without bias is an
 * upsample ending the stage; a conv with bias is the last layer.
 */
export function inferTaesdDecoderConfig(weights: WeightSource, label: string, prefix = TAESD_PREFIX): TaesdDecoderConfig {
  const layer = (i: number) => `${prefix}.layers.${i}`;
  const notTaesd = (why: string) => new BadInputError(label, `is not a TAESD decoder (${why})`, 'Pass an AutoencoderTiny folder or madebyollin\'s taesd_decoder.safetensors.');
  if (!weights.has(`${layer(0)}.weight`)) throw notTaesd('no first conv: an encoder file?');
  const first = weights.meta(`${layer(0)}.weight`).shape;
  if (first.length !== 4) throw notTaesd(`first conv has shape [${first}]`);
  const blocks = [0];
  const lastIndex = Math.max(...weights.names().map((n) => Number(/\.layers\.(\d+)\./.exec(n)?.[1] ?? -1)));
  for (let i = 2; i <= lastIndex; ) {
    if (weights.has(`${layer(i)}.conv.0.weight`)) {
      blocks[blocks.length - 1]++;
      i++;
    } else if (weights.has(`${layer(i)}.weight`)) {
      if (!weights.has(`${layer(i)}.bias`) || i !== lastIndex) throw notTaesd(`unexpected conv at layer ${i}`);
      return { latent_channels: first[1], out_channels: weights.meta(`${layer(i)}.weight`).shape[0], num_decoder_blocks: blocks, upsampling_scaling_factor: 2 };
    } else if (weights.has(`${layer(i + 1)}.weight`) && !weights.has(`${layer(i + 1)}.bias`)) {
      blocks.push(0);
      i += 2;
    } else {
      throw notTaesd(`nothing recognisable at layer ${i}`);
    }
  }
  throw notTaesd('no final conv');
}

function relu(g: Graph, x: Value): Value {
  return g.node('Relu', [x])[0];
}

/**
 * A conv of the shape and bias its weights have: TAESD's widths are not in its config (madebyollin's files carry none,
 * inferTaesdDecoderConfig reads the block counts off the names), so these shapes are not declared and a TAESD decoder
 * is not dry-run (Graph.weight); openTaesd checks its layout instead.
 */
function conv(m: Module, x: Value, name: string): Value {
  return m.g.conv2d(x, m.key(name));
}

/** AutoencoderTinyBlock: relu(conv(relu(conv(relu(conv(x))))) + skip(x)), skip a 1x1 conv when channels change. */
function autoencoderTinyBlock(m: Module, x: Value): Value {
  const { g } = m;
  let h = relu(g, conv(m, x, 'conv.0'));
  h = relu(g, conv(m, h, 'conv.2'));
  h = conv(m, h, 'conv.4');
  const skip = m.has('skip.weight') ? conv(m, x, 'skip') : x;
  return relu(g, g.add(h, skip));
}

function upsampleNearest(g: Graph, x: Value, factor: number): Value {
  if (factor === 2) return g.upsampleNearest2x(x);
  const scales = g.constant([1, 1, factor, factor], [4], 'float32');
  return g.node('Resize', [x, undefined, scales], { mode: 'nearest', nearest_mode: 'floor', coordinate_transformation_mode: 'asymmetric' })[0];
}

/**
 * DecoderTiny.forward: raw TAESD latents (the denoiser's latent space) in the graph's dtype -> image in [-1, 1]
 * (not clamped), NCHW.
 */
export function taesdDecoder(g: Graph, cfg: TaesdDecoderConfig, latents: Value, prefix = TAESD_PREFIX): Value {
  return g.scope('decoder', () => {
    const m = g.module(prefix);
    const three = g.scalar(3, latents.type);
    let h = g.mul(g.node('Tanh', [g.div(latents, three)])[0], three);
    // nn.Sequential: a layer with weights is itself a conv (`layers.N.weight`), so its scope is opened around the leaf op.
    h = g.scope('layers.0', () => relu(g, conv(m, h, 'layers.0')));
    let index = 2;
    cfg.num_decoder_blocks.forEach((count, stage) => {
      for (let b = 0; b < count; b++, index++) h = m.with(`layers.${index}`, (block) => autoencoderTinyBlock(block, h));
      const last = stage === cfg.num_decoder_blocks.length - 1;
      if (!last) {
        h = g.scope(`layers.${index}`, () => upsampleNearest(g, h, cfg.upsampling_scaling_factor));
        index++;
      }
      const i = index++;
      h = g.scope(`layers.${i}`, () => conv(m, h, `layers.${i}`));
    });
    return g.sub(g.mul(h, g.scalar(2, h.type)), g.scalar(1, h.type));
  });
}

export interface TaesdGraphOptions {
  /** The checkpoint VAE's scaling_factor, which the engine divided x0 by (0.18215 for SD 1.x/2.x). */
  latentScale: number;
  /** The checkpoint VAE's shift_factor, which the engine added (none for SD 1.x/2.x). */
  latentShift?: number | null;
  /** End in uint8 RGB NHWC (`image`) instead of `sample`. */
  toImage?: boolean;
  /** Weight prefix of the DecoderTiny (`vae.decoder` where an AutoencoderTiny is a pipeline's own vae/, as in SDXS). */
  prefix?: string;
}

/**
 * Standalone decoder graph with the same contract as buildVaeDecoderGraph: `latent_sample` float32 [batch,
 * latent_channels, height, width] = x0 / latentScale + latentShift -> `sample` float32 [batch, out_channels,
 * height*8, width*8] in [-1, 1] (or `image` uint8 NHWC with toImage).
 */
export function buildTaesdDecoderGraph(
  weights: WeightSource,
  cfg: TaesdDecoderConfig,
  dtype: 'float32' | 'float16',
  opts: TaesdGraphOptions,
): Graph {
  if (!(opts.latentScale > 0)) throw new OnestepError(`TAESD: latent scale ${opts.latentScale} must be positive`);
  const g = new Graph('vae_decoder', weights, dtype);
  const z = g.input('latent_sample', 'float32', ['batch', cfg.latent_channels, 'height', 'width']);
  const sample = g.scope('taesd', () => {
    // Back to the denoiser's latent space, in float32 before any cast (see the file comment).
    let raw = z;
    if (opts.latentShift) raw = g.sub(raw, g.scalar(opts.latentShift, 'float32'));
    raw = g.mul(raw, g.scalar(opts.latentScale, 'float32'));
    return taesdDecoder(g, cfg, g.cast(raw, g.dtype), opts.prefix);
  });
  if (opts.toImage) g.output(toUint8Image(g, sample), 'image', ['batch', 'image_height', 'image_width', cfg.out_channels]);
  else g.output(g.cast(sample, 'float32'), 'sample', ['batch', cfg.out_channels, 'image_height', 'image_width']);
  return g;
}

/**
 * The encoder half of diffusers' AutoencoderTiny config (same field names). EncoderTiny is one nn.Sequential too,
 * `encoder.layers.N...`: 0 conv (in_channels -> C0) with bias; per stage i: (i > 0) a stride-2 conv C_i -> C_i
 * without bias, then num_encoder_blocks[i] x AutoencoderTinyBlock(C_i); last: conv (C -> latent_channels) with bias.
 */
export interface TaesdEncoderConfig {
  in_channels: number;
  latent_channels: number;
  encoder_block_out_channels: number[];
  num_encoder_blocks: number[];
}

/** An AutoencoderTiny config.json -> the encoder config (diffusers' defaults where a field is absent). */
export function normalizeTaesdEncoderConfig(json: Record<string, any>, label = 'TAESD config'): TaesdEncoderConfig {
  const cfg: TaesdEncoderConfig = {
    in_channels: json.in_channels ?? 3,
    latent_channels: json.latent_channels ?? 4,
    encoder_block_out_channels: json.encoder_block_out_channels ?? [64, 64, 64, 64],
    num_encoder_blocks: json.num_encoder_blocks ?? [1, 3, 3, 3],
  };
  const widths = cfg.encoder_block_out_channels;
  if (!Array.isArray(widths) || widths.length !== cfg.num_encoder_blocks.length || widths.some((c) => !Number.isInteger(c) || c <= 0)) {
    throw new BadInputError(label, `encoder_block_out_channels ${JSON.stringify(widths)} does not give one width per stage of num_encoder_blocks ${JSON.stringify(cfg.num_encoder_blocks)}`);
  }
  // EncoderTiny's stride-2 conv of stage i maps C_i to C_i: it takes stage i - 1's output only where the widths agree.
  if (widths.some((c) => c !== widths[0])) throw new BadInputError(label, `encoder_block_out_channels ${JSON.stringify(widths)} are not all equal, which diffusers' EncoderTiny cannot run`);
  return cfg;
}

/** How many times smaller the latent is than the image: 2 per stage after the first. */
export function taesdDownscale(cfg: TaesdEncoderConfig): number {
  return 2 ** (cfg.num_encoder_blocks.length - 1);
}

/** AutoencoderTinyBlock(C, C) with declared shapes (no skip conv: channels do not change). */
function encoderBlock(m: Module, x: Value, channels: number): Value {
  const { g } = m;
  let h = relu(g, m.conv2d(x, 'conv.0', channels, channels));
  h = relu(g, m.conv2d(h, 'conv.2', channels, channels));
  h = m.conv2d(h, 'conv.4', channels, channels);
  return relu(g, g.add(h, x));
}

/** EncoderTiny.forward: image in [-1, 1], NCHW, in the graph's dtype -> raw TAESD latents (the denoiser's space). */
export function taesdEncoder(g: Graph, cfg: TaesdEncoderConfig, image: Value, prefix: string): Value {
  return g.scope('encoder', () => {
    const m = g.module(prefix);
    const widths = cfg.encoder_block_out_channels;
    // TAESD works on images in [0, 1].
    let h = g.div(g.add(image, g.scalar(1, image.type)), g.scalar(2, image.type));
    let index = 0;
    cfg.num_encoder_blocks.forEach((count, stage) => {
      const c = widths[stage];
      const i = index++;
      h = g.scope(`layers.${i}`, () =>
        stage === 0 ? m.conv2d(h, `layers.${i}`, cfg.in_channels, c) : m.conv2d(h, `layers.${i}`, c, c, { stride: 2, bias: false }),
      );
      for (let b = 0; b < count; b++, index++) h = m.with(`layers.${index}`, (block) => encoderBlock(block, h, c));
    });
    const last = index;
    return g.scope(`layers.${last}`, () => m.conv2d(h, `layers.${last}`, widths[widths.length - 1], cfg.latent_channels));
  });
}

/**
 * Standalone encoder graph: `sample` float32 [batch, in_channels, height, width] in [-1, 1] -> `latents` float32
 * [batch, latent_channels, height / 8, width / 8], AutoencoderTiny's encode(x).latents: not yet scaled (image-to-image
 * multiplies by the scaling factor, runtime/img2img.ts). No distribution to sample: TAESD's latents are the mode.
 */
export function buildTaesdEncoderGraph(weights: WeightSource, cfg: TaesdEncoderConfig, dtype: 'float32' | 'float16', prefix: string): Graph {
  const g = new Graph('vae_encoder', weights, dtype);
  const x = g.input('sample', 'float32', ['batch', cfg.in_channels, 'height', 'width']);
  const latents = g.scope('taesd', () => taesdEncoder(g, cfg, g.cast(x, g.dtype), prefix));
  g.output(g.cast(latents, 'float32'), 'latents', ['batch', cfg.latent_channels, 'latent_height', 'latent_width']);
  return g;
}

/** The weights buildTaesdEncoderGraph reads, with their shapes (a dry run: Graph.weight). */
export function expectedTaesdEncoderWeights(cfg: TaesdEncoderConfig, prefix: string): Map<string, number[]> {
  return expectedWeights((w) => buildTaesdEncoderGraph(w, cfg, 'float32', prefix));
}
