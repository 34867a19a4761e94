/**
 * The configs beside the networks': the scheduler's (scheduler_config.json), and the network configs a single file
 * carries in its metadata key `onestep.config` (JSON `{unet, vae, text_encoder}` in config.json form), which override
 * what its tensor shapes cannot show (head counts, norm groups, sample sizes). Each network's own reader and shape
 * inference live in its architecture file (src/architectures/).
 */
import { BadInputError } from '../errors.js';
import { PREDICTION_TYPES, SD_SCHEDULER, type PredictionType, type SchedulerConfig } from './configs.js';

type Json = Record<string, unknown>;

function num(raw: Json, key: string, fallback: number): number {
  const v = raw[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : fallback;
}
function str(raw: Json, key: string, fallback: string): string {
  const v = raw[key];
  return typeof v === 'string' ? v : fallback;
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
