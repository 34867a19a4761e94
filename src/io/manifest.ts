import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, stat, truncate, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { BadInputError } from '../errors.js';
import { splitLines } from './lines.js';

export const MANIFEST_FILE = 'manifest.jsonl';

/** What the pipeline records for one written image. */
export interface ManifestInput {
  index: number;
  prompt: string;
  negativePrompt?: string;
  seed: bigint;
  width: number;
  height: number;
  guidance?: number;
  name?: string;
  /** The image's file, relative to the output folder. */
  file: string;
  /** The model's hash. */
  model: string;
  /** What else decides the image beside the checkpoint: LoRAs, dtype, decoder (see generate.ts modelId). */
  modelId?: string;
  prediction?: string;
  timestep?: number;
  /** The model's name (its checkpoint's file name), for people and galleries. */
  modelName?: string;
  /** The webdataset shard (`00003.tar`) holding `file` as a member; absent for a file in the folder. */
  shard?: string;
  /** Image-to-image: sha256 of the init image file and the strength. */
  initImage?: string;
  strength?: number;
  /** Timings in milliseconds, e.g. { encode: 14.2, total: 830 }. */
  ms?: Record<string, number>;
}

/** One line of manifest.jsonl. `seed` is a number up to 2^53-1 and a string of digits above (JSON numbers lose digits). */
export interface ManifestEntry {
  index: number;
  prompt: string;
  negative_prompt?: string;
  seed: number | string;
  width: number;
  height: number;
  guidance?: number;
  name?: string;
  file: string;
  model: string;
  model_id?: string;
  prediction?: string;
  timestep?: number;
  /** sha256 of the prompt text (UTF-8). */
  prompt_sha256?: string;
  model_name?: string;
  shard?: string;
  /** Image-to-image: sha256 of the init image file, and the strength. */
  init_image?: string;
  strength?: number;
  ms?: Record<string, number>;
}

export function manifestSeed(seed: bigint): number | string {
  return seed <= BigInt(Number.MAX_SAFE_INTEGER) && seed >= 0n ? Number(seed) : seed.toString();
}

export function entrySeed(entry: Pick<ManifestEntry, 'seed'>): bigint {
  return BigInt(entry.seed);
}

export function toManifestEntry(input: ManifestInput): ManifestEntry {
  const entry: ManifestEntry = {
    index: input.index,
    prompt: input.prompt,
    ...(input.negativePrompt !== undefined ? { negative_prompt: input.negativePrompt } : {}),
    seed: manifestSeed(input.seed),
    width: input.width,
    height: input.height,
    ...(input.guidance !== undefined ? { guidance: input.guidance } : {}),
    ...(input.name !== undefined ? { name: input.name } : {}),
    file: input.file,
    model: input.model,
    ...(input.modelId !== undefined ? { model_id: input.modelId } : {}),
    ...(input.prediction !== undefined ? { prediction: input.prediction } : {}),
    ...(input.timestep !== undefined ? { timestep: input.timestep } : {}),
    prompt_sha256: promptSha256(input.prompt),
    ...(input.modelName !== undefined ? { model_name: input.modelName } : {}),
    ...(input.shard !== undefined ? { shard: input.shard } : {}),
    ...(input.initImage !== undefined ? { init_image: input.initImage, strength: input.strength } : {}),
    ...(input.ms !== undefined ? { ms: input.ms } : {}),
  };
  return entry;
}

export function promptSha256(prompt: string): string {
  return createHash('sha256').update(prompt, 'utf8').digest('hex');
}

/**
 * What decides an image, as `--resume` compares it: a line made with other settings than this run's is not "done".
 * Fields a line does not record (older manifests) are not compared.
 */
export const RESUME_FIELDS = ['model', 'model_id', 'prediction', 'timestep', 'seed', 'width', 'height', 'guidance', 'prompt', 'negative_prompt', 'name', 'init_image', 'strength'] as const;
type ResumeField = (typeof RESUME_FIELDS)[number];

function resumeValues(e: Partial<ManifestEntry>): Partial<Record<ResumeField, string>> {
  const v: Partial<Record<ResumeField, string>> = {};
  const put = (k: ResumeField, x: unknown) => {
    if (x !== undefined && x !== null) v[k] = String(x);
  };
  put('model', e.model);
  put('model_id', e.model_id);
  put('prediction', e.prediction);
  put('timestep', e.timestep);
  put('seed', e.seed === undefined ? undefined : BigInt(e.seed));
  put('width', e.width);
  put('height', e.height);
  put('guidance', e.guidance);
  put('prompt', e.prompt_sha256 ?? (typeof e.prompt === 'string' ? promptSha256(e.prompt) : undefined));
  // A line leaves out negative_prompt and name when there are none.
  put('negative_prompt', e.negative_prompt ?? '');
  put('name', e.name ?? '');
  // Text-to-image lines record no init image: '' then, so switching between the two is a difference.
  put('init_image', e.init_image ?? '');
  put('strength', e.strength ?? '');
  return v;
}

/** A compact fingerprint of a line's resume fields: `<mask>:<hash>`, the mask saying which fields it records. */
function fingerprint(values: Partial<Record<ResumeField, string>>, mask?: number): string {
  let m = 0;
  const h = createHash('sha256');
  RESUME_FIELDS.forEach((k, i) => {
    const present = mask === undefined ? values[k] !== undefined : (mask & (1 << i)) !== 0;
    if (!present) return;
    m |= 1 << i;
    h.update(`${k}=${values[k] ?? '\u0000missing'}\n`);
  });
  return `${m}:${h.digest('hex').slice(0, 16)}`;
}

/** `field: old -> new` for each resume field that differs (hashes shown for the prompt texts). */
export function resumeDifferences(old: Partial<ManifestEntry>, now: ManifestEntry): string[] {
  const a = resumeValues(old);
  const b = resumeValues(now);
  const out: string[] = [];
  for (const k of RESUME_FIELDS) {
    if (a[k] === undefined || a[k] === b[k]) continue;
    if (k === 'prompt') out.push(`prompt text: ${JSON.stringify(clip(old.prompt ?? ''))} -> ${JSON.stringify(clip(now.prompt))}`);
    else out.push(`${k}: ${JSON.stringify(a[k])} -> ${JSON.stringify(b[k])}`);
  }
  return out;
}

function clip(text: string): string {
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function isEntry(value: unknown): value is ManifestEntry {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    Number.isSafeInteger(v.index) &&
    (v.index as number) >= 0 &&
    typeof v.file === 'string' &&
    (typeof v.seed === 'number' || (typeof v.seed === 'string' && /^\d+$/.test(v.seed)))
  );
}

/**
 * The manifest of an output folder, open for appending. Each append is one `write` of one whole line on a file
 * opened with O_APPEND, so a line is either all there or (after SIGKILL mid-write) a torn tail, which the next
 * openManifest cuts off.
 */
export class Manifest {
  private queue: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    /** index -> file, from the lines already there (the last line wins for an index written twice). */
    readonly files: Map<number, string>,
    /** Indices whose line is there and whose file exists: what `--resume` skips. */
    readonly completed: Set<number>,
    /** index -> webdataset shard, for the indices whose last line names one (see io/webdataset.ts). */
    readonly shards: Map<number, string>,
    /** Bytes of torn last line cut off on open (0 when the manifest was whole). */
    readonly repairedBytes: number,
    /** index -> fingerprint of its (last) line's resume fields. */
    private readonly fingerprints: Map<number, string> = new Map(),
    /** Names in the folder that no line records (the user's files): never to be overwritten by an image. */
    readonly unrecorded: readonly string[] = [],
  ) {}

  /**
   * Whether index's line was made with the settings `now` describes (see RESUME_FIELDS). Returns true when it was
   * (or the index has no line), else the line as recorded, for resumeDifferences.
   */
  async matches(now: ManifestInput): Promise<true | ManifestEntry> {
    const recorded = this.fingerprints.get(now.index);
    if (recorded === undefined) return true;
    const entry = toManifestEntry(now);
    if (fingerprint(resumeValues(entry), Number(recorded.split(':')[0])) === recorded) return true;
    return (await this.lastLine(now.index)) ?? true;
  }

  /** The last line recorded for an index (read back from the file: only the fingerprints are kept in memory). */
  private async lastLine(index: number): Promise<ManifestEntry | undefined> {
    let found: ManifestEntry | undefined;
    for await (const raw of splitLines(createReadStream(this.path), Number.MAX_SAFE_INTEGER)) {
      try {
        const v = JSON.parse(raw.bytes.toString('utf8'));
        if (isEntry(v) && v.index === index) found = v;
      } catch {
        // A line being appended right now: not the one looked for.
      }
    }
    return found;
  }

  /** Entries as { index, file } for NameAllocator; files no line records come with index -1 (taken by no prompt). */
  *existing(): Iterable<{ index: number; file: string }> {
    for (const [index, file] of this.files) yield { index, file };
    for (const file of this.unrecorded) yield { index: -1, file };
  }

  /** Appends one line. Appends are written in call order; await it to know the line is written. */
  append(input: ManifestInput | ManifestEntry): Promise<void> {
    if (this.closed) return Promise.reject(new Error('manifest is closed'));
    const entry = typeof input.seed === 'bigint' ? toManifestEntry(input as ManifestInput) : (input as ManifestEntry);
    const line = Buffer.from(JSON.stringify(entry) + '\n', 'utf8');
    const write = async (): Promise<void> => {
      let offset = 0;
      while (offset < line.length) {
        const { bytesWritten } = await this.handle.write(line, offset, line.length - offset);
        offset += bytesWritten;
      }
      this.files.set(entry.index, entry.file);
      if (entry.shard !== undefined) this.shards.set(entry.index, entry.shard);
      else this.shards.delete(entry.index);
      this.completed.add(entry.index);
      this.fingerprints.set(entry.index, fingerprint(resumeValues(entry)));
    };
    const result = this.queue.then(write);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /** Waits for pending appends, fsyncs, and closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue;
    try {
      await this.handle.sync();
    } finally {
      await this.handle.close();
    }
  }
}

/**
 * Opens (creating when missing) `<outDir>/manifest.jsonl`: reads the entries already there, cuts off a torn last
 * line (one without its `\n`, as a SIGKILL mid-write leaves), and works out which indices are complete (their line is
 * there and their file exists). A bad line in the middle is not a crash artefact, so it is an error naming the line.
 */
export async function openManifest(outDir: string): Promise<Manifest> {
  await mkdir(outDir, { recursive: true });
  const path = join(outDir, MANIFEST_FILE);
  const files = new Map<number, string>();
  const fingerprints = new Map<number, string>();
  const shards = new Map<number, string>();
  const totalBytes = await sizeOrZero(path);
  // Everything after the last `\n` is a torn line (one append writes a whole line, `\n` last).
  const goodBytes = totalBytes === 0 ? 0 : await endOfLastNewline(path, totalBytes);

  if (goodBytes > 0) {
    const stream = createReadStream(path, { start: 0, end: goodBytes - 1, highWaterMark: 256 * 1024 });
    for await (const raw of splitLines(stream, Number.MAX_SAFE_INTEGER)) {
      const text = raw.bytes.toString('utf8').trim();
      if (text === '') continue;
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch {
        value = undefined;
      }
      if (!isEntry(value)) {
        throw new BadInputError(
          `${path}:${raw.line}`,
          'is not a manifest entry (a JSON object with index, seed and file).',
          'Remove or fix that line; onestep only writes whole lines, so something else edited the file.',
        );
      }
      files.set(value.index, value.file);
      fingerprints.set(value.index, fingerprint(resumeValues(value)));
      if (typeof value.shard === 'string') shards.set(value.index, value.shard);
      else shards.delete(value.index);
    }
  }

  const repairedBytes = totalBytes - goodBytes;
  if (repairedBytes > 0) await truncate(path, goodBytes);

  const completed = new Set<number>();
  const names = new Set(await readdir(outDir));
  for (const [index, file] of files) {
    const present = file.includes('/') || file.includes('\\') ? await fileExists(join(outDir, file)) : names.has(file);
    if (present) completed.add(index);
  }

  const recorded = new Set([...files.values()]);
  const unrecorded = [...names].filter((n) => n !== MANIFEST_FILE && !recorded.has(n));
  const handle = await open(path, 'a');
  return new Manifest(path, handle, files, completed, shards, repairedBytes, fingerprints, unrecorded);
}

async function fileExists(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

async function sizeOrZero(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
}

/** The offset just past the file's last `\n` (0 when it has none), reading backwards from the end in blocks. */
async function endOfLastNewline(path: string, size: number): Promise<number> {
  const handle = await open(path, 'r');
  try {
    const block = Buffer.alloc(64 * 1024);
    let end = size;
    while (end > 0) {
      const start = Math.max(0, end - block.length);
      const { bytesRead } = await handle.read(block, 0, end - start, start);
      const at = block.subarray(0, bytesRead).lastIndexOf(0x0a);
      if (at >= 0) return start + at + 1;
      end = start;
    }
    return 0;
  } finally {
    await handle.close();
  }
}
