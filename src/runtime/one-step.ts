/**
 * One-step math on latents (DESIGN.md section 4): the clean-latent estimate x0 from one network evaluation,
 * classifier-free guidance, and the informative prior. Every element is computed in float64 and stored as float32.
 */
import type { PredictionType } from '../checkpoint/configs.js';
import { OnestepError } from '../errors.js';

function sameLength(a: Float32Array, b: Float32Array, what: string): void {
  if (a.length !== b.length) throw new OnestepError(`${what}: length mismatch (${a.length} vs ${b.length})`);
}

/**
 * x0 from the network output `out` at noisy latents `z`, where `alphaBar` = alphas_cumprod[t]:
 * - epsilon:      x0 = (z - sqrt(1 - a) * eps) / sqrt(a)
 * - v_prediction: x0 = sqrt(a) * z - sqrt(1 - a) * v
 * - sample:       x0 = out
 * - flow:         x0 = z + v. InstaFlow's RectifiedFlowPipeline (gnobitab/InstaFlow code/pipeline_rf.py) integrates
 *                 from noise at t = 1000 towards data with `latents = latents + dt * v_pred`, dt = 1 / steps and the
 *                 UNet timestep (1 - i / steps) * 1000; with one step that is z + v at timestep 1000 (alphaBar unused).
 */
export function x0FromModelOutput(predictionType: PredictionType, z: Float32Array, out: Float32Array, alphaBar: number): Float32Array {
  sameLength(z, out, 'x0 from model output');
  const x0 = new Float32Array(z.length);
  const sa = Math.sqrt(alphaBar);
  const s1a = Math.sqrt(1 - alphaBar);
  switch (predictionType) {
    case 'epsilon':
      for (let i = 0; i < z.length; i++) x0[i] = (z[i] - s1a * out[i]) / sa;
      break;
    case 'v_prediction':
      for (let i = 0; i < z.length; i++) x0[i] = sa * z[i] - s1a * out[i];
      break;
    case 'sample':
      x0.set(out);
      break;
    case 'flow':
      for (let i = 0; i < z.length; i++) x0[i] = z[i] + out[i];
      break;
    default:
      throw new OnestepError(`unknown prediction type ${JSON.stringify(predictionType)}`, 'Expected epsilon, v_prediction, sample or flow.');
  }
  return x0;
}

/** Classifier-free guidance: uncond + scale * (cond - uncond). */
export function applyGuidance(uncond: Float32Array, cond: Float32Array, scale: number): Float32Array {
  sameLength(uncond, cond, 'guidance');
  const out = new Float32Array(cond.length);
  for (let i = 0; i < cond.length; i++) out[i] = uncond[i] + scale * (cond[i] - uncond[i]);
  return out;
}

/** Whether a request with this guidance scale needs an unconditional pass (diffusers: guidance_scale > 1). */
export function usesGuidance(scale: number): boolean {
  return scale > 1;
}

/**
 * YOSO's informative prior: start from the mean latent noised to the recipe timestep,
 * z = sqrt(a) * mean + sqrt(1 - a) * noise (diffusers' add_noise). `mean` is one latent [C, h, w] or one value per
 * channel [C], broadcast over the noise [C, h, w].
 */
export function informativePrior(mean: Float32Array, noise: Float32Array, alphaBar: number, channels: number): Float32Array {
  const plane = noise.length / channels;
  if (!Number.isInteger(plane) || (mean.length !== noise.length && mean.length !== channels)) {
    throw new OnestepError(`informative prior: mean has ${mean.length} values; expected ${channels} (per channel) or ${noise.length} (a whole latent)`);
  }
  const perChannel = mean.length === channels && mean.length !== noise.length;
  const sa = Math.sqrt(alphaBar);
  const s1a = Math.sqrt(1 - alphaBar);
  const z = new Float32Array(noise.length);
  for (let i = 0; i < noise.length; i++) {
    const m = perChannel ? mean[Math.floor(i / plane)] : mean[i];
    z[i] = sa * m + s1a * noise[i];
  }
  return z;
}
