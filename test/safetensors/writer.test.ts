import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SafetensorsError } from '../../src/safetensors/errors.js';
import { SafetensorsFile } from '../../src/safetensors/reader.js';
import { writeSafetensors, type TensorToWrite } from '../../src/safetensors/writer.js';
import { bytesOf, makeTempDir, seededUint32 } from './helpers.js';

function sampleTensors(): TensorToWrite[] {
  const next = seededUint32(99);
  const a = new Float32Array(7).map(() => next() / 2 ** 32 - 0.5);
  const b = new Uint16Array(3).map(() => next() & 0x3fff);
  const c = Int32Array.of(-1, 2, 3);
  return [
    { name: 'z.last_in_alphabet_first_in_file', dtype: 'F32', shape: [7], data: () => bytesOf(a) },
    { name: 'b', dtype: 'F16', shape: [1, 3], data: async () => bytesOf(b) },
    { name: 'ünïcode "quoted"', dtype: 'I32', shape: [3], data: () => bytesOf(c) },
    { name: 'scalar', dtype: 'U8', shape: [], data: () => Uint8Array.of(9) },
  ];
}

describe('safetensors/writer', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await makeTempDir()));
  afterEach(() => cleanup());

  it('writes a padded header with __metadata__ first and offsets in the given order', async () => {
    const path = join(dir, 'out.safetensors');
    await writeSafetensors(path, sampleTensors(), { format: 'pt', note: 'x' });
    const bytes = await readFile(path);
    const n = Number(bytes.readBigUInt64LE(0));
    assert.equal(n % 8, 0);
    const text = bytes.subarray(8, 8 + n).toString('utf8');
    assert.ok(text.startsWith('{"__metadata__":{"format":"pt","note":"x"},"z.last'), text);
    assert.match(text, /} *$/);
    const header = JSON.parse(text);
    assert.deepEqual(Object.keys(header), ['__metadata__', 'z.last_in_alphabet_first_in_file', 'b', 'ünïcode "quoted"', 'scalar']);
    assert.deepEqual(header.b, { dtype: 'F16', shape: [1, 3], data_offsets: [28, 34] });
    assert.deepEqual(header.scalar.data_offsets, [46, 47]);
    assert.equal(bytes.length, 8 + n + 47);

    const f = await SafetensorsFile.open(path);
    for (const t of sampleTensors()) assert.deepEqual(await f.readRaw(t.name), await t.data());
    assert.deepEqual(f.metadata, { format: 'pt', note: 'x' });
    await f.close();
  });

  it('pads every header length to a multiple of 8 with spaces', async () => {
    for (let len = 1; len <= 9; len++) {
      const path = join(dir, `p${len}.safetensors`);
      await writeSafetensors(path, [{ name: 'x'.repeat(len), dtype: 'U8', shape: [1], data: () => Uint8Array.of(len) }]);
      const bytes = await readFile(path);
      const n = Number(bytes.readBigUInt64LE(0));
      assert.equal(n % 8, 0);
      const text = bytes.subarray(8, 8 + n).toString('latin1');
      assert.match(text, /^\{.*\} {0,7}$/);
      assert.equal(bytes[8 + n], len);
    }
  });

  it('is deterministic: the same input gives the same bytes', async () => {
    await writeSafetensors(join(dir, '1.safetensors'), sampleTensors(), { a: '1' });
    await writeSafetensors(join(dir, '2.safetensors'), sampleTensors(), { a: '1' });
    assert.deepEqual(await readFile(join(dir, '1.safetensors')), await readFile(join(dir, '2.safetensors')));
  });

  it('calls data() lazily and in order, one call at a time, at most one tensor ahead of the write; reports progress', async () => {
    const events: string[] = [];
    let pending = 0;
    const tensors: TensorToWrite[] = [0, 1, 2].map((i) => ({
      name: `t${i}`,
      dtype: 'F32',
      shape: [2],
      data: async () => {
        assert.equal(pending, 0, 'no two data() calls overlap');
        pending++;
        events.push(`data ${i}`);
        await new Promise((r) => setTimeout(r, 5));
        pending--;
        return bytesOf(Float32Array.of(i, -i));
      },
    }));
    function* lazily() {
      for (const t of tensors) yield t;
    }
    await writeSafetensors(join(dir, 'l.safetensors'), lazily(), undefined, (done, total, bytes) => events.push(`progress ${done}/${total} ${bytes}`));
    assert.deepEqual(events, ['data 0', 'data 1', 'progress 1/3 8', 'data 2', 'progress 2/3 16', 'progress 3/3 24']);
    const f = await SafetensorsFile.open(join(dir, 'l.safetensors'));
    assert.deepEqual(f.metadata, {});
    assert.deepEqual([...(await f.readF32('t2'))], [2, -2]);
    await f.close();
  });

  it('leaves no file and no temp file when data() throws, and keeps an existing file intact', async () => {
    const path = join(dir, 'model.safetensors');
    await writeFile(path, 'previous contents');
    const tensors = sampleTensors();
    tensors[2] = { ...tensors[2], data: () => Promise.reject(new Error('disk on fire')) };
    await assert.rejects(writeSafetensors(path, tensors), /disk on fire/);
    assert.deepEqual(await readdir(dir), ['model.safetensors']);
    assert.equal(await readFile(path, 'utf8'), 'previous contents');

    await writeSafetensors(path, sampleTensors());
    assert.deepEqual(await readdir(dir), ['model.safetensors']);
    const f = await SafetensorsFile.open(path);
    assert.equal(f.tensors.size, 4);
    await f.close();
  });

  it('refuses data of the wrong length, leaving nothing behind', async () => {
    const path = join(dir, 'short.safetensors');
    const tensors: TensorToWrite[] = [
      { name: 'ok', dtype: 'U8', shape: [2], data: () => Uint8Array.of(1, 2) },
      { name: 'short', dtype: 'F32', shape: [2, 2], data: () => new Uint8Array(12) },
    ];
    await assert.rejects(writeSafetensors(path, tensors), (e: unknown) => {
      assert.ok(e instanceof SafetensorsError && e.rule === 'byte-length' && e.tensor === 'short', String(e));
      assert.match(e.message, /12 bytes.*needs 16/);
      return true;
    });
    assert.deepEqual(await readdir(dir), []);
  });

  it('refuses bad tensor lists before creating any file', async () => {
    const path = join(dir, 'bad.safetensors');
    const one = (over: Partial<TensorToWrite>): TensorToWrite[] => [{ name: 'a', dtype: 'U8', shape: [1], data: () => Uint8Array.of(1), ...over }];
    const cases: [TensorToWrite[], string][] = [
      [[...one({}), ...one({})], 'duplicate-key'],
      [one({ name: '__metadata__' }), 'entry'],
      [one({ dtype: 'F128' as never }), 'dtype'],
      [one({ shape: [-1] }), 'shape'],
      [one({ shape: [1.5] }), 'shape'],
    ];
    for (const [tensors, rule] of cases) {
      await assert.rejects(writeSafetensors(path, tensors), (e: unknown) => e instanceof SafetensorsError && e.rule === rule);
    }
    await assert.rejects(writeSafetensors(path, one({}), { n: 1 as never }), (e: unknown) => e instanceof SafetensorsError && e.rule === 'metadata');
    assert.deepEqual(await readdir(dir), []);
  });

  it('writes data given as a view into a larger buffer', async () => {
    const big = new Uint8Array(64).map((_, i) => i);
    const path = join(dir, 'view.safetensors');
    await writeSafetensors(path, [{ name: 'v', dtype: 'I16', shape: [4], data: () => big.subarray(5, 13) }]);
    const f = await SafetensorsFile.open(path);
    assert.deepEqual([...(await f.readRaw('v'))], [5, 6, 7, 8, 9, 10, 11, 12]);
    await f.close();
  });

  it('an interrupted write (SIGINT) leaves neither the file nor its temp file', async () => {
    // `dir` comes from beforeEach (a fresh temp folder, removed in afterEach).
    const out = join(dir, 'slow.safetensors');
    // A child that writes tensors slowly; it is interrupted once its temp file exists.
    const script = `
      import { writeSafetensors } from ${JSON.stringify(new URL('../../src/safetensors/writer.ts', import.meta.url).href)};
      const slow = Array.from({ length: 100 }, (_, i) => ({ name: 't' + i, dtype: 'F32', shape: [1024],
        data: () => new Promise((r) => setTimeout(() => r(new Uint8Array(4096)), 50)) }));
      await writeSafetensors(${JSON.stringify(out)}, slow);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: 'ignore' });
    const exited = new Promise<NodeJS.Signals | null>((r) => child.on('exit', (_code, signal) => r(signal)));
    for (let i = 0; i < 200 && !(await readdir(dir)).some((f) => f.includes('.tmp-')); i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok((await readdir(dir)).some((f) => f.includes('.tmp-')), 'the temp file appeared');
    child.kill('SIGINT');
    assert.equal(await exited, 'SIGINT');
    assert.deepEqual(await readdir(dir), []);
  });

  it('copies tensors as stored from another file (copyFrom), across chunk boundaries, mixed with data()', async () => {
    const src = join(dir, 'src.safetensors');
    const big = new Uint8Array((8 << 20) * 2 + 12); // spans three copy chunks
    const rand = seededUint32(3);
    for (let i = 0; i < big.length; i++) big[i] = rand() & 255;
    await writeSafetensors(src, [
      { name: 'small', dtype: 'U8', shape: [5], data: () => Uint8Array.of(1, 2, 3, 4, 5) },
      { name: 'big', dtype: 'U8', shape: [big.length], data: () => big },
    ]);
    const from = await SafetensorsFile.open(src);
    try {
      const out = join(dir, 'out.safetensors');
      await writeSafetensors(out, [
        { name: 'big', dtype: 'U8', shape: [big.length], data: () => assert.fail('data() of a copied tensor'), copyFrom: from.copySource('big') },
        { name: 'x', dtype: 'F32', shape: [1], data: () => bytesOf(Float32Array.of(7)) },
        { name: 'small', dtype: 'U8', shape: [5], data: () => assert.fail('data() of a copied tensor'), copyFrom: from.copySource('small') },
      ]);
      const f = await SafetensorsFile.open(out);
      assert.ok(Buffer.from(await f.readRaw('big')).equals(Buffer.from(big)));
      assert.deepEqual([...(await f.readRaw('small'))], [1, 2, 3, 4, 5]);
      assert.deepEqual([...(await f.readF32('x'))], [7]);
      await f.close();
    } finally {
      await from.close();
    }
  });
});
