/**
 * One-step recipes of the distilled model families (DESIGN.md section 4): which prediction the network makes, at
 * which timestep it is evaluated, and the guidance it was distilled for.
 */
import type { PredictionType } from '../checkpoint/configs.js';
import { OnestepError } from '../errors.js';
import type { FamilyId } from '../families/types.js';
import type { OneStepRecipe } from './model-dir.js';

type RecipeValues = Omit<OneStepRecipe, 'name' | 'source'> & { families: FamilyId[]; about: string };

export const RECIPES: Record<string, RecipeValues> = {
  'sd-turbo': { prediction_type: 'epsilon', timestep: 999, guidance: 0, informative_prior: false, families: ['sd1', 'sd2'], about: 'SD-Turbo (adversarial diffusion distillation)' },
  'sdxl-turbo': { prediction_type: 'epsilon', timestep: 999, guidance: 0, informative_prior: false, families: ['sdxl'], about: 'SDXL-Turbo (adversarial diffusion distillation; 512x512)' },
  'dmd2-sdxl': { prediction_type: 'epsilon', timestep: 399, guidance: 0, informative_prior: false, families: ['sdxl'], about: 'DMD2 SDXL one-step UNet (LCM at timestep 399)' },
  'hyper-sdxl-1step': { prediction_type: 'epsilon', timestep: 800, guidance: 0, informative_prior: false, families: ['sdxl'], about: 'Hyper-SDXL 1-step UNet (LCM at timestep 800)' },
  'sdxl-lightning-1step': { prediction_type: 'sample', timestep: 999, guidance: 0, informative_prior: false, families: ['sdxl'], about: 'SDXL-Lightning 1-step UNet (x0 prediction)' },
  'nitrofusion-realism': { prediction_type: 'epsilon', timestep: 249, guidance: 0, informative_prior: false, families: ['sdxl'], about: 'NitroSD-Realism (timestep shift 250: the UNet sees t=249)' },
  'nitrofusion-vibrant': { prediction_type: 'epsilon', timestep: 499, guidance: 0, informative_prior: false, families: ['sdxl'], about: 'NitroSD-Vibrant (timestep shift 500: the UNet sees t=499)' },
  'diffusion2gan': { prediction_type: 'sample', timestep: 999, guidance: 0, informative_prior: false, families: ['sd1', 'sdxl'], about: 'Diffusion2GAN (x0 generator; no weights published)' },
  swiftbrush: { prediction_type: 'epsilon', timestep: 999, guidance: 0, informative_prior: false, families: ['sd1', 'sd2'], about: 'SwiftBrush v1/v2 (image-free distillation)' },
  dmd2: { prediction_type: 'epsilon', timestep: 999, guidance: 0, informative_prior: false, families: ['sd1', 'sd2'], about: 'DMD2 SD1.5 one-step generator' },
  sdxs: { prediction_type: 'epsilon', timestep: 999, guidance: 0, informative_prior: false, families: ['sdxs'], about: 'SDXS-512 (its AutoencoderTiny as the decoder)' },
  'hyper-sd': { prediction_type: 'epsilon', timestep: 999, guidance: 0, informative_prior: false, families: ['sd1', 'sd2'], about: 'Hyper-SD 1-step LoRA (TCD, eta 1)' },
  yoso: { prediction_type: 'epsilon', timestep: 999, guidance: 1, informative_prior: true, families: ['sd1'], about: 'YOSO SD1.5 LoRA (LCM boundary; 1.5 with the informative prior)' },
  instaflow: { prediction_type: 'flow', timestep: 1000, guidance: 0, informative_prior: false, families: ['sd1'], about: 'InstaFlow-0.9B (rectified flow: x0 = z + v)' },
  ufogen: { prediction_type: 'sample', timestep: 999, guidance: 0, informative_prior: false, families: ['sd1', 'sd2'], about: 'UFOGen-style generators (predict x0 directly)' },
  'pixart-dmd': { prediction_type: 'epsilon', timestep: 400, guidance: 1, informative_prior: false, families: ['pixart-alpha'], about: 'PixArt-alpha DMD (epsilon from the first 4 of 8 channels, from pure noise at t=400)' },
  'yoso-pixart-512': { prediction_type: 'v_prediction', timestep: 999, guidance: 1, informative_prior: false, families: ['pixart-alpha'], about: 'YOSO-PixArt-alpha 512' },
  'yoso-pixart-1024': { prediction_type: 'v_prediction', timestep: 999, guidance: 1, informative_prior: false, families: ['pixart-alpha'], about: 'YOSO-PixArt-alpha 1024 (micro-conditions)' },
};

export const RECIPE_NAMES = Object.keys(RECIPES);

/** File or folder names by which published one-step models reveal themselves. */
const NAME_PATTERNS: [RegExp, string][] = [
  [/sdxl[-_]?turbo|sd[-_]xl[-_]turbo/i, 'sdxl-turbo'],
  [/sd[-_]?turbo/i, 'sd-turbo'],
  [/swift[-_]?brush/i, 'swiftbrush'],
  [/instaflow/i, 'instaflow'],
  [/^(?=.*1024)(?=.*(yoso.*pixart|pixart.*yoso))/i, 'yoso-pixart-1024'],
  [/yoso.*pixart|pixart.*yoso/i, 'yoso-pixart-512'],
  [/yoso/i, 'yoso'],
  [/pixart.*dmd|dmd.*pixart/i, 'pixart-dmd'],
  [/^(?=.*dmd2)(?=.*sdxl)/i, 'dmd2-sdxl'],
  [/dmd2/i, 'dmd2'],
  [/hyper[-_]?sdxl[-_]?1[-_]?step/i, 'hyper-sdxl-1step'],
  [/hyper[-_]?sd/i, 'hyper-sd'],
  [/sdxl[-_]?lightning[-_]?1[-_]?step/i, 'sdxl-lightning-1step'],
  [/nitro[-_]?(sd|fusion).*realism/i, 'nitrofusion-realism'],
  [/nitro[-_]?(sd|fusion).*vibrant/i, 'nitrofusion-vibrant'],
  [/sdxs/i, 'sdxs'],
  [/diffusion2gan/i, 'diffusion2gan'],
  [/ufogen/i, 'ufogen'],
];

/** A recipe named by a file's name or its safetensors metadata (modelspec.title, ss_output_name), if any. */
export function detectRecipe(names: string[], metadata: Record<string, string> = {}): { name: string; why: string } | undefined {
  const candidates = [...names, metadata['modelspec.title'], metadata['ss_output_name']].filter((s): s is string => !!s);
  for (const text of candidates) {
    for (const [re, name] of NAME_PATTERNS) if (re.test(text)) return { name, why: `"${text}"` };
  }
  return undefined;
}

export function recipeByName(name: string, source: string): OneStepRecipe {
  const r = RECIPES[name];
  if (!r) throw new OnestepError(`unknown recipe "${name}"`, `Known recipes: ${RECIPE_NAMES.join(', ')}.`);
  return { name, prediction_type: r.prediction_type, timestep: r.timestep, guidance: r.guidance, informative_prior: r.informative_prior, source };
}

/**
 * The recipe a converted model carries: an explicit --recipe wins, then a detected one, else the checkpoint's own
 * prediction type at t=999 without guidance. An explicit --prediction overrides the prediction type of any of them.
 */
export function resolveRecipe(opts: {
  family: FamilyId;
  explicit?: string;
  detected?: { name: string; why: string };
  schedulerPrediction: PredictionType;
  predictionFlag?: PredictionType;
}): OneStepRecipe {
  let recipe: OneStepRecipe;
  if (opts.explicit) recipe = recipeByName(opts.explicit, 'flag');
  else if (opts.detected && RECIPES[opts.detected.name].families.includes(opts.family)) {
    recipe = recipeByName(opts.detected.name, `detected from ${opts.detected.why}`);
  } else {
    recipe = { name: 'default', prediction_type: opts.schedulerPrediction, timestep: 999, guidance: 0, informative_prior: false, source: 'scheduler config' };
  }
  if (opts.explicit && !RECIPES[opts.explicit].families.includes(opts.family)) {
    throw new OnestepError(`recipe "${opts.explicit}" is for ${RECIPES[opts.explicit].families.join('/')} models, not ${opts.family}`);
  }
  if (opts.predictionFlag) recipe = { ...recipe, prediction_type: opts.predictionFlag, source: `${recipe.source}; prediction from --prediction` };
  return recipe;
}
