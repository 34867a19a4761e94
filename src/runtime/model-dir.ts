/**
 * The model directory: convert's output and generate's input. Self-describing, so generate needs no flags to do the
 * right thing, and family-independent: the runtime only follows what model.json declares.
 *
 *   model.json                 this manifest (format version 2)
 *   <conditioning graph>.onnx  input_ids int64 [batch, max_length] (+ attention_mask when declared) -> named outputs
 *   <denoiser graph>.onnx      sample, timestep (float32 [batch]) and the declared conditioning inputs -> out_sample
 *   vae_decoder.onnx           latent_sample (already / scaling_factor + shift) -> sample (raw, [-1, 1])
 *   vae_encoder.onnx           sample [-1, 1] -> latent_dist_mean, latent_dist_std (not yet scaled; image-to-image);
 *                              a TAESD encoder (kind 'taesd', SDXS) -> latents (not yet scaled: no distribution)
 *   <tokenizer dir>/           tokenizer.json + onestep-tokenizer.json (see runtime/tokenizer.ts)
 * Every graph is stored with its weights in `<graph>.data` beside it (onnx/write-model.ts).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { PredictionType, SchedulerConfig } from '../checkpoint/configs.js';
import { BadInputError } from '../errors.js';
import { requireRegularFile } from '../io/files.js';
import { checkModelManifest } from './model-check.js';

export const MODEL_FORMAT = 'onestep-model';
export const MODEL_FORMAT_VERSION = 2;

/** How one network evaluation becomes an image (DESIGN.md section 4). */
export interface OneStepRecipe {
  /** A known recipe name (sd-turbo, swiftbrush, instaflow, yoso, dmd2, hyper-sd, ufogen, pixart-dmd, yoso-pixart-512, yoso-pixart-1024) or 'default'. */
  name: string;
  prediction_type: PredictionType;
  /** May be fractional (InstaFlow: 1000.0). */
  timestep: number;
  /** Default classifier-free guidance scale; <= 1 means a single unguided pass. */
  guidance: number;
  /** Whether `--init-latent-mean` (YOSO's informative prior) is meaningful for this model. */
  informative_prior: boolean;
  /** Where the recipe came from: 'flag', 'detected: <why>', 'scheduler config', 'default'. */
  source: string;
}

/**
 * One text conditioning: a tokenizer and the graph that encodes its ids. Several entries feeding the same denoiser
 * input are concatenated on the last axis in entry order (SDXL's two encoders).
 */
export interface ConditioningEntry {
  /** Tokenizer folder, relative to the model directory. */
  tokenizer: string;
  max_length: number;
  /** Graph file, relative to the model directory. */
  graph: string;
  /** The graph also takes the tokenizer's `attention_mask` (int64, 1 = token, 0 = padding). */
  attention_mask: boolean;
  /** Graph output -> the denoiser input it feeds. */
  outputs: Record<string, string>;
  /** The tokenizer's attention mask also feeds this denoiser input (PixArt: encoder_attention_mask). */
  mask_to?: string;
}

/**
 * The unguided half of classifier-free guidance: 'encode' encodes the negative prompt ("" when none is given);
 * 'zeros-when-absent' uses zeros for every conditioning input when no negative prompt is given at all (diffusers'
 * force_zeros_for_empty_prompt of SDXL) and encodes one that is given, even "".
 */
export type NegativeConditioning = 'encode' | 'zeros-when-absent';

/**
 * Denoiser inputs the runtime knows how to supply. Besides the conditioning outputs and masks that model.json routes:
 * `sample`, `timestep`, `time_ids` (SDXL: orig_h, orig_w, crop_top, crop_left, target_h, target_w), `resolution`
 * ([h, w]) and `aspect_ratio` ([h / w]) (PixArt's micro-conditions).
 */
export const COMPUTED_DENOISER_INPUTS = ['sample', 'timestep', 'time_ids', 'resolution', 'aspect_ratio'] as const;

export interface DenoiserEntry {
  graph: string;
  /** Input names of the graph, in order. */
  inputs: string[];
  /** Output channels of the graph (learned-sigma models: 2x the latent channels; the first half is used). */
  out_channels: number;
}

export interface ModelManifest {
  format: typeof MODEL_FORMAT;
  version: number;
  /** A family id of src/families (sd1, sd2, sdxl, sdxs, pixart-alpha). */
  family: string;
  dtype: 'float32' | 'float16';
  source: {
    name: string;
    layout: 'single-file' | 'diffusers';
    sha256: string;
    loras: { name: string; sha256: string; scale: number }[];
    /** Components used instead of the checkpoint's own (`convert --unet / --vae`, and `--taesd`'s decoder). */
    components?: { component: string; name: string; sha256: string }[];
  };
  conditioning: ConditioningEntry[];
  negative: NegativeConditioning;
  denoiser: DenoiserEntry;
  /**
   * Which network vae_decoder.onnx is. Its inputs and outputs are the same either way: a TAESD graph takes the same
   * latent_sample and scales it back itself (architectures/taesd.ts).
   */
  decoder: { graph: string; kind: 'autoencoder-kl' | 'taesd' };
  encoder?: { graph: string; kind: 'autoencoder-kl' | 'taesd' };
  /** Every network's config, by component, and the scheduler's. */
  configs: Record<string, unknown> & { scheduler: SchedulerConfig };
  recipe: OneStepRecipe;
  latent: { channels: number; scaling_factor: number; shift_factor: number | null; downscale: number };
  default_size: { width: number; height: number };
  converter: { name: 'onestep'; version: string };
  /** 'cuda': graphs with CUDA-only fused ops (`convert --target cuda`); absent: standard ops that run anywhere. */
  target?: 'cuda';
  /** 'int8': the denoiser and decoder are static int8 QDQ graphs (`convert --quantize int8`, src/quantize.ts). */
  quantize?: 'int8';
}

export async function readModelManifest(dir: string): Promise<ModelManifest> {
  const file = path.join(dir, 'model.json');
  let text: string;
  requireRegularFile(file, 'model.json');
  try {
    text = await readFile(file, 'utf8');
  } catch {
    throw new BadInputError(dir, 'not a onestep model directory (no model.json)', `Create one with: onestep convert <checkpoint> -o ${dir}`);
  }
  let m: ModelManifest;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new BadInputError(file, `invalid JSON (${(e as Error).message})`, 'Convert the checkpoint again.');
  }
  if (typeof m !== 'object' || m === null || Array.isArray(m)) {
    throw new BadInputError(file, `holds ${m === null ? 'null' : Array.isArray(m) ? 'a list' : typeof m}, not a model manifest object`, 'Convert the checkpoint again.');
  }
  if (m.format !== MODEL_FORMAT) {
    throw new BadInputError(file, `format is ${JSON.stringify(m.format)}, expected "${MODEL_FORMAT}"`, 'Pass a folder written by onestep convert.');
  }
  if (m.version > MODEL_FORMAT_VERSION) {
    throw new BadInputError(file, `model format version ${m.version} is newer than this onestep understands (${MODEL_FORMAT_VERSION})`, 'Upgrade onestep.');
  }
  if (m.version < MODEL_FORMAT_VERSION) {
    throw new BadInputError(
      file,
      `was written by an older onestep (model format version ${m.version}; this onestep reads version ${MODEL_FORMAT_VERSION})`,
      'Convert the checkpoint again with `onestep convert <checkpoint> -o <folder> --force`.',
    );
  }
  checkModelManifest(m, dir, file);
  return m;
}
