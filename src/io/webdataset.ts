/**
 * `--output-format webdataset`: tar shards `00000.tar`, `00001.tar`, ... in the output folder, each holding for every
 * image `<key>.<png|webp|jpg>`, `<key>.txt` (the prompt) and `<key>.json` (what the manifest records, less timings).
 *
 * - Image i of this process (its ordinal: the index itself, or its place in a `--shard i/N` cluster split) goes in
 *   shard floor(ordinal / shardSize), whatever the batch size, worker count or interruptions.
 * - Members are in index order and tar headers are fixed (io/tar.ts), so a shard is byte-identical across runs.
 * - A shard is written to a temp file and renamed into place once its last image is in: a `NNNNN.tar` that exists is
 *   complete. Its manifest lines (with `shard`) are appended just before the rename, so the manifest names the shard
 *   of every key that is in one; lines whose shard file does not exist are from an interrupted shard.
 * - `--resume` keeps complete shards and regenerates every prompt of an incomplete one.
 * Images finished out of order wait in memory for the ones before them (about the batches in flight).
 */
import { open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { OnestepError } from '../errors.js';
import { fsyncDir, registerTempPath, tempPathFor, writeAll } from './atomic.js';
import { toManifestEntry, type Manifest, type ManifestInput } from './manifest.js';
import type { ImageOutput, OutputImage } from './outputs.js';
import { TAR_END, tarMember } from './tar.js';

export function shardFileName(shard: number): string {
  return `${String(shard).padStart(5, '0')}.tar`;
}

const SHARD_FILE = /^\d{5,}\.tar$/;

/** A webdataset key: the image's file stem without dots (a loader splits a member name at its first dot). */
export function webdatasetKey(file: string): string {
  const dot = file.lastIndexOf('.');
  return (dot > 0 ? file.slice(0, dot) : file).replace(/\./g, '_');
}

export interface WebDatasetOptions {
  out: string;
  shardSize: number;
  manifest: Manifest;
  /** An image index's place (0, 1, 2, ...) among the images this process makes, which decides its shard. */
  ordinal: (index: number) => number;
}

interface OpenShard {
  readonly number: number;
  readonly name: string;
  /** Indices to go in, in reading order (ascending). */
  readonly order: number[];
  /** How many of `order` are written into the temp file. */
  next: number;
  inputDone: boolean;
  finished: boolean;
  readonly ready: Map<number, OutputImage>;
  readonly lines: ManifestInput[];
  handle?: FileHandle;
  temp?: string;
  unregister?: () => void;
  chain: Promise<void>;
}

export class WebDatasetOutput implements ImageOutput {
  private readonly open = new Map<number, OpenShard>();
  private current = -1;

  private constructor(
    private readonly opts: WebDatasetOptions,
    /** Shard files in the folder: complete shards. */
    private readonly present: Set<string>,
  ) {}

  static async open(opts: WebDatasetOptions): Promise<WebDatasetOutput> {
    if (!Number.isSafeInteger(opts.shardSize) || opts.shardSize < 1) {
      throw new OnestepError(`--shard-size must be a whole number of at least 1, got ${opts.shardSize}.`);
    }
    const present = new Set((await readdir(opts.out)).filter((n) => SHARD_FILE.test(n)));
    return new WebDatasetOutput(opts, present);
  }

  shardOf(index: number): number {
    return Math.floor(this.opts.ordinal(index) / this.opts.shardSize);
  }

  isDone(index: number): boolean {
    const recorded = this.opts.manifest.shards.get(index);
    if (recorded === undefined || !this.present.has(recorded)) return false;
    const expected = shardFileName(this.shardOf(index));
    if (recorded !== expected) {
      throw new OnestepError(
        `${this.opts.manifest.path} puts image ${index} in ${recorded}, but --shard-size ${this.opts.shardSize} puts it in ${expected}.`,
        'Resume with the --shard-size (and --shard, --images-per-prompt) of the first run, or write into a new output folder.',
      );
    }
    return true;
  }

  expect(index: number): boolean {
    const n = this.shardOf(index);
    let shard = this.open.get(n);
    if (!shard) {
      shard = { number: n, name: shardFileName(n), order: [], next: 0, inputDone: false, finished: false, ready: new Map(), lines: [], chain: Promise.resolve() };
      this.open.set(n, shard);
    }
    shard.order.push(index);
    if (n <= this.current) return false;
    const started = this.current >= 0;
    this.current = n;
    for (const s of this.open.values()) if (s.number < n) this.endInput(s);
    return started;
  }

  write(image: OutputImage): Promise<void> {
    const shard = this.open.get(this.shardOf(image.entry.index));
    if (!shard || shard.finished) throw new Error(`image ${image.entry.index} was not expected by the webdataset writer`);
    shard.ready.set(image.entry.index, image);
    return this.schedule(shard);
  }

  async inputEnded(): Promise<void> {
    for (const s of this.open.values()) this.endInput(s);
    await Promise.all([...this.open.values()].map((s) => s.chain));
  }

  async close(): Promise<number> {
    await Promise.allSettled([...this.open.values()].map((s) => s.chain));
    let dropped = 0;
    for (const s of this.open.values()) {
      if (s.finished) continue;
      // Incomplete (interrupted or failed): the next --resume regenerates its prompts.
      dropped += s.next + s.ready.size;
      if (!s.handle) continue;
      await s.handle.close().catch(() => undefined);
      await unlink(s.temp!).catch(() => undefined);
      s.unregister!();
    }
    this.open.clear();
    await this.opts.manifest.close();
    return dropped;
  }

  private endInput(shard: OpenShard): void {
    if (shard.inputDone) return;
    shard.inputDone = true;
    this.schedule(shard).catch(() => undefined);
  }

  /** Runs `drain` after the shard's earlier work; the returned promise rejects if it fails. */
  private schedule(shard: OpenShard): Promise<void> {
    const run = shard.chain.then(() => this.drain(shard));
    shard.chain = run.catch(() => undefined);
    return run;
  }

  private async drain(shard: OpenShard): Promise<void> {
    if (shard.finished) return;
    while (shard.next < shard.order.length) {
      const image = shard.ready.get(shard.order[shard.next]);
      if (!image) break;
      shard.ready.delete(shard.order[shard.next]);
      await this.append(shard, image);
      shard.next++;
    }
    if (shard.inputDone && shard.next === shard.order.length && shard.order.length > 0) await this.finish(shard);
  }

  private async append(shard: OpenShard, image: OutputImage): Promise<void> {
    if (!shard.handle) {
      shard.temp = tempPathFor(path.join(this.opts.out, shard.name));
      shard.unregister = registerTempPath(shard.temp);
      shard.handle = await open(shard.temp, 'wx', 0o644);
    }
    const { entry, data } = image;
    const key = webdatasetKey(entry.file);
    const ext = entry.file.slice(entry.file.lastIndexOf('.') + 1);
    const line: ManifestInput = { ...entry, file: `${key}.${ext}`, shard: shard.name };
    const { ms: _ms, ...recorded } = toManifestEntry(line);
    const json = Buffer.from(JSON.stringify({ key, ...recorded }) + '\n', 'utf8');
    await writeAll(
      shard.handle,
      Buffer.concat([tarMember(line.file, data), tarMember(`${key}.txt`, Buffer.from(entry.prompt, 'utf8')), tarMember(`${key}.json`, json)]),
    );
    shard.lines.push(line);
  }

  private async finish(shard: OpenShard): Promise<void> {
    const handle = shard.handle!;
    await writeAll(handle, TAR_END);
    await handle.sync();
    await handle.close();
    shard.handle = undefined;
    for (const line of shard.lines) await this.opts.manifest.append(line);
    await rename(shard.temp!, path.join(this.opts.out, shard.name));
    shard.unregister!();
    shard.finished = true;
    this.present.add(shard.name);
    this.open.delete(shard.number);
    await fsyncDir(this.opts.out);
  }
}
