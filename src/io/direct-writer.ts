/**
 * Appending a big file (a model's weights, GBs) with O_DIRECT where the file system takes it: blocks go from our own
 * buffers to the disk, bypassing the page cache. On the machines onestep was measured on, filling GBs of fresh page
 * cache costs 3-6x the disk's own time (6.9 GB: cp 4.7-22 s, almost all of it kernel copying into new page-cache
 * pages; O_DIRECT from user memory 3.8-5.4 s, 1.5 s of CPU), so a conversion's speed was the page cache's.
 *
 * O_DIRECT wants the buffer address, the length and the file offset aligned to the device's logical block (512 B or
 * 4 KiB): blocks are staged in a WebAssembly.Memory (its backing store is page-aligned, unlike a Buffer's), written
 * whole at block-aligned offsets, and the last one is zero-padded and the file truncated to its length. Where the file
 * system refuses O_DIRECT (tmpfs, some network file systems: EINVAL) the writer falls back to ordinary writes, and
 * ONESTEP_DIRECT_IO=0 asks for them. The bytes on disk are the same either way.
 */
import fs from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

/** Bytes per staged block, and blocks in flight: while one is written, the next is filled. */
const BLOCK = 8 << 20;
const BLOCKS = 2;
/** Alignment that satisfies every logical block size (512 B and 4 KiB devices). */
const DIRECT_ALIGN = 4096;
const WASM_PAGE = 65536;

export class DirectFileWriter {
  private readonly blocks: Uint8Array[];
  private readonly pending: (Promise<void> | undefined)[] = new Array(BLOCKS).fill(undefined);
  /** Index of the block being filled, how much of it is filled, and where in the file it starts. */
  private current = 0;
  private filled = 0;
  private blockStart = 0;
  private failure: unknown;
  /** The end of the furthest write (past `position` when a padded last block went out). */
  private end = 0;
  /** Handles to close: the O_DIRECT one stays open after a fallback until in-flight writes on it are done. */
  private readonly opened: FileHandle[];
  private readonly directHandle?: FileHandle;
  private fallingBack?: Promise<void>;

  private constructor(
    private readonly path: string,
    private handle: FileHandle,
    /** Whether blocks go out with O_DIRECT (false after a fallback). */
    private directMode: boolean,
  ) {
    const memory = new WebAssembly.Memory({ initial: (BLOCK * BLOCKS) / WASM_PAGE });
    this.blocks = Array.from({ length: BLOCKS }, (_, i) => new Uint8Array(memory.buffer, i * BLOCK, BLOCK));
    this.opened = [handle];
    if (directMode) this.directHandle = handle;
  }

  /**
   * Creates (or truncates) `path`; with `exclusive`, only a new file (EEXIST otherwise). `direct: false`, or
   * ONESTEP_DIRECT_IO=0, writes through the page cache.
   */
  static async create(path: string, opts: { direct?: boolean; exclusive?: boolean } = {}): Promise<DirectFileWriter> {
    const { O_WRONLY, O_CREAT, O_TRUNC, O_EXCL } = fs.constants;
    const flags = O_WRONLY | O_CREAT | (opts.exclusive ? O_EXCL : O_TRUNC);
    const O_DIRECT = fs.constants.O_DIRECT as number | undefined;
    if ((opts.direct ?? process.env.ONESTEP_DIRECT_IO !== '0') && O_DIRECT !== undefined) {
      try {
        return new DirectFileWriter(path, await open(path, flags | O_DIRECT, 0o644), true);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
      }
    }
    return new DirectFileWriter(path, await open(path, flags, 0o644), false);
  }

  /** Whether the file is being written with O_DIRECT. */
  get direct(): boolean {
    return this.directMode;
  }

  /** Bytes appended so far. */
  get position(): number {
    return this.blockStart + this.filled;
  }

  /** Appends `bytes` (copied: the caller may reuse them once this resolves). */
  async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) {
      const n = Math.min(bytes.length - done, BLOCK - this.filled);
      this.blocks[this.current].set(bytes.subarray(done, done + n), this.filled);
      this.filled += n;
      done += n;
      if (this.filled === BLOCK) await this.flushBlock();
    }
  }

  /** Appends `count` zero bytes. */
  async zeros(count: number): Promise<void> {
    while (count > 0) {
      const n = Math.min(count, BLOCK - this.filled);
      this.blocks[this.current].fill(0, this.filled, this.filled + n);
      this.filled += n;
      count -= n;
      if (this.filled === BLOCK) await this.flushBlock();
    }
  }

  /**
   * Writes what is staged and closes the file, which then holds exactly `position` bytes; with `sync`, once they are
   * on the disk (fsync: cheap after O_DIRECT, whose blocks are there already).
   */
  async close(opts: { sync?: boolean } = {}): Promise<void> {
    try {
      const size = this.position;
      if (this.filled) await this.flushBlock();
      await this.settle();
      if (this.end > size) await this.handle.truncate(size);
      if (opts.sync) await this.handle.sync();
    } finally {
      await this.closeHandles();
    }
  }

  /** Closes the file without writing what is staged (after a failure; the caller removes the file). */
  async abort(): Promise<void> {
    await Promise.allSettled(this.pending);
    await this.closeHandles();
  }

  private async closeHandles(): Promise<void> {
    await Promise.all(this.opened.map((h) => h.close()));
  }

  /** Starts writing the current block and moves on to the next one, once that one's previous write is done. */
  private async flushBlock(): Promise<void> {
    const block = this.blocks[this.current];
    const length = this.directMode ? Math.ceil(this.filled / DIRECT_ALIGN) * DIRECT_ALIGN : this.filled;
    if (length > this.filled) block.fill(0, this.filled, length);
    const write = this.writeBlock(block, length, this.blockStart);
    write.catch((e) => (this.failure ??= e)); // awaited below or in settle(); this only records the first failure
    this.pending[this.current] = write;
    this.blockStart += this.filled;
    this.filled = 0;
    this.current = (this.current + 1) % BLOCKS;
    const previous = this.pending[this.current];
    if (previous) await previous;
    if (this.failure) throw this.failure;
  }

  private async settle(): Promise<void> {
    await Promise.allSettled(this.pending);
    if (this.failure) throw this.failure;
  }

  private async writeBlock(block: Uint8Array, length: number, position: number): Promise<void> {
    this.end = Math.max(this.end, position + length);
    let done = 0;
    while (done < length) {
      const handle = this.handle;
      try {
        const { bytesWritten } = await handle.write(block, done, length - done, position + done);
        done += bytesWritten;
      } catch (e) {
        if (handle !== this.directHandle || (e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
        await this.fallBack();
      }
    }
  }

  /** The file system opened the file with O_DIRECT but refuses the writes: on through the page cache. */
  private fallBack(): Promise<void> {
    this.directMode = false;
    this.fallingBack ??= open(this.path, 'r+').then((h) => {
      this.opened.push(h);
      this.handle = h;
    });
    return this.fallingBack;
  }
}
