/**
 * Image-to-image in one step, as diffusers' StableDiffusionImg2ImgPipeline runs it with an Euler scheduler and
 * `timestep_spacing='trailing'` (SD-Turbo's model card): for strength s the pipeline takes N = ceil(1 / s) inference
 * steps, keeps the last int(N * s) = 1 of them, adds noise at that step's timestep and denoises once.
 *
 *   timesteps(N) = round(arange(T, 0, -T / N)) - 1, T = num_train_timesteps  ->  t = timesteps(N)[N - 1]
 *   z0 = scaling_factor * (posterior_mean + posterior_std * eps_posterior - shift_factor)
 *   x_t = sqrt(abar_t) * z0 + sqrt(1 - abar_t) * noise          (= (z0 + sigma * noise) / sqrt(sigma^2 + 1))
 *
 * Random numbers come from the image's own seed in the pipeline's order: first the posterior sample, then the noise,
 * together one torch.randn(2 * C * h * w) of that seed (first half, second half). A TAESD encoder (AutoencoderTiny, SDXS)
 * gives latents, not a distribution (diffusers' retrieve_latents takes `.latents` and draws nothing): z0 =
 * scaling_factor * (latents - shift_factor) and the noise is the seed's first draw.
 */
import { OnestepError } from '../errors.js';
import { torchRandn } from './noise.js';

/** numpy's round: half to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The one timestep diffusers' img2img pipeline denoises at for `strength`, with trailing timestep spacing. */
export function img2imgTimestep(strength: number, trainTimesteps = 1000): number {
  if (!(strength > 0 && strength <= 1)) {
    throw new OnestepError(`strength ${strength} is outside (0, 1]`, 'Give a strength above 0 and at most 1 (0.5: keep half of the image).');
  }
  const steps = Math.ceil(1 / strength);
  // numpy's arange computes start + k * step in float64.
  const last = trainTimesteps + (steps - 1) * (-trainTimesteps / steps);
  return roundHalfEven(last) - 1;
}

/**
 * The draws of an image's generator, each [C, h, w]: the posterior sample's eps, then the noise; only the noise for an
 * encoder without a posterior (`posterior: false`, TAESD).
 */
export function img2imgDraws(seed: bigint, latentSize: number): { posterior: Float32Array; noise: Float32Array };
export function img2imgDraws(seed: bigint, latentSize: number, posterior: boolean): { posterior?: Float32Array; noise: Float32Array };
export function img2imgDraws(seed: bigint, latentSize: number, posterior = true): { posterior?: Float32Array; noise: Float32Array } {
  if (!posterior) return { noise: torchRandn(seed, [latentSize]) };
  const both = torchRandn(seed, [2 * latentSize]);
  return { posterior: both.subarray(0, latentSize), noise: both.subarray(latentSize) };
}

/**
 * x_t for one image from its encoded posterior (unscaled mean and std; without `std`, latents taken as they are), its
 * draws and abar at the timestep.
 */
export function noisedInitLatents(
  mean: Float32Array,
  std: Float32Array | undefined,
  draws: { posterior?: Float32Array; noise: Float32Array },
  latent: { scaling_factor: number; shift_factor: number | null },
  alphaBar: number,
): Float32Array {
  const f = Math.fround;
  const out = new Float32Array(mean.length);
  const scale = f(latent.scaling_factor);
  const shift = latent.shift_factor ?? 0;
  const sa = f(Math.sqrt(alphaBar));
  const s1a = f(Math.sqrt(1 - alphaBar));
  if (std && !draws.posterior) throw new OnestepError('internal: a posterior sample needs its draw');
  for (let i = 0; i < mean.length; i++) {
    const sample = std ? f(mean[i] + f(std[i] * draws.posterior![i])) : mean[i];
    const z0 = f(scale * f(sample - shift));
    out[i] = f(f(sa * z0) + f(s1a * draws.noise[i]));
  }
  return out;
}
