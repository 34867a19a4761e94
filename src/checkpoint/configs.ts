/**
 * Network configurations, with the field names of the diffusers / transformers config.json files they come from.
 * A diffusers folder gives them directly; for a single file they are inferred from tensor shapes. Each network's
 * reader (`<network>ConfigFromJson`) and shape inference (`<network>ConfigFromShapes`) live in its architecture file;
 * the typed field readers they share are here.
 */
import { BadInputError } from '../errors.js';
import type { TensorMeta, WeightSource } from './weight-source.js';

export interface UNetConfig {
  in_channels: number;
  out_channels: number;
  block_out_channels: number[];
  down_block_types: string[]; // 'CrossAttnDownBlock2D' | 'DownBlock2D'
  up_block_types: string[]; // 'UpBlock2D' | 'CrossAttnUpBlock2D'
  layers_per_block: number;
  /** Per down block (diffusers accepts a number or a list; normalized to a list). */
  attention_head_dim: number[];
  /** diffusers' num_attention_heads when set (it then wins over attention_head_dim, which in SD configs means heads). */
  num_attention_heads: number[] | null;
  cross_attention_dim: number;
  transformer_layers_per_block: number[];
  use_linear_projection: boolean;
  upcast_attention: boolean;
  norm_num_groups: number;
  norm_eps: number;
  flip_sin_to_cos: boolean;
  freq_shift: number;
  downsample_padding: number;
  mid_block_scale_factor: number;
  act_fn: 'silu';
  sample_size: number;
  /** null: no mid block (SDXS); diffusers' default is the cross-attention mid block. */
  mid_block_type: 'UNetMidBlock2DCrossAttn' | null;
  /** Per down block (up blocks reversed): attn1 attends to the text too. */
  only_cross_attention: boolean[];
  /** SDXL's added conditioning: pooled text embedding and six time ids. */
  addition_embed_type: 'text_time' | null;
  addition_time_embed_dim: number | null;
  projection_class_embeddings_input_dim: number | null;
}

export interface VaeConfig {
  in_channels: number;
  out_channels: number;
  latent_channels: number;
  block_out_channels: number[];
  layers_per_block: number;
  norm_num_groups: number;
  scaling_factor: number;
  shift_factor: number | null;
  use_quant_conv: boolean;
  use_post_quant_conv: boolean;
  mid_block_add_attention: boolean;
  sample_size: number;
}

export interface ClipTextConfig {
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  max_position_embeddings: number;
  hidden_act: 'quick_gelu' | 'gelu';
  layer_norm_eps: number;
  /** Present in CLIPTextModelWithProjection (SDXL's second encoder); null for plain CLIPTextModel. */
  projection_dim: number | null;
  /** Token id of EOS; the pooled output is taken at the first occurrence of it (transformers >= 4.31 semantics). */
  eos_token_id: number;
}

export type BetaSchedule = 'scaled_linear' | 'linear' | 'squaredcos_cap_v2';
/** What a denoiser predicts (runtime/one-step.ts turns each into x0). */
export const PREDICTION_TYPES = ['epsilon', 'v_prediction', 'sample', 'flow'] as const;
export type PredictionType = (typeof PREDICTION_TYPES)[number];

export interface SchedulerConfig {
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: BetaSchedule;
  trained_betas: number[] | null;
  prediction_type: PredictionType;
}

export const SD_SCHEDULER: SchedulerConfig = {
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  trained_betas: null,
  prediction_type: 'epsilon',
};

type Json = Readonly<Record<string, unknown>>;

/**
 * The fields of one config.json, read with the defaults of the class it configures. An absent or null field takes the
 * default; a field of the wrong type is one BadInputError naming the file and the field.
 */
export class ConfigFields {
  constructor(
    readonly raw: Json,
    readonly file: string,
  ) {}

  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  fail(key: string, detail: string, hint?: string): never {
    throw new BadInputError(this.file, `${key} = ${JSON.stringify(this.raw[key])} ${detail}`, hint);
  }

  num(key: string, fallback: number): number {
    if (!this.has(key)) return fallback;
    const v = this.raw[key];
    return typeof v === 'number' && Number.isFinite(v) ? v : this.fail(key, 'is not a number');
  }

  /** A positive integer (channels, layers, heads). */
  count(key: string, fallback: number): number {
    const v = this.num(key, fallback);
    return Number.isInteger(v) && v > 0 ? v : this.fail(key, 'is not a positive integer');
  }

  numOrNull(key: string, fallback: number | null): number | null {
    return this.has(key) ? this.num(key, 0) : this.raw[key] === null ? null : fallback;
  }

  bool(key: string, fallback: boolean): boolean {
    if (!this.has(key)) return fallback;
    const v = this.raw[key];
    return typeof v === 'boolean' ? v : this.fail(key, 'is not true or false');
  }

  str(key: string, fallback: string): string {
    if (!this.has(key)) return fallback;
    const v = this.raw[key];
    return typeof v === 'string' ? v : this.fail(key, 'is not a string');
  }

  strList(key: string, fallback: readonly string[]): string[] {
    if (!this.has(key)) return [...fallback];
    const v = this.raw[key];
    return Array.isArray(v) && v.every((x) => typeof x === 'string') ? [...v] : this.fail(key, 'is not a list of strings');
  }

  countList(key: string, fallback: readonly number[]): number[] {
    if (!this.has(key)) return [...fallback];
    const v = this.raw[key];
    return Array.isArray(v) && v.length > 0 && v.every((x) => Number.isInteger(x) && x > 0) ? [...v] : this.fail(key, 'is not a list of positive integers');
  }

  /** diffusers' "one value or one per block" fields, as one value per block. */
  perBlock(key: string, blocks: number, fallback: number): number[];
  perBlock(key: string, blocks: number, fallback: boolean): boolean[];
  perBlock(key: string, blocks: number, fallback: number | boolean): (number | boolean)[] {
    const v = this.has(key) ? this.raw[key] : fallback;
    const ok = (x: unknown) => (typeof fallback === 'number' ? Number.isInteger(x) && (x as number) > 0 : typeof x === 'boolean');
    if (ok(v)) return Array.from({ length: blocks }, () => v as number | boolean);
    if (!Array.isArray(v) || !v.every(ok)) this.fail(key, `is not ${typeof fallback === 'number' ? 'a positive integer' : 'true or false'} or a list of them`);
    if (v.length !== blocks) this.fail(key, `has ${v.length} entries for ${blocks} blocks`);
    return [...v];
  }

  /**
   * Refuses fields whose value changes the network in a way its builder does not build. `rules`: field -> whether a
   * (present, non-null) value is one the builder builds.
   */
  refuse(rules: Readonly<Record<string, (v: unknown) => boolean>>, what: string, hint: string): void {
    for (const [key, builds] of Object.entries(rules)) {
      if (this.has(key) && !builds(this.raw[key])) this.fail(key, `is not supported (onestep builds ${what})`, hint);
    }
  }
}

/** What a weight source shows of the tensors a config is inferred from: their names, and each one's shape. */
export interface ShapeView {
  names: readonly string[];
  metaOf(name: string): TensorMeta | undefined;
  file: string;
}

export function shapeView(weights: WeightSource, file: string): ShapeView {
  return { names: weights.names(), metaOf: (n) => (weights.has(n) ? weights.meta(n) : undefined), file };
}

/** How many distinct values the first group of `re` takes over the names (blocks, layers). */
export function countDistinct(names: readonly string[], re: RegExp): number {
  const s = new Set<string>();
  for (const n of names) {
    const m = re.exec(n);
    if (m) s.add(m[1]);
  }
  return s.size;
}

/** The shape of a tensor a config cannot be inferred without. */
export function requiredShape(view: ShapeView, name: string): number[] {
  const m = view.metaOf(name);
  if (!m) throw new BadInputError(view.file, `required tensor ${name} is missing`, 'The checkpoint is incomplete or not an SD checkpoint.');
  return m.shape;
}
