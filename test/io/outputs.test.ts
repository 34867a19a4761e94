import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openManifest } from '../../src/io/manifest.js';
import { FilesOutput, METADATA_FILE, writeImageFolderMetadata } from '../../src/io/outputs.js';

function metadata(dir: string): string[] {
  return fs.readFileSync(path.join(dir, METADATA_FILE), 'utf8').trimEnd().split('\n');
}

describe('io/outputs', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-outputs-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('files: writes each image and its manifest line; metadata.jsonl on close has file_name and text first, index order', async () => {
    const manifest = await openManifest(dir);
    const output = new FilesOutput(dir, manifest);
    const base = { width: 8, height: 8, model: 'abc', modelName: 'tiny' };
    await output.write({ entry: { ...base, index: 2, prompt: 'two, "quoted"', seed: 12n, file: 'b.png', negativePrompt: 'blurry' }, data: Buffer.from('B') });
    await output.write({ entry: { ...base, index: 0, prompt: 'zero', seed: 10n, file: 'a.png', name: 'first' }, data: Buffer.from('A') });
    await output.close();
    assert.equal(fs.readFileSync(path.join(dir, 'a.png'), 'utf8'), 'A');
    assert.deepEqual(metadata(dir), [
      '{"file_name":"a.png","text":"zero","seed":10,"index":0,"width":8,"height":8,"name":"first","model":"abc","model_name":"tiny"}',
      '{"file_name":"b.png","text":"two, \\"quoted\\"","seed":12,"negative_prompt":"blurry","index":2,"width":8,"height":8,"model":"abc","model_name":"tiny"}',
    ]);
  });

  it('one row per image file that exists, the last manifest line of an index winning; webdataset lines and torn lines left out', async () => {
    const lines = [
      { index: 0, prompt: 'old', seed: 1, width: 8, height: 8, file: 'x.png', model: 'm' },
      { index: 1, prompt: 'gone', seed: 2, width: 8, height: 8, file: 'gone.png', model: 'm' },
      { index: 0, prompt: 'new', seed: 1, width: 8, height: 8, file: 'x.png', model: 'm' },
      { index: 3, prompt: 'in a tar', seed: 4, width: 8, height: 8, file: 'k.png', model: 'm', shard: '00000.tar' },
    ];
    fs.writeFileSync(path.join(dir, 'manifest.jsonl'), lines.map((l) => JSON.stringify(l) + '\n').join('') + '{"index": 9, "fi');
    for (const f of ['x.png', 'k.png']) fs.writeFileSync(path.join(dir, f), '');
    assert.equal(await writeImageFolderMetadata(dir), 1);
    assert.deepEqual(metadata(dir).map((l) => JSON.parse(l).text), ['new']);
  });

  it('seeds are exact JSON integers below 2^63; all strings when one is not (one column type)', async () => {
    const big = '18446744073709551615';
    const write = (seeds: (number | string)[]) => {
      fs.writeFileSync(path.join(dir, 'manifest.jsonl'), seeds.map((seed, index) => JSON.stringify({ index, prompt: 'p', seed, width: 8, height: 8, file: `${index}.png`, model: 'm' }) + '\n').join(''));
      seeds.forEach((_, i) => fs.writeFileSync(path.join(dir, `${i}.png`), ''));
    };
    write([5, '9223372036854775807']);
    await writeImageFolderMetadata(dir);
    assert.deepEqual(metadata(dir).map((l) => /"seed":([^,]*)/.exec(l)![1]), ['5', '9223372036854775807']);
    write([5, big]);
    await writeImageFolderMetadata(dir);
    assert.deepEqual(metadata(dir).map((l) => /"seed":([^,]*)/.exec(l)![1]), ['"5"', `"${big}"`]);
  });
});
