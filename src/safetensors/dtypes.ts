/** Safetensors dtypes and exact conversions between float formats. */

export const DTYPE_SIZES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
} as const;

export type SafetensorsDType = keyof typeof DTYPE_SIZES;

export function isSafetensorsDType(s: string): s is SafetensorsDType {
  return Object.prototype.hasOwnProperty.call(DTYPE_SIZES, s);
}

export function isFloatDType(d: SafetensorsDType): boolean {
  return d === 'F64' || d === 'F32' || d === 'F16' || d === 'BF16' || d === 'F8_E4M3' || d === 'F8_E5M2';
}

function buildF16Table(): Float32Array {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const man = h & 0x3ff;
    if (exp === 0) t[h] = sign * man * 2 ** -24;
    else if (exp === 31) t[h] = man ? NaN : sign * Infinity;
    else t[h] = sign * (1 + man / 1024) * 2 ** (exp - 15);
  }
  return t;
}

let f16Table: Float32Array | undefined;
/** 65536-entry lookup: ~60x faster than bit twiddling per value in JS. */
export function f16ToF32Table(): Float32Array {
  return (f16Table ??= buildF16Table());
}

export function f16ToF32(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  const t = f16ToF32Table();
  for (let i = 0; i < src.length; i++) dst[i] = t[src[i]];
  return dst;
}

export function bf16ToF32(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  const u = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) u[i] = src[i] << 16;
  return dst;
}

function buildF8Table(expBits: number, manBits: number, fnuz: 'e4m3fn' | 'e5m2'): Float32Array {
  const t = new Float32Array(256);
  const bias = (1 << (expBits - 1)) - 1;
  for (let b = 0; b < 256; b++) {
    const sign = b & 0x80 ? -1 : 1;
    const exp = (b >> manBits) & ((1 << expBits) - 1);
    const man = b & ((1 << manBits) - 1);
    const maxExp = (1 << expBits) - 1;
    if (fnuz === 'e4m3fn' && exp === maxExp && man === (1 << manBits) - 1) t[b] = NaN;
    else if (fnuz === 'e5m2' && exp === maxExp) t[b] = man ? NaN : sign * Infinity;
    else if (exp === 0) t[b] = sign * man * 2 ** (1 - bias - manBits);
    else t[b] = sign * (1 + man / (1 << manBits)) * 2 ** (exp - bias);
  }
  return t;
}

const f8Tables: Partial<Record<'F8_E4M3' | 'F8_E5M2', Float32Array>> = {};
export function f8ToF32(kind: 'F8_E4M3' | 'F8_E5M2', src: Uint8Array, dst = new Float32Array(src.length)): Float32Array {
  const t = (f8Tables[kind] ??= kind === 'F8_E4M3' ? buildF8Table(4, 3, 'e4m3fn') : buildF8Table(5, 2, 'e5m2'));
  for (let i = 0; i < src.length; i++) dst[i] = t[src[i]];
  return dst;
}

const scratchF = new Float32Array(1);
const scratchU = new Uint32Array(scratchF.buffer);

/** float32 -> float16 bits, round to nearest even; overflow gives +-Infinity (callers check with countF16Overflow). */
export function f32ToF16Bits(value: number): number {
  scratchF[0] = value;
  const x = scratchU[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const man = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = man | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let h = sign | (e << 10) | (man >>> 13);
  const rem = man & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return h;
}

/** Bits of float32 2^-14 (smallest normal float16) and 65520 (first value that rounds to float16 infinity). */
const F32_BITS_F16_MIN_NORMAL = 0x38800000;
const F32_BITS_F16_OVERFLOW = 0x477ff000;

export function f32ToF16(src: Float32Array, dst = new Uint16Array(src.length)): Uint16Array {
  const bits = new Int32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) {
    const x = bits[i];
    const abs = x & 0x7fffffff;
    if (abs >= F32_BITS_F16_MIN_NORMAL && abs < F32_BITS_F16_OVERFLOW) {
      // Normal float16 result: round to nearest even on the bits (a carry may bump the exponent), then rebias 127 -> 15.
      dst[i] = ((x >>> 16) & 0x8000) | ((abs + 0xfff + ((abs >>> 13) & 1) - 0x38000000) >>> 13);
    } else dst[i] = f32ToF16Bits(src[i]);
  }
  return dst;
}

/** float32 -> bfloat16 bits, round to nearest even (NaN kept NaN). */
export function f32ToBf16(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const x = bits[i];
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) out[i] = (x >>> 16) | 0x40;
    else out[i] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

let bf16Table: Uint16Array | undefined;
/** bfloat16 bits -> float16 bits, exactly as bf16ToF32 then f32ToF16 give them (one lookup instead of two passes). */
function bf16ToF16Table(): Uint16Array {
  if (!bf16Table) {
    const all = new Uint32Array(65536);
    for (let b = 0; b < 65536; b++) all[b] = b << 16;
    bf16Table = f32ToF16(new Float32Array(all.buffer));
  }
  return bf16Table;
}

export function bf16ToF16(src: Uint16Array, dst = new Uint16Array(src.length)): Uint16Array {
  const t = bf16ToF16Table();
  for (let i = 0; i < src.length; i++) dst[i] = t[src[i]];
  return dst;
}

/**
 * Raw little-endian bytes of a tensor -> float16 bits, the values f32ToF16(bytesToF32(...)) gives (rounded to nearest
 * even, a finite value beyond the float16 range becomes +-Infinity, NaN stays NaN). F16 is returned as the stored
 * bits, without a copy, when `bytes` is 2-byte aligned.
 */
export function bytesToF16(dtype: SafetensorsDType, bytes: Uint8Array): Uint16Array {
  if (dtype !== 'F16' && dtype !== 'BF16') return f32ToF16(bytesToF32(dtype, bytes));
  const aligned = bytes.byteOffset % 2 === 0 ? bytes : new Uint8Array(bytes);
  const bits = new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2);
  return dtype === 'F16' ? bits : bf16ToF16(bits);
}

/** Number of float16 values (bits) that are NaN or +-Infinity (exponent all ones). */
export function countF16NonFinite(bits: Uint16Array): number {
  let n = 0;
  for (let i = 0; i < bits.length; i++) if ((bits[i] & 0x7c00) === 0x7c00) n++;
  return n;
}

/**
 * Whether any float16 value (bits) is NaN or +-Infinity: the check a float16 conversion runs over every weight, so
 * branch-free on 32-bit words. Per 16-bit half, e = the inverted exponent bits (zero exactly for NaN/Inf); with bit 15
 * set, subtracting one exponent unit clears bit 15 only where e is zero, and cannot borrow from the other half.
 */
export function hasF16NonFinite(bits: Uint16Array): boolean {
  let i = 0;
  if (bits.byteOffset % 4 === 0) {
    const words = new Int32Array(bits.buffer, bits.byteOffset, bits.length >>> 1);
    let a = -1;
    let b = -1;
    const pairs = words.length & ~1;
    let w = 0;
    for (; w < pairs; w += 2) {
      a &= ((~words[w] & 0x7c007c00) | 0x80008000) - 0x04000400;
      b &= ((~words[w + 1] & 0x7c007c00) | 0x80008000) - 0x04000400;
    }
    for (; w < words.length; w++) a &= ((~words[w] & 0x7c007c00) | 0x80008000) - 0x04000400;
    if ((a & b & 0x80008000) !== (0x80008000 | 0)) return true;
    i = words.length * 2;
  }
  for (; i < bits.length; i++) if ((bits[i] & 0x7c00) === 0x7c00) return true;
  return false;
}

/** Number of float32 values that are NaN or +-Infinity. */
export function countF32NonFinite(values: Float32Array): number {
  const bits = new Int32Array(values.buffer, values.byteOffset, values.length);
  let n = 0;
  for (let i = 0; i < bits.length; i++) if ((bits[i] & 0x7f800000) === 0x7f800000) n++;
  return n;
}

/** Number of finite float32 values that become +-Infinity in float16. */
export function countF16Overflow(src: Float32Array): number {
  const bits = new Int32Array(src.buffer, src.byteOffset, src.length);
  let n = 0;
  for (let i = 0; i < bits.length; i++) {
    const abs = bits[i] & 0x7fffffff;
    if (abs >= F32_BITS_F16_OVERFLOW && abs < 0x7f800000) n++;
  }
  return n;
}

/** Raw little-endian bytes of a float tensor -> float32 values (exact for all float dtypes but F64). */
export function bytesToF32(dtype: SafetensorsDType, bytes: Uint8Array): Float32Array {
  const aligned = bytes.byteOffset % 8 === 0 ? bytes : new Uint8Array(bytes);
  const { buffer, byteOffset, byteLength } = aligned;
  switch (dtype) {
    case 'F32':
      return new Float32Array(buffer.slice(byteOffset, byteOffset + byteLength));
    case 'F16':
      return f16ToF32(new Uint16Array(buffer, byteOffset, byteLength / 2));
    case 'BF16':
      return bf16ToF32(new Uint16Array(buffer, byteOffset, byteLength / 2));
    case 'F8_E4M3':
    case 'F8_E5M2':
      return f8ToF32(dtype, new Uint8Array(buffer, byteOffset, byteLength));
    case 'F64':
      return Float32Array.from(new Float64Array(buffer, byteOffset, byteLength / 8));
    case 'I64':
      return Float32Array.from(new BigInt64Array(buffer, byteOffset, byteLength / 8), Number);
    case 'I32':
      return Float32Array.from(new Int32Array(buffer, byteOffset, byteLength / 4));
    case 'I16':
      return Float32Array.from(new Int16Array(buffer, byteOffset, byteLength / 2));
    case 'I8':
      return Float32Array.from(new Int8Array(buffer, byteOffset, byteLength));
    case 'U64':
      return Float32Array.from(new BigUint64Array(buffer, byteOffset, byteLength / 8), Number);
    case 'U32':
      return Float32Array.from(new Uint32Array(buffer, byteOffset, byteLength / 4));
    case 'U16':
      return Float32Array.from(new Uint16Array(buffer, byteOffset, byteLength / 2));
    case 'U8':
    case 'BOOL':
      return Float32Array.from(new Uint8Array(buffer, byteOffset, byteLength));
  }
}
