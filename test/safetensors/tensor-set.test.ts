import assert from 'node:assert/strict';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PickleError } from '../../src/pytorch/pickle.js';
import { SafetensorsError } from '../../src/safetensors/errors.js';
import { SafetensorsFile } from '../../src/safetensors/reader.js';
import { TensorSet } from '../../src/safetensors/tensor-set.js';
import { writeSafetensors, type TensorToWrite } from '../../src/safetensors/writer.js';
import { PT } from '../pytorch/helpers.js';
import { bytesOf, makeTempDir } from './helpers.js';

const f32 = (name: string, values: number[]): TensorToWrite => ({
  name,
  dtype: 'F32',
  shape: [values.length],
  data: () => bytesOf(Float32Array.from(values)),
});

async function writeIndex(dir: string, file: string, weightMap: Record<string, string>): Promise<string> {
  const path = join(dir, file);
  await writeFile(path, JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
  return path;
}

function assertRule(rule: string, check?: (e: SafetensorsError) => void) {
  return (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, String(e));
    assert.equal(e.rule, rule, e.message);
    check?.(e);
    return true;
  };
}

describe('safetensors/tensor-set', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await makeTempDir()));
  afterEach(() => cleanup());

  async function writeTwoShards(folder: string): Promise<void> {
    await mkdir(folder, { recursive: true });
    await writeSafetensors(join(folder, 'model-00001-of-00002.safetensors'), [f32('a', [1, 2]), f32('b', [3])], { format: 'pt' });
    await writeSafetensors(join(folder, 'model-00002-of-00002.safetensors'), [f32('c', [4, 5, 6]), f32('stray', [0])], { format: 'other' });
    await writeIndex(folder, 'model.safetensors.index.json', {
      c: 'model-00002-of-00002.safetensors',
      a: 'model-00001-of-00002.safetensors',
      b: 'model-00001-of-00002.safetensors',
    });
  }

  it('reads a 2-shard set through its index.json, by index path or by folder', async () => {
    await writeTwoShards(dir);
    for (const path of [join(dir, 'model.safetensors.index.json'), dir]) {
      const set = await TensorSet.open(path);
      assert.equal(set.files.length, 2);
      assert.deepEqual(set.metadata, { format: 'pt' });
      assert.deepEqual(set.names(), ['a', 'b', 'c']);
      assert.equal(set.has('stray'), false, 'only tensors the weight_map lists');
      assert.equal(set.has('c'), true);
      const info = set.info('c');
      assert.equal(info.file, set.files[1]);
      assert.deepEqual([info.dtype, info.shape, info.byteLength], ['F32', [3], 12]);
      assert.deepEqual([...(await set.readF32('a'))], [1, 2]);
      assert.deepEqual([...(await set.readF32('c'))], [4, 5, 6]);
      assert.deepEqual(await set.readRaw('b'), bytesOf(Float32Array.of(3)));
      assert.throws(() => set.info('nope'), assertRule('missing-tensor', (e) => assert.equal(e.tensor, 'nope')));
      await set.close();
    }
  });

  it('opens a single file, or a folder holding one', async () => {
    await writeSafetensors(join(dir, 'only.safetensors'), [f32('x', [7])]);
    await writeFile(join(dir, 'notes.txt'), 'hi');
    for (const path of [join(dir, 'only.safetensors'), dir]) {
      const set = await TensorSet.open(path);
      assert.deepEqual(set.names(), ['x']);
      assert.deepEqual([...(await set.readF32('x'))], [7]);
      assert.ok(set.files[0] instanceof SafetensorsFile);
      await set.close();
    }
  });

  it('opens the fixture unet folder', async () => {
    const set = await TensorSet.open('test/fixtures/tiny-sd15/unet');
    assert.equal(set.files.length, 1);
    assert.ok(set.has('conv_in.weight'));
    assert.deepEqual(set.info('conv_in.weight').shape, [32, 4, 3, 3]);
    await set.close();
  });

  it('prefers the plain file over fp16/ema variants when that is unambiguous', async () => {
    await writeSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), [f32('plain', [1])]);
    await writeSafetensors(join(dir, 'diffusion_pytorch_model.fp16.safetensors'), [f32('half', [1])]);
    await writeSafetensors(join(dir, 'diffusion_pytorch_model.non_ema.safetensors'), [f32('nonema', [1])]);
    const set = await TensorSet.open(dir);
    assert.deepEqual(set.names(), ['plain']);
    await set.close();
  });

  it('refuses a folder with several plain files, naming them', async () => {
    await writeSafetensors(join(dir, 'one.safetensors'), [f32('a', [1])]);
    await writeSafetensors(join(dir, 'two.safetensors'), [f32('a', [1])]);
    await writeSafetensors(join(dir, 'two.fp16.safetensors'), [f32('a', [1])]);
    await assert.rejects(TensorSet.open(dir), assertRule('ambiguous', (e) => assert.match(e.message, /one\.safetensors, two\.fp16\.safetensors, two\.safetensors/)));
  });

  it('refuses a folder with only variants when more than one', async () => {
    await writeSafetensors(join(dir, 'm.fp16.safetensors'), [f32('a', [1])]);
    await writeSafetensors(join(dir, 'm.ema.safetensors'), [f32('a', [1])]);
    await assert.rejects(TensorSet.open(dir), assertRule('ambiguous'));
  });

  it('picks the plain index over an fp16 index variant', async () => {
    await writeTwoShards(dir);
    await writeIndex(dir, 'model.safetensors.index.fp16.json', { a: 'missing.safetensors' });
    const set = await TensorSet.open(dir);
    assert.deepEqual(set.names(), ['a', 'b', 'c']);
    await set.close();
  });

  it('explains folders with only a damaged pickle, empty folders and missing paths', async () => {
    await writeFile(join(dir, 'model.ckpt'), 'x');
    const damaged = (e: unknown) => e instanceof PickleError && e.rule === 'not-pytorch' && /model\.ckpt/.test(e.message);
    await assert.rejects(TensorSet.open(dir), damaged);
    await assert.rejects(TensorSet.open(join(dir, 'model.ckpt')), damaged);
    await mkdir(join(dir, 'empty'));
    await assert.rejects(TensorSet.open(join(dir, 'empty')), assertRule('not-found'));
    await assert.rejects(TensorSet.open(join(dir, 'absent')), assertRule('not-found'));
  });

  it('folders of PyTorch files: the .safetensors is preferred, else the .bin index, else the one checkpoint', async () => {
    const bin = join(dir, 'bin');
    await mkdir(bin);
    await copyFile(join(PT, 'dtypes.pt'), join(bin, 'pytorch_model.bin'));
    await writeFile(join(bin, 'training_args.bin'), 'a pickled TrainingArguments, never read');
    await writeFile(join(bin, 'optimizer.pt'), 'never read either');
    let set = await TensorSet.open(bin);
    assert.equal(set.names().length, 22);
    assert.match(set.pickleNotes()[0], /pytorch_model\.bin: PyTorch pickle \(torch\.save zip container, protocol 2\)/);
    await set.close();
    // Shards of both containers through a pytorch_model.bin.index.json, as transformers writes for large models.
    await copyFile(join(PT, 'dtypes.pt'), join(bin, 'pytorch_model-00001-of-00002.bin'));
    await copyFile(join(PT, 'dtypes-legacy.pt'), join(bin, 'pytorch_model-00002-of-00002.bin'));
    await writeIndex(bin, 'pytorch_model.bin.index.json', { f32: 'pytorch_model-00001-of-00002.bin', transposed: 'pytorch_model-00002-of-00002.bin' });
    set = await TensorSet.open(bin);
    assert.deepEqual(set.names(), ['f32', 'transposed']);
    assert.match(set.info('transposed').file.path, /00002-of-00002\.bin$/);
    assert.equal(set.pickleNotes().length, 2);
    await set.close();
    await writeSafetensors(join(bin, 'model.safetensors'), [f32('only', [1])]);
    set = await TensorSet.open(bin);
    assert.deepEqual([set.names(), set.pickleNotes()], [['only'], []]);
    await set.close();
  });

  it('refuses broken indexes', async () => {
    await writeTwoShards(dir);
    const idx = (m: Record<string, string>) => writeIndex(dir, 'x.safetensors.index.json', m);
    await assert.rejects(TensorSet.open(await idx({ a: 'model-00002-of-00002.safetensors' })), assertRule('index-missing-tensor', (e) => assert.equal(e.tensor, 'a')));
    await assert.rejects(TensorSet.open(await idx({ a: '../elsewhere.safetensors' })), assertRule('index-weight-map'));
    await assert.rejects(TensorSet.open(await idx({})), assertRule('index-weight-map'));
    await assert.rejects(TensorSet.open(await idx({ a: 'gone.safetensors' })), assertRule('not-found'));
    await writeFile(join(dir, 'y.safetensors.index.json'), '{"weight_map": ');
    await assert.rejects(TensorSet.open(join(dir, 'y.safetensors.index.json')), assertRule('index-json'));
    await writeFile(join(dir, 'z.safetensors.index.json'), '{"metadata": {}}');
    await assert.rejects(TensorSet.open(join(dir, 'z.safetensors.index.json')), assertRule('index-weight-map'));
  });
});
