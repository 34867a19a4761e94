import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspectPath } from '../../src/inspect.js';
import { FIXTURES } from '../support/fixtures.js';
import { entriesOf, numel, writeHeaderOnly } from '../support/headers.js';

describe('inspect/report: warnings (synthetic headers, data sections are sparse zeros)', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'onestep-inspect-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const sd15 = () => entriesOf(join(FIXTURES, 'tiny-sd15.safetensors'));

  it('EMA and plain UNet weights: warned, EMA copy counted once', async () => {
    const entries = sd15();
    const ema = entries
      .filter((e) => e.name.startsWith('model.diffusion_model.'))
      .map((e) => ({ ...e, name: 'model_ema.' + e.name.slice('model.'.length).replaceAll('.', '') }));
    const file = join(dir, 'ema.safetensors');
    writeHeaderOnly(file, [...entries, ...ema]);
    const r = await inspectPath(file);
    const plain = await inspectPath(join(FIXTURES, 'tiny-sd15.safetensors'));
    assert.equal(r.components.unet.parameters, plain.components.unet.parameters);
    assert.equal(r.unused.parameters, plain.unused.parameters + ema.reduce((a, e) => a + numel(e.shape), 0));
    assert.ok(r.warnings.some((w) => /EMA and plain UNet weights are both present/.test(w)), r.warnings.join('\n'));
  });

  it('mixed dtypes and unknown keys are warned', async () => {
    const entries = sd15().map((e) => (e.name.startsWith('first_stage_model.') || e.name === 'model.diffusion_model.out.2.bias' ? { ...e, dtype: 'F32' } : e));
    entries.push({ name: 'my_extra.thing.weight', dtype: 'F16', shape: [3, 3] });
    const file = join(dir, 'mixed.safetensors');
    writeHeaderOnly(file, entries);
    const r = await inspectPath(file);
    assert.equal(r.components.vae.dtypes.F32, r.components.vae.parameters);
    assert.ok(r.warnings.some((w) => /^unet mixes dtypes: F16 .*F32 \(4 parameters\)/.test(w)), r.warnings.join('\n'));
    assert.ok(r.warnings.some((w) => /1 tensor\(s\) onestep does not recognize, e\.g\. my_extra\.thing\.weight/.test(w)), r.warnings.join('\n'));
  });
});
