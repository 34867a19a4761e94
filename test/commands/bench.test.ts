/** End to end: the built CLI (`node bin/run.js bench ...`), as users run it (dist/ is built by `npm test`'s pretest). */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { convertCheckpoint } from '../../src/convert.js';
import { onestep } from '../support/cli.js';
import { FIXTURES } from '../support/fixtures.js';

describe('onestep bench (CLI)', function () {
  this.timeout(300_000);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-bench-cli-'));
  const model = path.join(tmp, 'tiny-sd15');
  before(async () => {
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: model });
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('prints the report as JSON, and as a table naming the CPU', async () => {
    const json = await onestep('bench', model, '--device', 'cpu', '--batch-sizes', '1', '--size', '64', '--json');
    assert.equal(json.code, 0, json.stderr);
    const report = JSON.parse(json.stdout);
    assert.equal(report.runs[0].batches[0].images, 1);
    assert.ok(report.model.gflopPerImage.total > 0);
    const table = await onestep('bench', model, '--device', 'cpu', '--batch-sizes', '1', '--size', '64');
    assert.equal(table.code, 0, table.stderr);
    assert.ok(table.stdout.includes(report.machine.cpu));
    assert.match(table.stdout, /cache hit/);
  });

  it('a bad list is one clear error', async () => {
    const r = await onestep('bench', model, '--batch-sizes', '1,x');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /--batch-sizes must be a comma-separated list of positive integers/);
    assert.doesNotMatch(r.stderr, /at .*\.js:\d+/);
  });
});
