import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { OnestepError } from '../../src/errors.js';
import { pendingTempPathCount, registerTempPath, withAtomicDir, writeFileAtomic } from '../../src/io/atomic.js';

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
