/**
 * What a generate run makes of its prompts, before any model is involved: the images of each prompt
 * (`--images-per-prompt`), their seeds, and their place in the output (webdataset shard).
 *
 * With n images per prompt, image j of prompt i has index i·n + j and seed base + i·n + j (a JSONL line's own seed s
 * gives s + j), so seeds never overlap between prompts and do not depend on the batch size; n = 1 is the plain
 * rule, index = prompt index, seed = base + i.
 */
import { createReadStream } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { ImageFormat } from './io/images.js';
import { InitImages, initImageSize } from './io/init-image.js';
import { splitLines } from './io/lines.js';
import { MANIFEST_FILE } from './io/manifest.js';
import { NameAllocator } from './io/names.js';
import type { OutputFormat } from './io/outputs.js';
import { readPrompts, resolveSeed, type PromptRecord } from './io/prompts.js';
import type { Shard } from './io/shard.js';
import { shardFileName, webdatasetKey } from './io/webdataset.js';

/** One image to make: a prompt record whose `index` is the image's index. */
export interface ImageRecord extends PromptRecord {
  /** The prompt's index in the file. */
  promptIndex: number;
}

export function imagesOf(record: PromptRecord, perPrompt: number): ImageRecord[] {
  const out: ImageRecord[] = [];
  for (let j = 0; j < perPrompt; j++) {
    out.push({
      ...record,
      index: record.index * perPrompt + j,
      promptIndex: record.index,
      ...(record.seed !== undefined ? { seed: BigInt.asUintN(64, record.seed + BigInt(j)) } : {}),
    });
  }
  return out;
}

/**
 * An image index's place among the images this process makes (0, 1, 2, ...): with `--shard s/N` a process makes the
 * prompts s, s+N, s+2N, ..., so prompt i is its (i - s) / N-th.
 */
export function imageOrdinal(index: number, perPrompt: number, shard: Shard | undefined): number {
  const prompt = Math.floor(index / perPrompt);
  const j = index - prompt * perPrompt;
  const promptOrdinal = shard ? (prompt - shard.index) / shard.count : prompt;
  return promptOrdinal * perPrompt + j;
}

export interface PlanOptions {
  seed: bigint;
  shard?: Shard;
  imagesPerPrompt: number;
  /** --width / --height, else the model's default size when known (undefined: not converted yet). */
  width?: number;
  height?: number;
  defaultSize?: { width: number; height: number };
  outputFormat: OutputFormat;
  shardSize: number;
  out: string;
  resume: boolean;
  strict: boolean;
  nameTemplate: string;
  format: ImageFormat;
  /** --init-image, and the prompt file (its folder resolves a JSONL line's `image`), as generate takes them. */
  initImage?: string;
  promptFile?: string;
  /** Images listed one by one in the plan. */
  list?: number;
  onIssue?: (line: number, message: string) => void;
}

export interface PlannedImage {
  index: number;
  prompt_index: number;
  seed: string;
  size: string;
  /** The image's file (files) or its shard (webdataset). */
  to: string;
  prompt: string;
}

/** What `generate --dry-run` prints (as JSON with --json). */
export interface Plan {
  dry_run: true;
  out: string;
  output_format: OutputFormat;
  shard: string | null;
  prompts: number;
  bad_lines: number;
  images_per_prompt: number;
  images: number;
  already_done: number;
  to_generate: number;
  /** Of those, how many start from an init image (image-to-image). */
  image_to_image: number;
  /** "WxH" (or "model default" while the model is not converted) -> images to generate. */
  sizes: Record<string, number>;
  seed_min: string | null;
  seed_max: string | null;
  /** The webdataset shards to be written, in order. */
  tar_shards: string[];
  first: PlannedImage[];
}

const MODEL_DEFAULT = 'model default';

/** What the manifest of `out` holds as done (read only: a dry run writes nothing), as generate --resume decides it. */
async function doneInFolder(out: string, format: OutputFormat): Promise<{ done: Set<number>; files: Map<number, string> }> {
  const done = new Set<number>();
  const files = new Map<number, string>();
  const last = new Map<number, { file: string; shard?: string }>();
  let present: Set<string>;
  try {
    present = new Set(await readdir(out));
  } catch {
    return { done, files };
  }
  if (!present.has(MANIFEST_FILE)) return { done, files };
  for await (const raw of splitLines(createReadStream(path.join(out, MANIFEST_FILE)), Number.MAX_SAFE_INTEGER)) {
    const text = raw.bytes.toString('utf8').trim();
    if (!text.endsWith('}')) continue;
    try {
      const e = JSON.parse(text);
      if (typeof e.index === 'number' && typeof e.file === 'string') last.set(e.index, { file: e.file, shard: typeof e.shard === 'string' ? e.shard : undefined });
    } catch {
      // generate itself reports a bad manifest line; the plan only counts what is done.
    }
  }
  for (const [index, e] of last) {
    files.set(index, e.file);
    if (format === 'webdataset' ? e.shard !== undefined && present.has(e.shard) : e.shard === undefined && present.has(e.file)) done.add(index);
  }
  return { done, files };
}

/** Reads the prompts as generate would and says what it would make, without a model. */
export async function planRun(source: string | NodeJS.ReadableStream, opts: PlanOptions): Promise<Plan> {
  const n = opts.imagesPerPrompt;
  const { done, files } = opts.resume ? await doneInFolder(opts.out, opts.outputFormat) : { done: new Set<number>(), files: new Map<number, string>() };
  const names = new NameAllocator(opts.nameTemplate, opts.format === 'jpeg' ? 'jpg' : opts.format, [...files].map(([index, file]) => ({ index, file })));
  const plan: Plan = {
    dry_run: true,
    out: opts.out,
    output_format: opts.outputFormat,
    shard: opts.shard ? `${opts.shard.index}/${opts.shard.count}` : null,
    prompts: 0,
    bad_lines: 0,
    images_per_prompt: n,
    images: 0,
    already_done: 0,
    to_generate: 0,
    image_to_image: 0,
    sizes: {},
    seed_min: null,
    seed_max: null,
    tar_shards: [],
    first: [],
  };
  let min: bigint | undefined;
  let max: bigint | undefined;
  const inits = await InitImages.open(opts.initImage, opts.promptFile);
  const initSizes = new Map<string, { width: number; height: number }>();
  const prompts = readPrompts(source, { strict: opts.strict, shard: opts.shard, onIssue: (i) => opts.onIssue?.(i.line, i.message) });
  for (;;) {
    const next = await prompts.next();
    if (next.done) {
      plan.prompts = next.value.prompts;
      plan.bad_lines = next.value.skipped;
      break;
    }
    for (const image of imagesOf(next.value, n)) {
      plan.images++;
      if (done.has(image.index)) {
        plan.already_done++;
        continue;
      }
      plan.to_generate++;
      const seed = resolveSeed(image, opts.seed);
      min = min === undefined || seed < min ? seed : min;
      max = max === undefined || seed > max ? seed : max;
      // An init image gives its own size (floored to a multiple of 8) when neither the line nor the flags give one.
      const initFile = inits.fileFor(image.promptIndex, image.image);
      let initSize: { width: number; height: number } | undefined;
      if (initFile) {
        plan.image_to_image++;
        initSize = initSizes.get(initFile) ?? (await initImageSize(initFile, 8));
        initSizes.set(initFile, initSize);
      }
      const width = image.width ?? opts.width ?? initSize?.width ?? opts.defaultSize?.width;
      const height = image.height ?? opts.height ?? initSize?.height ?? opts.defaultSize?.height;
      const size = width !== undefined && height !== undefined ? `${width}x${height}` : MODEL_DEFAULT;
      plan.sizes[size] = (plan.sizes[size] ?? 0) + 1;
      const tar = shardFileName(Math.floor(imageOrdinal(image.index, n, opts.shard) / opts.shardSize));
      if (opts.outputFormat === 'webdataset' && plan.tar_shards[plan.tar_shards.length - 1] !== tar) plan.tar_shards.push(tar);
      if (plan.first.length < (opts.list ?? 10)) {
        const file = names.allocate({ index: image.index, seed, prompt: image.prompt, name: image.name, width: width ?? 0, height: height ?? 0 });
        plan.first.push({
          index: image.index,
          prompt_index: image.promptIndex,
          seed: seed.toString(),
          size,
          to: opts.outputFormat === 'webdataset' ? `${tar}/${webdatasetKey(file)}` : file,
          prompt: image.prompt,
        });
      }
    }
  }
  plan.seed_min = min?.toString() ?? null;
  plan.seed_max = max?.toString() ?? null;
  return plan;
}

/** The plan for people: counts, sizes, seeds, shard, then the first images. */
export function formatPlan(plan: Plan): string {
  const lines = [
    `dry run: nothing generated, no model loaded`,
    `prompts: ${plan.prompts}${plan.bad_lines ? ` (${plan.bad_lines} bad lines skipped)` : ''}${plan.shard ? ` in shard ${plan.shard}` : ''}`,
    `images: ${plan.images}${plan.images_per_prompt > 1 ? ` (${plan.images_per_prompt} per prompt)` : ''}` +
      `${plan.already_done ? `, ${plan.already_done} already done` : ''}, ${plan.to_generate} to generate` +
      `${plan.image_to_image ? ` (${plan.image_to_image} from init images)` : ''}`,
    `sizes: ${Object.entries(plan.sizes).map(([s, c]) => `${s} x${c}`).join(', ') || '-'}`,
    `seeds: ${plan.seed_min === null ? '-' : plan.seed_min === plan.seed_max ? plan.seed_min : `${plan.seed_min} .. ${plan.seed_max}`}`,
    `output: ${plan.out} as ${plan.output_format}` +
      (plan.output_format === 'webdataset' ? ` (${plan.tar_shards.length} shards${plan.tar_shards.length ? `: ${plan.tar_shards[0]}${plan.tar_shards.length > 1 ? ` .. ${plan.tar_shards[plan.tar_shards.length - 1]}` : ''}` : ''})` : ''),
  ];
  if (plan.first.length) {
    lines.push(`first ${plan.first.length}:`);
    for (const p of plan.first) lines.push(`  ${p.index}\tseed ${p.seed}\t${p.size}\t${p.to}\t${p.prompt.length > 60 ? p.prompt.slice(0, 57) + '...' : p.prompt}`);
  }
  return lines.join('\n');
}
