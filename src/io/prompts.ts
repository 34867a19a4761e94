import { accessSync, constants as fsConstants, createReadStream, statSync, type Stats } from 'node:fs';
import { extname } from 'node:path';
import { BadInputError, OnestepError } from '../errors.js';
import { fileKind } from './files.js';
import { firstNonSpaceByte, hasBom, splitLines, type RawLine } from './lines.js';
import { inShard, type Shard } from './shard.js';

/**
 * One prompt to generate. `index` counts prompts from 0 in file order: blank lines and `#` comment lines do not take
 * an index, but a bad line does (it is skipped, yet its index stays used), so fixing a bad line later never renumbers
 * the prompts after it, nor their seeds (seed = base seed + index).
 */
export interface PromptRecord {
  index: number;
  /** 1-based line number in the source. */
  line: number;
  prompt: string;
  negativePrompt?: string;
  seed?: bigint;
  width?: number;
  height?: number;
  guidance?: number;
  name?: string;
  /**
   * SDXL's size conditioning (diffusers' argument names), each [height, width] or [top, left]; a model without it
   * ignores them. Defaults: the image size, and crop (0, 0).
   */
  originalSize?: [number, number];
  cropsCoordsTopLeft?: [number, number];
  targetSize?: [number, number];
  /** Image-to-image: the init image's path (relative to the prompt file's folder) and the strength in (0, 1]. */
  image?: string;
  strength?: number;
}

export interface PromptIssue {
  line: number;
  message: string;
}

export interface PromptSummary {
  /** Prompts yielded (in this shard). */
  prompts: number;
  /** Bad lines skipped (in this shard). */
  skipped: number;
  /** Indices handed out in the whole file (prompts + bad lines, all shards). */
  indices: number;
  format: PromptFormat;
}

export type PromptFormat = 'text' | 'jsonl';

export interface ReadPromptsOptions {
  /** Make the first bad line fatal (a BadInputError naming file:line) instead of reporting and skipping it. */
  strict?: boolean;
  /** Called for each bad line that is skipped; by default a warning goes to stderr. */
  onIssue?: (issue: PromptIssue) => void;
  /** Called once the source is read to the end (the generator also returns the summary). */
  onSummary?: (summary: PromptSummary) => void;
  shard?: Shard;
  /** Force a format; by default `.jsonl`/`.ndjson` are JSONL, else JSONL when the first non-blank line starts with `{`. */
  format?: PromptFormat | 'auto';
  /** Name used in messages for a stream source (a path names itself; `-` is `<stdin>`). */
  label?: string;
}

/** Keys a JSONL line may have. */
export const JSONL_KEYS = ['prompt', 'negative_prompt', 'seed', 'width', 'height', 'guidance', 'name', 'original_size', 'crops_coords_top_left', 'target_size', 'image', 'strength'] as const;

export const MAX_SEED = (1n << 64n) - 1n;
export const MAX_SIDE = 16384;

const STDIN_LABEL = '<stdin>';

/** Prompt i's seed: its own when the JSONL line gives one, else base + index (wrapping within 64 bits). */
export function resolveSeed(record: Pick<PromptRecord, 'index' | 'seed'>, baseSeed: bigint): bigint {
  return record.seed ?? BigInt.asUintN(64, baseSeed + BigInt(record.index));
}

function formatFromExtension(path: string): PromptFormat | undefined {
  const ext = extname(path).toLowerCase();
  if (ext === '.jsonl' || ext === '.ndjson') return 'jsonl';
  return undefined;
}

/**
 * A prompt file that can be read: exists, is a file or a named pipe (a stream with a path), is readable. Synchronous
 * and cheap, so `generate` checks it before loading a model.
 */
export function checkPromptFile(source: string): void {
  let info: Stats;
  try {
    info = statSync(source);
    accessSync(source, fsConstants.R_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new BadInputError(source, 'no such prompt file.', 'Check the path, or pass - to read prompts from stdin.');
    if (code === 'EACCES') throw new BadInputError(source, 'cannot be read (permission denied).', 'Check the file permissions.');
    if (code === 'ELOOP') throw new BadInputError(source, 'is a symlink loop.', 'Check where the link points.');
    throw new BadInputError(source, `cannot be read (${code ?? String(err)}).`);
  }
  if (info.isDirectory()) throw new BadInputError(source, 'is a folder, not a prompt file.');
  // A named pipe is a stream with a path (mkfifo, a shell's <(...)), read as it comes like stdin; a socket or a
  // device (/dev/zero never ends) is refused.
  if (!info.isFile() && !info.isFIFO()) {
    throw new BadInputError(source, `is ${fileKind(info)}, not a regular file.`, `To stream prompts, pipe them into stdin: onestep generate - < ${source}`);
  }
}

async function openSource(
  source: string | NodeJS.ReadableStream,
  label: string | undefined,
): Promise<{ stream: AsyncIterable<Buffer | string>; label: string; format?: PromptFormat }> {
  if (typeof source !== 'string') return { stream: source as AsyncIterable<Buffer>, label: label ?? '<stream>' };
  if (source === '-') return { stream: process.stdin, label: label ?? STDIN_LABEL };
  checkPromptFile(source);
  return { stream: createReadStream(source, { highWaterMark: 256 * 1024 }), label: label ?? source, format: formatFromExtension(source) };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A problem with one prompt line (or one flag's value): reported for its line, or as a clear error. */
export class LineError extends OnestepError {}

function decodeLine(raw: RawLine): string {
  if (raw.tooLong) throw new LineError('line is too long (over 4 MiB); skipped.');
  try {
    return utf8.decode(raw.bytes);
  } catch {
    throw new LineError('invalid UTF-8.');
  }
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '...' : value)}`;
  return `${typeof value} ${JSON.stringify(value)}`;
}

/**
 * A seed, the one rule for JSONL lines and --seed: a whole number 0 .. 2^64-1, as a number (up to 2^53, where JSON
 * numbers stay exact) or a string of digits. `what` names it in the message (`"seed"`, `--seed`).
 */
export function parseSeed(value: unknown, what = '"seed"'): bigint {
  let seed: bigint;
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 0) throw new LineError(`${what} must be a non-negative whole number, got ${describe(value)}.`);
    if (!Number.isSafeInteger(value)) {
      throw new LineError(`${what} ${value} is above 2^53 and has lost digits as a JSON number; write it as a string of digits.`);
    }
    seed = BigInt(value);
  } else if (typeof value === 'string' && /^\d+$/.test(value)) {
    seed = BigInt(value);
  } else {
    throw new LineError(`${what} must be a whole number or a string of digits, got ${describe(value)}.`);
  }
  if (seed > MAX_SEED) throw new LineError(`${what} ${seed} does not fit in 64 bits.`);
  return seed;
}

/** The one rule for image sides (JSONL width/height and --width/--height): whole, 8 .. MAX_SIDE, a multiple of 8. */
export function parseSide(key: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) throw new LineError(`${key} must be a whole number, got ${describe(value)}.`);
  if (value < 8 || value > MAX_SIDE) throw new LineError(`${key} must be between 8 and ${MAX_SIDE}, got ${value}.`);
  if (value % 8 !== 0) throw new LineError(`${key} must be a multiple of 8, got ${value}.`);
  return value;
}

/** A [a, b] pair of whole numbers >= 0 (SDXL's size and crop conditioning). */
function parsePair(key: string, value: unknown): [number, number] {
  if (!Array.isArray(value) || value.length !== 2 || !value.every((v) => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= MAX_SIDE)) {
    throw new LineError(`"${key}" must be two whole numbers between 0 and ${MAX_SIDE}, like [1024, 1024], got ${describe(value)}.`);
  }
  return [value[0], value[1]];
}

function parseJsonLine(text: string, index: number, line: number): PromptRecord {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new LineError(`invalid JSON (${(err as Error).message}).`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new LineError(`a JSONL line must be an object like {"prompt": "..."}, got ${describe(value)}.`);
  }
  const obj = value as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    if (!(JSONL_KEYS as readonly string[]).includes(key)) {
      throw new LineError(`unknown key "${key}" (allowed: ${JSONL_KEYS.join(', ')}).`);
    }
  }
  if (typeof obj.prompt !== 'string') throw new LineError(`"prompt" must be a string, got ${obj.prompt === undefined ? 'nothing' : describe(obj.prompt)}.`);
  const record: PromptRecord = { index, line, prompt: obj.prompt };
  // null means "not given" for the optional keys: tools that write JSONL from tables emit it for empty cells.
  if (obj.negative_prompt != null) {
    if (typeof obj.negative_prompt !== 'string') throw new LineError(`"negative_prompt" must be a string, got ${describe(obj.negative_prompt)}.`);
    record.negativePrompt = obj.negative_prompt;
  }
  if (obj.seed != null) record.seed = parseSeed(obj.seed);
  if (obj.width != null) record.width = parseSide('"width"', obj.width);
  if (obj.height != null) record.height = parseSide('"height"', obj.height);
  if (obj.guidance != null) {
    if (typeof obj.guidance !== 'number' || !Number.isFinite(obj.guidance) || obj.guidance < 0) {
      throw new LineError(`"guidance" must be a number >= 0, got ${describe(obj.guidance)}.`);
    }
    record.guidance = obj.guidance;
  }
  if (obj.name != null) {
    if (typeof obj.name !== 'string' || obj.name.trim() === '') throw new LineError(`"name" must be a non-empty string, got ${describe(obj.name)}.`);
    record.name = obj.name;
  }
  if (obj.original_size != null) record.originalSize = parsePair('original_size', obj.original_size);
  if (obj.crops_coords_top_left != null) record.cropsCoordsTopLeft = parsePair('crops_coords_top_left', obj.crops_coords_top_left);
  if (obj.target_size != null) record.targetSize = parsePair('target_size', obj.target_size);
  if (obj.image != null) {
    if (typeof obj.image !== 'string' || obj.image.trim() === '') throw new LineError(`"image" must be a path to an image, got ${describe(obj.image)}.`);
    record.image = obj.image;
  }
  if (obj.strength != null) {
    if (typeof obj.strength !== 'number' || !(obj.strength > 0 && obj.strength <= 1)) throw new LineError(`"strength" must be a number above 0 and at most 1, got ${describe(obj.strength)}.`);
    record.strength = obj.strength;
  }
  return record;
}

const HASH = 0x23;
const BRACE = 0x7b;

/**
 * Streams prompts from a text or JSONL file, `-` (stdin) or a readable stream, one line at a time: the first record is
 * yielded before the source is read to the end, and memory stays bounded for any length. Bad lines (invalid UTF-8,
 * invalid JSON, unknown keys, bad values) are reported through `onIssue` with their line numbers and skipped, or with
 * `strict` end the read with a BadInputError naming file:line. Lines of other shards are only counted, not parsed,
 * so their problems are reported by the shard that owns them.
 */
export async function* readPrompts(
  source: string | NodeJS.ReadableStream,
  opts: ReadPromptsOptions = {},
): AsyncGenerator<PromptRecord, PromptSummary, undefined> {
  const opened = await openSource(source, opts.label);
  let format: PromptFormat | undefined = opts.format && opts.format !== 'auto' ? opts.format : opened.format;
  const report =
    opts.onIssue ?? ((issue: PromptIssue) => process.stderr.write(`warning: ${opened.label}:${issue.line}: ${issue.message}\n`));
  let index = 0;
  let prompts = 0;
  let skipped = 0;

  for await (const raw of splitLines(opened.stream)) {
    const first = raw.tooLong ? -2 : firstNonSpaceByte(raw.bytes, raw.line === 1);
    if (first === -1 || first === HASH) continue;
    if (format === undefined) format = first === BRACE ? 'jsonl' : 'text';
    const promptIndex = index++;
    if (!inShard(promptIndex, opts.shard)) continue;

    let record: PromptRecord;
    try {
      const text = decodeLine(raw);
      record = format === 'jsonl' ? parseJsonLine(text, promptIndex, raw.line) : { index: promptIndex, line: raw.line, prompt: text.trim() };
    } catch (err) {
      if (!(err instanceof LineError)) throw err;
      if (opts.strict) {
        throw new BadInputError(`${opened.label}:${raw.line}`, err.message, 'Fix the line, or leave out --strict to skip bad lines.');
      }
      skipped++;
      report({ line: raw.line, message: err.message });
      continue;
    }
    prompts++;
    yield record;
  }

  const summary: PromptSummary = { prompts, skipped, indices: index, format: format ?? 'text' };
  opts.onSummary?.(summary);
  return summary;
}

/** One line for the end of a run, e.g. "1000 prompts read, 2 bad lines skipped". */
export function formatPromptSummary(summary: PromptSummary): string {
  const prompts = `${summary.prompts} prompt${summary.prompts === 1 ? '' : 's'} read`;
  if (summary.skipped === 0) return prompts;
  return `${prompts}, ${summary.skipped} bad line${summary.skipped === 1 ? '' : 's'} skipped`;
}

/**
 * How many prompt indices a file holds (in `shard`, when given), for progress: streams the file once, counting
 * lines that are neither blank nor comments, without decoding or parsing them. Bad lines are counted, as they take an
 * index, so this is exact when the file has none and an upper bound otherwise. Not for stdin.
 */
export async function countPrompts(path: string, opts: { shard?: Shard } = {}): Promise<number> {
  if (path === '-') throw new OnestepError('Cannot count prompts on stdin ahead of reading them.');
  const opened = await openSource(path, undefined);
  let total = 0;
  let inShardCount = 0;
  // Byte scan: at the start of a line, skip spaces; the first other byte decides (\n blank, # comment, else a prompt).
  let atLineStart = true;
  let firstChunk = true;
  for await (const chunk of opened.stream) {
    const buf = chunk as Buffer;
    // The 256 KiB first chunk always holds a whole BOM when there is one.
    const start = firstChunk && hasBom(buf) ? 3 : 0;
    firstChunk = false;
    for (let i = start; i < buf.length; i++) {
      const b = buf[i];
      if (!atLineStart) {
        if (b === 0x0a) atLineStart = true;
        continue;
      }
      if (b === 0x0a || b === 0x20 || b === 0x09 || b === 0x0d || b === 0x0b || b === 0x0c) continue;
      atLineStart = false;
      if (b !== HASH) {
        if (inShard(total, opts.shard)) inShardCount++;
        total++;
      }
    }
  }
  return inShardCount;
}
