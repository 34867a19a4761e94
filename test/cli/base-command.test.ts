import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from '../support/fixtures.js';

// Operating-system refusals reach the user as one clear message, not a stack trace: a read-only output folder
// stands in for a full disk (both fail the first write). Root ignores permissions, so the check needs a non-root user.
describe('cli/base-command', () => {
  it('a write the operating system refuses gives one Error line, a hint and no stack trace', function () {
    if (process.getuid?.() === 0) {
      // As root, chmod cannot make a folder unwritable; /proc is a read-only file system for everyone.
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'lora', 'merge', path.join(ROOT, 'test', 'fixtures', 'tiny-sd15.safetensors'), path.join(ROOT, 'test', 'fixtures', 'loras', 'tiny-sd15-peft.safetensors'), '-o', '/proc/onestep-out.safetensors'], { encoding: 'utf8' });
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /^Error: /m);
      assert.doesNotMatch(r.stderr, /^\s+at /m, r.stderr);
      return;
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-ro-'));
    try {
      fs.chmodSync(dir, 0o500);
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'convert', path.join(ROOT, 'test', 'fixtures', 'tiny-sd15'), '-o', path.join(dir, 'm')], { encoding: 'utf8' });
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /^Error: .*(permission denied|EACCES)/m);
      assert.doesNotMatch(r.stderr, /^\s+at /m, r.stderr);
    } finally {
      fs.chmodSync(dir, 0o700);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a full disk: one Error line naming the output, nothing half-written left (where a small tmpfs can be mounted)', function () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-full-'));
    // Mounting needs privileges CI machines may not grant; without them this case cannot be staged, and the
    // read-only case above covers the same path through the code.
    if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', dir]).status !== 0) {
      fs.rmSync(dir, { recursive: true, force: true });
      this.skip();
    }
    try {
      const out = path.join(dir, 'm');
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'convert', path.join(ROOT, 'test', 'fixtures', 'tiny-sd15'), '-o', out], { encoding: 'utf8' });
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, new RegExp(`^Error: while writing ${out}: no space left on the device \\(ENOSPC\\)`, 'm'));
      assert.doesNotMatch(r.stderr, /^\s+at /m, r.stderr);
      assert.deepEqual(fs.readdirSync(dir), []);
    } finally {
      spawnSync('umount', [dir]);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a full model cache during generate blames the cache (ONESTEP_CACHE), not -o (where a small tmpfs can be mounted)', function () {
    const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-full-cache-'));
    if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', cache]).status !== 0) {
      fs.rmSync(cache, { recursive: true, force: true });
      this.skip();
    }
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-full-out-'));
    try {
      fs.writeFileSync(path.join(work, 'p.txt'), 'a cat\n');
      const out = path.join(work, 'out');
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'generate', path.join(work, 'p.txt'), '--model', path.join(ROOT, 'test', 'fixtures', 'tiny-sd15'), '-o', out, '-q'], {
        encoding: 'utf8',
        env: { ...process.env, ONESTEP_CACHE: cache },
      });
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, new RegExp(`^Error: no space left in the model cache ${cache} while converting .*tiny-sd15 \\(ENOSPC\\)`, 'm'));
      assert.match(r.stderr, /ONESTEP_CACHE/);
      assert.doesNotMatch(r.stderr, new RegExp(`while writing ${out}`));
      assert.doesNotMatch(r.stderr, /^\s+at /m, r.stderr);
      assert.deepEqual(fs.readdirSync(path.join(cache, 'models')), [], 'no half-written model in the cache');
    } finally {
      spawnSync('umount', [cache]);
      fs.rmSync(cache, { recursive: true, force: true });
      fs.rmSync(work, { recursive: true, force: true });
    }
  });

  it('a symlink loop (ELOOP) names its cause: one Error line, no stack trace', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-loop-'));
    try {
      fs.symlinkSync(path.join(dir, 'b'), path.join(dir, 'a'));
      fs.symlinkSync(path.join(dir, 'a'), path.join(dir, 'b'));
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'inspect', path.join(dir, 'a')], { encoding: 'utf8' });
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /^Error: .*(symlink loop)/m);
      assert.doesNotMatch(r.stderr, /^\s+at /m, r.stderr);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
