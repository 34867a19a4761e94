/**
 * Which model directory `generate` uses: a converted model directory as is; a checkpoint (file or diffusers folder,
 * optionally with LoRAs) converted once into a cache folder keyed by the inputs' hashes; with nothing given, the
 * bundled demo checkpoint.
 */
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdir, readFile, realpath, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { listFiles, sha256Path } from './checkpoint/hash.js';
import { BadInputError, OnestepError } from './errors.js';
import { writeFileAtomic } from './io/atomic.js';
import { requireRegularFile } from './io/files.js';
import { convertCheckpoint, ONESTEP_VERSION, type ConvertOptions, type LoraSpec } from './convert.js';
import { MODEL_FORMAT_VERSION } from './runtime/model-dir.js';

export const DEMO_CHECKPOINT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'assets', 'demo', 'tiny-sd15.safetensors');

export function cacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.ONESTEP_CACHE) return env.ONESTEP_CACHE;
  const base = env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'onestep');
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

export function isModelDir(p: string): boolean {
  return existsSync(path.join(p, 'model.json'));
}

/**
 * sha256Path, remembered under `<cache>/hashes/` by what stat says of the path (real path, and per file: relative
 * path, size, mtime, inode), so a multi-GB checkpoint is hashed once, not on every run (about 1.4 s per GiB here).
 * The same trust as make or rsync: a file rewritten in place keeping its size and mtime would go unnoticed.
 */
export async function rememberedSha256(p: string, root: string): Promise<string> {
  const real = await realpath(p);
  const id = createHash('sha256').update(real);
  if ((await stat(real)).isDirectory()) {
    for (const rel of await listFiles(real)) {
      const st = await stat(path.join(real, rel));
      id.update(`\n${rel}\0${st.size}\0${st.mtimeMs}\0${st.ino}`);
    }
  } else {
    requireRegularFile(real, 'a checkpoint', 'Pass a .safetensors file, a diffusers folder or a converted model folder.');
    const st = await stat(real);
    id.update(`\n\0${st.size}\0${st.mtimeMs}\0${st.ino}`);
  }
  const memo = path.join(root, 'hashes', id.digest('hex').slice(0, 32));
  const known = await readFile(memo, 'utf8').catch(() => '');
  if (/^[0-9a-f]{64}$/.test(known)) return known;
  const hash = await sha256Path(real);
  await mkdir(path.dirname(memo), { recursive: true });
  await writeFileAtomic(memo, hash);
  return hash;
}

export interface ResolvedModel {
  dir: string;
  /** Said on stderr: where the model came from, whether it was converted now. */
  notes: string[];
}

export interface ModelRequest {
  model?: string;
  loras?: LoraSpec[];
  dtype?: 'float32' | 'float16';
  env?: NodeJS.ProcessEnv;
  onConvertProgress?: ConvertOptions['onProgress'];
}

export async function resolveModel(opts: ModelRequest): Promise<ResolvedModel> {
  return (await locateModel(opts, true)) as ResolvedModel;
}

/**
 * The model directory a request names, without converting anything (for `generate --dry-run`): undefined when a
 * checkpoint has not been converted into the cache yet.
 */
export async function findModelDir(opts: ModelRequest): Promise<{ dir?: string; notes: string[] }> {
  return locateModel(opts, false);
}

async function locateModel(opts: ModelRequest, convert: boolean): Promise<{ dir?: string; notes: string[] }> {
  const env = opts.env ?? process.env;
  const notes: string[] = [];
  let model = opts.model ?? env.ONESTEP_MODEL;
  if (!model) {
    model = DEMO_CHECKPOINT;
    notes.push(`no --model or ONESTEP_MODEL given: using the bundled demo model (a tiny random-weight SD 1.5; its images are noise-like, for trying the tool)`);
  }
  const loras = opts.loras ?? [];
  if (isModelDir(model)) {
    if (loras.length) notes.push('--lora is ignored for an already converted model directory: convert with --lora instead');
    return { dir: model, notes };
  }
  for (const p of [model, ...loras.map((l) => l.path)]) {
    if (!existsSync(p)) {
      throw new BadInputError(p, 'no such file or folder.', 'Give a model directory (onestep convert), a .safetensors checkpoint or a diffusers folder.');
    }
  }
  // Cheap before expensive: a folder that is not a pipeline is refused before hashing it (seconds per GB).
  if (isDirectory(model) && !existsSync(path.join(model, 'model_index.json'))) {
    throw new BadInputError(
      model,
      'is a folder with neither model.json (a converted model) nor model_index.json (a diffusers pipeline).',
      'Give a model directory (onestep convert), a .safetensors checkpoint or a diffusers folder.',
    );
  }
  const dtype = opts.dtype ?? 'float32';
  const root = cacheRoot(env);
  const key = createHash('sha256');
  // The model format version is part of the key: a cache written by an older onestep is converted again, not reused.
  key.update(`onestep ${ONESTEP_VERSION} model format ${MODEL_FORMAT_VERSION}\n${dtype}\n${await rememberedSha256(model, root)}\n`);
  for (const l of loras) key.update(`${await rememberedSha256(l.path, root)} ${l.scale}\n`);
  // A single file takes its configs from a same-named diffusers folder beside it, when there is one: part of the input.
  const configs = model.replace(/\.(safetensors|ckpt|pt|pth|bin)$/i, '');
  if (configs !== model && isDirectory(configs)) key.update(`configs ${await rememberedSha256(configs, root)}\n`);
  const dir = path.join(root, 'models', key.digest('hex').slice(0, 24));
  if (isModelDir(dir)) {
    notes.push(`using the converted model cached in ${dir}`);
    return { dir, notes };
  }
  if (!convert) {
    notes.push(`${model} is not converted yet (the run converts it into ${dir} first)`);
    return { notes };
  }
  notes.push(`converting ${model}${loras.length ? ` with ${loras.length} LoRA(s)` : ''} into ${dir} (once; later runs reuse it)`);
  // Several processes may convert the same model at once (a cluster array sharing one cache). The first to finish
  // wins; the others keep its folder instead of replacing it under a run that may be loading it. Only a folder that
  // is not a model directory (left by hand) is replaced.
  const force = existsSync(dir);
  try {
    await convertCheckpoint(model, { out: dir, dtype, loras, force, onProgress: opts.onConvertProgress });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') {
      // The conversion writes into the cache, not into -o: say so (the temp folder is already removed).
      throw new OnestepError(
        `no space left in the model cache ${root} while converting ${model} (${code}).`,
        'Free some space there, or point ONESTEP_CACHE at a disk with room (a converted model takes about the checkpoint\'s size).',
      );
    }
    if (!(err instanceof OnestepError) || !isModelDir(dir)) throw err;
    notes.push(`another process converted it first: using ${dir}`);
  }
  return { dir, notes };
}
