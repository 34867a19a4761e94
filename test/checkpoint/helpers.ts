/** Test helper: writes a modified copy of a safetensors file (renamed, dropped, reshaped or added tensors, metadata). */
import { SafetensorsFile } from '../../src/safetensors/reader.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, type SafetensorsDType } from '../../src/safetensors/dtypes.js';
import { writeSafetensors, type TensorToWrite } from '../../src/safetensors/writer.js';

export interface RewriteOptions {
  rename?: (key: string) => string;
  drop?: (key: string) => boolean;
  reshape?: (key: string) => number[] | undefined;
  /** A second copy of a tensor under another name, optionally negated (float16 / float32 sign flip). */
  extra?: (key: string) => { name: string; negate?: boolean } | undefined;
  extraPlain?: { name: string; shape: number[]; values: number[] }[];
  /** Store these tensors negated (float16 / float32 sign flip). */
  negate?: (key: string) => boolean;
  /** Store these float16 tensors multiplied by the factor (rounded back to float16). */
  scale?: (key: string) => number | undefined;
  /** Store every float16 tensor in this dtype instead (F32 exactly; BF16 rounded to nearest even). */
  dtype?: 'F32' | 'BF16';
  /** Store every bfloat16 tensor as float32 (exactly). */
  bf16AsF32?: boolean;
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
      if (opts.bf16AsF32 && info.dtype === 'BF16') {
        list.push({
          name: opts.rename ? opts.rename(key) : key,
          dtype: 'F32',
          shape: info.shape,
          data: async () => {
            const raw = await file.readRaw(key);
            return new Uint8Array(bf16ToF32(new Uint16Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength))).buffer);
          },
        });
        continue;
      }
      if (opts.dtype && info.dtype === 'F16') {
        const to = opts.dtype;
        list.push({
          name: opts.rename ? opts.rename(key) : key,
          dtype: to,
          shape: info.shape,
          data: async () => {
            const raw = await file.readRaw(key);
            const f = f16ToF32(new Uint16Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)));
            return new Uint8Array(to === 'F32' ? f.buffer : f32ToBf16(f).buffer);
          },
        });
        continue;
      }
      list.push({
        name: opts.rename ? opts.rename(key) : key,
        dtype: info.dtype,
        shape: opts.reshape?.(key) ?? info.shape,
        data: async () => {
          const factor = opts.scale?.(key);
          if (factor !== undefined) {
            if (info.dtype !== 'F16') throw new Error(`scale: ${key} is ${info.dtype}, not F16`);
            const raw = await file.readRaw(key);
            const h = new Uint16Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
            return new Uint8Array(f32ToF16(f16ToF32(h).map((v) => v * factor)).buffer);
          }
          return opts.negate?.(key) ? negated(info.dtype, await file.readRaw(key)) : file.readRaw(key);
        },
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
