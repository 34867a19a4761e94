/**
 * Where generated images go: `files` (one image file per prompt in the output folder, plus `metadata.jsonl` so that
 * Hugging Face `datasets` loads the folder as an `imagefolder`) or `webdataset` (tar shards, see io/webdataset.ts).
 * Both record every image in `manifest.jsonl`, which is what `--resume` reads.
 */
import { createReadStream } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { registerTempPath, writeFileAtomic } from './atomic.js';
import { splitLines } from './lines.js';
import { MANIFEST_FILE, type Manifest, type ManifestInput } from './manifest.js';

export type OutputFormat = 'files' | 'webdataset';
export const OUTPUT_FORMATS: readonly OutputFormat[] = ['files', 'webdataset'];
export const METADATA_FILE = 'metadata.jsonl';

/** One encoded image and what the manifest records of it (`file` is its name in the folder, or its member name). */
export interface OutputImage {
  entry: ManifestInput;
  data: Buffer;
}

export interface ImageOutput {
  /** Whether `--resume` may skip this index: its image is already kept. */
  isDone(index: number): boolean;
  /**
   * Called in reading order for each index that will be generated. True when this index starts a new group (a
   * webdataset shard): the caller then runs its partial batches, so the groups before it can be finished.
   */
  expect(index: number): boolean;
  write(image: OutputImage): Promise<void>;
  /** No more `expect` calls: the prompt source is read to its end (not called after an interrupt). */
  inputEnded(): Promise<void>;
  /** Finishes what is complete, drops what is not (an interrupted run), and closes the manifest. Returns how many images it dropped. */
  close(): Promise<number>;
}

/** Image files in the output folder, as today; `metadata.jsonl` is rewritten from the manifest on close. */
export class FilesOutput implements ImageOutput {
  constructor(
    private readonly out: string,
    private readonly manifest: Manifest,
  ) {}

  isDone(index: number): boolean {
    return this.manifest.completed.has(index) && !this.manifest.shards.has(index);
  }

  expect(): boolean {
    return false;
  }

  async write(image: OutputImage): Promise<void> {
    const file = path.join(this.out, image.entry.file);
    // Until its manifest line is written the image is not part of the folder: a quit between the two (a second Ctrl-C)
    // removes it with the temp files, so every image on disk is one the manifest (and --resume) knows.
    const unregister = registerTempPath(file);
    try {
      await writeFileAtomic(file, image.data);
      await this.manifest.append(image.entry);
    } finally {
      unregister();
    }
  }

  async inputEnded(): Promise<void> {}

  /** Closes the manifest (its appends flushed), then rewrites metadata.jsonl from it. */
  async close(): Promise<number> {
    await this.manifest.close();
    await writeImageFolderMetadata(this.out);
    return 0;
  }
}

const INT64_MAX = (1n << 63n) - 1n;

/**
 * Writes `<dir>/metadata.jsonl` (atomically) from `<dir>/manifest.jsonl`: one row per image file that exists in the
 * folder, in index order, the last manifest line of an index winning: `file_name` and `text` (the prompt), which
 * `datasets`' imagefolder needs, then the other fields. Seeds are JSON integers, exact, as Arrow reads them into
 * int64; when one is 2^63 or above (only a prompt line's own seed can be), all are strings, so the column keeps one type.
 * Returns the row count.
 */
export async function writeImageFolderMetadata(dir: string): Promise<number> {
  const rows = new Map<number, { fields: Record<string, unknown>; seed: bigint }>();
  try {
    for await (const raw of splitLines(createReadStream(path.join(dir, MANIFEST_FILE)), Number.MAX_SAFE_INTEGER)) {
      const text = raw.bytes.toString('utf8').trim();
      if (!text.endsWith('}')) continue; // a torn last line of a killed run
      const e = JSON.parse(text) as Record<string, unknown>;
      if (typeof e.shard === 'string' || typeof e.file !== 'string' || typeof e.index !== 'number') {
        if (typeof e.index === 'number') rows.delete(e.index);
        continue;
      }
      rows.set(e.index, {
        seed: BigInt(e.seed as number | string),
        fields: {
          file_name: e.file,
          text: e.prompt,
          ...(e.negative_prompt !== undefined ? { negative_prompt: e.negative_prompt } : {}),
          index: e.index,
          width: e.width,
          height: e.height,
          ...(e.guidance !== undefined ? { guidance: e.guidance } : {}),
          ...(e.name !== undefined ? { name: e.name } : {}),
          model: e.model,
          ...(e.model_name !== undefined ? { model_name: e.model_name } : {}),
        },
      });
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const present = new Set(await readdir(dir));
  const indices = [...rows.keys()].filter((i) => present.has(rows.get(i)!.fields.file_name as string)).sort((a, b) => a - b);
  const asStrings = indices.some((i) => rows.get(i)!.seed > INT64_MAX);
  const lines = indices.map((i) => {
    const { fields, seed } = rows.get(i)!;
    const { file_name, text, ...rest } = fields;
    const seedJson = asStrings ? JSON.stringify(seed.toString()) : seed.toString();
    const head = JSON.stringify({ file_name, text });
    const tail = JSON.stringify(rest);
    return `${head.slice(0, -1)},"seed":${seedJson},${tail.slice(1)}\n`;
  });
  await writeFileAtomic(path.join(dir, METADATA_FILE), lines.join(''));
  return lines.length;
}
