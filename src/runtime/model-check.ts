/**
 * model.json is input like any other: a hand-edited or damaged one is refused with the field it gets wrong, before
 * any graph is loaded (never a raw TypeError or a native ORT log), and every path it names stays inside the model
 * folder (a `../` path, an absolute one or a symlink out of the folder would load files from elsewhere).
 */
import { realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { PREDICTION_TYPES } from '../checkpoint/configs.js';
import { BadInputError } from '../errors.js';
import { fileKind } from '../io/files.js';
import { MAX_SIDE } from '../io/prompts.js';

const HINT = 'Convert the checkpoint again (onestep convert <checkpoint> -o <folder> --force); model.json is written by onestep, not by hand.';

type Json = Record<string, unknown>;

export function checkModelManifest(m: unknown, dir: string, file: string): void {
  const fail = (field: string, detail: string): never => {
    throw new BadInputError(file, `${field} ${detail}`, HINT);
  };
  const obj = (v: unknown, field: string): Json => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : fail(field, 'must be an object'));
  const int = (v: unknown, field: string, min: number, max: number): number =>
    Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max ? (v as number) : fail(field, `must be a whole number within ${min}..${max}, got ${JSON.stringify(v)}`);
  const num = (v: unknown, field: string, ok: (x: number) => boolean, what: string): number =>
    typeof v === 'number' && Number.isFinite(v) && ok(v) ? v : fail(field, `must be ${what}, got ${JSON.stringify(v)}`);
  const str = (v: unknown, field: string): string => (typeof v === 'string' && v !== '' ? v : fail(field, 'must be a non-empty string'));
  const realDir = realpathSync(dir);
  const inside = (v: unknown, field: string, kind: 'file' | 'folder'): void => {
    const rel = str(v, field);
    const full = path.resolve(dir, rel);
    const within = (root: string, p: string) => p === root || p.startsWith(root + path.sep);
    if (path.isAbsolute(rel) || !within(path.resolve(dir), full)) fail(field, `${JSON.stringify(rel)} points outside the model folder`);
    let st: ReturnType<typeof statSync>;
    let real: string;
    try {
      st = statSync(full, { throwIfNoEntry: false });
      if (!st) return fail(field, `names ${JSON.stringify(rel)}, which does not exist in ${dir}`);
      real = realpathSync(full);
    } catch (e) {
      // ENAMETOOLONG, ELOOP, EACCES...: a path no converter writes.
      return fail(field, `${JSON.stringify(rel.length > 80 ? `${rel.slice(0, 77)}...` : rel)} cannot be used (${(e as NodeJS.ErrnoException).code ?? e})`);
    }
    if (!within(realDir, real)) fail(field, `${JSON.stringify(rel)} is a symlink out of the model folder`);
    if (kind === 'file' ? !st!.isFile() : !st!.isDirectory()) fail(field, `${JSON.stringify(rel)} is ${fileKind(st!)}, not a ${kind === 'file' ? 'regular file' : 'folder'}`);
  };

  const root = obj(m, 'model.json');
  str(root.family, 'family');
  if (root.dtype !== 'float32' && root.dtype !== 'float16') fail('dtype', `must be "float32" or "float16", got ${JSON.stringify(root.dtype)}`);
  if (!Array.isArray(root.conditioning) || root.conditioning.length === 0) fail('conditioning', 'must be a non-empty list');
  (root.conditioning as unknown[]).forEach((c, i) => {
    const e = obj(c, `conditioning[${i}]`);
    inside(e.graph, `conditioning[${i}].graph`, 'file');
    inside(e.tokenizer, `conditioning[${i}].tokenizer`, 'folder');
    int(e.max_length, `conditioning[${i}].max_length`, 1, 4096);
    const outputs = obj(e.outputs, `conditioning[${i}].outputs`);
    if (Object.keys(outputs).length === 0 || Object.values(outputs).some((v) => typeof v !== 'string')) fail(`conditioning[${i}].outputs`, 'must map graph outputs to denoiser input names');
  });
  const denoiser = obj(root.denoiser, 'denoiser');
  inside(denoiser.graph, 'denoiser.graph', 'file');
  if (!Array.isArray(denoiser.inputs) || denoiser.inputs.some((v) => typeof v !== 'string')) fail('denoiser.inputs', 'must be a list of input names');
  int(denoiser.out_channels, 'denoiser.out_channels', 1, 1024);
  inside(obj(root.decoder, 'decoder').graph, 'decoder.graph', 'file');
  if (root.encoder !== undefined) inside(obj(root.encoder, 'encoder').graph, 'encoder.graph', 'file');

  const latent = obj(root.latent, 'latent');
  int(latent.channels, 'latent.channels', 1, 1024);
  // 0 would divide the latents by zero: an image of NaN, written as black.
  num(latent.scaling_factor, 'latent.scaling_factor', (x) => x !== 0, 'a finite number other than 0');
  if (latent.shift_factor !== null && latent.shift_factor !== undefined) num(latent.shift_factor, 'latent.shift_factor', () => true, 'a finite number or null');
  const downscale = int(latent.downscale, 'latent.downscale', 1, 64);
  const size = obj(root.default_size, 'default_size');
  for (const side of ['width', 'height']) {
    const v = int(size[side], `default_size.${side}`, downscale, MAX_SIDE);
    if (v % downscale) fail(`default_size.${side}`, `${v} is not a multiple of latent.downscale ${downscale}`);
  }
  const recipe = obj(root.recipe, 'recipe');
  if (!(PREDICTION_TYPES as readonly string[]).includes(recipe.prediction_type as string)) fail('recipe.prediction_type', `must be one of ${PREDICTION_TYPES.join(', ')}, got ${JSON.stringify(recipe.prediction_type)}`);
  num(recipe.timestep, 'recipe.timestep', (x) => x >= 0 && x <= 1000, 'within 0..1000');
  num(recipe.guidance, 'recipe.guidance', (x) => x >= 0, 'a number >= 0');
  const source = obj(root.source, 'source');
  str(source.sha256, 'source.sha256');
  if (!Array.isArray(source.loras)) fail('source.loras', 'must be a list');
  obj(obj(root.configs, 'configs').scheduler, 'configs.scheduler');
}
