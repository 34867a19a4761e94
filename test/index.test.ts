import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FIXTURES, ROOT } from './support/fixtures.js';

describe('index (the library API)', function () {
  this.timeout(120_000);

  it("the README's library example runs as written against the built package", () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const example = /## As a library[\s\S]*?```js\n([\s\S]*?)```/.exec(readme)?.[1];
    assert.ok(example, 'README has no library example');
    const work = mkdtempSync(join(tmpdir(), 'onestep-library-'));
    try {
      const script = join(work, 'example.mjs');
      writeFileSync(script, example.replace("from 'onestep'", `from ${JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'index.js')).href)}`));
      const out = join(work, 'out');
      execFileSync('mkdir', ['-p', out]);
      writeFileSync(join(out, 'prompts.txt'), 'a photo of a cat\na red bicycle\nsunset over the sea\n');
      const stdout = execFileSync(process.execPath, [script, join(FIXTURES, 'tiny-sd15'), out], { encoding: 'utf8' });
      assert.match(stdout, /tiny-sd15: sd1, \d+ parameters, convertible: true/);
      assert.match(stdout, /3 images from a sd1 model/);
      assert.equal(readdirSync(join(out, 'images')).filter((f) => f.endsWith('.png')).length, 3);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});
