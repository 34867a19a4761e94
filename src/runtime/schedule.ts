/**
 * The DDPM noise schedule: alphas_cumprod ("alpha bar") as diffusers computes it in float32 with PyTorch on CPU.
 *
 * Reproducing diffusers bit for bit needs two PyTorch details (checked against the fixtures' goldens, which hold
 * alphas_cumprod[999] for a scaled_linear and a linear schedule exactly):
 * - torch.linspace on an x86 CPU is the AVX2 kernel: float32 step = (end - start) / (n - 1); each 8-lane vector
 *   starts at `start + step * idx` (first half) or `end - step * (n - 1 - idx)` (second half) and adds `j * step`
 *   per lane, every multiply-add fused (one rounding). Emulated here in float64, where step * integer is exact, so
 *   rounding the float64 sum once to float32 is exactly the fused result.
 * - torch.cumprod on CPU accumulates float32 input in float64 and rounds each output to float32.
 */
import type { SchedulerConfig } from '../checkpoint/configs.js';
import { OnestepError } from '../errors.js';

const f32 = Math.fround;
const TORCH_CPU_VECTOR_LANES = 8;

/** torch.linspace(start, end, n, dtype=torch.float32) on CPU. */
export function linspaceF32(start: number, end: number, n: number): Float32Array {
  const out = new Float32Array(n);
  if (n === 1) {
    out[0] = start;
    return out;
  }
  const s = f32(start);
  const e = f32(end);
  const step = f32((e - s) / f32(n - 1));
  const halfway = Math.floor(n / 2);
  const at = (idx: number) => (idx < halfway ? f32(s + step * idx) : f32(e - step * (n - idx - 1)));
  // The vectorized loop handles whole pairs of vectors; the rest goes element by element.
  const vectorEnd = n - (n % (2 * TORCH_CPU_VECTOR_LANES));
  let idx = 0;
  for (; idx < vectorEnd; idx += TORCH_CPU_VECTOR_LANES) {
    const base = at(idx);
    for (let j = 0; j < TORCH_CPU_VECTOR_LANES; j++) out[idx + j] = f32(base + j * step);
  }
  for (; idx < n; idx++) out[idx] = at(idx);
  return out;
}

/** The betas of a scheduler config, in float32, as diffusers' DDPM-family schedulers build them. */
export function betas(cfg: SchedulerConfig): Float32Array {
  const n = cfg.num_train_timesteps;
  if (!Number.isInteger(n) || n < 1) throw new OnestepError(`scheduler config: num_train_timesteps must be a positive integer (got ${n})`);
  if (cfg.trained_betas && cfg.trained_betas.length > 0) {
    if (cfg.trained_betas.length !== n) {
      throw new OnestepError(`scheduler config: trained_betas has ${cfg.trained_betas.length} values, num_train_timesteps is ${n}`);
    }
    return Float32Array.from(cfg.trained_betas);
  }
  switch (cfg.beta_schedule) {
    case 'linear':
      return linspaceF32(cfg.beta_start, cfg.beta_end, n);
    case 'scaled_linear':
      return linspaceF32(Math.sqrt(cfg.beta_start), Math.sqrt(cfg.beta_end), n).map((x) => f32(x * x));
    case 'squaredcos_cap_v2': {
      // Improved-DDPM cosine schedule (Nichol & Dhariwal), computed in float64 then stored as float32, max beta 0.999.
      const alphaBarAt = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
      return Float32Array.from({ length: n }, (_, i) => Math.min(1 - alphaBarAt((i + 1) / n) / alphaBarAt(i / n), 0.999));
    }
    default:
      throw new OnestepError(
        `scheduler config: unsupported beta_schedule ${JSON.stringify(cfg.beta_schedule)}`,
        'Supported: scaled_linear, linear, squaredcos_cap_v2, or trained_betas.',
      );
  }
}

/** alphas_cumprod = cumprod(1 - betas), float32 values. */
export function alphasCumprod(cfg: SchedulerConfig): Float32Array {
  const b = betas(cfg);
  const out = new Float32Array(b.length);
  let acc = 1;
  for (let i = 0; i < b.length; i++) {
    acc *= f32(1 - b[i]);
    out[i] = acc;
  }
  return out;
}

const cache = new WeakMap<SchedulerConfig, Float32Array>();

/**
 * alphas_cumprod[t]. An integer t indexes the table as diffusers does. A fractional t (no DDPM-based one-step recipe
 * uses one; flow models such as InstaFlow never need alpha bar) interpolates linearly between the two neighbouring
 * entries, a documented choice of ours rather than any library's convention.
 */
export function alphaBar(cfg: SchedulerConfig, t: number): number {
  let table = cache.get(cfg);
  if (!table) {
    table = alphasCumprod(cfg);
    cache.set(cfg, table);
  }
  if (!Number.isFinite(t) || t < 0 || t > table.length - 1) {
    throw new OnestepError(`timestep ${t} is outside the scheduler's range 0..${table.length - 1}`, 'Pick a timestep within the training range.');
  }
  const lo = Math.floor(t);
  if (lo === t) return table[t];
  const w = t - lo;
  return table[lo] * (1 - w) + table[lo + 1] * w;
}
