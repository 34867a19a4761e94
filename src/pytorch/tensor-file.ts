/**
 * A PyTorch checkpoint (torch.save zip or the legacy format) as a lazy tensor file with SafetensorsFile's interface:
 * the pickle is interpreted on open (calling nothing but the allow-list of ./torch.ts), tensor bytes are read one
 * tensor at a time by offset, strided views are gathered into contiguous row-major bytes.
 */
import { open as openFile, stat, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import { bytesToF32, countF16Overflow, f32ToF16 } from '../safetensors/dtypes.js';
import { F16OverflowError } from '../safetensors/errors.js';
import { rangeWithin, type ByteRange, type TensorInfo } from '../safetensors/reader.js';
import type { Allocator } from '../io/buffers.js';
import { isPickleStream, readLegacy } from './legacy.js';
import { PickleError, PyDict, PyTuple, describe, unpickle, type PyValue, type Unpickled } from './pickle.js';
import { StorageRef, StorageType, TensorRef, torchGlobals } from './torch.js';
import { ZipArchive, isZip, readAt } from './zip.js';

export type PyTorchContainer = 'zip' | 'legacy';

/** Largest object pickle read into memory (real ones are kilobytes to a few megabytes). */
export const MAX_PICKLE_BYTES = 512 << 20;
/** Entries of a top-level dict that hold the weights when the top level itself holds none (Lightning, DeepSpeed, ...). */
const STATE_DICT_KEYS = ['state_dict', 'model', 'module', 'model_state_dict', 'params_ema', 'params'];

interface Located {
  ref: TensorRef;
  /** Absolute offset of element 0 of the storage. */
  storageStart: number;
  contiguous: boolean;
}

export class PyTorchFile {
  /** No safetensors-style metadata in a pickle. */
  readonly metadata: Readonly<Record<string, string>> = {};

  private constructor(
    readonly path: string,
    readonly container: PyTorchContainer,
    readonly protocol: number,
    /** Every global the pickle named that is not allow-listed: kept as an inert placeholder, never called. */
    readonly placeholders: readonly string[],
    /** Where the weights were found: [] for the top level, ['state_dict'] for a Lightning .ckpt. */
    readonly statePath: readonly string[],
    /** Entries of the state dict that are not tensors (placeholders, data), by key: what they are. */
    readonly skipped: ReadonlyMap<string, string>,
    readonly tensors: ReadonlyMap<string, TensorInfo>,
    private readonly located: ReadonlyMap<string, Located>,
    private handle: FileHandle | undefined,
  ) {}

  static async open(path: string): Promise<PyTorchFile> {
    const st = await stat(path).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') throw new PickleError(path, 'not-found', 'no such file', 'Check the path.');
      throw e;
    });
    if (st.isDirectory()) throw new PickleError(path, 'not-a-file', 'is a directory, not a checkpoint file', 'Pass the file itself.');
    const handle = await openFile(path, 'r');
    try {
      const size = st.size;
      const prefix = await readAt(handle, path, 0, Math.min(size, 16));
      let opened: { container: PyTorchContainer; root: Unpickled; start: (s: StorageRef) => number };
      if (isZip(prefix)) opened = await openZip(handle, path, size);
      // A plain pickle is interpreted too (inertly), and refused for not starting with torch's magic number.
      else if (isPickleStream(prefix)) opened = await openLegacy(handle, path, size);
      else {
        throw new PickleError(
          path,
          'not-pytorch',
          'is neither a torch.save zip nor a legacy torch.save file (nor safetensors)',
          'Check that the file is a PyTorch checkpoint and was downloaded completely.',
        );
      }
      const { dict, statePath } = findStateDict(path, opened.root.value);
      const tensors = new Map<string, TensorInfo>();
      const located = new Map<string, Located>();
      const skipped = new Map<string, string>();
      for (const [key, value] of dict.map) {
        if (typeof key !== 'string') continue;
        if (!(value instanceof TensorRef)) {
          skipped.set(key, describe(value));
          continue;
        }
        const itemsize = value.storage.type.itemsize;
        const numel = value.shape.reduce((a, b) => a * b, 1);
        const contiguous = isContiguous(value.shape, value.stride);
        // Only an expanded view (stride 0) is larger than its storage; none may be larger than the file it comes from.
        if (numel * itemsize > Math.max(size, 1 << 20)) {
          throw new PickleError(path, 'view-size', `tensor "${key}" ${JSON.stringify(value.shape)} would take ${numel * itemsize} bytes, more than the ${size}-byte file holds`);
        }
        const storageStart = opened.start(value.storage);
        tensors.set(key, {
          name: key,
          dtype: value.storage.type.dtype,
          shape: value.shape,
          // -1: a strided view, not one contiguous range of the file.
          byteOffset: contiguous ? storageStart + value.offset * itemsize : -1,
          byteLength: numel * itemsize,
        });
        located.set(key, { ref: value, storageStart, contiguous });
      }
      if (tensors.size === 0) {
        throw new PickleError(
          path,
          'no-tensors',
          `holds no tensors${statePath.length ? ` under '${statePath.join('.')}'` : ''} (${describe(opened.root.value)} at the top level)`,
          'Pass a checkpoint whose top level (or state_dict entry) maps names to tensors.',
        );
      }
      return new PyTorchFile(path, opened.container, opened.root.protocol, opened.root.placeholders, statePath, skipped, tensors, located, handle);
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new PickleError(this.path, 'missing-tensor', `no tensor "${name}" in the checkpoint`, 'Check the tensor name.');
    return info;
  }

  /** Row-major little-endian bytes (a strided view is gathered); a fresh buffer at offset 0. */
  async readRaw(name: string, _alloc?: Allocator, range?: ByteRange): Promise<Uint8Array> {
    const info = this.info(name);
    const { ref, storageStart, contiguous } = this.located.get(name)!;
    const itemsize = ref.storage.type.itemsize;
    const { start, length } = rangeWithin(info.byteLength, range, name);
    if (length === 0) return new Uint8Array(0);
    if (contiguous) return readAt(this.openHandle(), this.path, info.byteOffset + start, length);
    if (range) return (await this.readRaw(name)).slice(start, start + length);
    let span = 1;
    for (let i = 0; i < ref.shape.length; i++) span += (ref.shape[i] - 1) * ref.stride[i];
    const src = await readAt(this.openHandle(), this.path, storageStart + ref.offset * itemsize, span * itemsize);
    return gather(src, ref.shape, ref.stride, itemsize, info.byteLength);
  }

  /** Contiguous tensors: where their bytes lie (the writer copies them in chunks). Strided views: undefined. */
  copySource(name: string): { handle: FileHandle; offset: number } | undefined {
    const info = this.info(name);
    return info.byteOffset >= 0 ? { handle: this.openHandle(), offset: info.byteOffset } : undefined;
  }

  async readF32(name: string, range?: ByteRange): Promise<Float32Array> {
    const info = this.info(name);
    const raw = await this.readRaw(name, undefined, range);
    if (info.dtype === 'F32') return new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    return bytesToF32(info.dtype, raw);
  }

  async readF16(name: string): Promise<Uint16Array> {
    const info = this.info(name);
    if (info.dtype === 'F16') {
      const raw = await this.readRaw(name);
      return new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2);
    }
    const values = await this.readF32(name);
    const overflow = countF16Overflow(values);
    if (overflow > 0) {
      let max = 0;
      for (const v of values) if (Number.isFinite(v) && Math.abs(v) > max) max = Math.abs(v);
      throw new F16OverflowError(this.path, name, overflow, max);
    }
    return f32ToF16(values);
  }

  /** One line for reports: container, where the weights were, placeholders kept inert. */
  describe(): string {
    const where = this.statePath.length ? ` from its '${this.statePath.join('.')}' entry` : '';
    const inert = this.placeholders.length ? `; ${this.placeholders.length} non-tensor global(s) kept as inert placeholders, never called: ${this.placeholders.join(', ')}` : '';
    return `${basename(this.path)}: PyTorch pickle (${this.container === 'zip' ? 'torch.save zip' : 'legacy torch.save'} container, protocol ${this.protocol}) read without executing it, ${this.tensors.size} tensors${where}${inert}`;
  }

  async close(): Promise<void> {
    const h = this.handle;
    this.handle = undefined;
    await h?.close();
  }

  private openHandle(): FileHandle {
    if (!this.handle) throw new Error(`${this.path}: read after close()`);
    return this.handle;
  }
}

async function openZip(handle: FileHandle, path: string, size: number) {
  const zip = await ZipArchive.open(handle, path, size);
  const pkls = [...zip.records.values()].filter((r) => /^[^/]+\/data\.pkl$/.test(r.name) || r.name === 'data.pkl');
  if (pkls.length !== 1) {
    throw new PickleError(path, 'zip-layout', pkls.length ? `holds several data.pkl records (${pkls.map((r) => r.name).join(', ')})` : 'is a zip without a <folder>/data.pkl record, so not a torch.save file');
  }
  const folder = pkls[0].name.slice(0, -'data.pkl'.length);
  const byteorder = zip.records.get(`${folder}byteorder`);
  if (byteorder && byteorder.size <= 16) {
    const text = new TextDecoder().decode(await readAt(handle, path, byteorder.dataOffset, byteorder.size));
    if (text.trim() === 'big') throw new PickleError(path, 'byte-order', 'written on a big-endian machine; onestep reads little-endian checkpoints only');
  }
  if (pkls[0].size > MAX_PICKLE_BYTES) throw new PickleError(path, 'pickle-size', `data.pkl is ${pkls[0].size} bytes (limit ${MAX_PICKLE_BYTES})`);
  const pickle = await readAt(handle, path, pkls[0].dataOffset, pkls[0].size);
  const storages = new Map<string, { ref: StorageRef; start: number }>();
  const persistentLoad = (pid: PyValue): PyValue => {
    const f = pid instanceof PyTuple ? pid.items : undefined;
    if (!f || f.length < 5 || f[0] !== 'storage') throw new PickleError(path, 'persistent-id', `persistent id ${describe(pid)} is not ('storage', type, key, location, numel)`);
    const [, type, key, , numel] = f;
    if (!(type instanceof StorageType)) throw new PickleError(path, 'storage-type', `storage type ${describe(type)} is not a torch storage class`);
    if (typeof key !== 'string' || typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0) {
      throw new PickleError(path, 'persistent-id', `storage ${describe(key)} has element count ${describe(numel)}`);
    }
    const known = storages.get(key);
    if (known) {
      if (known.ref.type !== type || known.ref.numel !== numel) throw new PickleError(path, 'persistent-id', `storage '${key}' is named with two types or sizes`);
      return known.ref;
    }
    const record = zip.records.get(`${folder}data/${key}`);
    if (!record) throw new PickleError(path, 'missing-storage', `storage '${key}' is not in the archive (no record ${folder}data/${key})`);
    const nbytes = numel * type.itemsize;
    if (!Number.isSafeInteger(nbytes) || nbytes > record.size) {
      throw new PickleError(path, 'storage-size', `storage '${key}' declares ${numel} x ${type.name} = ${nbytes} bytes, record holds ${record.size}`);
    }
    const ref = new StorageRef(key, type, numel);
    storages.set(key, { ref, start: record.dataOffset });
    return ref;
  };
  const root = unpickle(pickle, 0, { label: path, globals: GLOBALS, persistentLoad });
  return { container: 'zip' as const, root, start: (s: StorageRef) => storages.get(s.key)!.start };
}

async function openLegacy(handle: FileHandle, path: string, size: number) {
  // The pickles' total length is known only by reading them: start with 1 MiB and grow while they run past it.
  let length = Math.min(size, 1 << 20);
  for (;;) {
    const head = await readAt(handle, path, 0, length);
    try {
      const count = async (offset: number) => new DataView((await readAt(handle, path, offset, 8)).buffer).getBigInt64(0, true);
      const { root, dataOffsets } = await readLegacy(path, head, size, GLOBALS, count);
      return { container: 'legacy' as const, root, start: (s: StorageRef) => dataOffsets.get(s.key)! + s.viewOffset * s.type.itemsize };
    } catch (e) {
      const grow = e instanceof PickleError && (e.rule === 'truncated' || e.rule === 'length') && length < size && length < MAX_PICKLE_BYTES;
      if (!grow) throw e;
      length = Math.min(size, length * 4, MAX_PICKLE_BYTES);
    }
  }
}

const GLOBALS = torchGlobals();

/** The dict holding the tensors: the top level, else the first of STATE_DICT_KEYS that holds tensors. No deeper walk. */
function findStateDict(path: string, root: PyValue): { dict: PyDict; statePath: string[] } {
  const holdsTensors = (d: PyDict) => {
    for (const v of d.map.values()) if (v instanceof TensorRef) return true;
    return false;
  };
  if (!(root instanceof PyDict)) {
    throw new PickleError(path, 'no-tensors', `holds ${describe(root)} at the top level, not a dict of tensors (a state dict)`, 'Save the model\'s state_dict() rather than the model object.');
  }
  if (holdsTensors(root)) return { dict: root, statePath: [] };
  for (const key of STATE_DICT_KEYS) {
    const v = root.map.get(key);
    if (v instanceof PyDict && holdsTensors(v)) return { dict: v, statePath: [key] };
  }
  return { dict: root, statePath: [] };
}

/** Row-major, ignoring dimensions of size 1 (their stride is free). */
function isContiguous(shape: number[], stride: number[]): boolean {
  let expected = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] === 0) return true;
    if (shape[i] !== 1 && stride[i] !== expected) return false;
    expected *= shape[i];
  }
  return true;
}

/** Copies a strided view (element strides, relative to `src[0]`) into row-major order, innermost dimension in a loop. */
function gather(src: Uint8Array, shape: number[], stride: number[], itemsize: number, byteLength: number): Uint8Array {
  const out = new Uint8Array(byteLength);
  const nd = shape.length;
  if (nd === 0) {
    out.set(src.subarray(0, itemsize));
    return out;
  }
  const inner = shape[nd - 1];
  const innerStride = stride[nd - 1] * itemsize;
  const index = new Array<number>(nd - 1).fill(0);
  let base = 0;
  let o = 0;
  for (;;) {
    let s = base;
    if (itemsize === 2) {
      for (let i = 0; i < inner; i++, s += innerStride) {
        out[o++] = src[s];
        out[o++] = src[s + 1];
      }
    } else if (itemsize === 4) {
      for (let i = 0; i < inner; i++, s += innerStride) {
        out[o++] = src[s];
        out[o++] = src[s + 1];
        out[o++] = src[s + 2];
        out[o++] = src[s + 3];
      }
    } else {
      for (let i = 0; i < inner; i++, s += innerStride) for (let b = 0; b < itemsize; b++) out[o++] = src[s + b];
    }
    // Odometer over the outer dimensions.
    let d = nd - 2;
    for (; d >= 0; d--) {
      index[d]++;
      base += stride[d] * itemsize;
      if (index[d] < shape[d]) break;
      base -= shape[d] * stride[d] * itemsize;
      index[d] = 0;
    }
    if (d < 0) return out;
  }
}
