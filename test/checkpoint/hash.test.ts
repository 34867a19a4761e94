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
});
