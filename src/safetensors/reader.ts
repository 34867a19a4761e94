/** Lazy, validated safetensors reader: parses and checks the header on open, reads one tensor at a time by position. */
import { open as openFile, stat, type FileHandle } from 'node:fs/promises';
import { extname } from 'node:path';
import { freshBuffer, type Allocator } from '../io/buffers.js';
import { fileKind } from '../io/files.js';
import { DTYPE_SIZES, bytesToF32, countF16Overflow, f32ToF16, isSafetensorsDType, type SafetensorsDType } from './dtypes.js';
import { F16OverflowError, SafetensorsError } from './errors.js';

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Absolute position of the first byte in the file. */
  byteOffset: number;
  byteLength: number;
}

export const MAX_HEADER_BYTES = 100_000_000;
const PICKLE_EXTENSIONS = new Set(['.ckpt', '.pt', '.pth', '.bin', '.pkl', '.pickle']);
const PICKLE_HINT =
  'onestep never unpickles files with Python (unpickling can run arbitrary code): it reads PyTorch checkpoints as data ' +
  'wherever it takes a tensor file, and `onestep to-safetensors <file> -o <out.safetensors>` converts one.';
/** Reads larger than this are split: a single fs read is limited to 2 GiB. */
const MAX_READ_CHUNK = 1 << 30;

export class SafetensorsFile {
  private constructor(
    readonly path: string,
    readonly fileSize: number,
    readonly headerLength: number,
    readonly metadata: Readonly<Record<string, string>>,
    readonly tensors: ReadonlyMap<string, TensorInfo>,
    private handle: FileHandle | undefined,
  ) {}

  /** Opens and validates the whole header. Reads only the header; tensor data is read on demand. */
  static async open(path: string, opts: { anyExtension?: boolean } = {}): Promise<SafetensorsFile> {
    const st = await stat(path).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') throw new SafetensorsError(path, 'not-found', 'no such file', undefined, 'Check the path.');
      throw e;
    });
    if (st.isDirectory()) {
      throw new SafetensorsError(
        path,
        'not-a-file',
        'is a directory, not a .safetensors file',
        undefined,
        'Pass the .safetensors file itself, or open the folder as a tensor set (index.json or a single .safetensors).',
      );
    }
    if (!st.isFile()) {
      // A FIFO would block the open, a device (/dev/zero) never end: only regular files are read.
      throw new SafetensorsError(path, 'not-a-file', `is ${fileKind(st)}, not a regular file`, undefined, 'Pass the .safetensors file itself.');
    }
    if (!opts.anyExtension && PICKLE_EXTENSIONS.has(extname(path).toLowerCase())) throw pickleError(path);

    const handle = await openFile(path, 'r').catch((e: NodeJS.ErrnoException) => {
      throw new SafetensorsError(path, 'unreadable', `cannot open the file (${e.code ?? e.message})`, undefined, 'Check the file permissions.');
    });
    try {
      const fileSize = st.size;
      if (fileSize < 8) throw new SafetensorsError(path, 'file-size', `file is ${fileSize} bytes; a safetensors file has at least 8`);
      const prefix = await readExactly(handle, path, 0, 8);
      if (looksLikePickle(prefix)) throw pickleError(path);
      const declared = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
      if (declared < 2n || declared > BigInt(MAX_HEADER_BYTES)) {
        throw new SafetensorsError(path, 'header-length', `header length ${declared} is outside 2..${MAX_HEADER_BYTES} bytes`);
      }
      const headerLength = Number(declared);
      if (8 + headerLength > fileSize) {
        throw new SafetensorsError(path, 'header-bounds', `header length ${headerLength} runs past the end of the ${fileSize}-byte file`);
      }
      const headerBytes = await readExactly(handle, path, 8, headerLength);
      const { metadata, tensors } = parseHeader(path, headerBytes, fileSize - 8 - headerLength);
      for (const info of tensors.values()) info.byteOffset += 8 + headerLength;
      return new SafetensorsFile(path, fileSize, headerLength, metadata, tensors, handle);
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new SafetensorsError(this.path, 'missing-tensor', 'no tensor with this name in the file', name, 'Check the tensor name.');
    return info;
  }

  /** The tensor's bytes exactly as stored (little-endian), at offset 0 of a buffer from `alloc` (default: a fresh one). */
  async readRaw(name: string, alloc?: Allocator, range?: ByteRange): Promise<Uint8Array> {
    const info = this.info(name);
    const { start, length } = rangeWithin(info.byteLength, range, name);
    return readExactly(this.openHandle(), this.path, info.byteOffset + start, length, name, alloc);
  }

  /** Where a tensor's bytes lie, for copying them as stored without holding them in memory (the writer's copyFrom). */
  copySource(name: string): { handle: FileHandle; offset: number } {
    return { handle: this.openHandle(), offset: this.info(name).byteOffset };
  }

  /** Values as float32: exact for F32/F16/BF16/F8, rounded for F64 and large integers. */
  async readF32(name: string, range?: ByteRange): Promise<Float32Array> {
    const info = this.info(name);
    const raw = await this.readRaw(name, undefined, range);
    if (info.dtype === 'F32') return new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    return bytesToF32(info.dtype, raw);
  }

  /** Values as float16 bits, rounded to nearest even. Throws F16OverflowError if a finite value would become infinite. */
  async readF16(name: string): Promise<Uint16Array> {
    const info = this.info(name);
    if (info.dtype === 'F16') {
      const raw = await this.readRaw(name);
      return new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2);
    }
    const values = await this.readF32(name);
    const overflow = countF16Overflow(values);
    if (overflow > 0) throw new F16OverflowError(this.path, name, overflow, maxFiniteAbs(values));
    return f32ToF16(values);
  }

  async close(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close();
  }

  private openHandle(): FileHandle {
    if (!this.handle) throw new Error(`${this.path}: read after close()`);
    return this.handle;
  }
}

/** Bytes [start, start + length) of a tensor's. */
export interface ByteRange {
  start: number;
  length: number;
}

/** `range` checked against a tensor of `byteLength` bytes, or the whole tensor. */
export function rangeWithin(byteLength: number, range: ByteRange | undefined, label: string): ByteRange {
  if (!range) return { start: 0, length: byteLength };
  if (range.start < 0 || range.length < 0 || range.start + range.length > byteLength) throw new Error(`internal: bytes ${range.start}+${range.length} of ${label}, which has ${byteLength}`);
  return range;
}

function pickleError(path: string): SafetensorsError {
  return new SafetensorsError(path, 'pickle', 'is a pickle (PyTorch) checkpoint, not safetensors', undefined, PICKLE_HINT);
}

/** PyTorch's zip container ("PK\x03\x04") or a raw pickle stream (PROTO opcode 0x80, protocol 2..5). */
function looksLikePickle(prefix: Uint8Array): boolean {
  const zip = prefix[0] === 0x50 && prefix[1] === 0x4b && prefix[2] === 0x03 && prefix[3] === 0x04;
  const pickle = prefix[0] === 0x80 && prefix[1] >= 2 && prefix[1] <= 5;
  return zip || pickle;
}

function maxFiniteAbs(values: Float32Array): number {
  let max = 0;
  for (const v of values) if (Number.isFinite(v) && Math.abs(v) > max) max = Math.abs(v);
  return max;
}

async function readExactly(handle: FileHandle, path: string, position: number, length: number, tensor?: string, alloc: Allocator = freshBuffer): Promise<Uint8Array> {
  // Not zero-filled first (every byte is read into it, or this throws): tensors are up to GBs, read one after another.
  const out = new Uint8Array(alloc(length), 0, length);
  let done = 0;
  while (done < length) {
    const want = Math.min(length - done, MAX_READ_CHUNK);
    const { bytesRead } = await handle.read(out, done, want, position + done);
    if (bytesRead === 0) {
      throw new SafetensorsError(path, 'truncated', `file ended after ${position + done} bytes while reading ${length} bytes at ${position}`, tensor);
    }
    done += bytesRead;
  }
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Validates the header JSON. Offsets in the result are relative to the data section (the caller makes them absolute). */
function parseHeader(
  path: string,
  bytes: Uint8Array,
  dataSize: number,
): { metadata: Record<string, string>; tensors: Map<string, TensorInfo> } {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new SafetensorsError(path, 'header-utf8', 'header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(path, 'header-json', `header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(header)) throw new SafetensorsError(path, 'header-object', 'header JSON is not an object');
  const duplicate = findDuplicateKey(text);
  if (duplicate) {
    const { key, within } = duplicate;
    throw within === undefined
      ? new SafetensorsError(path, 'duplicate-key', 'header lists this tensor name more than once', key)
      : new SafetensorsError(path, 'duplicate-key', `entry repeats the key "${key}"`, within);
  }

  const metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry)) throw new SafetensorsError(path, 'metadata', '__metadata__ is not an object');
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string') throw new SafetensorsError(path, 'metadata', `__metadata__ value of "${k}" is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    tensors.push(parseEntry(path, name, entry, dataSize));
  }

  tensors.sort((a, b) => a.byteOffset - b.byteOffset || a.byteLength - b.byteLength || (a.name < b.name ? -1 : 1));
  for (let i = 1; i < tensors.length; i++) {
    const prev = tensors[i - 1];
    const cur = tensors[i];
    if (cur.byteOffset < prev.byteOffset + prev.byteLength) {
      throw new SafetensorsError(path, 'overlap', `data overlaps tensor "${prev.name}"`, cur.name);
    }
  }
  return { metadata, tensors: new Map(tensors.map((t) => [t.name, t])) };
}

function parseEntry(path: string, name: string, entry: unknown, dataSize: number): TensorInfo {
  const fail = (rule: string, detail: string) => new SafetensorsError(path, rule, detail, name);
  if (!isPlainObject(entry)) throw fail('entry', 'entry is not an object');
  const keys = Object.keys(entry).sort().join(',');
  if (keys !== 'data_offsets,dtype,shape') throw fail('entry', `entry must have exactly dtype, shape, data_offsets (has: ${keys || 'nothing'})`);

  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== 'string' || !isSafetensorsDType(dtype)) throw fail('dtype', `unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw fail('shape', `shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[0] > offsets[1]
  ) {
    throw fail('data-offsets', `data_offsets ${JSON.stringify(offsets)} is not [begin, end] with 0 <= begin <= end`);
  }
  const [begin, end] = offsets as [number, number];
  let expected = DTYPE_SIZES[dtype];
  for (const d of shape as number[]) expected *= d;
  if (!Number.isSafeInteger(expected)) throw fail('byte-length', `shape ${JSON.stringify(shape)} is too large`);
  if (end - begin !== expected) {
    throw fail('byte-length', `data_offsets span ${end - begin} bytes but ${dtype} ${JSON.stringify(shape)} needs ${expected}`);
  }
  if (end > dataSize) throw fail('out-of-bounds', `data_offsets end ${end} is past the ${dataSize}-byte data section`);
  return { name, dtype, shape: shape as number[], byteOffset: begin, byteLength: expected };
}

/**
 * JSON.parse keeps only the last of repeated keys, which would silently hide a tensor. Scans the (already valid) JSON text
 * and returns the first key repeated within one object (with the top-level key it sits under, if nested), or undefined.
 */
export function findDuplicateKey(text: string): { key: string; within?: string } | undefined {
  const stack: (Set<string> | null)[] = [];
  let topLevelKey: string | undefined;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */) stack.push(new Set());
    else if (c === 0x5b /* [ */) stack.push(null);
    else if (c === 0x7d /* } */ || c === 0x5d /* ] */) stack.pop();
    else if (c === 0x22 /* " */) {
      const start = i;
      let escaped = false;
      for (i++; i < n; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) {
          escaped = true;
          i++;
        } else if (d === 0x22) break;
      }
      let j = i + 1;
      while (j < n && (text[j] === ' ' || text[j] === '\n' || text[j] === '\r' || text[j] === '\t')) j++;
      const keys = stack[stack.length - 1];
      if (text[j] === ':' && keys) {
        const raw = text.slice(start, i + 1);
        const key = escaped ? (JSON.parse(raw) as string) : raw.slice(1, -1);
        if (keys.has(key)) return { key, within: stack.length === 1 ? undefined : topLevelKey };
        keys.add(key);
        if (stack.length === 1) topLevelKey = key;
      }
    }
  }
  return undefined;
}
