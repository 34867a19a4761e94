/**
 * What the rest of onestep asks about a model family. Each family is one file in this folder exporting one FamilyDef;
 * `index.ts` is the registry. detect, open, convert, inspect, lora and recipes ask the registry, so adding a family is
 * adding a file (plus its architecture files), not editing a dozen switches.
 */
import type { ClipTextOutput } from '../architectures/clip-text.js';
import type { T5Config } from '../architectures/t5-encoder.js';
import type { ClipTextConfig, SchedulerConfig, UNetConfig, VaeConfig } from '../checkpoint/configs.js';
import type { WeightSource } from '../checkpoint/weight-source.js';
import type { Graph } from '../onnx/graph.js';
import type { ConditioningEntry, DenoiserEntry, NegativeConditioning } from '../runtime/model-dir.js';

export type FamilyId = 'sd1' | 'sd2' | 'sdxl' | 'sdxs' | 'pixart-alpha';

export type Layout = 'single-file' | 'diffusers';

/** Normalized network configs by component; a family adds the components it has (transformer, text_encoder_2, ...). */
export interface CheckpointConfigs {
  unet?: UNetConfig;
  vae?: VaeConfig;
  /** CLIP (SD, SDXL) or T5 (PixArt). */
  text_encoder?: ClipTextConfig | T5Config;
  [component: string]: object | undefined;
}

/** A checkpoint opened under canonical names, with the configs of its networks. */
export interface Checkpoint {
  path: string;
  layout: Layout;
  family: FamilyDef;
  /**
   * Canonical names: `<component>.<diffusers / transformers key>` (`unet.conv_in.weight`,
   * `text_encoder.text_model.embeddings.token_embedding.weight`, `vae.decoder.conv_in.weight`, `transformer.*`).
   * For single files this is a MappedSource (its sourceOf(name) gives the file's own key).
   */
  weights: WeightSource;
  /** Each network's normalized config, by component name. */
  configs: CheckpointConfigs;
  scheduler: SchedulerConfig;
  /** Each component's config.json as read (folders) or inferred (single files, in config.json form). */
  rawConfigs: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
  /** Which hidden state the (first) text encoder graph outputs (absent: last_hidden_state; SD 2.x single files: penultimate). */
  textEncoderOutput?: ClipTextOutput;
  /** Single files: how canonical names map back to the file's keys (for writers that keep the file's layout). */
  ldmLayout?: unknown;
  /** Tokenizer folders found with the checkpoint, by name (tokenizer, tokenizer_2); single files: none. */
  tokenizerDirs: Record<string, string>;
  /** model_index.json of a folder (force_zeros_for_empty_prompt, ...); {} for single files. */
  pipelineIndex: Readonly<Record<string, unknown>>;
  notes: string[];
  /** Keys of the input that map to nothing used (position_ids, DDPM buffers and other known-ignorable keys excluded). */
  unmappedKeys: string[];
  /** A single file's safetensors metadata (modelspec.*, ss_*); empty for folders. */
  metadata: Readonly<Record<string, string>>;
}

export interface OpenOptions {
  /** Overrides the prediction type (single files do not record it; SD 2.x 768-v models need 'v_prediction'). */
  predictionType?: SchedulerConfig['prediction_type'];
  /** Single files: a diffusers folder holding the file's configs (see checkpoint/open.ts). */
  configDir?: string;
}

/** A single .safetensors file, opened, with its keys. */
export interface SingleFileInput {
  path: string;
  keys: readonly string[];
  shapeOf(key: string): number[];
  metadata: Readonly<Record<string, string>>;
}

/** A diffusers folder: its model_index.json and its `_class_name`. */
export interface FolderInput {
  dir: string;
  index: Readonly<Record<string, unknown>>;
  pipelineClass: string;
}

/** One graph convert writes: `<name>.onnx` (+ `.onnx.data`). */
export interface GraphSpec {
  name: string;
  build(weights: WeightSource, dtype: 'float32' | 'float16'): Graph;
}

/** What a converted model directory declares about inference (written into model.json). */
export interface InferenceDeclaration {
  conditioning: ConditioningEntry[];
  negative: NegativeConditioning;
  denoiser: DenoiserEntry;
  /** Latent layout and the VAE factor. */
  latent: { channels: number; scaling_factor: number; shift_factor: number | null; downscale: number };
  default_size: { width: number; height: number };
  /** What vae_decoder.onnx is (absent: the VAE's AutoencoderKL decoder; SDXS: its own AutoencoderTiny). */
  decoder?: 'autoencoder-kl' | 'taesd';
  /** What vae_encoder.onnx is, where the family writes one (absent: the VAE's AutoencoderKL encoder; SDXS: TAESD's). */
  encoder?: 'autoencoder-kl' | 'taesd';
}

export interface FamilyDef {
  id: FamilyId;
  /** For people: 'SD 1.x', 'SDXL', 'PixArt-α'. */
  label: string;
  /** false: recognised and described by inspect, refused by convert. */
  convertible: boolean;

  /** Single files: whether these keys are this family's original (LDM / SGM / ...) layout. Checked in registry order. */
  detectSingleFile?(keys: readonly string[]): boolean;
  /**
   * Diffusers folders: whether this model_index.json (and, when given, the components' config.json files) is this
   * family's pipeline. Checked in registry order.
   */
  detectFolder?(folder: FolderInput, configs?: Readonly<Record<string, Readonly<Record<string, unknown>>>>): boolean;
  /** Component folders a diffusers pipeline of this family holds weights in (canonical prefix = folder name). */
  folderComponents: string[];
  /** Single-file key prefixes per component, for inspect's parameter count of a file onestep cannot open. */
  singleFilePrefixes: Record<string, string[]>;

  /** Opens a folder / single file of this family (convertible families). */
  openFolder?(folder: FolderInput, opts: OpenOptions): Promise<Checkpoint>;
  openSingleFile?(file: SingleFileInput & { set: import('../safetensors/tensor-set.js').TensorSet }, opts: OpenOptions): Promise<Checkpoint>;

  /** The graphs convert writes, in order (convertible families). */
  graphs?(ckpt: Checkpoint): GraphSpec[];
  /** Writes the tokenizer folders the conditioning entries name into `dir` (convertible families). */
  writeTokenizers?(ckpt: Checkpoint, dir: string): Promise<void>;
  /** model.json's inference part (convertible families). */
  inference?(ckpt: Checkpoint): InferenceDeclaration;

  lora: {
    /** Canonical component prefixes a LoRA may target. */
    components: string[];
    /** The text-conditioning width the denoiser's cross-attention reads (768 SD 1.x, 1024 SD 2.x, 2048 SDXL). */
    contextWidths: number[];
  };
}
