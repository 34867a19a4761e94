/**
 * Network configurations, with the field names of the diffusers / transformers config.json files they come from.
 * A diffusers folder gives them directly; for a single file they are inferred from tensor shapes.
 */

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
  act_fn: string; // 'silu'
  /** Guidance-embedding input (LCM-style w embedding); 0 / null when absent. */
  time_cond_proj_dim: number | null;
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
