/**
 * A full-size SDXL 1.0 base single file with random weights: exactly SDXL base's SGM keys and shapes (UNet
 * 320/640/1280 with transformer depths 1/2/10 and the text_time added embedding, CLIP ViT-L in transformers names,
 * OpenCLIP bigG in OpenCLIP names with packed in_proj and its projection, VAE 128/256/512/512), for benchmarks that
 * need real sizes without downloading a model; or the UNet alone in diffusers names (what Hyper-SDXL, SDXL-Lightning
 * and NitroFusion publish). Written one tensor at a time with the streaming safetensors writer.
 *
 * Run: node --import tsx bench/sdxl-generator.ts <out.safetensors> [f32|f16] [--unet-only]
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { clipTextConfigFromJson, expectedClipTextWeights } from '../src/architectures/clip-text.js';
import { expectedUnetWeights, unetConfigFromJson } from '../src/architectures/unet.js';
import { expectedVaeWeights, vaeConfigFromJson } from '../src/architectures/vae.js';
import { canonicalToLdm, SGM_CLIP_PREFIX, SGM_OPENCLIP_PREFIX, type LdmLayout } from '../src/checkpoint/keymap-sd.js';
import { openCheckpoint } from '../src/checkpoint/open.js';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors/writer.js';
import { bytesOf, isNorm, randomFiller } from './sd15-generator.js';

/** stabilityai/stable-diffusion-xl-base-1.0's configs (the fields that shape tensors or that shapes cannot reveal). */
export const SDXL_UNET = unetConfigFromJson({
  block_out_channels: [320, 640, 1280],
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
  layers_per_block: 2,
  attention_head_dim: [5, 10, 20],
  transformer_layers_per_block: [1, 2, 10],
  cross_attention_dim: 2048,
  use_linear_projection: true,
  addition_embed_type: 'text_time',
  addition_time_embed_dim: 256,
  projection_class_embeddings_input_dim: 2816,
  sample_size: 128,
}, 'SDXL unet config');
export const SDXL_VAE = vaeConfigFromJson({ block_out_channels: [128, 256, 512, 512], layers_per_block: 2, latent_channels: 4, scaling_factor: 0.13025, sample_size: 1024 }, 'SDXL vae config');
export const SDXL_TEXT = clipTextConfigFromJson({
  hidden_size: 768,
  intermediate_size: 3072,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  hidden_act: 'quick_gelu',
}, 'SDXL text_encoder config');
export const SDXL_TEXT_2 = clipTextConfigFromJson({
  architectures: ['CLIPTextModelWithProjection'],
  hidden_size: 1280,
  intermediate_size: 5120,
  num_hidden_layers: 32,
  num_attention_heads: 20,
  hidden_act: 'gelu',
  projection_dim: 1280,
}, 'SDXL text_encoder_2 config');

/** SDXL's SGM layout: its up blocks 0 and 1 have attention (so their upsamplers are output_blocks.N.2). */
const SGM_LAYOUT: LdmLayout = { unet: { layersPerBlock: 2, upBlockHasAttention: (b) => b < 2 }, vaeLevels: 4, text: 'sgm' };

interface PlannedTensor {
  key: string;
  /** A canonical name whose kind (norm or not) decides the values. */
  canonical: string;
  shape: number[];
}

/** SDXL base's network tensors in the SGM single-file layout (or the UNet alone in diffusers names), sorted by key. */
export function sdxlTensors(unetOnly = false): PlannedTensor[] {
  const canonical = new Map(
    unetOnly
      ? [...expectedUnetWeights(SDXL_UNET)]
      : [
          ...expectedUnetWeights(SDXL_UNET),
          ...expectedVaeWeights(SDXL_VAE),
          ...expectedClipTextWeights(SDXL_TEXT),
          ...expectedClipTextWeights(SDXL_TEXT_2, 'text_encoder_2'),
        ],
  );
  const out = new Map<string, PlannedTensor>();
  for (const [name, shape] of canonical) {
    if (unetOnly) {
      out.set(name.slice('unet.'.length), { key: name.slice('unet.'.length), canonical: name, shape });
      continue;
    }
    const key = canonicalToLdm(name, SGM_LAYOUT);
    if (!key) throw new Error(`no SGM key for ${name}`);
    const conv1x1 = /^vae\.(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(name);
    // OpenCLIP packs q, k and v into one in_proj tensor of 3x the rows.
    const packed = /\.self_attn\.[qkv]_proj\.(weight|bias)$/.test(name) && name.startsWith('text_encoder_2.');
    const stored = conv1x1 ? [...shape, 1, 1] : packed ? [3 * shape[0], ...shape.slice(1)] : shape;
    const prev = out.get(key);
    if (prev && !packed) throw new Error(`two canonical names map to ${key}`);
    out.set(key, { key, canonical: name, shape: stored });
  }
  if (!unetOnly) {
    out.set(`${SGM_OPENCLIP_PREFIX}logit_scale`, { key: `${SGM_OPENCLIP_PREFIX}logit_scale`, canonical: 'logit_scale', shape: [] });
  }
  return [...out.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

export interface GenerateOptions {
  dtype?: 'f32' | 'f16';
  unetOnly?: boolean;
  onProgress?: (done: number, total: number, bytes: number) => void;
}

/** Writes the file (atomically, one tensor in memory at a time). */
export async function generateSdxl(path: string, opts: GenerateOptions = {}): Promise<{ tensors: number; dataBytes: number }> {
  const dtype = opts.dtype ?? 'f16';
  const { fill, itemSize } = randomFiller(dtype);
  const tensors: TensorToWrite[] = sdxlTensors(opts.unetOnly).map((t, i) => {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    const value = isNorm(t.canonical) ? (t.canonical.endsWith('.weight') ? 1 : 0) : t.canonical === 'logit_scale' ? Math.log(100) : undefined;
    return { name: t.key, dtype: dtype === 'f16' ? 'F16' : 'F32', shape: t.shape, data: () => fill(numel, i, value) };
  });
  if (!opts.unetOnly) {
    tensors.push({
      name: `${SGM_CLIP_PREFIX}text_model.embeddings.position_ids`,
      dtype: 'I64',
      shape: [1, 77],
      data: () => bytesOf(BigInt64Array.from({ length: 77 }, (_, i) => BigInt(i))),
    });
    tensors.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
  const dataBytes = tensors.reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, t.dtype === 'I64' ? 8 : itemSize), 0);
  const what = opts.unetOnly ? 'SDXL base UNet (diffusers keys)' : 'SDXL base';
  await writeSafetensors(path, tensors, { format: 'pt', 'onestep.bench': `random-weight ${what} (${dtype})` }, opts.onProgress);
  return { tensors: tensors.length, dataBytes };
}

/** Opens the file as onestep does and checks it is SDXL base's architecture; returns a one-line description. */
export async function verifySdxl(path: string): Promise<string> {
  const ckpt = await openCheckpoint(path);
  try {
    const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
    const problems: string[] = [];
    const c = ckpt.configs as Record<string, Record<string, unknown>>;
    if (ckpt.family.id !== 'sdxl') problems.push(`family ${ckpt.family.id}`);
    for (const k of ['block_out_channels', 'transformer_layers_per_block', 'attention_head_dim', 'cross_attention_dim', 'down_block_types', 'up_block_types', 'projection_class_embeddings_input_dim', 'addition_time_embed_dim'] as const) {
      if (!same(c.unet[k], SDXL_UNET[k])) problems.push(`unet.${k} ${JSON.stringify(c.unet[k])}`);
    }
    for (const [name, ref] of [
      ['text_encoder', SDXL_TEXT],
      ['text_encoder_2', SDXL_TEXT_2],
    ] as const) {
      for (const k of ['hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'hidden_act', 'projection_dim'] as const) {
        if (!same(c[name][k], ref[k])) problems.push(`${name}.${k} ${JSON.stringify(c[name][k])}`);
      }
    }
    if (ckpt.unmappedKeys.length) problems.push(`unmapped keys: ${ckpt.unmappedKeys.slice(0, 5).join(', ')}`);
    if (problems.length) throw new Error(`${path} is not opened as SDXL base: ${problems.join('; ')}`);
    return `${ckpt.family.id}, ${ckpt.weights.names().length} canonical tensors, UNet ${c.unet.block_out_channels} (depths ${c.unet.transformer_layers_per_block}, heads ${c.unet.attention_head_dim}), text ${c.text_encoder.num_hidden_layers}x${c.text_encoder.hidden_size} + ${c.text_encoder_2.num_hidden_layers}x${c.text_encoder_2.hidden_size}`;
  } finally {
    await ckpt.weights.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const args = process.argv.slice(2);
  const unetOnly = args.includes('--unet-only');
  const [out, dtype = 'f16'] = args.filter((a) => !a.startsWith('--'));
  if (!out || (dtype !== 'f32' && dtype !== 'f16')) {
    console.error('usage: node --import tsx bench/sdxl-generator.ts <out.safetensors> [f32|f16] [--unet-only]');
    process.exit(2);
  }
  const t0 = performance.now();
  const { tensors, dataBytes } = await generateSdxl(out, { dtype, unetOnly });
  console.log(`wrote ${out}: ${tensors} tensors, ${(dataBytes / 1e9).toFixed(2)} GB of ${dtype} data in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  if (!unetOnly) console.log(`opened as: ${await verifySdxl(out)}`);
}
