/**
 * Flags several commands share, defined once with oclif's typed builders; their allowed values come from the
 * constants the library validates against, so a flag and the library cannot disagree.
 */
import { Flags } from '@oclif/core';
import { PREDICTION_TYPES, type PredictionType } from '../checkpoint/configs.js';
import { parseLoraArg } from '../lora/args.js';
import type { LoraSpec } from '../lora/merge.js';
import { RECIPE_NAMES } from '../runtime/recipes.js';

/** Precision names on the command line and what the library calls them. */
export const PRECISIONS = { fp32: 'float32', fp16: 'float16' } as const;
export type Precision = keyof typeof PRECISIONS;

export const sharedFlags = {
  quiet: Flags.boolean({ char: 'q', description: 'no progress output' }),
  prediction: (description: string) => Flags.option({ description, options: PREDICTION_TYPES })(),
  recipe: Flags.option({ description: 'one-step recipe of the model family', options: RECIPE_NAMES as readonly string[] })(),
  /** `file` or `file:scale`, repeatable, parsed and checked (a finite scale) as it is read. */
  lora: (description: string) => Flags.custom<LoraSpec>({ description, multiple: true, parse: async (input) => parseLoraArg(input) })(),
  precision: (description: string, defaultValue?: Precision) =>
    Flags.option({ description, options: Object.keys(PRECISIONS) as Precision[], ...(defaultValue ? { default: defaultValue } : {}) })(),
};

export function precision(p: Precision): (typeof PRECISIONS)[Precision];
export function precision(p: Precision | undefined): (typeof PRECISIONS)[Precision] | undefined;
export function precision(p: Precision | undefined): (typeof PRECISIONS)[Precision] | undefined {
  return p === undefined ? undefined : PRECISIONS[p];
}

export type { PredictionType };
