/** WeightSource implementations: canonical names backed by tensors of one or more TensorSets. */
import { BadInputError } from '../errors.js';
import { freshBuffer, type Allocator } from '../io/buffers.js';
import { DTYPE_SIZES, bytesToF16, type SafetensorsDType } from '../safetensors/dtypes.js';
import type { ByteRange } from '../safetensors/reader.js';
import type { TensorSet } from '../safetensors/tensor-set.js';
import type { SourceRef } from './keymap-sd.js';
import { numel, type TensorMeta, type WeightSource } from './weight-source.js';

interface Entry {
  set: TensorSet;
  ref: SourceRef;
}

/** The shape a SourceRef presents, given the stored shape. */
export function presentedShape(stored: readonly number[], ref: SourceRef): number[] {
  let shape = [...stored];
  if (ref.rows) shape = [ref.rows[1] - ref.rows[0], ...shape.slice(1)];
  if (ref.squeeze) shape = shape.slice(0, 2);
  if (ref.transpose) shape = [shape[1], shape[0]];
  return shape;
}

/** Float32 values or float16 bits: the element arrays weights are read into. */
export type WeightArray = Float32Array | Uint16Array;

/**
 * An array of the same kind as `like`, uninitialized (no zero fill: weight-sized arrays are allocated per tensor): only
 * for callers that write every element.
 */
export function allocLike<T extends WeightArray>(like: T, length: number, alloc: Allocator = freshBuffer): T {
  const buffer = alloc(length * like.BYTES_PER_ELEMENT);
  return (like instanceof Float32Array ? new Float32Array(buffer, 0, length) : new Uint16Array(buffer, 0, length)) as T;
}

/**
 * [rows, cols] -> [cols, rows], in cache-sized tiles: each output row is written contiguously, a tile's columns read
 * at a stride (a naive loop strides through memory on every write). 16-bit values with even sides move as 2x2 blocks
 * of two 32-bit words (half the loads and stores: every linear weight of a float16 conversion is transposed).
 */
export function transpose2d<T extends WeightArray>(data: T, rows: number, cols: number, alloc?: Allocator): T {
  const out = allocLike(data, data.length, alloc);
  if (data instanceof Uint16Array && rows % 2 === 0 && cols % 2 === 0 && data.byteOffset % 4 === 0) {
    transposePairs(new Uint32Array(data.buffer, data.byteOffset, data.length / 2), new Uint32Array(out.buffer, out.byteOffset, data.length / 2), rows / 2, cols / 2);
    return out;
  }
  const T = 32;
  for (let c0 = 0; c0 < cols; c0 += T) {
    const c1 = Math.min(c0 + T, cols);
    for (let r0 = 0; r0 < rows; r0 += T) {
      const r1 = Math.min(r0 + T, rows);
      for (let c = c0; c < c1; c++) {
        let o = c * rows + r0;
        for (let i = r0 * cols + c, end = r1 * cols; i < end; i += cols) out[o++] = data[i];
      }
    }
  }
  return out;
}

/**
 * The 16-bit transpose on words: word (r, c) of `src` holds elements (r, 2c) low and (r, 2c + 1) high; rows 2r and
 * 2r + 1 of column pair c become output rows 2c and 2c + 1, word r of each.
 */
function transposePairs(src: Uint32Array, dst: Uint32Array, halfRows: number, halfCols: number): void {
  const T = 32;
  for (let c0 = 0; c0 < halfCols; c0 += T) {
    const c1 = Math.min(c0 + T, halfCols);
    for (let r0 = 0; r0 < halfRows; r0 += T) {
      const r1 = Math.min(r0 + T, halfRows);
      for (let c = c0; c < c1; c++) {
        let even = 2 * c * halfRows + r0;
        let odd = even + halfRows;
        for (let r = r0; r < r1; r++) {
          const a = src[2 * r * halfCols + c];
          const b = src[(2 * r + 1) * halfCols + c];
          dst[even++] = (a & 0xffff) | (b << 16);
          dst[odd++] = (a >>> 16) | (b & 0xffff0000);
        }
      }
    }
  }
}

/** The bytes of `ref.rows`' rows of a stored tensor (one contiguous block of a row-major tensor), or all of it. */
function rowBytes(info: { shape: number[]; dtype: SafetensorsDType }, ref: SourceRef): ByteRange | undefined {
  if (!ref.rows) return undefined;
  const row = numel(info.shape.slice(1)) * DTYPE_SIZES[info.dtype];
  return { start: ref.rows[0] * row, length: (ref.rows[1] - ref.rows[0]) * row };
}

/**
 * Canonical name -> (tensor set, stored key, transform). Reads one tensor at a time; dtype is the storage dtype,
 * readF32 converts (exactly for f16/bf16/f8). Owns its sets: close() closes them.
 */
export class MappedSource implements WeightSource {
  private readonly entries: Map<string, Entry>;
  private readonly sortedNames: string[];

  constructor(
    entries: Iterable<[string, Entry]>,
    private readonly sets: TensorSet[],
    /** Names the user sees in errors (the checkpoint path). */
    private readonly label: string,
  ) {
    this.entries = new Map(entries);
    this.sortedNames = [...this.entries.keys()].sort();
    for (const [name, { set, ref }] of this.entries) {
      const stored = set.info(ref.key).shape;
      if (ref.rows && (stored.length < 1 || ref.rows[1] > stored[0])) {
        throw new BadInputError(label, `tensor ${ref.key} has shape [${stored}], too small to hold ${name}`);
      }
      if (ref.squeeze && !(stored.length === 4 && stored[2] === 1 && stored[3] === 1) && stored.length !== 2) {
        throw new BadInputError(label, `tensor ${ref.key} has shape [${stored}]; expected [C, C, 1, 1] for ${name}`);
      }
      if (ref.transpose && stored.length !== 2) {
        throw new BadInputError(label, `tensor ${ref.key} has shape [${stored}]; expected a matrix for ${name}`);
      }
    }
  }

  /** Every kept tensor of `set`, named `${prefix}${rename(key)}` (a diffusers component folder). */
  static prefixed(
    set: TensorSet,
    prefix: string,
    label: string,
    keep: (key: string) => boolean = () => true,
    rename: (key: string) => string = (k) => k,
  ): MappedSource {
    const entries: [string, Entry][] = set
      .names()
      .filter(keep)
      .map((key) => [prefix + rename(key), { set, ref: { key } }]);
    return new MappedSource(entries, [set], label);
  }

  /** The union of several sources' entries (names must not collide). Takes ownership of their sets. */
  static union(sources: MappedSource[], label: string): MappedSource {
    const entries: [string, Entry][] = [];
    for (const s of sources) entries.push(...s.entries);
    const names = new Set<string>();
    for (const [n] of entries) {
      if (names.has(n)) throw new BadInputError(label, `two components both provide ${n}`);
      names.add(n);
    }
    return new MappedSource(entries, sources.flatMap((s) => s.sets), label);
  }

  names(): string[] {
    return [...this.sortedNames];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) throw new BadInputError(this.label, `no weight named ${name}`, 'The checkpoint lacks a tensor this model needs.');
    return e;
  }

  /** Where a canonical tensor lives in the input (for writers that keep the input's own names, e.g. lora merge). */
  sourceOf(name: string): SourceRef & { storedShape: number[]; file: string } {
    const { set, ref } = this.entry(name);
    const info = set.info(ref.key);
    return { ...ref, storedShape: [...info.shape], file: info.file.path };
  }

  meta(name: string): TensorMeta {
    const { set, ref } = this.entry(name);
    const info = set.info(ref.key);
    return { shape: presentedShape(info.shape, ref), dtype: info.dtype };
  }

  async readF32(name: string): Promise<Float32Array> {
    const { set, ref } = this.entry(name);
    const info = set.info(ref.key);
    return this.present(await set.readF32(ref.key, rowBytes(info, ref)), info.shape, ref);
  }

  /** float16 bits (WeightSource.readF16): f16 storage as stored, bf16 through one table lookup, never via float32. */
  async readF16(name: string, alloc?: Allocator): Promise<Uint16Array> {
    const { set, ref } = this.entry(name);
    const info = set.info(ref.key);
    return this.present(bytesToF16(info.dtype, await set.readRaw(ref.key, alloc, rowBytes(info, ref))), info.shape, ref, alloc);
  }

  /** The values read (only `ref.rows`' rows of a stacked tensor) as the canonical tensor presents them. */
  private present<T extends WeightArray>(data: T, stored: number[], ref: SourceRef, alloc?: Allocator): T {
    if (ref.transpose) data = transpose2d(data, ref.rows ? ref.rows[1] - ref.rows[0] : stored[0], stored[1], alloc);
    return data;
  }

  async close(): Promise<void> {
    await Promise.all(this.sets.map((s) => s.close()));
  }
}
