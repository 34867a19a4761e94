import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { Graph } from '../../src/onnx/graph.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { openSession, type CacheUse } from '../../src/runtime/device.js';
import { tempPathFor } from '../../src/io/atomic.js';
import { CACHE_DIR, findCachedGraph, graphCacheKey } from '../../src/runtime/graph-cache.js';
import { folderWeights } from '../support/fixtures.js';

const CONV = 'vae.decoder.conv_in';
const NORM = 'vae.decoder.mid_block.resnets.0.norm1';

describe('runtime/graph-cache', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-graph-cache-'));
  const weights = folderWeights('tiny-sd15', ['vae']);
  const input = Float32Array.from({ length: 2 * 4 * 8 * 8 }, (_, i) => Math.sin(i * 0.37));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  // Real layers of the fixture's VAE decoder: a 3x3 conv (ORT rewrites it into its NCHWc layout) and a GroupNorm.
  async function build(dir: string, scale = 1): Promise<string> {
    fs.mkdirSync(dir, { recursive: true });
    const g = new Graph('conv', weights);
    const x = g.input('x', 'float32', ['batch', 4, 'height', 'width']);
    const h = g.silu(g.groupNorm(g.conv2d(x, CONV), NORM, 32, 1e-6));
    g.output(g.mul(h, g.scalar(scale)), 'y', ['batch', 32, 'height', 'width']);
    return (await writeModel(g, dir, 'conv')).onnxPath;
  }

  async function run(file: string, graphCache?: boolean): Promise<{ y: Uint8Array; cache: CacheUse }> {
    const { session, cache } = await openSession(file, { kind: 'cpu' }, { threads: 1, graphCache });
    try {
      const { y } = await session.run({ x: new ort.Tensor('float32', input, [2, 4, 8, 8]) });
      return { y: new Uint8Array((y.data as Float32Array).slice().buffer), cache };
    } finally {
      await session.release();
    }
  }

  it('writes the optimized graph once, then loads it; outputs are byte-identical to a session without the cache', async () => {
    const file = await build(path.join(tmp, 'a'));
    const plain = await run(file, false);
    assert.equal(plain.cache, 'off');
    const first = await run(file);
    assert.equal(first.cache, 'written');
    const second = await run(file);
    assert.equal(second.cache, 'hit');
    assert.deepEqual(first.y, plain.y);
    assert.deepEqual(second.y, plain.y);
    const key = await graphCacheKey(file, { kind: 'cpu' });
    const cached = await findCachedGraph(file, key);
    assert.ok(cached && cached.startsWith(path.join(tmp, 'a', CACHE_DIR)));
    // Only the complete entry is left (no temp folders).
    assert.deepEqual(fs.readdirSync(path.join(tmp, 'a', CACHE_DIR)), [`conv-${key}`]);
  });

  it('a rewritten model (same graph bytes, new weights file) gets a new entry; the stale one is removed', async () => {
    const dir = path.join(tmp, 'b');
    const file = await build(dir);
    await run(file);
    const oldKey = await graphCacheKey(file, { kind: 'cpu' });
    // Convert again: the same .onnx bytes, a new data file (another inode and mtime).
    const data = `${file}.data`;
    const bytes = fs.readFileSync(data);
    fs.rmSync(data);
    fs.writeFileSync(data, bytes);
    const newKey = await graphCacheKey(file, { kind: 'cpu' });
    assert.notEqual(newKey, oldKey);
    assert.equal((await run(file)).cache, 'written');
    assert.deepEqual(fs.readdirSync(path.join(dir, CACHE_DIR)), [`conv-${newKey}`]);
  });

  it('temp folders of dead processes (this naming and the older one) are removed when an entry is written', async () => {
    const file = await build(path.join(tmp, 'e'));
    const root = path.join(tmp, 'e', CACHE_DIR);
    const key = await graphCacheKey(file, { kind: 'cpu' });
    const dead = 2 ** 22 + 1;
    const planted = [path.basename(tempPathFor(path.join(root, `conv-${key}`), 'building')).replace(`-${process.pid}-`, `-${dead}-`), `.tmp-${dead}-0123abcd`];
    for (const n of planted) fs.mkdirSync(path.join(root, n), { recursive: true });
    assert.equal((await run(file)).cache, 'written');
    assert.deepEqual(fs.readdirSync(root), [`conv-${key}`]);
  });

  it('a damaged entry is not trusted: rebuilt from the graph, with the right outputs', async () => {
    const file = await build(path.join(tmp, 'c'));
    const expected = (await run(file, false)).y;
    await run(file);
    const cached = (await findCachedGraph(file, await graphCacheKey(file, { kind: 'cpu' })))!;
    fs.truncateSync(`${cached}.data`, 16);
    const again = await run(file);
    assert.equal(again.cache, 'written');
    assert.deepEqual(again.y, expected);
    assert.equal((await run(file)).cache, 'hit');
  });

  it('ONESTEP_GRAPH_CACHE=0 turns it off', async () => {
    const file = await build(path.join(tmp, 'd'));
    process.env.ONESTEP_GRAPH_CACHE = '0';
    try {
      assert.equal((await run(file)).cache, 'off');
    } finally {
      delete process.env.ONESTEP_GRAPH_CACHE;
    }
    assert.equal(fs.existsSync(path.join(tmp, 'd', CACHE_DIR)), false);
  });
});
