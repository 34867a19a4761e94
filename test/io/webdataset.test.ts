import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openManifest, type ManifestInput } from '../../src/io/manifest.js';
import { readTar } from '../../src/io/tar.js';
import { WebDatasetOutput, shardFileName, webdatasetKey } from '../../src/io/webdataset.js';
import { unitRandom } from '../support/random.js';

function entry(index: number): ManifestInput {
  return { index, prompt: `prompt ${index}`, seed: 100n + BigInt(index), width: 8, height: 8, file: `${String(index).padStart(6, '0')}-x.png`, model: 'abc', ms: { total: Math.random() } };
}

function image(index: number): Buffer {
  return Buffer.from(`image bytes of ${index} `.repeat(index + 1));
}

/** Runs a writer over `indices` (reading order), writing the images in `writeOrder`, then ends the input unless `interrupt`. */
/** Returns how many images the writer dropped (those of incomplete shards). */
async function run(out: string, indices: number[], writeOrder: number[], shardSize: number, interrupt = false): Promise<number> {
  fs.mkdirSync(out, { recursive: true });
  const manifest = await openManifest(out);
  const output = await WebDatasetOutput.open({ out, shardSize, manifest, ordinal: (i) => i });
  for (const i of indices) if (!output.isDone(i)) output.expect(i);
  await Promise.all(writeOrder.filter((i) => !output.isDone(i)).map((i) => output.write({ entry: entry(i), data: image(i) })));
  if (!interrupt) await output.inputEnded();
  return output.close();
}

function shuffled(n: number, seed: number): number[] {
  const rnd = unitRandom(seed);
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

describe('io/webdataset', () => {
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-wds-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('keys have no dots; shard files are numbered with five digits', () => {
    assert.equal(webdatasetKey('000001-7.png'), '000001-7');
    assert.equal(webdatasetKey('a.b.c.webp'), 'a_b_c');
    assert.equal(shardFileName(3), '00003.tar');
    assert.equal(shardFileName(123456), '123456.tar');
  });

  it('members in index order whatever the write order: byte-identical shards, image/txt/json per key, manifest names the shard', async () => {
    const indices = Array.from({ length: 23 }, (_, i) => i);
    await run(path.join(dir, 'a'), indices, indices, 10);
    await run(path.join(dir, 'b'), indices, shuffled(23, 7), 10);
    const shards = ['00000.tar', '00001.tar', '00002.tar'];
    for (const d of ['a', 'b']) assert.deepEqual(fs.readdirSync(path.join(dir, d)).sort(), [...shards, 'manifest.jsonl']);
    for (const s of shards) assert.ok(fs.readFileSync(path.join(dir, 'a', s)).equals(fs.readFileSync(path.join(dir, 'b', s))), s);
    const seen: number[] = [];
    for (const [n, s] of shards.entries()) {
      const members = await readTar(path.join(dir, 'b', s));
      assert.equal(members.length % 3, 0);
      for (let m = 0; m < members.length; m += 3) {
        const json = JSON.parse(members[m + 2].data.toString());
        const i = json.index as number;
        const key = `${String(i).padStart(6, '0')}-x`;
        assert.deepEqual(members.slice(m, m + 3).map((x) => x.name), [`${key}.png`, `${key}.txt`, `${key}.json`]);
        assert.ok(members[m].data.equals(image(i)));
        assert.equal(members[m + 1].data.toString(), `prompt ${i}`);
        assert.deepEqual(json, { key, index: i, prompt: `prompt ${i}`, seed: 100 + i, width: 8, height: 8, file: `${key}.png`, model: 'abc', shard: s, prompt_sha256: createHash('sha256').update(`prompt ${i}`).digest('hex') });
        assert.equal(Math.floor(i / 10), n);
        seen.push(i);
      }
    }
    assert.deepEqual(seen, indices);
    const lines = fs.readFileSync(path.join(dir, 'b', 'manifest.jsonl'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => [l.index, l.shard]).sort((x, y) => x[0] - y[0]), indices.map((i) => [i, shardFileName(Math.floor(i / 10))]));
  });

  it('an interrupted run keeps only complete shards (no temp file); the next run redoes the incomplete shard alone, same bytes', async () => {
    const indices = Array.from({ length: 25 }, (_, i) => i);
    const out = path.join(dir, 'resume');
    // Images 0-9 and 10-13 written, then the run stops: shard 0 is complete, shard 1 is not.
    assert.equal(await run(out, indices.slice(0, 14), indices.slice(0, 14), 10, true), 4, 'images 10-13 dropped');
    assert.deepEqual(fs.readdirSync(out).sort(), ['00000.tar', 'manifest.jsonl']);
    const stamp = fs.statSync(path.join(out, '00000.tar'));
    const manifest = await openManifest(out);
    const output = await WebDatasetOutput.open({ out, shardSize: 10, manifest, ordinal: (i) => i });
    assert.deepEqual(indices.filter((i) => output.isDone(i)), indices.slice(0, 10));
    await output.close();
    await run(out, indices, indices, 10);
    assert.deepEqual(fs.readdirSync(out).sort(), ['00000.tar', '00001.tar', '00002.tar', 'manifest.jsonl']);
    assert.equal(fs.statSync(path.join(out, '00000.tar')).ino, stamp.ino, 'the complete shard was kept');
    await run(path.join(dir, 'whole'), indices, indices, 10);
    for (const s of ['00000.tar', '00001.tar', '00002.tar']) assert.ok(fs.readFileSync(path.join(out, s)).equals(fs.readFileSync(path.join(dir, 'whole', s))), s);
  });

  it('a resume with another --shard-size is refused, naming both shards', async () => {
    const out = path.join(dir, 'resume');
    const manifest = await openManifest(out);
    const output = await WebDatasetOutput.open({ out, shardSize: 7, manifest, ordinal: (i) => i });
    assert.throws(() => output.isDone(8), /image 8 in 00000\.tar, but --shard-size 7 puts it in 00001\.tar/);
    await output.close();
  });
});
