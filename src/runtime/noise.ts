/**
 * Gaussian noise bit-compatible with PyTorch's CPU generator:
 * `torchRandn(seed, shape)` == `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)`.
 *
 * PyTorch's CPU generator is a standard mt19937 seeded with the low 32 bits of the seed. torch.randn then takes one
 * of two paths:
 * - fewer than 16 values: one value at a time from a double-precision Box-Muller that draws two 53-bit uniforms
 *   (each from a 64-bit draw = two 32-bit outputs) and caches the sine half for the next value;
 * - 16 or more values: every value first becomes a 24-bit float uniform, then blocks of 16 are transformed in float32
 *   (u1 from element j, u2 from element j + 8, cos half to j, sin half to j + 8). When the count is not a multiple of
 *   16 the last 16 elements get fresh uniforms and are transformed again (overlapping the previous block).
 */
import { randomBytes } from 'node:crypto';

const MT_N = 624;
const MT_M = 397;
const TWO_POW_MINUS_24 = 2 ** -24;
const TWO_POW_24 = 2 ** 24;

/** The Mersenne Twister mt19937 (32-bit outputs), as std::mt19937 / at::mt19937. */
export class Mt19937 {
  // Int32Array keeps every word a small integer for the JIT. Outputs are produced a whole state (624 words) at a time.
  private readonly state = new Int32Array(MT_N);
  private readonly outputs = new Int32Array(MT_N);
  private index = MT_N;

  constructor(seed32: number) {
    const s = this.state;
    s[0] = seed32 | 0;
    for (let i = 1; i < MT_N; i++) {
      const prev = s[i - 1] ^ (s[i - 1] >>> 30);
      s[i] = (Math.imul(1812433253, prev) + i) | 0;
    }
  }

  /** Regenerates the state and tempers all of it into `outputs`. */
  private refill(): void {
    const s = this.state;
    let i = 0;
    for (; i < MT_N - MT_M; i++) {
      const y = (s[i] & 0x80000000) | (s[i + 1] & 0x7fffffff);
      s[i] = s[i + MT_M] ^ (y >>> 1) ^ (-(y & 1) & 0x9908b0df);
    }
    for (; i < MT_N - 1; i++) {
      const y = (s[i] & 0x80000000) | (s[i + 1] & 0x7fffffff);
      s[i] = s[i + MT_M - MT_N] ^ (y >>> 1) ^ (-(y & 1) & 0x9908b0df);
    }
    const y = (s[MT_N - 1] & 0x80000000) | (s[0] & 0x7fffffff);
    s[MT_N - 1] = s[MT_M - 1] ^ (y >>> 1) ^ (-(y & 1) & 0x9908b0df);

    const out = this.outputs;
    for (let k = 0; k < MT_N; k++) {
      let t = s[k];
      t ^= t >>> 11;
      t ^= (t << 7) & 0x9d2c5680;
      t ^= (t << 15) & 0xefc60000;
      t ^= t >>> 18;
      out[k] = t;
    }
    this.index = 0;
  }

  /** Fills dst[start, start + count) with at::uniform_real_distribution<float>(0, 1) draws: low 24 bits / 2^24. */
  fillUniformFloat(dst: Float32Array, start: number, count: number): void {
    const out = this.outputs;
    let i = start;
    const end = start + count;
    while (i < end) {
      if (this.index >= MT_N) this.refill();
      const n = Math.min(MT_N - this.index, end - i);
      for (let k = this.index, stop = this.index + n; k < stop; k++) dst[i++] = (out[k] & 0xffffff) * TWO_POW_MINUS_24;
      this.index += n;
    }
  }

  /** Next 32-bit output as an unsigned number. */
  nextU32(): number {
    return this.nextI32() >>> 0;
  }

  /** Next 32-bit output, its bit pattern as a signed int32 (cheaper when only low bits are used). */
  nextI32(): number {
    if (this.index >= MT_N) this.refill();
    return this.outputs[this.index++];
  }
}

const TWO_PI_F32 = Math.fround(2 * Math.PI);
const TWO_POW_53 = 2 ** 53;

/** at::uniform_real_distribution<double>(0, 1): the low 53 bits of a 64-bit draw (first draw = high word), / 2^53. */
function uniformDouble(rng: Mt19937): number {
  const hi = rng.nextU32();
  const lo = rng.nextU32();
  return ((hi & 0x1fffff) * 2 ** 32 + lo) / TWO_POW_53;
}

/*
 * On x86-64 with AVX2 (the reference machine), torch transforms each block of 16 with float32 cephes-style
 * polynomial approximations of log and sin/cos (avx_mathfun, 8 lanes at a time), not with libm, and the compiler
 * fuses each multiply feeding an add into one FMA. To land on the same float32 bits we evaluate the same
 * polynomials with the same fusions, rounding to float32 after every (fused) operation. This reproduces all
 * 82,744 golden values bit for bit (correctly rounded libm instead would be off by up to 3 ulps in ~16% of them).
 */
const f32 = Math.fround;
/** float32 fused multiply-add: the product of two float32 values is exact in a double, so one rounding remains. */
const fma32 = (a: number, b: number, c: number): number => f32(a * b + c);

const SQRT_HALF_F32 = f32(0.707106781186547524);
const LOG_POLY = [
  7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
  2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(f32);
const LOG_Q1 = f32(-2.12194440e-4);
const LOG_Q2 = f32(0.693359375);
const FOUR_OVER_PI_F32 = f32(1.27323954473516);
const MINUS_DP1 = f32(-0.78515625);
const MINUS_DP2 = f32(-2.4187564849853515625e-4);
const MINUS_DP3 = f32(-3.77489497744594108e-8);
const SIN_POLY = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f32);
const COS_POLY = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f32);

/** 2^-b for b = 0..32. */
const INV_POW2 = Float64Array.from({ length: 33 }, (_, b) => 2 ** -b);

/**
 * Natural log of x = n / 2^24 for an integer n in [1, 2^24] (every u1 = 1 - uniform is one). The cephes algorithm
 * splits x into mantissa in [0.5, 1) and exponent; for such x that is n / 2^bits and bits - 24.
 */
function logF32(n: number): number {
  const bits = 32 - Math.clz32(n);
  let exponent = bits - 24;
  let m = n * INV_POW2[bits];
  if (m < SQRT_HALF_F32) {
    exponent = f32(exponent - 1);
    m = f32(f32(m - 1) + m);
  } else {
    m = f32(m - 1);
  }
  const z = f32(m * m);
  let y = LOG_POLY[0];
  for (let k = 1; k < LOG_POLY.length; k++) y = fma32(y, m, LOG_POLY[k]);
  y = f32(y * m);
  y = fma32(y, z, f32(exponent * LOG_Q1));
  y = fma32(-z, 0.5, y);
  return fma32(exponent, LOG_Q2, f32(m + y));
}

/** sin and cos of a float32 angle in [0, 2*pi); writes [sin, cos] into out. */
function sinCosF32(x: number, out: Float64Array): void {
  // octant index j = (trunc(x * 4/pi) + 1) & ~1, then x -= j * pi/4 in three exact-ish pieces
  const octant = (Math.trunc(f32(x * FOUR_OVER_PI_F32)) + 1) & ~1;
  const sinNegative = (octant & 4) !== 0;
  const cosNegative = ((octant - 2) & 4) === 0;
  const swapPolys = (octant & 2) !== 0;
  x = fma32(octant, MINUS_DP1, x);
  x = fma32(octant, MINUS_DP2, x);
  x = fma32(octant, MINUS_DP3, x);
  const z = f32(x * x);
  let c = fma32(COS_POLY[0], z, COS_POLY[1]);
  c = fma32(c, z, COS_POLY[2]);
  c = f32(c * z);
  c = fma32(c, z, -f32(z * 0.5));
  c = f32(c + 1);
  let s = fma32(SIN_POLY[0], z, SIN_POLY[1]);
  s = fma32(s, z, SIN_POLY[2]);
  s = fma32(f32(s * z), x, x);
  const sinValue = swapPolys ? c : s;
  const cosValue = swapPolys ? s : c;
  out[0] = sinNegative ? -sinValue : sinValue;
  out[1] = cosNegative ? -cosValue : cosValue;
}

const sinCos = new Float64Array(2);

/** Box-Muller on 16 float uniforms in place, as torch's normal_fill_16_AVX2 (u1 from j, u2 from j + 8). */
function normalFill16(data: Float32Array, offset: number): void {
  for (let j = 0; j < 8; j++) {
    // u1 = 1 - data[j] maps [0, 1) to (0, 1] for the log; as data[j] = k / 2^24, u1 = (2^24 - k) / 2^24 exactly.
    const u1Times2To24 = TWO_POW_24 - data[offset + j] * TWO_POW_24;
    const u2 = data[offset + j + 8];
    const radius = f32(Math.sqrt(f32(-2 * logF32(u1Times2To24))));
    sinCosF32(f32(TWO_PI_F32 * u2), sinCos);
    data[offset + j] = f32(radius * sinCos[1]);
    data[offset + j + 8] = f32(radius * sinCos[0]);
  }
}

/** Low 32 bits of the seed; like manual_seed, a negative seed wraps to its two's-complement uint64 first. */
function seedLow32(seed: bigint | number): number {
  if (typeof seed === 'number') {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`seed must be an integer, got ${seed}`);
    seed = BigInt(seed);
  }
  return Number(BigInt.asUintN(32, seed));
}

export function torchRandn(seed: bigint | number, shape: number[]): Float32Array {
  let size = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`bad shape [${shape.join(', ')}]`);
    size *= d;
  }
  const rng = new Mt19937(seedLow32(seed));
  const out = new Float32Array(size);

  if (size < 16) {
    let cachedSin: number | undefined;
    for (let i = 0; i < size; i++) {
      if (cachedSin !== undefined) {
        out[i] = cachedSin;
        cachedSin = undefined;
        continue;
      }
      const u1 = uniformDouble(rng);
      const u2 = uniformDouble(rng);
      const r = Math.sqrt(-2 * Math.log1p(-u2));
      const theta = 2 * Math.PI * u1;
      cachedSin = r * Math.sin(theta);
      out[i] = r * Math.cos(theta);
    }
    return out;
  }

  rng.fillUniformFloat(out, 0, size);
  for (let i = 0; i + 16 <= size; i += 16) normalFill16(out, i);
  if (size % 16 !== 0) {
    const tail = size - 16;
    rng.fillUniformFloat(out, tail, 16);
    normalFill16(out, tail);
  }
  return out;
}

/** A random seed for an unset --seed: 63 bits from the OS's CSPRNG (non-negative as a signed 64-bit integer). */
export function seededRandomSeed(): bigint {
  return randomBytes(8).readBigUInt64LE() & 0x7fff_ffff_ffff_ffffn;
}
