import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sha256File, sha256Path } from '../../src/checkpoint/hash.js';
import { FIXTURES } from '../support/fixtures.js';

describe('checkpoint/hash', () => {
  it('hashes a file like a one-shot sha256 of its bytes', async () => {
    const file = path.join(FIXTURES, 'tiny-sd15.safetensors');
    assert.equal(await sha256File(file), createHash('sha256').update(fs.readFileSync(file)).digest('hex'));
  });

  it('hashes a folder by relative paths and file hashes, independent of where it lives', async () => {
    const a = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-hash-'));
    const b = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-hash-'));
    try {
      for (const d of [a, b]) {
        fs.mkdirSync(path.join(d, 'unet'));
        fs.writeFileSync(path.join(d, 'unet', 'config.json'), '{}');
        fs.writeFileSync(path.join(d, 'model_index.json'), '{"x": 1}');
      }
      assert.equal(await sha256Path(a), await sha256Path(b));
      fs.writeFileSync(path.join(b, 'unet', 'config.json'), '{ }');
      assert.notEqual(await sha256Path(a), await sha256Path(b));
      await assert.rejects(sha256File(path.join(a, 'missing')), /ENOENT/);
    } finally {
      fs.rmSync(a, { recursive: true, force: true });
      fs.rmSync(b, { recursive: true, force: true });
    }
  });

  it('follows symlinked files and folders: two folders differing only in a symlinked unet/ hash differently', async () => {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-hash-'));
    try {
      for (const name of ['unet-1', 'unet-2']) {
        fs.mkdirSync(path.join(work, name));
        fs.writeFileSync(path.join(work, name, 'weights.bin'), name);
      }
      const a = path.join(work, 'a');
      const b = path.join(work, 'b');
      for (const [d, unet] of [[a, 'unet-1'], [b, 'unet-2']]) {
        fs.mkdirSync(d);
        fs.writeFileSync(path.join(d, 'model_index.json'), '{}');
        fs.symlinkSync(path.join(work, unet), path.join(d, 'unet'));
      }
      assert.notEqual(await sha256Path(a), await sha256Path(b));
      // The same content through a symlink or as real files is the same folder.
      const real = path.join(work, 'real');
      fs.mkdirSync(path.join(real, 'unet'), { recursive: true });
      fs.writeFileSync(path.join(real, 'model_index.json'), '{}');
      fs.writeFileSync(path.join(real, 'unet', 'weights.bin'), 'unet-1');
      assert.equal(await sha256Path(a), await sha256Path(real));
      // A symlinked file counts as well.
      fs.symlinkSync(path.join(work, 'unet-2', 'weights.bin'), path.join(real, 'extra.bin'));
      assert.notEqual(await sha256Path(a), await sha256Path(real));
      // A loop is one clear error, not a hang.
      fs.symlinkSync(real, path.join(real, 'unet', 'loop'));
      await assert.rejects(sha256Path(real), /symlink loop/);
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
});
