import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DTYPE_SIZES, f8ToF32, type SafetensorsDType } from '../../src/safetensors/dtypes.js';
import { F16OverflowError, SafetensorsError } from '../../src/safetensors/errors.js';
import { SafetensorsFile, findDuplicateKey } from '../../src/safetensors/reader.js';
import { writeSafetensors } from '../../src/safetensors/writer.js';
import { bytesOf, makeTempDir, positiveF16Value, referenceF16Bits, seededUint32 } from './helpers.js';

const FIXTURES = 'test/fixtures';

/** Builds a file by hand: 8-byte length, header bytes as given (no padding), then `dataBytes` zero bytes. */
function rawFile(header: string | Uint8Array, dataBytes = 0, declaredLength?: bigint): Uint8Array {
  const h = typeof header === 'string' ? new TextEncoder().encode(header) : header;
  const out = new Uint8Array(8 + h.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, declaredLength ?? BigInt(h.length), true);
  out.set(h, 8);
  return out;
}

const entry = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });

/** Each case: file bytes, the rule expected, and the tensor the error should name (if any). */
const MALFORMED: { title: string; bytes: Uint8Array; rule: string; tensor?: string }[] = [
  { title: 'file shorter than 8 bytes', bytes: Uint8Array.of(1, 0, 0), rule: 'file-size' },
  { title: 'header length 1', bytes: rawFile('{'), rule: 'header-length' },
  { title: 'header length 0', bytes: rawFile('', 0, 0n), rule: 'header-length' },
  { title: 'header length over 100 MB', bytes: rawFile('{}', 0, 1n << 40n), rule: 'header-length' },
  { title: 'header length past end of file', bytes: rawFile('{}', 0, 64n), rule: 'header-bounds' },
  { title: 'header not UTF-8', bytes: rawFile(Uint8Array.of(0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d)), rule: 'header-utf8' },
  { title: 'header not JSON', bytes: rawFile('{"a": '), rule: 'header-json' },
  { title: 'header padded with NULs', bytes: rawFile('{}\0\0\0\0\0\0'), rule: 'header-json' },
  { title: 'header a JSON array', bytes: rawFile('[1, 2]'), rule: 'header-object' },
  { title: 'header JSON null', bytes: rawFile('null'), rule: 'header-object' },
  {
    title: 'duplicate tensor name',
    bytes: rawFile('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', 2),
    rule: 'duplicate-key',
    tensor: 'w',
  },
  {
    title: 'duplicate key inside an entry',
    bytes: rawFile('{"w":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1),
    rule: 'duplicate-key',
    tensor: 'w',
  },
  { title: 'metadata not an object', bytes: rawFile(JSON.stringify({ __metadata__: ['a'] })), rule: 'metadata' },
  { title: 'metadata value not a string', bytes: rawFile(JSON.stringify({ __metadata__: { epoch: 3 } })), rule: 'metadata' },
  { title: 'entry not an object', bytes: rawFile(JSON.stringify({ w: [0, 1] })), rule: 'entry', tensor: 'w' },
  { title: 'entry with an extra key', bytes: rawFile(JSON.stringify({ w: { ...entry('U8', [1], [0, 1]), extra: 1 } }), 1), rule: 'entry', tensor: 'w' },
  { title: 'entry missing shape', bytes: rawFile(JSON.stringify({ w: { dtype: 'U8', data_offsets: [0, 1] } }), 1), rule: 'entry', tensor: 'w' },
  { title: 'unknown dtype', bytes: rawFile(JSON.stringify({ w: entry('F128', [1], [0, 16]) }), 16), rule: 'dtype', tensor: 'w' },
  { title: 'lower-case dtype', bytes: rawFile(JSON.stringify({ w: entry('f32', [1], [0, 4]) }), 4), rule: 'dtype', tensor: 'w' },
  { title: 'negative dimension', bytes: rawFile(JSON.stringify({ w: entry('U8', [-1], [0, 0]) })), rule: 'shape', tensor: 'w' },
  { title: 'fractional dimension', bytes: rawFile(JSON.stringify({ w: entry('U8', [1.5], [0, 1]) }), 1), rule: 'shape', tensor: 'w' },
  { title: 'shape not an array', bytes: rawFile(JSON.stringify({ w: entry('U8', 4, [0, 4]) }), 4), rule: 'shape', tensor: 'w' },
  { title: 'begin after end', bytes: rawFile(JSON.stringify({ w: entry('U8', [0], [4, 2]) }), 4), rule: 'data-offsets', tensor: 'w' },
  { title: 'three offsets', bytes: rawFile(JSON.stringify({ w: entry('U8', [1], [0, 1, 2]) }), 2), rule: 'data-offsets', tensor: 'w' },
  { title: 'offset beyond safe integers', bytes: rawFile(`{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,${2 ** 60}]}}`), rule: 'data-offsets', tensor: 'w' },
  { title: 'span differs from shape', bytes: rawFile(JSON.stringify({ w: entry('F32', [2, 2], [0, 12]) }), 16), rule: 'byte-length', tensor: 'w' },
  { title: 'shape too large', bytes: rawFile(JSON.stringify({ w: entry('F64', [2 ** 30, 2 ** 30], [0, 8]) }), 8), rule: 'byte-length', tensor: 'w' },
  { title: 'data past end of file', bytes: rawFile(JSON.stringify({ w: entry('F32', [4], [0, 16]) }), 15), rule: 'out-of-bounds', tensor: 'w' },
  {
    title: 'overlapping tensors',
    bytes: rawFile(JSON.stringify({ a: entry('F32', [2], [0, 8]), b: entry('F32', [2], [4, 12]) }), 12),
    rule: 'overlap',
    tensor: 'b',
  },
  { title: 'PyTorch zip checkpoint renamed .safetensors', bytes: Uint8Array.of(0x50, 0x4b, 3, 4, 0, 0, 0, 0, 0, 0), rule: 'pickle' },
  { title: 'raw pickle stream', bytes: Uint8Array.of(0x80, 0x02, 0x7d, 0x71, 0, 0, 0, 0, 0), rule: 'pickle' },
];

describe('safetensors/reader', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await makeTempDir()));
  afterEach(() => cleanup());

  describe('rejects malformed files with a SafetensorsError naming file, tensor and rule', () => {
    for (const [i, c] of MALFORMED.entries()) {
      it(c.title, async () => {
        const path = join(dir, `bad-${i}.safetensors`);
        await writeFile(path, c.bytes);
        await assert.rejects(SafetensorsFile.open(path), (e: unknown) => {
          assert.ok(e instanceof SafetensorsError, `got ${String(e)}`);
          assert.equal(e.rule, c.rule, e.message);
          assert.equal(e.file, path);
          assert.ok(e.message.includes(path) && e.message.includes(c.rule), e.message);
          assert.equal(e.tensor, c.tensor);
          if (c.tensor) assert.ok(e.message.includes(`"${c.tensor}"`), e.message);
          return true;
        });
      });
    }
  });

  it('refuses pickle extensions and folders with advice to convert', async () => {
    for (const ext of ['.ckpt', '.pt', '.pth', '.bin']) {
      const path = join(dir, `model${ext}`);
      await writeFile(path, rawFile('{}'));
      await assert.rejects(SafetensorsFile.open(path), (e: unknown) => {
        assert.ok(e instanceof SafetensorsError && e.rule === 'pickle');
        assert.match(e.message, /pickle/);
        assert.match(e.hint ?? '', /never unpickles.*safetensors/s);
        return true;
      });
    }
    await mkdir(join(dir, 'folder'));
    await assert.rejects(SafetensorsFile.open(join(dir, 'folder')), (e: unknown) => e instanceof SafetensorsError && e.rule === 'not-a-file');
    await assert.rejects(SafetensorsFile.open(join(dir, 'missing.safetensors')), (e: unknown) => e instanceof SafetensorsError && e.rule === 'not-found');
  });

  it('accepts an empty header, zero-size tensors and trailing spaces', async () => {
    const path = join(dir, 'ok.safetensors');
    await writeFile(path, rawFile('{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"x":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}   ', 1));
    const f = await SafetensorsFile.open(path);
    assert.deepEqual([...f.tensors.keys()], ['e', 'x']);
    assert.equal((await f.readF32('e')).length, 0);
    assert.deepEqual([...(await f.readRaw('x'))], [0]);
    await f.close();
    await writeFile(path, rawFile('{}'));
    const empty = await SafetensorsFile.open(path);
    assert.equal(empty.tensors.size, 0);
    await empty.close();
  });

  it('finds duplicate keys only where JSON has them', () => {
    assert.equal(findDuplicateKey('{"a":{"x":1,"y":[{"x":2}]},"b":{"x":"a\\":"}}'), undefined);
    assert.deepEqual(findDuplicateKey('{"a":1, "b":{"c":"\\"a\\"", "c" :2}}'), { key: 'c', within: 'b' });
    assert.deepEqual(findDuplicateKey('{"\\u0061":1,"a":2}'), { key: 'a', within: undefined });
  });

  it('round-trips every dtype through the writer, with independent decoding', async () => {
    const next = seededUint32(11);
    const dtypes = Object.keys(DTYPE_SIZES) as SafetensorsDType[];
    const shape = [3, 5];
    const stored = new Map<SafetensorsDType, Uint8Array>();
    for (const dtype of dtypes) {
      const bytes = new Uint8Array(15 * DTYPE_SIZES[dtype]).map(() => next() & 0xff);
      if (dtype === 'BOOL') bytes.forEach((_, i) => (bytes[i] &= 1));
      stored.set(dtype, bytes);
    }
    const path = join(dir, 'all.safetensors');
    await writeSafetensors(
      path,
      dtypes.map((dtype) => ({ name: `t.${dtype}`, dtype, shape, data: () => stored.get(dtype)! })),
      { format: 'pt' },
    );
    const f = await SafetensorsFile.open(path);
    assert.deepEqual(f.metadata, { format: 'pt' });
    assert.deepEqual([...f.tensors.keys()], dtypes.map((d) => `t.${d}`));
    for (const dtype of dtypes) {
      const name = `t.${dtype}`;
      const bytes = stored.get(dtype)!;
      const info = f.tensors.get(name)!;
      assert.equal(info.dtype, dtype);
      assert.deepEqual(info.shape, shape);
      if (dtype === dtypes[0]) assert.equal(info.byteOffset % 8, 0, 'the data section starts 8-aligned');
      assert.deepEqual(await f.readRaw(name), bytes);
      const values = await f.readF32(name);
      const dv = new DataView(bytes.buffer);
      const size = DTYPE_SIZES[dtype];
      for (let i = 0; i < 15; i++) {
        const at = i * size;
        const expected = {
          F64: () => Math.fround(dv.getFloat64(at, true)),
          F32: () => dv.getFloat32(at, true),
          F16: () => {
            const h = dv.getUint16(at, true);
            const p = h & 0x7fff;
            return p > 0x7c00 ? NaN : (h & 0x8000 ? -1 : 1) * (p === 0x7c00 ? Infinity : positiveF16Value(p));
          },
          BF16: () => new DataView(Uint8Array.of(0, 0, bytes[at], bytes[at + 1]).buffer).getFloat32(0, true),
          F8_E4M3: () => f8ToF32('F8_E4M3', bytes.subarray(at, at + 1))[0],
          F8_E5M2: () => f8ToF32('F8_E5M2', bytes.subarray(at, at + 1))[0],
          I64: () => Math.fround(Number(dv.getBigInt64(at, true))),
          I32: () => Math.fround(dv.getInt32(at, true)),
          I16: () => dv.getInt16(at, true),
          I8: () => dv.getInt8(at),
          U64: () => Math.fround(Number(dv.getBigUint64(at, true))),
          U32: () => Math.fround(dv.getUint32(at, true)),
          U16: () => dv.getUint16(at, true),
          U8: () => dv.getUint8(at),
          BOOL: () => dv.getUint8(at),
        }[dtype]();
        if (Number.isNaN(expected)) assert.ok(Number.isNaN(values[i]), `${dtype}[${i}]`);
        else assert.ok(Object.is(values[i], expected), `${dtype}[${i}]: ${values[i]} vs ${expected}`);
      }
    }
    await f.close();
  });

  it('readF16 rounds f32 to nearest even, keeps f16 as stored, and refuses overflow', async () => {
    const next = seededUint32(5);
    const values = new Float32Array(10_000);
    const bits = new Uint32Array(values.buffer);
    for (let i = 0; i < values.length; i++) {
      const exponent = 127 - 26 + (next() % 41); // subnormal range up to 2^15
      bits[i] = (next() & 0x80000000) | (exponent << 23) | (next() & 0x7fffff);
    }
    values.set([2 ** -24, 2 ** -25, 3 * 2 ** -25, 65504, -0, Infinity, -Infinity], 0);
    const f16 = Uint16Array.of(0x3c00, 0x0001, 0xfbff);
    const big = Float32Array.of(1, -70000, 65520, 2);
    const path = join(dir, 'f.safetensors');
    await writeSafetensors(path, [
      { name: 'f32', dtype: 'F32', shape: [values.length], data: () => bytesOf(values) },
      { name: 'f16', dtype: 'F16', shape: [3], data: () => bytesOf(f16) },
      { name: 'big', dtype: 'F32', shape: [4], data: () => bytesOf(big) },
      { name: 'bf16', dtype: 'BF16', shape: [2], data: () => bytesOf(Uint16Array.of(0x3f80, 0x4780)) }, // 1, 65536
    ]);
    const f = await SafetensorsFile.open(path);
    const halves = await f.readF16('f32');
    for (let i = 0; i < values.length; i++) assert.equal(halves[i], referenceF16Bits(values[i]), `value ${values[i]}`);
    assert.deepEqual([...halves.subarray(0, 7)], [0x0001, 0x0000, 0x0002, 0x7bff, 0x8000, 0x7c00, 0xfc00]);
    const back = await f.readF32('f32');
    assert.deepEqual(back, values);
    assert.deepEqual(await f.readF16('f16'), f16);
    for (const name of ['big', 'bf16']) {
      await assert.rejects(f.readF16(name), (e: unknown) => {
        assert.ok(e instanceof F16OverflowError, String(e));
        assert.equal(e.tensor, name);
        assert.equal(e.overflowCount, name === 'big' ? 2 : 1);
        assert.ok(e.message.includes(path) && e.message.includes(name));
        return true;
      });
    }
    await f.close();
  });

  it('reads the f16 single file and the f16 diffusers folder as the same numbers', async () => {
    const single = await SafetensorsFile.open(join(FIXTURES, 'tiny-sd15.safetensors'));
    const unet = await SafetensorsFile.open(join(FIXTURES, 'tiny-sd15/unet/diffusion_pytorch_model.safetensors'));
    const vae = await SafetensorsFile.open(join(FIXTURES, 'tiny-sd15/vae/diffusion_pytorch_model.safetensors'));
    assert.equal(single.tensors.size, 989);
    assert.deepEqual(unet.metadata, { format: 'pt' });
    const pairs: [string, SafetensorsFile, string][] = [
      ['model.diffusion_model.input_blocks.0.0.weight', unet, 'conv_in.weight'],
      ['model.diffusion_model.input_blocks.0.0.bias', unet, 'conv_in.bias'],
      ['model.diffusion_model.time_embed.0.weight', unet, 'time_embedding.linear_1.weight'],
      ['model.diffusion_model.out.2.weight', unet, 'conv_out.weight'],
      ['first_stage_model.decoder.conv_in.weight', vae, 'decoder.conv_in.weight'],
    ];
    for (const [singleName, file, folderName] of pairs) {
      const a = single.tensors.get(singleName)!;
      const b = file.tensors.get(folderName)!;
      assert.deepEqual([a.dtype, b.dtype], ['F16', 'F16']);
      assert.deepEqual(a.shape, b.shape);
      const va = await single.readF32(singleName);
      assert.deepEqual(va, await file.readF32(folderName));
      assert.ok(va.some((v) => v !== 0));
      assert.deepEqual(await single.readF16(singleName), await single.readRaw(singleName).then((r) => new Uint16Array(r.buffer)));
    }
    const ids = await single.readF32('cond_stage_model.transformer.text_model.embeddings.position_ids');
    assert.deepEqual([...ids], Array.from({ length: 77 }, (_, i) => i));
    let previousEnd = 0;
    for (const info of single.tensors.values()) {
      assert.ok(info.byteOffset >= previousEnd, 'tensors map is in data-offset order');
      previousEnd = info.byteOffset + info.byteLength;
    }
    assert.equal(previousEnd, single.fileSize);
    await Promise.all([single.close(), unet.close(), vae.close()]);
  });

  it('reads the torch.randn goldens (README example: seed 42, shape [2, 3])', async () => {
    const f = await SafetensorsFile.open(join(FIXTURES, 'goldens/torch-randn.safetensors'));
    const cases = JSON.parse(f.metadata.cases) as { name: string; seed: number; shape: number[] }[];
    assert.ok(cases.length >= 5);
    for (const c of cases) {
      assert.deepEqual(f.tensors.get(c.name)?.shape, c.shape);
      assert.equal(f.tensors.get(c.name)?.dtype, 'F32');
    }
    const example = await f.readF32('randn__seed42__shape2x3');
    const expected = [0.3367, 0.1288, 0.2345, 0.2303, -1.1229, -0.1863];
    expected.forEach((v, i) => assert.ok(Math.abs(example[i] - v) < 5e-5, `${example[i]} vs ${v}`));
    await f.close();
  });

  it('reads nothing after close', async () => {
    const f = await SafetensorsFile.open(join(FIXTURES, 'goldens/torch-randn.safetensors'));
    await f.close();
    await assert.rejects(f.readRaw('randn__seed42__shape2x3'), /after close/);
    await f.close();
  });

  it('names the tensor when asked for a missing one', async () => {
    const f = await SafetensorsFile.open(join(FIXTURES, 'goldens/torch-randn.safetensors'));
    await assert.rejects(f.readF32('nope'), (e: unknown) => e instanceof SafetensorsError && e.rule === 'missing-tensor' && e.tensor === 'nope');
    await f.close();
  });
});
