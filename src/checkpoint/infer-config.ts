/**
 * Network configs: read from diffusers / transformers config.json files (normalized), or inferred from the tensor
 * shapes of a single file. Shapes cannot reveal head counts, norm groups or sample sizes: for those the rules of
 * real SD models apply (SD 1.x: 8 heads everywhere; SD 2.x and CLIP text: head dim 64), unless the file's metadata
 * key `onestep.config` (JSON `{unet, vae, text_encoder}` in config.json form) says otherwise.
 */
import { BadInputError, OnestepError } from '../errors.js';
import {
  PREDICTION_TYPES,
  SD_SCHEDULER,
  type ClipTextConfig,
  type PredictionType,
  type SchedulerConfig,
  type UNetConfig,
  type VaeConfig,
} from './configs.js';
import type { TensorMeta } from './weight-source.js';

type Json = Record<string, unknown>;
type MetaOf = (name: string) => TensorMeta | undefined;

/** The token id CLIP's tokenizer uses for end-of-text. */
export const CLIP_EOS_TOKEN_ID = 49407;

function num(raw: Json, key: string, fallback: number): number {
  const v = raw[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : fallback;
}
function numOrNull(raw: Json, key: string, fallback: number | null): number | null {
  const v = raw[key];
  if (v === null) return null;
  return typeof v === 'number' && Number.isFinite(v) ? v : fallback;
}
function bool(raw: Json, key: string, fallback: boolean): boolean {
  const v = raw[key];
  return typeof v === 'boolean' ? v : fallback;
}
function str(raw: Json, key: string, fallback: string): string {
  const v = raw[key];
  return typeof v === 'string' ? v : fallback;
}
function strList(raw: Json, key: string, fallback: string[]): string[] {
  const v = raw[key];
  return Array.isArray(v) && v.every((x) => typeof x === 'string') ? [...v] : fallback;
}
function numList(raw: Json, key: string, fallback: number[]): number[] {
  const v = raw[key];
  return Array.isArray(v) && v.every((x) => typeof x === 'number') ? [...v] : fallback;
}
/** A diffusers "number or per-block list" field as a per-block list. */
function perBlock(raw: Json, key: string, blocks: number, fallback: number[] | null): number[] | null {
  const v = raw[key];
  if (typeof v === 'number') return Array.from({ length: blocks }, () => v);
  if (Array.isArray(v) && v.length === blocks && v.every((x) => typeof x === 'number')) return [...v];
  return fallback;
}

/** diffusers UNet2DConditionModel config.json -> UNetConfig (diffusers' defaults for absent fields). */
export function unetConfigFromJson(raw: Json, base?: UNetConfig): UNetConfig {
  const block_out_channels = numList(raw, 'block_out_channels', base?.block_out_channels ?? [320, 640, 1280, 1280]);
  const n = block_out_channels.length;
  const down_block_types = strList(
    raw,
    'down_block_types',
    base?.down_block_types ?? ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  );
  return {
    in_channels: num(raw, 'in_channels', base?.in_channels ?? 4),
    out_channels: num(raw, 'out_channels', base?.out_channels ?? 4),
    block_out_channels,
    down_block_types,
    up_block_types: strList(
      raw,
      'up_block_types',
      base?.up_block_types ?? ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
    ),
    layers_per_block: num(raw, 'layers_per_block', base?.layers_per_block ?? 2),
    attention_head_dim: perBlock(raw, 'attention_head_dim', n, base?.attention_head_dim ?? Array(n).fill(8))!,
    num_attention_heads: perBlock(raw, 'num_attention_heads', n, base?.num_attention_heads ?? null),
    cross_attention_dim: num(raw, 'cross_attention_dim', base?.cross_attention_dim ?? 1280),
    transformer_layers_per_block: perBlock(
      raw,
      'transformer_layers_per_block',
      n,
      base?.transformer_layers_per_block ?? Array(n).fill(1),
    )!,
    use_linear_projection: bool(raw, 'use_linear_projection', base?.use_linear_projection ?? false),
    upcast_attention: bool(raw, 'upcast_attention', base?.upcast_attention ?? false),
    norm_num_groups: num(raw, 'norm_num_groups', base?.norm_num_groups ?? 32),
    norm_eps: num(raw, 'norm_eps', base?.norm_eps ?? 1e-5),
    flip_sin_to_cos: bool(raw, 'flip_sin_to_cos', base?.flip_sin_to_cos ?? true),
    freq_shift: num(raw, 'freq_shift', base?.freq_shift ?? 0),
    downsample_padding: num(raw, 'downsample_padding', base?.downsample_padding ?? 1),
    mid_block_scale_factor: num(raw, 'mid_block_scale_factor', base?.mid_block_scale_factor ?? 1),
    act_fn: str(raw, 'act_fn', base?.act_fn ?? 'silu'),
    time_cond_proj_dim: numOrNull(raw, 'time_cond_proj_dim', base?.time_cond_proj_dim ?? null),
    sample_size: num(raw, 'sample_size', base?.sample_size ?? 64),
    // An explicit null means no mid block (SDXS); absent means diffusers' default cross-attention mid block.
    mid_block_type: 'mid_block_type' in raw ? (raw.mid_block_type === null ? null : 'UNetMidBlock2DCrossAttn') : (base?.mid_block_type ?? 'UNetMidBlock2DCrossAttn'),
    only_cross_attention: boolPerBlock(raw, 'only_cross_attention', n, base?.only_cross_attention ?? Array(n).fill(false)),
    ...additionEmbedding(raw, base),
  };
}

function boolPerBlock(raw: Json, key: string, blocks: number, fallback: boolean[]): boolean[] {
  const v = raw[key];
  if (typeof v === 'boolean') return Array(blocks).fill(v);
  if (Array.isArray(v) && v.length === blocks && v.every((x) => typeof x === 'boolean')) return [...v];
  return fallback;
}

function additionEmbedding(raw: Json, base?: UNetConfig): Pick<UNetConfig, 'addition_embed_type' | 'addition_time_embed_dim' | 'projection_class_embeddings_input_dim'> {
  const type = 'addition_embed_type' in raw ? (raw.addition_embed_type === 'text_time' ? 'text_time' : null) : (base?.addition_embed_type ?? null);
  return {
    addition_embed_type: type,
    addition_time_embed_dim: type ? numOrNull(raw, 'addition_time_embed_dim', base?.addition_time_embed_dim ?? null) : null,
    projection_class_embeddings_input_dim: type ? numOrNull(raw, 'projection_class_embeddings_input_dim', base?.projection_class_embeddings_input_dim ?? null) : null,
  };
}

/** Features of a UNet config.json this tool does not build; each gives one clear error. */
export function unsupportedUnetFeatures(raw: Json): string[] {
  const out: string[] = [];
  for (const key of ['class_embed_type', 'encoder_hid_dim', 'num_class_embeds']) {
    if (raw[key] !== undefined && raw[key] !== null) out.push(`${key}=${JSON.stringify(raw[key])}`);
  }
  if (raw.addition_embed_type != null && raw.addition_embed_type !== 'text_time') out.push(`addition_embed_type=${JSON.stringify(raw.addition_embed_type)}`);
  if (raw.addition_embed_type === 'text_time' && (typeof raw.addition_time_embed_dim !== 'number' || typeof raw.projection_class_embeddings_input_dim !== 'number')) {
    out.push('addition_embed_type="text_time" without addition_time_embed_dim / projection_class_embeddings_input_dim');
  }
  const onlyCross = raw.only_cross_attention;
  if (onlyCross != null && typeof onlyCross !== 'boolean' && !(Array.isArray(onlyCross) && onlyCross.every((x) => typeof x === 'boolean'))) {
    out.push(`only_cross_attention=${JSON.stringify(onlyCross)}`);
  }
  const expect: Record<string, unknown> = {
    time_embedding_type: 'positional',
    resnet_time_scale_shift: 'default',
    conv_in_kernel: 3,
    conv_out_kernel: 3,
    dual_cross_attention: false,
    center_input_sample: false,
  };
  if (raw.mid_block_type != null && raw.mid_block_type !== 'UNetMidBlock2DCrossAttn') out.push(`mid_block_type=${JSON.stringify(raw.mid_block_type)}`);
  for (const [key, ok] of Object.entries(expect)) {
    if (raw[key] !== undefined && raw[key] !== null && JSON.stringify(raw[key]) !== JSON.stringify(ok)) {
      out.push(`${key}=${JSON.stringify(raw[key])}`);
    }
  }
  return out;
}

export function vaeConfigFromJson(raw: Json, base?: VaeConfig): VaeConfig {
  return {
    in_channels: num(raw, 'in_channels', base?.in_channels ?? 3),
    out_channels: num(raw, 'out_channels', base?.out_channels ?? 3),
    latent_channels: num(raw, 'latent_channels', base?.latent_channels ?? 4),
    block_out_channels: numList(raw, 'block_out_channels', base?.block_out_channels ?? [128, 256, 512, 512]),
    layers_per_block: num(raw, 'layers_per_block', base?.layers_per_block ?? 2),
    norm_num_groups: num(raw, 'norm_num_groups', base?.norm_num_groups ?? 32),
    scaling_factor: num(raw, 'scaling_factor', base?.scaling_factor ?? 0.18215),
    shift_factor: numOrNull(raw, 'shift_factor', base?.shift_factor ?? null),
    use_quant_conv: bool(raw, 'use_quant_conv', base?.use_quant_conv ?? true),
    use_post_quant_conv: bool(raw, 'use_post_quant_conv', base?.use_post_quant_conv ?? true),
    mid_block_add_attention: bool(raw, 'mid_block_add_attention', base?.mid_block_add_attention ?? true),
    sample_size: num(raw, 'sample_size', base?.sample_size ?? 512),
  };
}

export function clipTextConfigFromJson(raw: Json, base?: ClipTextConfig): ClipTextConfig {
  const act = str(raw, 'hidden_act', base?.hidden_act ?? 'quick_gelu');
  if (act !== 'quick_gelu' && act !== 'gelu') {
    throw new OnestepError(`text encoder hidden_act "${act}" is not supported (quick_gelu or gelu)`);
  }
  const architectures = strList(raw, 'architectures', []);
  const withProjection = architectures.includes('CLIPTextModelWithProjection');
  // transformers configs saved before 4.31 carry eos_token_id 2; transformers then pools at argmax(input_ids), which
  // for CLIP's vocabulary is the first end-of-text token (49407), the same as pooling at the first 49407.
  const eos = num(raw, 'eos_token_id', base?.eos_token_id ?? CLIP_EOS_TOKEN_ID);
  return {
    vocab_size: num(raw, 'vocab_size', base?.vocab_size ?? 49408),
    hidden_size: num(raw, 'hidden_size', base?.hidden_size ?? 512),
    intermediate_size: num(raw, 'intermediate_size', base?.intermediate_size ?? 2048),
    num_hidden_layers: num(raw, 'num_hidden_layers', base?.num_hidden_layers ?? 12),
    num_attention_heads: num(raw, 'num_attention_heads', base?.num_attention_heads ?? 8),
    max_position_embeddings: num(raw, 'max_position_embeddings', base?.max_position_embeddings ?? 77),
    hidden_act: act,
    layer_norm_eps: num(raw, 'layer_norm_eps', base?.layer_norm_eps ?? 1e-5),
    projection_dim: withProjection ? num(raw, 'projection_dim', 768) : (base?.projection_dim ?? null),
    eos_token_id: eos === 2 ? CLIP_EOS_TOKEN_ID : eos,
  };
}

const BETA_SCHEDULES = ['scaled_linear', 'linear', 'squaredcos_cap_v2'] as const;

/** diffusers scheduler_config.json -> SchedulerConfig (the fields one-step generation needs). */
export function schedulerConfigFromJson(raw: Json, file: string): SchedulerConfig {
  const schedule = str(raw, 'beta_schedule', SD_SCHEDULER.beta_schedule);
  if (!(BETA_SCHEDULES as readonly string[]).includes(schedule)) {
    throw new BadInputError(file, `beta_schedule "${schedule}" is not supported (${BETA_SCHEDULES.join(', ')})`);
  }
  const prediction = str(raw, 'prediction_type', 'epsilon');
  if (!(PREDICTION_TYPES as readonly string[]).includes(prediction)) {
    throw new BadInputError(file, `prediction_type "${prediction}" is not supported (${PREDICTION_TYPES.join(', ')})`);
  }
  const betas = raw.trained_betas;
  return {
    num_train_timesteps: num(raw, 'num_train_timesteps', 1000),
    beta_start: num(raw, 'beta_start', SD_SCHEDULER.beta_start),
    beta_end: num(raw, 'beta_end', SD_SCHEDULER.beta_end),
    beta_schedule: schedule as SchedulerConfig['beta_schedule'],
    trained_betas: Array.isArray(betas) && betas.every((b) => typeof b === 'number') ? [...betas] : null,
    prediction_type: prediction as PredictionType,
  };
}

/** SD's training schedule, with the given prediction type (single files do not record it). */
export function sdScheduler(prediction: PredictionType = 'epsilon'): SchedulerConfig {
  return { ...SD_SCHEDULER, prediction_type: prediction };
}

// ---------------------------------------------------------------------------------------------------------------
// Inference from canonical tensor shapes

function count(names: string[], re: RegExp): number {
  const s = new Set<string>();
  for (const n of names) {
    const m = re.exec(n);
    if (m) s.add(m[1]);
  }
  return s.size;
}

function need(metaOf: MetaOf, name: string, file: string): number[] {
  const m = metaOf(name);
  if (!m) throw new BadInputError(file, `required tensor ${name} is missing`, 'The checkpoint is incomplete or not an SD checkpoint.');
  return m.shape;
}

/** Heads per block for SD 2.x (head dim 64). Channels below 64 (tiny test models) give 1 head. */
export function sd2HeadsFor(channels: number): number {
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

/** UNetConfig from the shapes of `unet.*` canonical tensors, and the family's rules for what shapes do not show. */
export function inferUnetConfig(names: string[], metaOf: MetaOf, rules: UnetShapeRules, file: string, pooledDim?: number): UNetConfig {
  const blocks = count(names, /^unet\.down_blocks\.(\d+)\./);
  if (blocks === 0) throw new BadInputError(file, `no UNet down blocks found`);
  const block_out_channels = Array.from({ length: blocks }, (_, i) => need(metaOf, `unet.down_blocks.${i}.resnets.0.conv2.weight`, file)[0]);
  const layers_per_block = count(names, /^unet\.down_blocks\.0\.resnets\.(\d+)\./);
  const downAttn = Array.from({ length: blocks }, (_, i) => names.some((n) => n.startsWith(`unet.down_blocks.${i}.attentions.`)));
  const upAttn = Array.from({ length: blocks }, (_, i) => names.some((n) => n.startsWith(`unet.up_blocks.${i}.attentions.`)));
  const crossKey = names.find((n) => /\.attn2\.to_k\.weight$/.test(n));
  const projIn = names.find((n) => /\.attentions\.\d+\.proj_in\.weight$/.test(n));
  const transformer_layers_per_block = Array.from({ length: blocks }, (_, i) =>
    downAttn[i] ? count(names, new RegExp(`^unet\\.down_blocks\\.${i}\\.attentions\\.0\\.transformer_blocks\\.(\\d+)\\.`)) : 1,
  );
  const condProj = metaOf('unet.time_embedding.cond_proj.weight');
  const heads = block_out_channels.map((c) => rules.headsFor(c));
  const addIn = metaOf('unet.add_embedding.linear_1.weight')?.shape[1];
  // SDXL: add_embedding's input is the pooled text embedding plus six time-id embeddings (SDXL base: 1280 + 6 x 256).
  const timeDim = addIn === undefined ? null : pooledDim !== undefined ? (addIn - pooledDim) / 6 : 256;
  return {
    in_channels: need(metaOf, 'unet.conv_in.weight', file)[1],
    out_channels: need(metaOf, 'unet.conv_out.weight', file)[0],
    block_out_channels,
    down_block_types: downAttn.map((a) => (a ? 'CrossAttnDownBlock2D' : 'DownBlock2D')),
    up_block_types: upAttn.map((a) => (a ? 'CrossAttnUpBlock2D' : 'UpBlock2D')),
    layers_per_block,
    attention_head_dim: heads,
    num_attention_heads: null,
    cross_attention_dim: crossKey ? need(metaOf, crossKey, file)[1] : rules.crossAttentionDim,
    transformer_layers_per_block,
    use_linear_projection: projIn ? need(metaOf, projIn, file).length === 2 : rules.linearProjection,
    upcast_attention: false,
    norm_num_groups: 32,
    norm_eps: 1e-5,
    flip_sin_to_cos: true,
    freq_shift: 0,
    downsample_padding: 1,
    mid_block_scale_factor: 1,
    act_fn: 'silu',
    time_cond_proj_dim: condProj ? condProj.shape[1] : null,
    sample_size: rules.sampleSize,
    mid_block_type: names.some((n) => n.startsWith('unet.mid_block.')) ? 'UNetMidBlock2DCrossAttn' : null,
    only_cross_attention: Array(blocks).fill(false),
    addition_embed_type: addIn === undefined ? null : 'text_time',
    addition_time_embed_dim: timeDim,
    projection_class_embeddings_input_dim: addIn ?? null,
  };
}

export function inferVaeConfig(names: string[], metaOf: MetaOf, file: string): VaeConfig {
  const levels = count(names, /^vae\.encoder\.down_blocks\.(\d+)\./);
  if (levels === 0) throw new BadInputError(file, `no VAE encoder blocks found`);
  return {
    in_channels: need(metaOf, 'vae.encoder.conv_in.weight', file)[1],
    out_channels: need(metaOf, 'vae.decoder.conv_out.weight', file)[0],
    latent_channels: need(metaOf, 'vae.decoder.conv_in.weight', file)[1],
    block_out_channels: Array.from({ length: levels }, (_, i) => need(metaOf, `vae.encoder.down_blocks.${i}.resnets.0.conv2.weight`, file)[0]),
    layers_per_block: count(names, /^vae\.encoder\.down_blocks\.0\.resnets\.(\d+)\./),
    norm_num_groups: 32,
    scaling_factor: 0.18215,
    shift_factor: null,
    use_quant_conv: metaOf('vae.quant_conv.weight') !== undefined,
    use_post_quant_conv: metaOf('vae.post_quant_conv.weight') !== undefined,
    mid_block_add_attention: names.some((n) => n.startsWith('vae.decoder.mid_block.attentions.')),
    sample_size: 512,
  };
}

/** CLIP text config from shapes; the activation is the family's (OpenAI CLIP quick_gelu, OpenCLIP gelu); heads = hidden/64. */
export function inferClipTextConfig(names: string[], metaOf: MetaOf, hiddenAct: ClipTextConfig['hidden_act'], file: string, component = 'text_encoder'): ClipTextConfig {
  const [vocab, hidden] = need(metaOf, `${component}.text_model.embeddings.token_embedding.weight`, file);
  return {
    vocab_size: vocab,
    hidden_size: hidden,
    intermediate_size: need(metaOf, `${component}.text_model.encoder.layers.0.mlp.fc1.weight`, file)[0],
    num_hidden_layers: count(names, new RegExp(`^${component}\\.text_model\\.encoder\\.layers\\.(\\d+)\\.`)),
    num_attention_heads: Math.max(1, Math.floor(hidden / 64)),
    max_position_embeddings: need(metaOf, `${component}.text_model.embeddings.position_embedding.weight`, file)[0],
    hidden_act: hiddenAct,
    layer_norm_eps: 1e-5,
    projection_dim: null,
    eos_token_id: CLIP_EOS_TOKEN_ID,
  };
}

export interface ConfigOverrides {
  unet?: Json;
  vae?: Json;
  text_encoder?: Json;
}

/** Parses the optional `onestep.config` metadata value (JSON of {unet, vae, text_encoder} in config.json form). */
export function parseConfigOverrides(metadata: Readonly<Record<string, string>>, file: string): ConfigOverrides | undefined {
  const text = metadata['onestep.config'];
  if (text === undefined) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new BadInputError(file, `metadata "onestep.config" is not valid JSON (${(e as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new BadInputError(file, `metadata "onestep.config" must be a JSON object with unet / vae / text_encoder`);
  }
  const out: ConfigOverrides = {};
  for (const key of ['unet', 'vae', 'text_encoder'] as const) {
    const v = (value as Json)[key];
    if (v === undefined) continue;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      throw new BadInputError(file, `metadata "onestep.config".${key} must be a JSON object`);
    }
    out[key] = v as Json;
  }
  return out;
}
