/**
 * Checks a checkpoint's tensors against the ones its configs expect (each architecture's expected...Weights: its
 * builder's dry run), before anything is built from it, so a missing or misshapen tensor gives one error naming it.
 */
import { BadInputError } from '../errors.js';
import type { WeightSource } from './weight-source.js';

const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);

/** Throws one BadInputError naming missing and misshapen tensors (up to a few of each). */
export function checkTensors(source: WeightSource, expected: ReadonlyMap<string, readonly number[]>, file: string): void {
  const missing: string[] = [];
  const wrong: string[] = [];
  for (const [name, shape] of expected) {
    if (!source.has(name)) missing.push(name);
    else {
      const got = source.meta(name).shape;
      if (!sameShape(got, shape)) wrong.push(`${name} is [${got}], expected [${shape}]`);
    }
  }
  if (missing.length === 0 && wrong.length === 0) return;
  const parts: string[] = [];
  const few = (list: string[]): string => list.slice(0, 5).join('; ') + (list.length > 5 ? `; and ${list.length - 5} more` : '');
  if (missing.length) parts.push(`${missing.length} required tensor(s) missing: ${few(missing)}`);
  if (wrong.length) parts.push(`${wrong.length} tensor(s) with the wrong shape: ${few(wrong)}`);
  throw new BadInputError(
    file,
    parts.join('. '),
    'The checkpoint is incomplete, damaged, or of an architecture onestep does not support.',
  );
}
