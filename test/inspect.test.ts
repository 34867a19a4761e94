import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspectPath } from '../src/inspect.js';
import { OnestepError } from '../src/errors.js';
import { FIXTURES } from './support/fixtures.js';

describe('inspect', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'onestep-inspect-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('unreadable input is one OnestepError: missing path, pickle, truncated file, folder without model_index.json', async () => {
    const truncated = join(dir, 'truncated.safetensors');
    writeFileSync(truncated, readFileSync(join(FIXTURES, 'tiny-sd15.safetensors')).subarray(0, 100_000));
    const pickle = join(dir, 'model.ckpt');
    writeFileSync(pickle, Buffer.from([0x50, 0x4b, 0x03, 0x04, 0, 0, 0, 0, 0, 0]));
    for (const [path, re] of [
      [join(dir, 'nope.safetensors'), /no such file/],
      [pickle, /pickle/],
      [truncated, /truncated|past the end|past the/],
      [dir, /model_index\.json/],
    ] as const) {
      await assert.rejects(inspectPath(path), (e: unknown) => e instanceof OnestepError && re.test(e.message), path);
    }
  });
});
