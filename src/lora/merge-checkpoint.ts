/**
 * `lora merge`: LoRAs merged into a checkpoint, written in the checkpoint's own layout. A single file keeps its key
 * names, order and metadata; a diffusers folder is copied with each weight file rewritten. Only merged tensors (and,
 * with an output dtype, float tensors) change; everything else is copied byte for byte, in chunks. At most two tensors
 * are in memory (writeSafetensors produces the next while it writes the current); the output appears only when
 * complete (temp file or temp sibling folder, then rename).
 */
import { numel } from '../checkpoint/weight-source.js';
import { cp, mkdir, realpath, stat } from 'node:fs/promises';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { openCheckpoint, type Checkpoint } from '../checkpoint/open.js';
import { transpose2d, type MappedSource } from '../checkpoint/sources.js';
import type { SourceRef } from '../checkpoint/keymap-sd.js';
import { BadInputError, OnestepError } from '../errors.js';
import { withAtomicDir } from '../io/atomic.js';
import { bytesToF32, countF16Overflow, f32ToBf16, f32ToF16, isFloatDType, type SafetensorsDType } from '../safetensors/dtypes.js';
import { F16OverflowError } from '../safetensors/errors.js';
import { PICKLE_EXTENSION, openTensorFile } from '../safetensors/tensor-file.js';
import { writeSafetensors, type TensorToWrite } from '../safetensors/writer.js';
export { parseLoraArg } from './args.js';
import { applyLoras, openLoras, planLoraMerge, type Application, type LoraSpec, type MergeReport } from './merge.js';

export type OutputDType = 'F32' | 'F16' | 'BF16';

export interface MergeCheckpointOptions {
  base: string;
  loras: LoraSpec[];
  out: string;
  /** Store every float tensor of the rewritten weight files in this dtype (default: each tensor keeps its own). */
  dtype?: OutputDType;
  allowUnmatched?: boolean;
  /** Replace an existing output. */
  force?: boolean;
  /** Called after each tensor written. */
  onProgress?: (done: number, total: number) => void;
}

export interface MergeCheckpointResult {
  out: string;
  layout: Checkpoint['layout'];
  family: string;
  report: MergeReport;
  /** Weight files written (rewritten with merged values). */
  filesWritten: string[];
  notes: string[];
}

export async function mergeLorasIntoCheckpoint(opts: MergeCheckpointOptions): Promise<MergeCheckpointResult> {
  const out = resolve(opts.out);
  if (PICKLE_EXTENSION.test(out)) {
    throw new OnestepError(`the output ${opts.out} has a PyTorch extension, but merges are written as safetensors`, 'Name the output .safetensors.');
  }
  await checkOutput(out, opts);

  const checkpoint = await openCheckpoint(opts.base);
  const loras = await openLoras(opts.loras).catch(async (e) => {
    await checkpoint.weights.close();
    throw e;
  });
  try {
    const source = checkpoint.weights as MappedSource;
    if (typeof source.sourceOf !== 'function') throw new OnestepError(`internal: ${opts.base} weights do not say where they are stored`);
    const plan = planLoraMerge(source, loras, { allowUnmatched: opts.allowUnmatched, baseFamily: checkpoint.family.id, baseLabel: opts.base });
    const writes = planFileWrites(source, plan.byWeight);
    const notes: string[] = [];
    const filesWritten: string[] = [];

    if (checkpoint.layout === 'single-file') {
      const file = resolve(checkpoint.path);
      await mkdir(dirname(out), { recursive: true });
      await rewriteWeightFile(file, out, writes.get(file) ?? new Map(), opts);
      filesWritten.push(out);
    } else {
      await writeFolder(resolve(checkpoint.path), out, source, writes, opts, filesWritten, notes);
    }
    return { out, layout: checkpoint.layout, family: checkpoint.family.id, report: plan.report, filesWritten, notes };
  } finally {
    await Promise.all(loras.map((l) => l.file.close()));
    await checkpoint.weights.close();
  }
}

/** Refuses outputs that exist (without force) or that are, contain, or sit inside an input. */
async function checkOutput(out: string, opts: MergeCheckpointOptions): Promise<void> {
  const real = async (p: string) => realpath(p).catch(() => resolve(p));
  const outReal = await real(out);
  for (const input of [opts.base, ...opts.loras.map((l) => l.path)]) {
    const inReal = await real(input);
    const inside = (a: string, b: string) => a === b || a.startsWith(b.endsWith(sep) ? b : b + sep);
    if (inside(outReal, inReal) || inside(inReal, outReal)) {
      throw new OnestepError(`the output ${opts.out} would overwrite the input ${input}`, 'Choose an output path outside the inputs.');
    }
  }
  const existing = await stat(out).catch(() => undefined);
  if (existing && !opts.force) {
    throw new OnestepError(`the output ${opts.out} already exists`, 'Pass --force to replace it, or choose another path.');
  }
}

/** For each stored file: key -> the canonical weights it holds that change (with how each sits in the key). */
type FileWrites = Map<string, Map<string, { name: string; ref: SourceRef; apps: Application[] }[]>>;

function planFileWrites(source: MappedSource, byWeight: Map<string, Application[]>): FileWrites {
  const writes: FileWrites = new Map();
  for (const [name, apps] of byWeight) {
    const where = source.sourceOf(name);
    const file = resolve(where.file);
    let keys = writes.get(file);
    if (!keys) writes.set(file, (keys = new Map()));
    let parts = keys.get(where.key);
    if (!parts) keys.set(where.key, (parts = []));
    parts.push({ name, ref: where, apps });
  }
  return writes;
}

/** Writes `input` to `output` with the planned changes; keys, order and metadata kept. */
async function rewriteWeightFile(
  input: string,
  output: string,
  changes: Map<string, { name: string; ref: SourceRef; apps: Application[] }[]>,
  opts: MergeCheckpointOptions,
): Promise<void> {
  const file = await openTensorFile(input);
  try {
    const infos = [...file.tensors.values()];
    const tensors: TensorToWrite[] = infos.map((info) => {
      const dtype = opts.dtype && isFloatDType(info.dtype) ? opts.dtype : info.dtype;
      const parts = changes.get(info.name);
      return {
        name: info.name,
        dtype,
        shape: info.shape,
        // Most tensors are untouched: copied as stored, in chunks, never as a whole tensor in memory.
        copyFrom: !parts && dtype === info.dtype ? file.copySource(info.name) : undefined,
        data: async () => {
          let bytes: Uint8Array;
          if (parts) {
            const values = await file.readF32(info.name);
            for (const part of parts) await mergeInPlace(values, info.shape, part.ref, part.apps, info.name);
            bytes = encodeF32(values, dtype, input, info.name);
          } else if (dtype === info.dtype) {
            bytes = await file.readRaw(info.name);
          } else {
            bytes = encodeF32(bytesToF32(info.dtype, await file.readRaw(info.name)), dtype, input, info.name);
          }
          return bytes;
        },
      };
    });
    // No metadata block when the input had none, so that a header stays as it was.
    await writeSafetensors(
      output,
      tensors,
      Object.keys(file.metadata).length ? { ...file.metadata } : undefined,
      (done, total) => opts.onProgress?.(done, total),
      // Without --force an output that another run finished meanwhile is not replaced (the check at the start is long past).
      { noReplace: !opts.force },
    );
  } finally {
    await file.close();
  }
}

/** Applies LoRAs to the part of a stored tensor that one canonical weight occupies (rows / transpose / squeeze). */
async function mergeInPlace(stored: Float32Array, storedShape: number[], ref: SourceRef, apps: Application[], name: string): Promise<void> {
  if (!ref.rows && !ref.transpose) {
    // The canonical weight is the whole stored tensor: merge in place, no copies.
    await applyLoras(stored, ref.squeeze ? storedShape.slice(0, 2) : storedShape, apps, name);
    return;
  }
  const rowSize = numel(storedShape.slice(1));
  const [start, end] = ref.rows ?? [0, storedShape[0]];
  let part: Float32Array = stored.slice(start * rowSize, end * rowSize);
  let shape = [end - start, ...storedShape.slice(1)];
  if (ref.squeeze) shape = shape.slice(0, 2);
  if (ref.transpose) {
    part = transpose2d(part, shape[0], shape[1]);
    shape = [shape[1], shape[0]];
  }
  await applyLoras(part, shape, apps, name);
  if (ref.transpose) part = transpose2d(part, shape[0], shape[1]);
  stored.set(part, start * rowSize);
}

function encodeF32(values: Float32Array, dtype: SafetensorsDType, file: string, name: string): Uint8Array {
  switch (dtype) {
    case 'F32':
      return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    case 'F16': {
      const overflow = countF16Overflow(values);
      if (overflow > 0) {
        let max = 0;
        for (const v of values) if (Number.isFinite(v)) max = Math.max(max, Math.abs(v));
        throw new F16OverflowError(file, name, overflow, max);
      }
      const h = f32ToF16(values);
      return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    }
    case 'BF16': {
      const b = f32ToBf16(values);
      return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    }
    case 'F64': {
      const d = Float64Array.from(values);
      return new Uint8Array(d.buffer);
    }
    default:
      throw new BadInputError(file, `tensor ${name} is stored as ${dtype}; merged values cannot be stored in that dtype`, 'Pass --dtype fp16, bf16 or fp32.');
  }
}

const PICKLE_WEIGHTS = /\.(bin|ckpt|pt|pth|pkl|msgpack|h5)$/i;

/** A PyTorch component file's safetensors name, as diffusers / transformers save_pretrained would write it. */
function safetensorsName(rel: string): string {
  if (!PICKLE_EXTENSION.test(rel)) return rel;
  const dir = dirname(rel);
  const base = rel.slice(dir === '.' ? 0 : dir.length + 1).replace(PICKLE_EXTENSION, '');
  return join(dir, base === 'pytorch_model' ? 'model.safetensors' : `${base}.safetensors`);
}

async function writeFolder(
  base: string,
  out: string,
  source: MappedSource,
  writes: FileWrites,
  opts: MergeCheckpointOptions,
  filesWritten: string[],
  notes: string[],
): Promise<void> {
  // Weight files the checkpoint reads, and the component folders they live in.
  const readFiles = new Set(source.names().map((n) => resolve(source.sourceOf(n).file)));
  const componentDirs = new Set([...readFiles].map((f) => dirname(f)));
  let hasIndex = false;
  await withAtomicDir(
    out,
    async (temp) => {
      const toRewrite: string[] = [];
      await cp(base, temp, {
        recursive: true,
        filter: (src) => {
          const abs = resolve(src);
          if (readFiles.has(abs)) {
            toRewrite.push(abs);
            return false;
          }
          const inComponent = componentDirs.has(dirname(abs));
          if (inComponent && abs.endsWith('.safetensors.index.json')) hasIndex = true;
          if (inComponent && (abs.endsWith('.safetensors') || PICKLE_WEIGHTS.test(abs))) {
            notes.push(`not copied: ${relative(base, abs)} (weights this merge does not read, so they would stay unmerged)`);
            return false;
          }
          return true;
        },
      });
      for (const file of toRewrite.sort()) {
        const target = safetensorsName(relative(base, file));
        await rewriteWeightFile(file, join(temp, target), writes.get(file) ?? new Map(), opts);
        filesWritten.push(join(out, target));
        if (target !== relative(base, file)) notes.push(`${relative(base, file)} (PyTorch) written as ${target}`);
      }
    },
    { force: opts.force ?? false },
  );
  if (opts.dtype && hasIndex) notes.push(`float tensors stored as ${opts.dtype}; *.safetensors.index.json total_size entries were not updated`);
}

