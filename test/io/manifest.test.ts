import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFile, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { BadInputError } from '../../src/errors.js';
import { MANIFEST_FILE, entrySeed, manifestSeed, openManifest, type ManifestInput } from '../../src/io/manifest.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'onestep-manifest-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function input(index: number, seed = BigInt(index)): ManifestInput {
  return { index, prompt: `prompt ${index}`, seed, width: 512, height: 512, file: `${index}.png`, model: 'abc123', ms: { encode: 1.5, total: 10 } };
}

async function lines(): Promise<unknown[]> {
  const text = await readFile(join(dir, MANIFEST_FILE), 'utf8');
  assert.ok(text === '' || text.endsWith('\n'));
  return text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l));
}

describe('io/manifest', () => {
  it('writes one JSON line per image; seeds are numbers up to 2^53-1 and strings above', async () => {
    const m = await openManifest(dir);
    assert.equal(m.completed.size, 0);
    await m.append({ ...input(0, 42n), negativePrompt: 'blurry', guidance: 1, name: 'n', modelId: '0123456789abcdef', prediction: 'epsilon', timestep: 999 });
    await m.append(input(1, 9007199254740991n));
    await m.append(input(2, 9007199254740993n));
    await m.close();
    const entries = (await lines()) as Record<string, unknown>[];
    assert.deepEqual(entries[0], {
      index: 0,
      prompt: 'prompt 0',
      negative_prompt: 'blurry',
      seed: 42,
      width: 512,
      height: 512,
      guidance: 1,
      name: 'n',
      file: '0.png',
      model: 'abc123',
      model_id: '0123456789abcdef',
      prediction: 'epsilon',
      timestep: 999,
      // sha256('prompt 0'), computed independently with sha256sum.
      prompt_sha256: '481d04be4cdbb88b5984fbcbfbe428ec5ab1043cc25e5b3a3d562d2e8e5623ba',
      ms: { encode: 1.5, total: 10 },
    });
    assert.equal(entries[1].seed, 9007199254740991);
    assert.equal(entries[2].seed, '9007199254740993');
    assert.equal(entrySeed(entries[2] as { seed: string }), 9007199254740993n);
    assert.equal(manifestSeed(18446744073709551615n), '18446744073709551615');
  });

  it('concurrent appends land as whole lines, in call order', async () => {
    const m = await openManifest(dir);
    await Promise.all(Array.from({ length: 200 }, (_, i) => m.append(input(i))));
    await m.close();
    assert.deepEqual((await lines()).map((e) => (e as { index: number }).index), Array.from({ length: 200 }, (_, i) => i));
  });

  it('resume set: indices with a line whose file exists', async () => {
    const m = await openManifest(dir);
    for (let i = 0; i < 5; i++) await m.append(input(i));
    await m.close();
    for (const i of [0, 2, 3]) await writeFile(join(dir, `${i}.png`), 'img');
    const again = await openManifest(dir);
    assert.deepEqual([...again.completed].sort(), [0, 2, 3]);
    assert.deepEqual([...again.existing()].map((e) => e.file), ['0.png', '1.png', '2.png', '3.png', '4.png']);
    assert.equal(again.repairedBytes, 0);
    await again.close();
  });

  it('cuts off a torn last line and appends cleanly after it', async () => {
    const m = await openManifest(dir);
    for (let i = 0; i < 3; i++) await m.append(input(i));
    await m.close();
    const path = join(dir, MANIFEST_FILE);
    const whole = (await stat(path)).size;
    await appendFile(path, '{"index": 3, "prompt": "half a li');
    for (let i = 0; i < 4; i++) await writeFile(join(dir, `${i}.png`), 'img');

    const reopened = await openManifest(dir);
    assert.equal(reopened.repairedBytes, '{"index": 3, "prompt": "half a li'.length);
    assert.equal((await stat(path)).size, whole);
    assert.deepEqual([...reopened.completed].sort(), [0, 1, 2], 'index 3 is not complete: its line was torn');
    await reopened.append(input(3));
    await reopened.close();
    assert.deepEqual((await lines()).map((e) => (e as { index: number }).index), [0, 1, 2, 3]);
    // A manifest that is only a torn line becomes empty.
    await writeFile(path, '{"ind');
    const empty = await openManifest(dir);
    assert.equal(empty.files.size, 0);
    await empty.close();
    assert.equal((await stat(path)).size, 0);
  });

  it('survives SIGKILL in the middle of appending', async () => {
    const script = join(dir, 'writer.mts');
    await writeFile(
      script,
      `import { openManifest } from ${JSON.stringify(resolve('src/io/manifest.ts'))};\n` +
        `const m = await openManifest(${JSON.stringify(dir)});\n` +
        `for (let i = 0; ; i++) { await m.append({ index: i, prompt: 'p'.repeat(5000), seed: BigInt(i), width: 8, height: 8, file: i + '.png', model: 'h' }); if (i === 50) console.log('go'); }\n`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((res) => child.stdout.once('data', res));
    child.kill('SIGKILL');
    await new Promise((res) => child.on('exit', res));
    const m = await openManifest(dir);
    const n = m.files.size;
    assert.ok(n > 50);
    assert.deepEqual([...m.files.keys()], Array.from({ length: n }, (_, i) => i));
    await m.close();
    assert.equal((await lines()).length, n, 'every remaining line is whole JSON');
  });

  it('a bad line in the middle is an error naming the line', async () => {
    await writeFile(join(dir, MANIFEST_FILE), '{"index":0,"seed":1,"file":"0.png"}\nnot json\n{"index":2,"seed":1,"file":"2.png"}\n');
    await assert.rejects(openManifest(dir), (err: unknown) => err instanceof BadInputError && err.message.includes(`${MANIFEST_FILE}:2`));
  });
});
