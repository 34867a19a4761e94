import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh temp folder per test; call the returned cleanup in afterEach. */
export async function makeTempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'onestep-st-'));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Small seeded PRNG (mulberry32): uint32 per call. */
export { mulberry32 as seededUint32 } from '../support/random.js';

export function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/**
 * Reference float32 -> float16 bits that shares no code with the converter under test: binary search over the
 * (monotonic) positive float16 values for the nearest one, ties going to the even bit pattern. Finite values at or
 * above 65520 (half-way past 65504) round to infinity, as IEEE does.
 */
export function referenceF16Bits(value: number): number {
  if (Number.isNaN(value)) return 0x7e00;
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const x = Math.abs(value);
  if (x === Infinity) return sign | 0x7c00;
  const valueOf = positiveF16Value; // at 0x7c00 it gives 65536, where the next binade would start: right for rounding
  let lo = 0;
  let hi = 0x7c00;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (valueOf(mid) <= x) lo = mid;
    else hi = mid;
  }
  // now valueOf(lo) <= x < valueOf(hi), hi = lo + 1
  const below = x - valueOf(lo);
  const above = valueOf(hi) - x;
  const h = below < above ? lo : above < below ? hi : lo % 2 === 0 ? lo : hi;
  return sign | h;
}

/** Value of a positive float16 bit pattern (0..0x7c00) by the IEEE formula. */
export function positiveF16Value(h: number): number {
  const exponent = h >> 10;
  const mantissa = h & 0x3ff;
  return exponent === 0 ? mantissa * 2 ** -24 : (1024 + mantissa) * 2 ** (exponent - 25);
}
