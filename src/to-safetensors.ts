/**
 * `onestep to-safetensors`: a PyTorch checkpoint (read without executing it) rewritten as one .safetensors file,
 * tensors in the checkpoint's order and dtypes, strided views made contiguous. Streams through writeSafetensors
 * (at most two tensors in memory, contiguous ones copied in chunks), atomic: the output appears only when complete.
 */
import { realpath, stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { OnestepError } from './errors.js';
import { PICKLE_EXTENSION, isPyTorchFile } from './safetensors/tensor-file.js';
import { TensorSet } from './safetensors/tensor-set.js';
import { writeSafetensors, type TensorToWrite } from './safetensors/writer.js';

export interface ToSafetensorsOptions {
  force?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface ToSafetensorsResult {
  out: string;
  tensors: number;
  bytes: number;
  /** How each input file was read (container, where the weights were, inert placeholders). */
  notes: string[];
  metadata: Record<string, string>;
}

export async function toSafetensors(input: string, out: string, opts: ToSafetensorsOptions = {}): Promise<ToSafetensorsResult> {
  if (PICKLE_EXTENSION.test(out) || !/\.safetensors$/i.test(out)) {
    throw new OnestepError(`the output ${out} is not named .safetensors`, 'Name the output <something>.safetensors.');
  }
  const real = async (p: string) => realpath(p).catch(() => resolve(p));
  if ((await real(out)) === (await real(input))) throw new OnestepError(`the output ${out} is the input`, 'Choose another output path.');
  if (!opts.force && (await stat(out).catch(() => undefined))) {
    throw new OnestepError(`the output ${out} already exists`, 'Pass --force to replace it, or choose another path.');
  }
  const set = await TensorSet.open(input);
  try {
    const pickles = set.files.filter(isPyTorchFile);
    const metadata: Record<string, string> = {
      ...set.metadata,
      format: 'pt',
      'onestep.source': basename(resolve(input)),
      'onestep.source_format': pickles.length ? [...new Set(pickles.map((f) => `pytorch-${f.container}`))].join(',') : 'safetensors',
    };
    const placeholders = [...new Set(pickles.flatMap((f) => f.placeholders))];
    if (placeholders.length) metadata['onestep.source_inert_globals'] = placeholders.join(',');
    let bytes = 0;
    const tensors: TensorToWrite[] = set.names().map((name) => {
      const info = set.info(name);
      bytes += info.byteLength;
      return { name, dtype: info.dtype, shape: info.shape, copyFrom: info.file.copySource(name), data: () => set.readRaw(name) };
    });
    await writeSafetensors(out, tensors, metadata, (done, total) => opts.onProgress?.(done, total));
    return { out, tensors: tensors.length, bytes, notes: set.pickleNotes(), metadata };
  } finally {
    await set.close();
  }
}
