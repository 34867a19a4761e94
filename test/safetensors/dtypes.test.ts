import assert from 'node:assert/strict';
import {
  DTYPE_SIZES,
  bf16ToF16,
  bf16ToF32,
  bytesToF16,
  bytesToF32,
  countF16NonFinite,
  hasF16NonFinite,
  countF16Overflow,
  countF32NonFinite,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  f32ToF16Bits,
  f8ToF32,
  isFloatDType,
  isSafetensorsDType,
} from '../../src/safetensors/dtypes.js';
import { bytesOf, positiveF16Value, referenceF16Bits, seededUint32 } from './helpers.js';

describe('safetensors/dtypes', () => {
  it('knows the safetensors dtypes and their sizes', () => {
    assert.equal(DTYPE_SIZES.F32, 4);
    assert.equal(DTYPE_SIZES.BF16, 2);
    assert.equal(DTYPE_SIZES.I64, 8);
    assert.equal(isSafetensorsDType('F8_E4M3'), true);
    assert.equal(isSafetensorsDType('toString'), false);
    assert.equal(isSafetensorsDType('F128'), false);
    assert.equal(isFloatDType('BF16'), true);
    assert.equal(isFloatDType('I32'), false);
  });

  it('U16, U32 and U64 are valid dtypes (the safetensors spec has them) and decode as unsigned integers', () => {
    assert.equal(DTYPE_SIZES.U16, 2);
    assert.equal(DTYPE_SIZES.U32, 4);
    assert.equal(DTYPE_SIZES.U64, 8);
    for (const d of ['U16', 'U32', 'U64']) assert.equal(isSafetensorsDType(d), true, d);
    assert.equal(isFloatDType('U32'), false);
    assert.deepEqual([...bytesToF32('U16', bytesOf(Uint16Array.of(0, 1, 65535)))], [0, 1, 65535]);
    assert.deepEqual([...bytesToF32('U32', bytesOf(Uint32Array.of(0, 7, 4294967295)))], [0, 7, 4294967296]);
    assert.deepEqual([...bytesToF32('U64', bytesOf(BigUint64Array.of(0n, 9n, 2n ** 64n - 1n)))], [0, 9, 2 ** 64]);
  });

  it('decodes float16 known values', () => {
    const cases: [number, number][] = [
      [0x3c00, 1],
      [0xc000, -2],
      [0x7bff, 65504],
      [0x0400, 2 ** -14],
      [0x0001, 2 ** -24],
      [0x03ff, 1023 * 2 ** -24],
      [0x3555, 0.333251953125],
      [0x7c00, Infinity],
      [0xfc00, -Infinity],
    ];
    const out = f16ToF32(Uint16Array.from(cases.map(([h]) => h)));
    cases.forEach(([, v], i) => assert.equal(out[i], v));
    assert.ok(Object.is(f16ToF32(Uint16Array.of(0x8000))[0], -0));
    assert.ok(Number.isNaN(f16ToF32(Uint16Array.of(0x7e00))[0]));
  });

  it('decodes every finite float16 as the IEEE formula says, and re-encodes it to the same bits', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const values = f16ToF32(all);
    const back = f32ToF16(values);
    for (let h = 0; h < 65536; h++) {
      const positive = h & 0x7fff;
      if (positive > 0x7c00) {
        assert.ok(Number.isNaN(values[h]));
        continue;
      }
      const expected = (h & 0x8000 ? -1 : 1) * (positive === 0x7c00 ? Infinity : positiveF16Value(positive));
      assert.ok(Object.is(values[h], Math.fround(expected)), `bits ${h.toString(16)}`);
      assert.equal(back[h], h, `re-encode ${h.toString(16)}`);
    }
  });

  it('rounds random float32 to the nearest float16, ties to even (vs a binary-search reference)', () => {
    const next = seededUint32(7);
    const bits = new Uint32Array(200_000);
    for (let i = 0; i < bits.length; i++) {
      const r = next();
      if (i % 4 === 0) bits[i] = r; // any float32, including NaN/Inf and far out of range
      else {
        // exponent around the float16 range (subnormals to overflow), random mantissa and sign
        const exponent = 127 - 27 + (r % 46);
        bits[i] = (r & 0x80000000) | (exponent << 23) | (next() & 0x7fffff);
      }
    }
    const values = new Float32Array(bits.buffer);
    const got = f32ToF16(values);
    const fromView = f32ToF16(new Float32Array(values.buffer, 400, 1000));
    assert.deepEqual(fromView, got.subarray(100, 1100), 'works on a view at an offset');
    let nans = 0;
    for (let i = 0; i < values.length; i++) {
      if (Number.isNaN(values[i])) {
        nans++;
        assert.ok((got[i] & 0x7c00) === 0x7c00 && (got[i] & 0x3ff) !== 0, 'NaN stays NaN');
      } else assert.equal(got[i], referenceF16Bits(values[i]), `value ${values[i]} (bits ${bits[i].toString(16)})`);
    }
    assert.ok(nans > 0 && nans < 1000);
  });

  it('rounds exact ties to even, including subnormals and the overflow boundary', () => {
    const cases: [number, number][] = [
      [1 + 2 ** -11, 0x3c00], // half-way between 1 and next: even is 1
      [1 + 3 * 2 ** -11, 0x3c02], // half-way between odd 0x3c01 and 0x3c02: even wins
      [2 ** -25, 0x0000], // half of the smallest subnormal: ties to 0
      [3 * 2 ** -25, 0x0002], // between 1 and 2 ulps of subnormal: even 2
      [2 ** -25 * 1.0000001, 0x0001],
      [2 ** -14 - 2 ** -25, 0x0400], // largest subnormal + half ulp rounds up into the first normal
      [2047.5, 0x6800], // tie, odd 2047 vs even 2048: the carry moves into the exponent
      [2046.5, 0x67fe], // tie, even 2046 wins
      [65504, 0x7bff],
      [65519.99, 0x7bff],
      [65520, 0x7c00], // tie between 65504 (odd) and 65536 (would-be even): infinity
      [-65520, 0xfc00],
      [1e-10, 0x0000],
      [-1e-10, 0x8000],
    ];
    for (const [v, h] of cases) {
      assert.equal(f32ToF16Bits(Math.fround(v)), h, `value ${v}`);
      assert.equal(referenceF16Bits(Math.fround(v)), h, `reference ${v}`);
    }
  });

  it('counts finite values that overflow float16', () => {
    assert.equal(countF16Overflow(Float32Array.of(1, 65504, 65519, 65520, -1e6, Infinity, NaN)), 2);
    assert.equal(countF16Overflow(Float32Array.of(-65520, -65519.99, 3.4e38, -Infinity, -NaN)), 2);
    assert.equal(countF16Overflow(new Float32Array(new ArrayBuffer(16), 4, 2).fill(7e4)), 2);
  });

  it('decodes bfloat16 as the top half of a float32', () => {
    const next = seededUint32(3);
    const src = new Uint16Array(1000).map(() => next() & 0xffff);
    const got = bf16ToF32(src);
    const view = new DataView(new ArrayBuffer(4));
    for (let i = 0; i < src.length; i++) {
      view.setUint32(0, src[i] * 65536);
      const expected = view.getFloat32(0);
      if (Number.isNaN(expected)) assert.ok(Number.isNaN(got[i]));
      else assert.ok(Object.is(got[i], expected), `bits ${src[i].toString(16)}`);
    }
    assert.deepEqual([...bf16ToF32(Uint16Array.of(0x3f80, 0xc040, 0x7f7f))], [1, -3, Math.fround(3.3895313892515355e38)]);
  });

  it('decodes float8 e4m3fn known values', () => {
    const cases: [number, number][] = [
      [0x00, 0],
      [0x01, 2 ** -9], // smallest subnormal
      [0x07, 7 * 2 ** -9], // largest subnormal
      [0x08, 2 ** -6], // smallest normal
      [0x38, 1],
      [0x3c, 1.5],
      [0x40, 2],
      [0x7e, 448], // largest finite; e4m3fn has no infinity
      [0x77, 240],
      [0xb8, -1],
      [0xfe, -448],
    ];
    const got = f8ToF32('F8_E4M3', Uint8Array.from(cases.map(([b]) => b)));
    cases.forEach(([b, v], i) => assert.equal(got[i], v, `byte ${b.toString(16)}`));
    const nans = f8ToF32('F8_E4M3', Uint8Array.of(0x7f, 0xff));
    assert.ok(Number.isNaN(nans[0]) && Number.isNaN(nans[1]));
    assert.ok(Object.is(f8ToF32('F8_E4M3', Uint8Array.of(0x80))[0], -0));
  });

  it('decodes float8 e5m2 known values (the top byte of float16)', () => {
    const cases: [number, number][] = [
      [0x01, 2 ** -16],
      [0x04, 2 ** -14],
      [0x3c, 1],
      [0x3e, 1.5],
      [0x7b, 57344],
      [0x7c, Infinity],
      [0xfc, -Infinity],
      [0xc0, -2],
    ];
    const got = f8ToF32('F8_E5M2', Uint8Array.from(cases.map(([b]) => b)));
    cases.forEach(([b, v], i) => assert.equal(got[i], v, `byte ${b.toString(16)}`));
    // every e5m2 byte equals the float16 with that byte on top
    const all = new Uint8Array(256).map((_, i) => i);
    const asF16 = f16ToF32(Uint16Array.from(all, (b) => b << 8));
    const e5m2 = f8ToF32('F8_E5M2', all);
    for (let b = 0; b < 256; b++) assert.ok(Object.is(e5m2[b], asF16[b]) || (Number.isNaN(e5m2[b]) && Number.isNaN(asF16[b])));
  });

  it('bytesToF32 decodes every dtype from unaligned bytes', () => {
    const buf = new Uint8Array(1 + 16);
    const dv = new DataView(buf.buffer, 1);
    dv.setFloat64(0, 1.5, true);
    dv.setFloat64(8, -2.25, true);
    assert.deepEqual([...bytesToF32('F64', buf.subarray(1))], [1.5, -2.25]);
    dv.setBigInt64(0, -5n, true);
    dv.setBigInt64(8, 1n << 40n, true);
    assert.deepEqual([...bytesToF32('I64', buf.subarray(1))], [-5, 2 ** 40]);
    assert.deepEqual([...bytesToF32('I8', Uint8Array.of(0xff, 0x7f))], [-1, 127]);
    assert.deepEqual([...bytesToF32('BOOL', Uint8Array.of(0, 1))], [0, 1]);
    assert.deepEqual([...bytesToF32('I16', bytesOf(Int16Array.of(-300, 7)))], [-300, 7]);
    assert.deepEqual([...bytesToF32('F32', bytesOf(Float32Array.of(0.5, -3)))], [0.5, -3]);
  });

  it('bf16ToF16 gives every bfloat16 the float16 bits of its value (vs the binary-search reference)', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const got = bf16ToF16(all);
    const view = new DataView(new ArrayBuffer(4));
    for (let b = 0; b < 65536; b++) {
      view.setUint32(0, b * 65536);
      const value = view.getFloat32(0);
      if (Number.isNaN(value)) {
        // Any NaN will do (its sign and payload are not values; convert refuses NaN weights anyway).
        if ((got[b] & 0x7c00) !== 0x7c00 || !(got[b] & 0x3ff)) assert.fail(`bf16 ${b.toString(16)} (NaN): got ${got[b].toString(16)}`);
        continue;
      }
      const expected = referenceF16Bits(value);
      if (got[b] !== expected) assert.fail(`bf16 ${b.toString(16)}: got ${got[b].toString(16)}, expected ${expected.toString(16)}`);
    }
  });

  it('bytesToF16 keeps float16 bits as stored (same memory) and equals f32ToF16(bytesToF32) for every other dtype', () => {
    const next = seededUint32(11);
    const f16 = new Uint16Array(257).map(() => next() & 0xffff);
    const raw = bytesOf(f16);
    const bits = bytesToF16('F16', raw);
    assert.equal(bits.buffer, f16.buffer);
    assert.deepEqual(bits, f16);
    const unaligned = new Uint8Array(raw.length + 1).subarray(1);
    unaligned.set(raw);
    assert.deepEqual(bytesToF16('F16', unaligned), f16);
    for (const dtype of ['BF16', 'F32', 'F64', 'I32', 'U8', 'F8_E4M3'] as const) {
      const bytes = new Uint8Array(DTYPE_SIZES[dtype] * 64).map(() => next() & 0xff);
      assert.deepEqual(bytesToF16(dtype, bytes), f32ToF16(bytesToF32(dtype, bytes)), dtype);
    }
  });

  it('counts NaN and Inf in float16 bits and float32 values, at any offset and length', () => {
    const next = seededUint32(5);
    const naive = (h: Uint16Array) => h.reduce((n, x) => n + ((x & 0x7c00) === 0x7c00 ? 1 : 0), 0);
    const buf = new Uint16Array(4099).map(() => next() & 0xffff);
    for (const [start, end] of [[0, 4099], [1, 4099], [0, 4098], [3, 10], [2, 2], [7, 8]]) {
      const h = buf.subarray(start, end);
      assert.equal(countF16NonFinite(h), naive(h), `[${start}, ${end})`);
    }
    assert.ok(naive(buf) > 0);
    // hasF16NonFinite: every finite pattern next to every non-finite one, at each position of a word pair and tail.
    const finite = Uint16Array.from({ length: 65536 }, (_, i) => i).filter((h) => (h & 0x7c00) !== 0x7c00);
    assert.equal(hasF16NonFinite(finite), false);
    for (let k = 0; k < 2; k++) assert.equal(hasF16NonFinite(finite.subarray(k)), false);
    for (const bad of [0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xffff, 0x7fff]) {
      for (const [length, at] of [[8, 0], [8, 1], [8, 2], [8, 3], [8, 7], [7, 6], [9, 8], [1, 0]]) {
        for (const offset of [0, 1]) {
          const h = new Uint16Array(length + offset).fill(0x7bff).subarray(offset);
          h[at] = bad;
          assert.equal(hasF16NonFinite(h), true, `${bad.toString(16)} at ${at} of ${length}, offset ${offset}`);
        }
      }
    }
    assert.equal(countF16NonFinite(Uint16Array.of(0x7c00, 0xfc00, 0x7e00, 0x7bff, 0xfbff, 0x0001, 0x7c01)), 4);
    assert.equal(countF32NonFinite(Float32Array.of(1, -0, 3.4e38, Infinity, -Infinity, NaN, 1e-45)), 3);
  });

  it('f32ToBf16: round to nearest even', () => {
    const values = Float32Array.of(1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 1 + 2 ** -8 + 2 ** -20);
    assert.deepEqual([...f32ToBf16(values)], [0x3f80, 0x3f80, 0x3f82, 0xc020, 0x3f81]);
  });
});
