/**
 * Fuzzed model.json files (a converted tiny-sd15 manifest mutated as JSON and as bytes): readModelManifest accepts
 * them or refuses with one BadInputError naming model.json; never a raw TypeError, a crash or a hang.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { convertCheckpoint } from '../../src/convert.js';
import { BadInputError } from '../../src/errors.js';
import { readModelManifest } from '../../src/runtime/model-dir.js';
import { FIXTURES } from '../support/fixtures.js';
import { assertClean, damagedText, fuzz, FUZZ_CASES, mutateJson } from '../support/fuzz.js';

describe('runtime/model-check fuzz', function () {
  this.timeout(Math.max(120_000, FUZZ_CASES * 50));
  let work: string;
  let model: string;
  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-fuzz-model-'));
    model = path.join(work, 'model');
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: model });
  });
  after(() => fs.rmSync(work, { recursive: true, force: true }));

  it(`${FUZZ_CASES} fuzzed model.json files: read or refused naming the file; no crash or hang`, async () => {
    const file = path.join(model, 'model.json');
    const original = fs.readFileSync(file, 'utf8');
    const names = fs.readdirSync(model).sort();
    const fig = await fuzz(
      'model.json',
      FUZZ_CASES,
      async (r) => {
        const doc = r.int(10) === 0 ? JSON.parse(original) : mutateJson(JSON.parse(original), r);
        fs.writeFileSync(file, damagedText(JSON.stringify(doc) ?? 'null', r));
        await readModelManifest(model);
      },
      (e) => e instanceof BadInputError && (e.file === file || e.file === model),
      () => {
        const now = fs.readdirSync(model).sort();
        return now.join() === names.join() ? [] : [`model folder now holds ${now.join(', ')}`];
      },
    );
    assertClean(fig);
  });
});
