/** Reading the parts of a diffusers pipeline folder, and the config folder of a single file: the pieces families share. */
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { BadInputError } from '../errors.js';
import type { Checkpoint, FolderInput, OpenOptions } from '../families/types.js';
import { TensorSet } from '../safetensors/tensor-set.js';
import type { PredictionType, SchedulerConfig } from './configs.js';
import { schedulerConfigFromJson, sdScheduler } from './infer-config.js';
import { MappedSource } from './sources.js';

type Json = Record<string, unknown>;

export async function pathExists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** A JSON object file; Python's NaN / Infinity (scheduler configs write them) read as null. */
export async function readJson(path: string): Promise<Json> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new BadInputError(path, 'is missing', 'A diffusers folder needs a config.json in each component folder.');
    }
    throw e;
  }
  try {
    const v: unknown = JSON.parse(text.replace(/(?<=[:[,]\s*)-?(?:Infinity|NaN)(?=\s*[,\]}])/g, 'null'));
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Json;
  } catch (e) {
    throw new BadInputError(path, `is not a valid JSON object (${(e as Error).message})`);
  }
}

/** diffusers < 0.14 saved the VAE's mid attention as query/key/value/proj_attn. */
export function renameLegacyVaeAttention(key: string): string {
  return key.replace(/(\.attentions\.\d+\.)(query|key|value|proj_attn)\./, (_, head: string, p: string) => {
    const to = { query: 'to_q', key: 'to_k', value: 'to_v', proj_attn: 'to_out.0' }[p as 'query'];
    return `${head}${to}.`;
  });
}

/** The given component folders of a pipeline as one canonical WeightSource (`<component>.<key>`), with their configs. */
export async function openFolderComponents(dir: string, components: string[]): Promise<{ weights: MappedSource; rawConfigs: Record<string, Json> }> {
  const rawConfigs: Record<string, Json> = {};
  const parts: MappedSource[] = [];
  try {
    for (const c of components) {
      const cdir = join(dir, c);
      if (!(await pathExists(cdir))) throw new BadInputError(dir, `has no ${c}/ folder`, 'The diffusers folder is incomplete.');
      rawConfigs[c] = await readJson(join(cdir, 'config.json'));
      const set = await TensorSet.open(cdir);
      // position_ids is an integer buffer older transformers versions saved; nothing reads it.
      parts.push(MappedSource.prefixed(set, `${c}.`, dir, (k) => !k.endsWith('position_ids'), c === 'vae' ? renameLegacyVaeAttention : undefined));
    }
    return { weights: MappedSource.union(parts, dir), rawConfigs };
  } catch (e) {
    await Promise.all(parts.map((p) => p.close()));
    throw e;
  }
}

/** The folder's scheduler config (recorded in rawConfigs.scheduler), or SD's training schedule with a note. */
export async function readFolderScheduler(dir: string, rawConfigs: Record<string, Json>, notes: string[], opts: { predictionType?: PredictionType }): Promise<SchedulerConfig> {
  const schedulerPath = join(dir, 'scheduler', 'scheduler_config.json');
  let scheduler: SchedulerConfig;
  if (await pathExists(schedulerPath)) {
    rawConfigs.scheduler = await readJson(schedulerPath);
    scheduler = schedulerConfigFromJson(rawConfigs.scheduler, schedulerPath);
  } else {
    scheduler = sdScheduler();
    notes.push('no scheduler/scheduler_config.json: SD training schedule assumed');
  }
  return opts.predictionType ? { ...scheduler, prediction_type: opts.predictionType } : scheduler;
}

/** A pipeline folder opened for a family: its components' weights and configs as read, its scheduler, its tokenizers. */
export interface OpenedFolder {
  dir: string;
  weights: MappedSource;
  rawConfigs: Record<string, Json>;
  scheduler: SchedulerConfig;
  /** How things were decided so far (the scheduler); the family may add its own. */
  notes: string[];
  /** The tokenizer folders asked for that the folder has. */
  tokenizerDirs: Record<string, string>;
  /** `<dir>/<component>/config.json`, for errors about a component's config. */
  configFile(component: string): string;
}

/** What a family reads from an opened folder: the rest of its Checkpoint is the folder's. */
export type FolderParts = Pick<Checkpoint, 'family' | 'configs' | 'unmappedKeys'>;

/**
 * Opens a pipeline folder the way every family does (component folders, scheduler, tokenizers) and lets `read` turn
 * it into configs and checked weights; the weights are closed again when opening fails.
 */
export async function openPipelineFolder(
  folder: FolderInput,
  components: string[],
  tokenizers: string[],
  opts: OpenOptions,
  read: (f: OpenedFolder) => FolderParts | Promise<FolderParts>,
): Promise<Checkpoint> {
  const { dir } = folder;
  const { weights, rawConfigs } = await openFolderComponents(dir, components);
  try {
    const notes: string[] = [];
    const scheduler = await readFolderScheduler(dir, rawConfigs, notes, opts);
    const tokenizerDirs: Record<string, string> = {};
    for (const t of tokenizers) if (await pathExists(join(dir, t))) tokenizerDirs[t] = join(dir, t);
    const configFile = (c: string) => join(dir, c, 'config.json');
    const { family, configs, unmappedKeys } = await read({ dir, weights, rawConfigs, scheduler, notes, tokenizerDirs, configFile });
    return {
      path: dir,
      layout: 'diffusers',
      family,
      weights,
      configs,
      scheduler,
      rawConfigs,
      tokenizerDirs,
      pipelineIndex: folder.index,
      notes,
      unmappedKeys,
      metadata: {},
    };
  } catch (e) {
    await weights.close();
    throw e;
  }
}

/**
 * The config folder for a single file: the given one, or a diffusers folder of the same name beside it (the way A1111
 * reads a `<name>.yaml` beside a checkpoint). Head counts, for one, are not visible in tensor shapes.
 */
export async function findConfigDir(file: string, given: string | undefined): Promise<string | undefined> {
  if (given) {
    const st = await stat(given).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') throw new BadInputError(given, 'no such file or folder', 'Check the path.');
      throw e;
    });
    if (!st.isDirectory()) throw new BadInputError(given, 'is not a folder', 'Pass a diffusers folder (with unet/, vae/, text_encoder/ config files) to --config.');
    return given;
  }
  const sibling = join(dirname(file), basename(file).replace(/\.(safetensors|ckpt|pt|pth|bin)$/i, ''));
  return sibling !== file && (await pathExists(join(sibling, 'model_index.json'))) ? sibling : undefined;
}

/** config.json files of a config folder's components, plus its scheduler's prediction type and its tokenizer folders. */
export async function readConfigDir(
  dir: string,
  components: string[],
): Promise<{ overrides: Record<string, Json>; prediction?: PredictionType; tokenizerDirs: Record<string, string> }> {
  const overrides: Record<string, Json> = {};
  for (const c of components) {
    const f = join(dir, c, 'config.json');
    if (await pathExists(f)) overrides[c] = await readJson(f);
  }
  const schedulerFile = join(dir, 'scheduler', 'scheduler_config.json');
  const prediction = (await pathExists(schedulerFile)) ? ((await readJson(schedulerFile)).prediction_type as PredictionType | undefined) : undefined;
  const tokenizerDirs: Record<string, string> = {};
  for (const t of ['tokenizer', 'tokenizer_2']) if (await pathExists(join(dir, t, 'vocab.json'))) tokenizerDirs[t] = join(dir, t);
  return { overrides, prediction, tokenizerDirs };
}
