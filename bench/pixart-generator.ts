/**
 * A full-size PixArt-α XL/2 diffusers folder with random weights: the published PixArtTransformer2DModel's keys and
 * shapes (28 blocks of 1152 = 16 x 72, caption 4096, learned sigma), T5 v1.1 XXL's encoder keys and shapes (24 blocks,
 * d_model 4096, 64 heads, d_ff 10240, vocab 32128) and the SD VAE, for the convert benchmark without a 20 GB download.
 * Written one tensor at a time with the streaming safetensors writer. The tokenizer is the test fixture's small
 * SentencePiece model (the real T5 vocabulary is not needed to measure conversion).
 *
 * Run: node --import tsx bench/pixart-generator.ts <out dir> [f32|f16] [512|1024]
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { expectedVaeWeights, vaeConfigFromJson } from '../src/architectures/vae.js';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors/writer.js';
import { randomFiller } from './sd15-generator.js';

type Filler = ReturnType<typeof randomFiller>['fill'];

const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..');
const FIXTURE = join(ROOT, 'test', 'fixtures', 'tiny-pixart');

/** PixArt-alpha/PixArt-XL-2-{512x512,1024-MS} transformer/config.json (the fields that matter). */
export function pixartXlConfig(size: 512 | 1024): Record<string, unknown> {
  return {
    _class_name: 'PixArtTransformer2DModel',
    activation_fn: 'gelu-approximate',
    attention_bias: true,
    attention_head_dim: 72,
    caption_channels: 4096,
    cross_attention_dim: 1152,
    in_channels: 4,
    norm_elementwise_affine: false,
    norm_eps: 1e-6,
    norm_type: 'ada_norm_single',
    num_attention_heads: 16,
    num_embeds_ada_norm: 1000,
    num_layers: 28,
    out_channels: 8,
    patch_size: 2,
    sample_size: size / 8,
    use_additional_conditions: size === 1024,
  };
}

/** google/t5-v1_1-xxl's encoder config as PixArt's text_encoder/config.json has it. */
export const T5_XXL = {
  architectures: ['T5EncoderModel'],
  d_ff: 10240,
  d_kv: 64,
  d_model: 4096,
  dense_act_fn: 'gelu_new',
  feed_forward_proj: 'gated-gelu',
  is_gated_act: true,
  layer_norm_epsilon: 1e-6,
  model_type: 't5',
  num_heads: 64,
  num_layers: 24,
  relative_attention_max_distance: 128,
  relative_attention_num_buckets: 32,
  vocab_size: 32128,
};

const SD_VAE = {
  _class_name: 'AutoencoderKL',
  act_fn: 'silu',
  block_out_channels: [128, 256, 512, 512],
  down_block_types: Array(4).fill('DownEncoderBlock2D'),
  up_block_types: Array(4).fill('UpDecoderBlock2D'),
  in_channels: 3,
  out_channels: 3,
  latent_channels: 4,
  layers_per_block: 2,
  norm_num_groups: 32,
  sample_size: 512,
  scaling_factor: 0.18215,
};

/** transformer/diffusion_pytorch_model.safetensors: key -> shape. */
export function pixartTransformerTensors(cfg: Record<string, any>): [string, number[]][] {
  const d = cfg.num_attention_heads * cfg.attention_head_dim;
  const p = cfg.patch_size;
  const t: [string, number[]][] = [
    ['pos_embed.proj.weight', [d, cfg.in_channels, p, p]],
    ['pos_embed.proj.bias', [d]],
    ['caption_projection.linear_1.weight', [d, cfg.caption_channels]],
    ['caption_projection.linear_1.bias', [d]],
    ['caption_projection.linear_2.weight', [d, d]],
    ['caption_projection.linear_2.bias', [d]],
    // the old CaptionProjection's null-caption embedding: in the released files, unused by diffusers
    ['caption_projection.y_embedding', [120, cfg.caption_channels]],
    ['adaln_single.linear.weight', [6 * d, d]],
    ['adaln_single.linear.bias', [6 * d]],
    ['scale_shift_table', [2, d]],
    ['proj_out.weight', [p * p * cfg.out_channels, d]],
    ['proj_out.bias', [p * p * cfg.out_channels]],
  ];
  const embedders: [string, number][] = [['timestep_embedder', d]];
  if (cfg.use_additional_conditions) embedders.push(['resolution_embedder', d / 3], ['aspect_ratio_embedder', d / 3]);
  for (const [name, n] of embedders) {
    t.push([`adaln_single.emb.${name}.linear_1.weight`, [n, 256]], [`adaln_single.emb.${name}.linear_1.bias`, [n]]);
    t.push([`adaln_single.emb.${name}.linear_2.weight`, [n, n]], [`adaln_single.emb.${name}.linear_2.bias`, [n]]);
  }
  for (let i = 0; i < cfg.num_layers; i++) {
    const b = `transformer_blocks.${i}`;
    for (const a of ['attn1', 'attn2']) {
      for (const l of ['to_q', 'to_k', 'to_v', 'to_out.0']) t.push([`${b}.${a}.${l}.weight`, [d, d]], [`${b}.${a}.${l}.bias`, [d]]);
    }
    t.push([`${b}.ff.net.0.proj.weight`, [4 * d, d]], [`${b}.ff.net.0.proj.bias`, [4 * d]], [`${b}.ff.net.2.weight`, [d, 4 * d]], [`${b}.ff.net.2.bias`, [d]]);
    t.push([`${b}.scale_shift_table`, [6, d]]);
  }
  return t;
}

/** text_encoder/model.safetensors (T5EncoderModel): key -> shape. */
export function t5EncoderTensors(cfg: typeof T5_XXL): [string, number[]][] {
  const inner = cfg.num_heads * cfg.d_kv;
  const t: [string, number[]][] = [['shared.weight', [cfg.vocab_size, cfg.d_model]], ['encoder.final_layer_norm.weight', [cfg.d_model]]];
  for (let i = 0; i < cfg.num_layers; i++) {
    const b = `encoder.block.${i}.layer`;
    for (const x of ['q', 'k', 'v']) t.push([`${b}.0.SelfAttention.${x}.weight`, [inner, cfg.d_model]]);
    t.push([`${b}.0.SelfAttention.o.weight`, [cfg.d_model, inner]], [`${b}.0.layer_norm.weight`, [cfg.d_model]]);
    if (i === 0) t.push([`${b}.0.SelfAttention.relative_attention_bias.weight`, [cfg.relative_attention_num_buckets, cfg.num_heads]]);
    t.push([`${b}.1.DenseReluDense.wi_0.weight`, [cfg.d_ff, cfg.d_model]], [`${b}.1.DenseReluDense.wi_1.weight`, [cfg.d_ff, cfg.d_model]]);
    t.push([`${b}.1.DenseReluDense.wo.weight`, [cfg.d_model, cfg.d_ff]], [`${b}.1.layer_norm.weight`, [cfg.d_model]]);
  }
  return t;
}

async function writeComponent(path: string, tensors: [string, number[]][], dtype: 'f32' | 'f16', fill: Filler, onProgress?: (bytes: number) => void): Promise<number> {
  const isNorm = (k: string) => /(^|\.)(norm\d?|layer_norm|final_layer_norm|group_norm|conv_norm_out)\.(weight|bias)$/.test(k);
  const list: TensorToWrite[] = [...tensors]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([name, shape], i) => {
      const numel = shape.reduce((x, y) => x * y, 1);
      return {
        name,
        dtype: dtype === 'f16' ? 'F16' : 'F32',
        shape,
        data: () => fill(numel, i, isNorm(name) ? (name.endsWith('.weight') ? 1 : 0) : undefined),
      };
    });
  await writeSafetensors(path, list, { format: 'pt', 'onestep.bench': `random-weight PixArt-alpha XL/2 component (${dtype})` }, (_d, _t, bytes) => onProgress?.(bytes));
  return list.reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, dtype === 'f16' ? 2 : 4), 0);
}

/** Writes the folder; returns its data size in bytes. */
export async function generatePixArt(dir: string, opts: { dtype?: 'f32' | 'f16'; size?: 512 | 1024; onProgress?: (bytes: number) => void } = {}): Promise<number> {
  const dtype = opts.dtype ?? 'f16';
  const transformer = pixartXlConfig(opts.size ?? 512);
  const { fill } = randomFiller(dtype);
  const json = (v: unknown) => JSON.stringify(v, null, 2) + '\n';
  for (const c of ['transformer', 'text_encoder', 'vae', 'tokenizer', 'scheduler']) await mkdir(join(dir, c), { recursive: true });
  await writeFile(
    join(dir, 'model_index.json'),
    json({
      _class_name: 'PixArtAlphaPipeline',
      scheduler: ['diffusers', 'DPMSolverMultistepScheduler'],
      text_encoder: ['transformers', 'T5EncoderModel'],
      tokenizer: ['transformers', 'T5Tokenizer'],
      transformer: ['diffusers', 'PixArtTransformer2DModel'],
      vae: ['diffusers', 'AutoencoderKL'],
    }),
  );
  await writeFile(join(dir, 'transformer', 'config.json'), json(transformer));
  await writeFile(join(dir, 'text_encoder', 'config.json'), json(T5_XXL));
  await writeFile(join(dir, 'vae', 'config.json'), json(SD_VAE));
  for (const f of ['scheduler/scheduler_config.json', 'tokenizer/spiece.model', 'tokenizer/tokenizer_config.json', 'tokenizer/special_tokens_map.json', 'tokenizer/added_tokens.json']) {
    await copyFile(join(FIXTURE, f), join(dir, f));
  }
  let before = 0;
  const progress = (bytes: number) => opts.onProgress?.(before + bytes);
  const vae = [...expectedVaeWeights(vaeConfigFromJson(SD_VAE, 'vae/config.json'))].map(([k, s]): [string, number[]] => [k.slice('vae.'.length), s]);
  before += await writeComponent(join(dir, 'vae', 'diffusion_pytorch_model.safetensors'), vae, dtype, fill, progress);
  before += await writeComponent(join(dir, 'transformer', 'diffusion_pytorch_model.safetensors'), pixartTransformerTensors(transformer), dtype, fill, progress);
  before += await writeComponent(join(dir, 'text_encoder', 'model.safetensors'), t5EncoderTensors(T5_XXL), dtype, fill, progress);
  return before;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const [out, dtype = 'f16', size = '512'] = process.argv.slice(2);
  if (!out || (dtype !== 'f32' && dtype !== 'f16') || (size !== '512' && size !== '1024')) {
    console.error('usage: node --import tsx bench/pixart-generator.ts <out dir> [f32|f16] [512|1024]');
    process.exit(2);
  }
  const t0 = performance.now();
  const bytes = await generatePixArt(out, { dtype, size: Number(size) as 512 | 1024 });
  console.log(`wrote ${out}: ${(bytes / 1e9).toFixed(2)} GB of ${dtype} data in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}
