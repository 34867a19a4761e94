import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OnestepError } from '../../src/errors.js';
import { LOCK_FILE, lockFolder, processStart } from '../../src/io/lock.js';

describe('io/lock', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-lock-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const plant = (owner: object) => fs.writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify(owner));
  const refused = (pattern: RegExp) => (e: unknown) => {
    assert.ok(e instanceof OnestepError, String(e));
    assert.match(e.message, pattern);
    return true;
  };

  it('one holder at a time: a second lock is refused naming the holder; released, it can be taken again', async () => {
    const lock = await lockFolder(path.join(dir, 'out'), 'onestep generate a.txt');
    const owner = JSON.parse(fs.readFileSync(lock.file, 'utf8'));
    assert.equal(owner.pid, process.pid);
    assert.equal(owner.host, os.hostname());
    await assert.rejects(lockFolder(path.join(dir, 'out')), refused(new RegExp(`in use by another run \\(process ${process.pid}: onestep generate a\\.txt\\)`)));
    await lock.release();
    assert.ok(!fs.existsSync(lock.file));
    await (await lockFolder(path.join(dir, 'out'))).release();
  });

  it('a live process of this host holds it; one of another host is refused too (it cannot be checked)', async () => {
    const child = spawn('sleep', ['30']);
    try {
      await new Promise((r) => child.once('spawn', r));
      plant({ pid: child.pid, host: os.hostname(), start: processStart(child.pid!) });
      await assert.rejects(lockFolder(dir), refused(new RegExp(`process ${child.pid}\\)`)));
      plant({ pid: child.pid, host: 'node-17.cluster', start: '1' });
      await assert.rejects(lockFolder(dir), (e: unknown) => refused(/process \d+ on host node-17\.cluster/)(e) && /remove .*\.onestep\.lock/.test((e as OnestepError).hint ?? ''));
      // The same pid with another start time is a reused pid, not the owner: stale.
      plant({ pid: child.pid, host: os.hostname(), start: '1' });
      const lock = await lockFolder(dir);
      assert.equal(lock.tookOverFrom, `process ${child.pid}`);
      await lock.release();
    } finally {
      child.kill();
    }
  });

  it('a lock of a dead process (SIGKILL) or a torn lock file is taken over', async () => {
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
    plant({ pid: Number(dead), host: os.hostname() });
    const lock = await lockFolder(dir);
    assert.equal(lock.tookOverFrom, `process ${dead}`);
    assert.equal(JSON.parse(fs.readFileSync(lock.file, 'utf8')).pid, process.pid);
    await lock.release();
    fs.writeFileSync(path.join(dir, LOCK_FILE), '{"pid": 12');
    const again = await lockFolder(dir);
    assert.equal(again.tookOverFrom, 'an unreadable lock file');
    await again.release();
  });

  it('processes racing for a stale lock: exactly one wins', async () => {
    plant({ pid: 2 ** 22 + 1, host: os.hostname() });
    const script = `import { lockFolder } from ${JSON.stringify(path.resolve('src/io/lock.ts'))};
      try { await lockFolder(${JSON.stringify(dir)}); await new Promise((r) => setTimeout(r, 1500)); console.log('won'); }
      catch (e) { console.log('lost:' + e.message); }`;
    const runs = await Promise.all(
      [0, 1, 2].map(
        () =>
          new Promise<string>((resolve) => {
            const p = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script]);
            let out = '';
            p.stdout.on('data', (d) => (out += d));
            p.on('close', () => resolve(out.trim()));
          }),
      ),
    );
    assert.equal(runs.filter((r) => r === 'won').length, 1, runs.join('\n'));
    assert.equal(runs.filter((r) => /^lost:.*in use by another run/.test(r)).length, 2, runs.join('\n'));
    assert.ok(!fs.existsSync(path.join(dir, LOCK_FILE)), 'the winner removed its lock at exit');
  });
});
