/**
 * Test-side access to test/fixtures: a deliberately independent, whole-file safetensors parse (fixtures are small),
 * so tests of src/ do not validate src/ with itself.
 */
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import type { ImageRequest } from '../../src/runtime/engine.js';
import type { WeightSource, TensorMeta } from '../../src/checkpoint/weight-source.js';
import type { SafetensorsDType } from '../../src/safetensors/dtypes.js';

export const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');
export const ROOT = path.join(FIXTURES, '..', '..');

export interface Tensor {
  shape: number[];
  dtype: string;
  data: Float32Array;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

export function readSafetensors(file: string): Map<string, Tensor> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = new Map<string, Tensor>();
  for (const [name, v] of Object.entries<any>(header)) {
    if (name === '__metadata__') continue;
    const raw = buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]);
    const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    let data: Float32Array;
    if (v.dtype === 'F32') data = Float32Array.from({ length: raw.length / 4 }, (_, i) => dv.getFloat32(i * 4, true));
    else if (v.dtype === 'F16') data = Float32Array.from({ length: raw.length / 2 }, (_, i) => halfToFloat(dv.getUint16(i * 2, true)));
    else if (v.dtype === 'I64') data = Float32Array.from({ length: raw.length / 8 }, (_, i) => Number(dv.getBigInt64(i * 8, true)));
    else continue;
    out.set(name, { shape: v.shape, dtype: v.dtype, data });
  }
  return out;
}

export function goldens(model: 'tiny-sd15' | 'tiny-sd21' | 'tiny-pixart' | 'tiny-sdxl' | 'tiny-sdxs' | 'tiny-sd15-img2img' | 'tiny-sd21-img2img'): Map<string, Tensor> {
  return readSafetensors(path.join(FIXTURES, 'goldens', `${model}.safetensors`));
}

/** A diffusers folder's components under canonical names (`unet.*`, `vae.*`, `text_encoder.*`). */
export function folderWeights(folder: string, components = ['unet', 'vae', 'text_encoder', 'transformer']): WeightSource {
  const all = new Map<string, Tensor>();
  for (const c of components) {
    const dir = path.join(FIXTURES, folder, c);
    if (!fs.existsSync(dir)) continue;
    for (const f of fs.readdirSync(dir).filter((x) => x.endsWith('.safetensors'))) {
      for (const [k, t] of readSafetensors(path.join(dir, f))) all.set(`${c}.${k}`, t);
    }
  }
  return {
    names: () => [...all.keys()].sort(),
    has: (n) => all.has(n),
    meta(n): TensorMeta {
      const t = all.get(n);
      if (!t) throw new Error(`missing weight ${n}`);
      return { shape: t.shape, dtype: t.dtype as SafetensorsDType };
    },
    readF32: async (n) => {
      const t = all.get(n);
      if (!t) throw new Error(`missing weight ${n}`);
      return t.data.slice();
    },
    close: async () => {},
  };
}

/** A WeightSource over small float32 tensors given inline (graph and writer tests). */
export function memoryWeights(tensors: Record<string, { shape: number[]; data: number[] }>): WeightSource {
  return {
    names: () => Object.keys(tensors).sort(),
    has: (n) => n in tensors,
    meta: (n) => ({ shape: tensors[n].shape, dtype: 'F32' }),
    readF32: async (n) => Float32Array.from(tensors[n].data),
    close: async () => {},
  };
}

export function folderConfig(folder: string, component: string): any {
  const dir = path.join(FIXTURES, folder, component);
  const f = ['config.json', 'scheduler_config.json'].map((x) => path.join(dir, x)).find((x) => fs.existsSync(x))!;
  return JSON.parse(fs.readFileSync(f, 'utf8'));
}

/** max |a - b| / max |b| */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let d = 0;
  let m = 1e-30;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

/** >= 99.9% of channel values within +-1 of the golden PNG (image*255 can sit on a rounding boundary). */
export async function assertNearGoldenImage(rgb: Uint8Array, golden: string): Promise<void> {
  const { data } = await sharp(path.join(FIXTURES, 'goldens', golden)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  assert.equal(rgb.length, data.length);
  let within = 0;
  for (let i = 0; i < data.length; i++) if (Math.abs(rgb[i] - data[i]) <= 1) within++;
  assert.ok(within / data.length >= 0.999, `${golden}: ${within} of ${data.length} values within 1`);
}

/** The 64x64 request of golden image i: prompts[i] on its row of the goldens' initial latents (one row per prompt). */
export function goldenImageRequest(prompts: string[], latents: Float32Array, i: number, extra: Partial<ImageRequest> = {}): ImageRequest {
  const size = latents.length / prompts.length;
  return { index: i, prompt: prompts[i], seed: 0n, width: 64, height: 64, guidance: 0, latents: latents.slice(i * size, (i + 1) * size), ...extra };
}
