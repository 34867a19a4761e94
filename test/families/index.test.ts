import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertCheckpoint } from '../../src/convert.js';
import { FAMILIES, FAMILY_IDS, familyById, familyLabel } from '../../src/families/index.js';
import { inspectPath } from '../../src/inspect.js';
import { FIXTURES, ROOT } from '../support/fixtures.js';

/** Every checkpoint in test/fixtures: top-level .safetensors files and folders with a model_index.json. */
function fixtureCheckpoints(): string[] {
  return readdirSync(FIXTURES)
    .map((n) => join(FIXTURES, n))
    .filter((p) => (statSync(p).isDirectory() ? existsSync(join(p, 'model_index.json')) : /\.safetensors$/.test(p)));
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

describe('families (the registry)', function () {
  this.timeout(120_000);

  it('has one entry per id, and every convertible family can open, build and declare its inference', () => {
    assert.equal(new Set(FAMILY_IDS).size, FAMILIES.length);
    for (const f of FAMILIES) {
      assert.equal(familyById(f.id), f);
      assert.equal(familyLabel(f.id), f.label);
      if (!f.convertible) continue;
      assert.ok(f.openFolder || f.openSingleFile, `${f.id} opens nothing`);
      assert.ok(f.graphs && f.inference && f.writeTokenizers, `${f.id} lacks graphs / inference / tokenizers`);
    }
  });

  it('no family union outside src/families/ (the rest of the code asks the registry)', () => {
    const offenders: string[] = [];
    for (const file of sourceFiles(join(ROOT, 'src')).filter((f) => !f.includes(`${join('src', 'families')}`))) {
      const text = readFileSync(file, 'utf8');
      for (const [i, line] of text.split('\n').entries()) {
        // A union or table of family ids written out: 'sd1' | 'sd2', ['sd1', 'sd2'], { sd1: ..., sd2: ... }.
        if (/'(sd1|sd2|sdxl|sdxs|pixart-alpha)'\s*\|\s*'|\[\s*'(sd1|sd2|sdxl)'\s*,\s*'|\bsd1:\s*['"]/.test(line) && !/families: \[/.test(line)) {
          offenders.push(`${file.slice(ROOT.length + 1)}:${i + 1}: ${line.trim()}`);
        }
      }
    }
    assert.deepEqual(offenders, []);
  });

  describe('inspect says convertible exactly when convert succeeds', () => {
    const work = mkdtempSync(join(tmpdir(), 'onestep-families-'));
    after(() => rmSync(work, { recursive: true, force: true }));
    for (const input of fixtureCheckpoints()) {
      const name = input.slice(FIXTURES.length + 1);
      it(name, async () => {
        const report = await inspectPath(input);
        let converted: boolean;
        let why = '';
        try {
          await convertCheckpoint(input, { out: join(work, name.replace(/\W/g, '_')) });
          converted = true;
        } catch (e) {
          converted = false;
          why = (e as Error).message;
        }
        assert.equal(report.convertible, converted, `inspect: convertible ${report.convertible}; convert: ${converted ? 'succeeded' : why}`);
        assert.ok(report.family === 'unknown' || familyById(report.family), report.family);
      });
    }
  });
});
