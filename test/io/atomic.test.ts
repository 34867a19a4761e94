import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { OnestepError } from '../../src/errors.js';
import { parseTempName, pendingTempPathCount, registerTempPath, removeStaleTemps, tempPathFor, tempSuffix, withAtomicDir, writeAll, writeFileAtomic } from '../../src/io/atomic.js';
import { writeSafetensors } from '../../src/safetensors/writer.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'onestep-atomic-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('io/atomic', () => {
  it('writeFileAtomic writes the whole file, replaces an old one, and leaves no temp file', async () => {
    const path = join(dir, 'a.bin');
    const data = Buffer.alloc(3 * 1024 * 1024, 7);
    await writeFileAtomic(path, data);
    assert.deepEqual(await readFile(path), data);
    await writeFileAtomic(path, 'second');
    assert.equal(await readFile(path, 'utf8'), 'second');
    assert.deepEqual(await readdir(dir), ['a.bin']);
    assert.equal(pendingTempPathCount(), 0);
  });

  it('writeFileAtomic removes its temp file when the rename fails', async () => {
    const target = join(dir, 'is-a-dir');
    await mkdir(join(target, 'child'), { recursive: true });
    await assert.rejects(writeFileAtomic(target, 'x'));
    assert.deepEqual(await readdir(dir), ['is-a-dir']);
    assert.equal(pendingTempPathCount(), 0);
  });

  it('withAtomicDir builds in a sibling temp folder and renames it into place', async () => {
    const final = join(dir, 'model');
    let seenTemp = '';
    await withAtomicDir(
      final,
      async (tmp) => {
        seenTemp = tmp;
        assert.equal(resolve(tmp, '..'), resolve(dir));
        assert.equal(existsSync(final), false, 'the final folder does not exist while building');
        await writeFile(join(tmp, 'model.json'), '{}');
      },
      { force: false },
    );
    assert.equal(await readFile(join(final, 'model.json'), 'utf8'), '{}');
    assert.equal(existsSync(seenTemp), false);
    assert.deepEqual(await readdir(dir), ['model']);
  });

  it('withAtomicDir refuses an existing folder without force, and with force replaces it only on success', async () => {
    const final = join(dir, 'model');
    await mkdir(final);
    await writeFile(join(final, 'old.txt'), 'old');
    await assert.rejects(
      withAtomicDir(final, async () => assert.fail('must not run'), { force: false }),
      (err: unknown) => err instanceof OnestepError && /already exists/.test(err.message) && /--force/.test(err.hint ?? ''),
    );
    // A failing build with force keeps the old folder and removes the temp one.
    await assert.rejects(
      withAtomicDir(
        final,
        async (tmp) => {
          await writeFile(join(tmp, 'half.txt'), 'half');
          throw new Error('build failed');
        },
        { force: true },
      ),
      /build failed/,
    );
    assert.deepEqual(await readdir(final), ['old.txt']);
    assert.deepEqual(await readdir(dir), ['model']);
    await withAtomicDir(final, async (tmp) => writeFile(join(tmp, 'new.txt'), 'new'), { force: true });
    assert.deepEqual(await readdir(final), ['new.txt']);
    assert.deepEqual(await readdir(dir), ['model']);
    assert.equal(pendingTempPathCount(), 0);
  });

  it('registered temp paths are removed on SIGTERM and SIGINT, and the process still dies of the signal', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const final = join(dir, `out-${signal}`);
      const script = join(dir, 'child.mts');
      await writeFile(
        script,
        `import { writeFile } from 'node:fs/promises';\n` +
          `import { join } from 'node:path';\n` +
          `import { withAtomicDir } from ${JSON.stringify(resolve('src/io/atomic.ts'))};\n` +
          `await withAtomicDir(${JSON.stringify(final)}, async (tmp) => {\n` +
          `  await writeFile(join(tmp, 'partial.bin'), 'x');\n` +
          `  console.log(tmp);\n` +
          `  await new Promise(() => setInterval(() => {}, 1000));\n` +
          `}, { force: false });\n`,
      );
      const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      const tmp = await new Promise<string>((res) => child.stdout.once('data', (d) => res(String(d).trim())));
      assert.equal(existsSync(join(tmp, 'partial.bin')), true);
      child.kill(signal);
      const [code, sig] = await new Promise<[number | null, string | null]>((res) => child.on('exit', (c, s) => res([c, s])));
      assert.equal(sig, signal, `exit code ${code}`);
      assert.equal(existsSync(tmp), false, 'temp folder removed');
      assert.equal(existsSync(final), false);
    }
  });

  it('SIGKILL leaves temp folders and files; the next atomic write in that folder removes those of dead processes only', async () => {
    const script = join(dir, 'killed.mts');
    await writeFile(
      script,
      `import { writeFile } from 'node:fs/promises';\n` +
        `import { join } from 'node:path';\n` +
        `import { withAtomicDir } from ${JSON.stringify(resolve('src/io/atomic.ts'))};\n` +
        `import { writeSafetensors } from ${JSON.stringify(resolve('src/safetensors/writer.ts'))};\n` +
        `const forever = new Promise(() => setInterval(() => {}, 1000));\n` +
        `let started = 0;\n` +
        `const ready = () => ++started === 2 && console.log('ready');\n` +
        `withAtomicDir(${JSON.stringify(join(dir, 'model'))}, async (tmp) => { await writeFile(join(tmp, 'unet.onnx.data'), 'x'.repeat(1 << 16)); ready(); await forever; }, { force: false });\n` +
        `writeSafetensors(${JSON.stringify(join(dir, 'merged.safetensors'))}, [\n` +
        `  { name: 'a', dtype: 'F32', shape: [4], data: () => new Uint8Array(16) },\n` +
        `  { name: 'b', dtype: 'F32', shape: [4], data: () => (ready(), forever) },\n` +
        `]);\n`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((res) => child.stdout.on('data', (d) => String(d).includes('ready') && res()));
    child.kill('SIGKILL');
    await new Promise((res) => child.on('exit', res));
    const left = (await readdir(dir)).filter((n) => n !== 'killed.mts').sort();
    assert.equal(left.length, 2, left.join(', '));
    assert.match(left[0], /^\.merged\.safetensors\.tmp-\d+-[0-9a-f]{16}$/);
    assert.match(left[1], /^\.model\.building-\d+-[0-9a-f]{16}$/);
    // Kept: this (live) process's own temp, and one whose host tag is another host's (a shared file system).
    const mine = `.other.building-${tempSuffix()}`;
    const otherHost = `.other.building-${2 ** 22 + 1}-ffffffff00000000`;
    // Removed too: older versions' names (no host tag) of a dead pid: atomic writes, the safetensors writer, the graph
    // cache, the gallery's thumbnails.
    const dead = 2 ** 22 + 1;
    const legacy = [`.old-style.png.tmp-${dead}-0123abcd`, `old.safetensors.tmp-${dead}-0123abcd`, `.tmp-${dead}-0123abcd`, `.000001.webp.tmp-${dead}`];
    for (const n of [mine, otherHost, ...legacy]) await mkdir(join(dir, n));

    await withAtomicDir(join(dir, 'next-model'), async (tmp) => writeFile(join(tmp, 'x'), 'y'), { force: false });
    assert.deepEqual((await readdir(dir)).filter((n) => n !== 'killed.mts').sort(), [mine, otherHost, 'next-model'].sort());
    // The safetensors writer cleans up as well (here: nothing stale is left, the planted ones stay).
    await writeSafetensors(join(dir, 'b.safetensors'), [{ name: 'a', dtype: 'F32', shape: [1], data: () => new Uint8Array(4) }]);
    assert.deepEqual(await removeStaleTemps(dir), []);
    assert.ok(existsSync(join(dir, mine)) && existsSync(join(dir, otherHost)));
  });

  it('tempPathFor names every temp path one way, and parseTempName reads back what it was for and whose it is', () => {
    for (const kind of ['tmp', 'building', 'old'] as const) {
      const temp = tempPathFor(join(dir, 'out', 'model.v2.safetensors'), kind);
      assert.equal(resolve(temp, '..'), join(dir, 'out'), 'beside its target');
      const name = temp.slice(temp.lastIndexOf('/') + 1);
      assert.match(name, new RegExp(`^\\.model\\.v2\\.safetensors\\.${kind}-${process.pid}-[0-9a-f]{16}$`));
      const parsed = parseTempName(name);
      assert.equal(parsed?.target, 'model.v2.safetensors');
      assert.equal(parsed?.pid, process.pid);
      assert.equal(parsed?.hostTag, tempSuffix().split('-')[1].slice(0, 8));
    }
    assert.notEqual(tempPathFor(join(dir, 'a')), tempPathFor(join(dir, 'a')), 'two writers of one target do not collide');
    assert.deepEqual(parseTempName('000001.webp.tmp-42-0123abcd'), { target: '000001.webp', pid: 42, hostTag: undefined });
    assert.deepEqual(parseTempName('.tmp-42-0123abcd'), { target: undefined, pid: 42, hostTag: undefined });
    assert.deepEqual(parseTempName('.000001.webp.tmp-42'), { target: '000001.webp', pid: 42, hostTag: undefined });
    for (const name of ['000001.png', '.onestep.lock', 'model.tmp', '.x.tmp-', '.x.building-12-nothex00', 'x.old-12-0123abcd']) assert.equal(parseTempName(name), undefined, name);
  });

  it('writeAll writes every byte of a buffer, from the handle\'s position on', async () => {
    const file = join(dir, 'all.bin');
    const data = Uint8Array.from({ length: 3 << 20 }, (_, i) => (i * 31) & 255);
    const handle = await open(file, 'w');
    try {
      await writeAll(handle, data.subarray(0, 5));
      await writeAll(handle, data.subarray(5));
    } finally {
      await handle.close();
    }
    assert.deepEqual(new Uint8Array(await readFile(file)), data);
  });

  it('writeSafetensors with noReplace leaves a file that appeared meanwhile (a concurrent run) and removes its temp', async () => {
    const out = join(dir, 'merged.safetensors');
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow = writeSafetensors(out, [{ name: 'a', dtype: 'F32', shape: [1], data: async () => (await gate, new Uint8Array(4)) }], undefined, undefined, { noReplace: true });
    await writeFile(out, 'the other run');
    release();
    await assert.rejects(slow, (e: unknown) => e instanceof OnestepError && /appeared while it was being written/.test(e.message));
    assert.equal(await readFile(out, 'utf8'), 'the other run');
    assert.deepEqual(await readdir(dir), ['merged.safetensors']);
  });

  it('with the program\'s own signal listener, temp paths survive the signal (in-flight work goes on) and go at exit', async () => {
    const final = join(dir, 'out');
    const script = join(dir, 'graceful.mts');
    await writeFile(
      script,
      `import { existsSync, writeFileSync } from 'node:fs';\n` +
        `import { join } from 'node:path';\n` +
        `import { withAtomicDir } from ${JSON.stringify(resolve('src/io/atomic.ts'))};\n` +
        `let stop: () => void;\n` +
        `const stopped = new Promise<void>((res) => (stop = res));\n` +
        `process.on('SIGTERM', () => stop());\n` +
        `setInterval(() => {}, 1000);\n` +
        `await withAtomicDir(${JSON.stringify(final)}, async (tmp) => {\n` +
        `  console.log(tmp);\n` +
        `  await stopped;\n` +
        `  if (!existsSync(tmp)) process.exit(4);\n` +
        `  writeFileSync(join(tmp, 'after-signal.txt'), 'still there');\n` +
        `  process.exit(3);\n` +
        `}, { force: false });\n`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const tmp = await new Promise<string>((res) => child.stdout.once('data', (d) => res(String(d).trim())));
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
    assert.equal(code, 3, 'the program decided how to exit');
    assert.equal(existsSync(tmp), false, 'removed at exit');
    assert.equal(existsSync(final), false);
  });

  it('registerTempPath returns an unregister function', () => {
    const before = pendingTempPathCount();
    const unregister = registerTempPath(join(dir, 'x'));
    assert.equal(pendingTempPathCount(), before + 1);
    unregister();
    assert.equal(pendingTempPathCount(), before);
  });
});
