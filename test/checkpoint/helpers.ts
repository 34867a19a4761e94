/** Test helper: writes a modified copy of a safetensors file (renamed, dropped, reshaped or added tensors, metadata). */
import { SafetensorsFile } from '../../src/safetensors/reader.js';
import type { SafetensorsDType } from '../../src/safetensors/dtypes.js';
import { writeSafetensors, type TensorToWrite } from '../../src/safetensors/writer.js';

export interface RewriteOptions {
  rename?: (key: string) => string;
  drop?: (key: string) => boolean;
  reshape?: (key: string) => number[] | undefined;
  /** A second copy of a tensor under another name, optionally negated (float16 / float32 sign flip). */
  extra?: (key: string) => { name: string; negate?: boolean } | undefined;
  extraPlain?: { name: string; shape: number[]; values: number[] }[];
  metadata?: Record<string, string>;
}

function negated(dtype: SafetensorsDType, bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(bytes);
  const width = dtype === 'F16' || dtype === 'BF16' ? 2 : dtype === 'F32' ? 4 : 0;
  if (width === 0) throw new Error(`cannot negate ${dtype}`);
  for (let i = width - 1; i < out.length; i += width) out[i] ^= 0x80;
  return out;
}

export async function rewriteSafetensors(src: string, dst: string, opts: RewriteOptions): Promise<void> {
  const file = await SafetensorsFile.open(src);
  try {
    const list: TensorToWrite[] = [];
    for (const [key, info] of file.tensors) {
      if (opts.drop?.(key)) continue;
      list.push({
        name: opts.rename ? opts.rename(key) : key,
        dtype: info.dtype,
        shape: opts.reshape?.(key) ?? info.shape,
        data: () => file.readRaw(key),
      });
      const extra = opts.extra?.(key);
      if (extra) {
        list.push({
          name: extra.name,
          dtype: info.dtype,
          shape: info.shape,
          data: async () => (extra.negate ? negated(info.dtype, await file.readRaw(key)) : file.readRaw(key)),
        });
      }
    }
    for (const t of opts.extraPlain ?? []) {
      list.push({ name: t.name, dtype: 'F32', shape: t.shape, data: () => new Uint8Array(Float32Array.from(t.values).buffer) });
    }
    await writeSafetensors(dst, list, { ...file.metadata, ...opts.metadata });
  } finally {
    await file.close();
  }
}
