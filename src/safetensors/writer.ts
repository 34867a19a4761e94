/** Streaming safetensors writer: at most two tensors in memory (one being written, the next being produced), atomic (temp file + rename), deterministic bytes. */
import { link, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { OnestepError } from '../errors.js';
import { DTYPE_SIZES, isSafetensorsDType, type SafetensorsDType } from './dtypes.js';
import { SafetensorsError } from './errors.js';
import { MAX_HEADER_BYTES } from './reader.js';
import { registerTempPath, removeStaleTemps, tempPathFor } from '../io/atomic.js';
import { DirectFileWriter } from '../io/direct-writer.js';

export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Called once, shortly before this tensor's turn to be written comes: little-endian bytes, numel * itemsize long. */
  data: () => Promise<Uint8Array> | Uint8Array;
  /**
   * Instead of calling data(): the bytes, as stored, at `offset` in another open file. They are copied in chunks
   * through one reused buffer, as `cp` does, never as one tensor-sized allocation (a merge copies most tensors as is).
   */
  copyFrom?: { handle: FileHandle; offset: number };
}

const COPY_CHUNK = 8 << 20;

/** Copies `length` bytes from `src` at `offset` to the end of `dst`, reading the next chunk while writing this one. */
async function copyRange(src: FileHandle, offset: number, length: number, dst: DirectFileWriter, buffers: [Uint8Array, Uint8Array], label: string): Promise<void> {
  const read = async (pos: number, buf: Uint8Array): Promise<Uint8Array> => {
    const n = Math.min(COPY_CHUNK, length - pos);
    let got = 0;
    while (got < n) {
      const { bytesRead } = await src.read(buf, got, n - got, offset + pos + got);
      if (bytesRead === 0) throw new SafetensorsError(label, 'truncated', `source ended ${length - pos - got} bytes early while copying`);
      got += bytesRead;
    }
    return buf.subarray(0, n);
  };
  let pos = 0;
  let chunk = length > 0 ? read(0, buffers[0]) : undefined;
  for (let k = 0; chunk; k++) {
    const current = await chunk;
    pos += current.length;
    chunk = pos < length ? read(pos, buffers[(k + 1) % 2]) : undefined;
    chunk?.catch(() => undefined);
    await dst.write(current);
  }
}

/**
 * Writes tensors in the given order. `onProgress(done, total, bytes)`: tensors written so far, tensor count, data bytes
 * written so far. The file appears at `path` only when complete.
 */
export async function writeSafetensors(
  path: string,
  tensors: Iterable<TensorToWrite>,
  metadata?: Record<string, string>,
  onProgress?: (done: number, total: number, bytes: number) => void,
  options: { noReplace?: boolean } = {},
): Promise<void> {
  const list = [...tensors];
  const header = encodeHeader(path, list, metadata);

  // A run killed before its cleanup (SIGKILL, OOM) left a multi-GB temp file here: the next write removes it.
  await removeStaleTemps(dirname(resolve(path)));
  const tempPath = tempPathFor(path);
  // Removed on Ctrl-C / SIGTERM too, not only on errors: a multi-GB temp file must not outlive an interrupted run.
  const unregister = registerTempPath(tempPath);
  let handle: DirectFileWriter | undefined;
  let next: Promise<Uint8Array> | undefined;
  try {
    handle = await DirectFileWriter.create(tempPath, { exclusive: true });
    await handle.write(header);
    let bytes = 0;
    // The next tensor's data is produced (read, converted, merged) while the current one is written: reading and
    // writing overlap, at the cost of holding two tensors instead of one.
    const produce = (i: number): Promise<Uint8Array> | undefined => {
      if (i >= list.length || list[i].copyFrom) return undefined;
      const p = Promise.resolve().then(() => list[i].data());
      p.catch(() => undefined); // awaited in order below; this only keeps an early failure from being unhandled
      return p;
    };
    let copyBuffers: [Uint8Array, Uint8Array] | undefined;
    next = produce(0);
    for (let i = 0; i < list.length; i++) {
      const t = list[i];
      const expected = byteLengthOf(path, t);
      if (t.copyFrom) {
        next = produce(i + 1);
        copyBuffers ??= [new Uint8Array(COPY_CHUNK), new Uint8Array(COPY_CHUNK)];
        await copyRange(t.copyFrom.handle, t.copyFrom.offset, expected, handle, copyBuffers, t.name);
        bytes += expected;
        onProgress?.(i + 1, list.length, bytes);
        continue;
      }
      const data = await next!;
      next = produce(i + 1);
      if (!(data instanceof Uint8Array) || data.byteLength !== expected) {
        const got = data instanceof Uint8Array ? `${data.byteLength} bytes` : 'not a Uint8Array';
        throw new SafetensorsError(path, 'byte-length', `data() gave ${got}; ${t.dtype} ${JSON.stringify(t.shape)} needs ${expected}`, t.name);
      }
      await handle.write(data);
      bytes += expected;
      onProgress?.(i + 1, list.length, bytes);
    }
    const done = handle;
    handle = undefined;
    await done.close({ sync: true });
    if (options.noReplace) await renameNoReplace(tempPath, path);
    else await rename(tempPath, path);
  } catch (e) {
    await next?.catch(() => undefined);
    await handle?.abort().catch(() => undefined);
    await rm(tempPath, { force: true });
    throw e;
  } finally {
    unregister();
  }
}

/**
 * Moves a finished temp file to `path` unless something is there by now (another run that wrote the same output):
 * a hard link fails with EEXIST instead of replacing it. Where hard links are not supported, a check then a rename.
 */
async function renameNoReplace(temp: string, path: string): Promise<void> {
  const appeared = () => new OnestepError(`${path} appeared while it was being written (another run writing the same output?); it was left as it is.`, 'Pass --force to replace it, or choose another output path.');
  try {
    await link(temp, path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw appeared();
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'EXDEV') throw err;
    if (await stat(path).then(() => true, () => false)) throw appeared();
    await rename(temp, path);
    return;
  }
  await rm(temp, { force: true });
}

function byteLengthOf(path: string, t: TensorToWrite): number {
  let n: number = DTYPE_SIZES[t.dtype];
  for (const d of t.shape) n *= d;
  if (!Number.isSafeInteger(n)) throw new SafetensorsError(path, 'shape', `shape ${JSON.stringify(t.shape)} is too large`, t.name);
  return n;
}

/** The 8-byte length prefix and the header JSON, padded with spaces so the data starts at a multiple of 8. */
function encodeHeader(path: string, list: TensorToWrite[], metadata?: Record<string, string>): Uint8Array {
  const parts: string[] = [];
  if (metadata) {
    const entries = Object.entries(metadata).map(([k, v]) => {
      if (typeof v !== 'string') throw new SafetensorsError(path, 'metadata', `metadata value of "${k}" is not a string`);
      return `${JSON.stringify(k)}:${JSON.stringify(v)}`;
    });
    parts.push(`"__metadata__":{${entries.join(',')}}`);
  }
  const seen = new Set<string>();
  let offset = 0;
  for (const t of list) {
    if (t.name === '__metadata__') throw new SafetensorsError(path, 'entry', 'the name __metadata__ is reserved', t.name);
    if (seen.has(t.name)) throw new SafetensorsError(path, 'duplicate-key', 'tensor name given twice', t.name);
    seen.add(t.name);
    if (!isSafetensorsDType(t.dtype)) throw new SafetensorsError(path, 'dtype', `unknown dtype ${JSON.stringify(t.dtype)}`, t.name);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new SafetensorsError(path, 'shape', `shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`, t.name);
    }
    const end = offset + byteLengthOf(path, t);
    parts.push(`${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${end}]}`);
    offset = end;
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  if (json.length > MAX_HEADER_BYTES) throw new SafetensorsError(path, 'header-length', `header would be ${json.length} bytes (limit ${MAX_HEADER_BYTES})`);
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

