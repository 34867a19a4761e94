/**
 * The model directory: convert's output and generate's input. Self-describing, so generate needs no flags to do the
 * right thing.
 *
 *   model.json                 this manifest
 *   text_encoder.onnx (+ .onnx.data)   input_ids int64 [batch, sequence] -> last_hidden_state, pooler_output
 *   unet.onnx (+ .onnx.data)           sample, timestep (float32 [batch]), encoder_hidden_states -> out_sample
 *   vae_decoder.onnx (+ .onnx.data)    latent_sample (already / scaling_factor) -> sample (raw, [-1, 1])
 *   vae_encoder.onnx (+ .onnx.data)    sample [-1, 1] -> latent_dist_mean (not yet scaled)
 *   tokenizer/                 tokenizer.json + onestep-tokenizer.json (see runtime/tokenizer.ts)
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ClipTextConfig, PredictionType, SchedulerConfig, UNetConfig, VaeConfig } from '../checkpoint/configs.js';
import { BadInputError } from '../errors.js';

export const MODEL_FORMAT = 'onestep-model';
export const MODEL_FORMAT_VERSION = 1;

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

export interface ModelManifest {
  format: typeof MODEL_FORMAT;
  version: number;
  family: 'sd1' | 'sd2';
  dtype: 'float32' | 'float16';
  source: { name: string; layout: 'single-file' | 'diffusers'; sha256: string; loras: { name: string; sha256: string; scale: number }[] };
  /** Graph files relative to the model directory. */
  components: { text_encoder: string; unet: string; vae_decoder: string; vae_encoder?: string };
  configs: { unet: UNetConfig; vae: VaeConfig; text_encoder: ClipTextConfig; scheduler: SchedulerConfig };
  recipe: OneStepRecipe;
  latent: { channels: number; scaling_factor: number; shift_factor: number | null; downscale: number };
  default_size: { width: number; height: number };
  tokenizer: { dir: string; max_length: number };
  converter: { name: 'onestep'; version: string };
  /**
   * Which network vae_decoder.onnx is (absent: 'autoencoder-kl'). Its inputs and outputs are the same either way:
   * a TAESD graph takes the same latent_sample and scales it back itself (architectures/taesd.ts).
   */
  vae_decoder?: 'autoencoder-kl' | 'taesd';
}

export async function readModelManifest(dir: string): Promise<ModelManifest> {
  const file = path.join(dir, 'model.json');
  let text: string;
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
  if (m.format !== MODEL_FORMAT) {
    throw new BadInputError(file, `format is ${JSON.stringify(m.format)}, expected "${MODEL_FORMAT}"`, 'Pass a folder written by onestep convert.');
  }
  if (m.version > MODEL_FORMAT_VERSION) {
    throw new BadInputError(file, `model format version ${m.version} is newer than this onestep understands (${MODEL_FORMAT_VERSION})`, 'Upgrade onestep.');
  }
  return m;
}
