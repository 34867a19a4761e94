/** WeightSource implementations: canonical names backed by tensors of one or more TensorSets. */
import { BadInputError } from '../errors.js';
import { bytesToF16 } from '../safetensors/dtypes.js';
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

/** An empty array of the same kind as `like`. */
export function allocLike<T extends WeightArray>(like: T, length: number): T {
  return (like instanceof Float32Array ? new Float32Array(length) : new Uint16Array(length)) as T;
}

/**
 * [rows, cols] -> [cols, rows], in cache-sized tiles: each output row is written contiguously, a tile's columns read
 * at a stride (a naive loop strides through memory on every write).
 */
export function transpose2d<T extends WeightArray>(data: T, rows: number, cols: number): T {
  const out = allocLike(data, data.length);
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
    return this.present(await set.readF32(ref.key), set.info(ref.key).shape, ref);
  }

  /** float16 bits (WeightSource.readF16): f16 storage as stored, bf16 through one table lookup, never via float32. */
  async readF16(name: string): Promise<Uint16Array> {
    const { set, ref } = this.entry(name);
    const info = set.info(ref.key);
    return this.present(bytesToF16(info.dtype, await set.readRaw(ref.key)), info.shape, ref);
  }

  private present<T extends WeightArray>(data: T, stored: number[], ref: SourceRef): T {
    if (ref.rows) {
      const rowSize = numel(stored.slice(1));
      data = data.slice(ref.rows[0] * rowSize, ref.rows[1] * rowSize) as T;
    }
    if (ref.transpose) data = transpose2d(data, stored[0], stored[1]);
    return data;
  }

  async close(): Promise<void> {
    await Promise.all(this.sets.map((s) => s.close()));
  }
}
