/** End to end: the built CLI (`node bin/run.js to-safetensors ...`); npm test builds first. */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onestep } from '../support/cli.js';
import { HOSTILE, PT, goldenRaw } from '../pytorch/helpers.js';

describe('onestep to-safetensors (CLI)', function () {
  this.timeout(60_000);
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'onestep-to-st-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('writes the file and says how the pickle was read', async () => {
    const out = join(dir, 'lora.safetensors');
    const run = await onestep('to-safetensors', join(PT, 'tiny-sd15-kohya.pt'), '-o', out);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /258 tensors/);
    assert.match(run.stderr, /note: tiny-sd15-kohya\.pt: PyTorch pickle \(torch\.save zip container, protocol 2\) read without executing it/);
    assert.equal(goldenRaw(out).tensors.size, 258);
  });

  it('a hostile checkpoint: one Error line, non-zero exit, no stack trace, no output', async () => {
    const out = join(dir, 'x.safetensors');
    const run = await onestep('to-safetensors', join(HOSTILE, 'zip-storage-type-global.pt'), '-o', out);
    assert.notEqual(run.code, 0);
    const lines = run.stderr.trim().split('\n');
    assert.equal(lines.filter((l) => l.startsWith('Error:')).length, 1, run.stderr);
    assert.match(lines[0], /zip-storage-type-global\.pt: storage type <global posix\.system> is not a torch storage class/);
    assert.ok(!/^\s+at /m.test(run.stderr), run.stderr);
    assert.equal(existsSync(out), false);
    assert.deepEqual(readdirSync(dir), []);
  });
});
