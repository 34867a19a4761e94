/**
 * A full-size Stable Diffusion 1.5 single file with random weights: exactly SD 1.5's LDM keys and shapes (UNet
 * 320/640/1280/1280, CLIP ViT-L/14 text encoder, VAE 128/256/512/512), for benchmarks that need real sizes without
 * downloading a model. Written one tensor at a time with the streaming safetensors writer.
 *
 * Run: node --import tsx bench/sd15-generator.ts <out.safetensors> [f32|f16]
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { clipTextConfigFromJson, expectedClipTextWeights } from '../src/architectures/clip-text.js';
import { expectedUnetWeights, unetConfigFromJson } from '../src/architectures/unet.js';
import { expectedVaeWeights, vaeConfigFromJson } from '../src/architectures/vae.js';
import type { ClipTextConfig } from '../src/checkpoint/configs.js';
import { canonicalToLdm, CLIP_PREFIX } from '../src/checkpoint/keymap-sd.js';
import { openCheckpoint } from '../src/checkpoint/open.js';
import { f32ToF16 } from '../src/safetensors/dtypes.js';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors/writer.js';

/** The configs of runwayml/stable-diffusion-v1-5 (the fields that shape tensors or that shapes cannot reveal). */
export const SD15_UNET = unetConfigFromJson({
  block_out_channels: [320, 640, 1280, 1280],
  layers_per_block: 2,
  attention_head_dim: 8,
  cross_attention_dim: 768,
  sample_size: 64,
}, 'SD 1.5 unet config');
export const SD15_VAE = vaeConfigFromJson({ block_out_channels: [128, 256, 512, 512], layers_per_block: 2, latent_channels: 4, sample_size: 512 }, 'SD 1.5 vae config');
export const SD15_TEXT = clipTextConfigFromJson({
  vocab_size: 49408,
  hidden_size: 768,
  intermediate_size: 3072,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  max_position_embeddings: 77,
  hidden_act: 'quick_gelu',
}, 'SD 1.5 text_encoder config');

/** The LDM wrapper's DDPM buffers (scaled_linear betas 0.00085..0.012) that released SD 1.x files carry. */
function ddpmBuffers(): Map<string, Float64Array> {
  const T = 1000;
  const betas = Float64Array.from({ length: T }, (_, i) => (Math.sqrt(0.00085) + (i / (T - 1)) * (Math.sqrt(0.012) - Math.sqrt(0.00085))) ** 2);
  const ac = new Float64Array(T);
  for (let i = 0, p = 1; i < T; i++) ac[i] = p *= 1 - betas[i];
  const prev = Float64Array.from({ length: T }, (_, i) => (i === 0 ? 1 : ac[i - 1]));
  const map = (f: (i: number) => number): Float64Array => Float64Array.from({ length: T }, (_, i) => f(i));
  const posteriorVariance = map((i) => (betas[i] * (1 - prev[i])) / (1 - ac[i]));
  return new Map([
    ['betas', betas],
    ['alphas_cumprod', ac],
    ['alphas_cumprod_prev', prev],
    ['sqrt_alphas_cumprod', map((i) => Math.sqrt(ac[i]))],
    ['sqrt_one_minus_alphas_cumprod', map((i) => Math.sqrt(1 - ac[i]))],
    ['log_one_minus_alphas_cumprod', map((i) => Math.log(1 - ac[i]))],
    ['sqrt_recip_alphas_cumprod', map((i) => Math.sqrt(1 / ac[i]))],
    ['sqrt_recipm1_alphas_cumprod', map((i) => Math.sqrt(1 / ac[i] - 1))],
    ['posterior_variance', posteriorVariance],
    ['posterior_log_variance_clipped', map((i) => Math.log(Math.max(posteriorVariance[i], 1e-20)))],
    ['posterior_mean_coef1', map((i) => (betas[i] * Math.sqrt(prev[i])) / (1 - ac[i]))],
    ['posterior_mean_coef2', map((i) => ((1 - prev[i]) * Math.sqrt(1 - betas[i])) / (1 - ac[i]))],
  ]);
}

/** SD 1.5's network tensors: LDM key -> {canonical name, shape}, sorted by key as released files are. */
export function sd15Tensors(): { key: string; canonical: string; shape: number[] }[] {
  const canonical = new Map([...expectedUnetWeights(SD15_UNET), ...expectedVaeWeights(SD15_VAE), ...expectedClipTextWeights(SD15_TEXT)]);
  const out = [...canonical].map(([name, shape]) => {
    const key = canonicalToLdm(name);
    if (!key) throw new Error(`no LDM key for ${name}`);
    // LDM's VAE attention projections are 1x1 convolutions, stored [C, C, 1, 1].
    const conv1x1 = /^vae\.(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(name);
    return { key, canonical: name, shape: conv1x1 ? [...shape, 1, 1] : shape };
  });
  if (new Set(out.map((t) => t.key)).size !== out.length) throw new Error('two canonical names map to one LDM key');
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/** A fixed pool of N(0, 0.02^2) values (Box-Muller over xorshift32); tensors copy slices of it at their own offsets. */
export function normalPool(length: number, seed = 0x2545f491): Float32Array {
  const pool = new Float32Array(length);
  let s = seed >>> 0 || 1;
  const uniform = (): number => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) + 0.5) / 2 ** 32;
  };
  for (let i = 0; i < length; i += 2) {
    const r = 0.02 * Math.sqrt(-2 * Math.log(uniform()));
    const a = 2 * Math.PI * uniform();
    pool[i] = r * Math.cos(a);
    if (i + 1 < length) pool[i + 1] = r * Math.sin(a);
  }
  return pool;
}

/**
 * Tensor bytes in `dtype` for the bench generators: tensor number `index` copies the shared normalPool from its own
 * offset (wrapping), or is filled with `value` (norm weights and biases).
 */
export function randomFiller(dtype: 'f32' | 'f16'): { fill: (numel: number, index: number, value?: number) => Uint8Array; itemSize: number } {
  const pool = normalPool(1 << 24);
  const poolF16 = dtype === 'f16' ? f32ToF16(pool) : undefined;
  const fill = (numel: number, index: number, value?: number): Uint8Array => {
    if (value !== undefined) {
      const f = new Float32Array(numel).fill(value);
      return poolF16 ? bytesOf(f32ToF16(f)) : bytesOf(f);
    }
    const src = poolF16 ?? pool;
    const dst = poolF16 ? new Uint16Array(numel) : new Float32Array(numel);
    for (let done = 0, offset = (index * 1_000_003) % src.length; done < numel; offset = 0) {
      const n = Math.min(numel - done, src.length - offset);
      dst.set(src.subarray(offset, offset + n), done);
      done += n;
    }
    return bytesOf(dst);
  };
  return { fill, itemSize: poolF16 ? 2 : 4 };
}

export const isNorm = (canonical: string): boolean => /(^|\.)(norm\d?|group_norm|conv_norm_out|layer_norm\d|final_layer_norm)\.(weight|bias)$/.test(canonical);

export interface GenerateOptions {
  dtype?: 'f32' | 'f16';
  onProgress?: (done: number, total: number, bytes: number) => void;
}

/** Writes the file (atomically, one tensor in memory at a time). */
export async function generateSd15(path: string, opts: GenerateOptions = {}): Promise<{ tensors: number; dataBytes: number }> {
  const dtype = opts.dtype ?? 'f32';
  const { fill, itemSize } = randomFiller(dtype);

  const tensors: TensorToWrite[] = sd15Tensors().map((t, i) => {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    const norm = isNorm(t.canonical);
    const value = norm ? (t.canonical.endsWith('.weight') ? 1 : 0) : undefined;
    return { name: t.key, dtype: dtype === 'f16' ? 'F16' : 'F32', shape: t.shape, data: () => fill(numel, i, value) };
  });
  tensors.push({
    name: `${CLIP_PREFIX}text_model.embeddings.position_ids`,
    dtype: 'I64',
    shape: [1, 77],
    data: () => bytesOf(BigInt64Array.from({ length: 77 }, (_, i) => BigInt(i))),
  });
  for (const [name, values] of ddpmBuffers()) {
    const f = Float32Array.from(values);
    tensors.push({ name, dtype: dtype === 'f16' ? 'F16' : 'F32', shape: [values.length], data: () => (dtype === 'f16' ? bytesOf(f32ToF16(f)) : bytesOf(f)) });
  }
  tensors.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const dataBytes = tensors.reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, t.dtype === 'I64' ? 8 : itemSize), 0);
  await writeSafetensors(path, tensors, { format: 'pt', 'onestep.bench': `random-weight SD 1.5 (${dtype})` }, opts.onProgress);
  return { tensors: tensors.length, dataBytes };
}

export function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Opens the file as onestep does and checks it is SD 1.x with SD 1.5's configs; returns a one-line description. */
export async function verifySd15(path: string): Promise<string> {
  const ckpt = await openCheckpoint(path);
  try {
    const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
    const problems: string[] = [];
    const text = ckpt.configs.text_encoder as ClipTextConfig | undefined;
    if (ckpt.family.id !== 'sd1') problems.push(`family ${ckpt.family.id}`);
    for (const k of ['block_out_channels', 'layers_per_block', 'attention_head_dim', 'cross_attention_dim', 'down_block_types', 'up_block_types'] as const) {
      if (!same(ckpt.configs.unet?.[k], SD15_UNET[k])) problems.push(`unet.${k} ${JSON.stringify(ckpt.configs.unet?.[k])}`);
    }
    for (const k of ['hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'hidden_act'] as const) {
      if (!same(text?.[k], SD15_TEXT[k])) problems.push(`text_encoder.${k} ${JSON.stringify(text?.[k])}`);
    }
    if (!same(ckpt.configs.vae!.block_out_channels, SD15_VAE.block_out_channels)) problems.push(`vae.block_out_channels ${ckpt.configs.vae!.block_out_channels}`);
    if (ckpt.unmappedKeys.length) problems.push(`unmapped keys: ${ckpt.unmappedKeys.slice(0, 5).join(', ')}`);
    if (problems.length) throw new Error(`${path} is not opened as SD 1.5: ${problems.join('; ')}`);
    return `${ckpt.family.id}, ${ckpt.weights.names().length} canonical tensors, UNet ${ckpt.configs.unet!.block_out_channels} (heads ${ckpt.configs.unet!.attention_head_dim}, context ${ckpt.configs.unet!.cross_attention_dim}), text ${text!.num_hidden_layers}x${text!.hidden_size}, VAE ${ckpt.configs.vae!.block_out_channels}`;
  } finally {
    await ckpt.weights.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const [out, dtype = 'f32'] = process.argv.slice(2);
  if (!out || (dtype !== 'f32' && dtype !== 'f16')) {
    console.error('usage: node --import tsx bench/sd15-generator.ts <out.safetensors> [f32|f16]');
    process.exit(2);
  }
  const t0 = performance.now();
  const { tensors, dataBytes } = await generateSd15(out, { dtype });
  console.log(`wrote ${out}: ${tensors} tensors, ${(dataBytes / 1e9).toFixed(2)} GB of ${dtype} data in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  console.log(`opened as: ${await verifySd15(out)}`);
}
