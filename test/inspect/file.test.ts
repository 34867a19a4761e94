import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatInspectReport, inspectPath } from '../../src/inspect.js';
import { FIXTURES } from '../support/fixtures.js';
import { assertComponents, assertNothingLost, entriesOf, expectedSingle, isBuffer, numel, writeHeaderOnly } from '../support/headers.js';

describe('inspect/file: single-file checkpoints', () => {
  it('tiny-sd15.safetensors: single-file SD 1.x, counts per LDM prefix', async () => {
    const file = join(FIXTURES, 'tiny-sd15.safetensors');
    const r = await inspectPath(file);
    assert.equal(r.kind, 'checkpoint');
    assert.equal(r.layout, 'single-file');
    assert.equal(r.family, 'sd1');
    assert.equal(r.convertible, true);
    assertComponents(r, expectedSingle(file, isBuffer));
    assertNothingLost(r, [file]);
    assert.equal(r.unused.tensors, 13); // 12 DDPM buffers + position_ids (fixtures README)
    assert.deepEqual(Object.keys(r.components), ['unet', 'text_encoder', 'vae']); // fixed order, not the file's
    assert.deepEqual(r.warnings, []);
    assert.equal(r.config?.unet.cross_attention_dim, 32);
  });

  it('tiny-sd21.safetensors: single-file SD 2.x; the whole OpenCLIP tower is the text encoder, logit_scale unused', async () => {
    const file = join(FIXTURES, 'tiny-sd21.safetensors');
    const r = await inspectPath(file);
    assert.equal(r.layout, 'single-file');
    assert.equal(r.family, 'sd2');
    // The last block belongs to the text encoder (SD 2.x's output layer is the penultimate one: the notes say so).
    assertComponents(r, expectedSingle(file, (k) => isBuffer(k) || k === 'cond_stage_model.model.logit_scale'));
    assertNothingLost(r, [file]);
    assert.ok(r.notes.some((n) => /penultimate/.test(n)));
  });
});

describe('inspect/file: synthetic headers (data sections are sparse zeros)', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'onestep-inspect-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const sd15 = () => entriesOf(join(FIXTURES, 'tiny-sd15.safetensors'));
  const sd21 = () => entriesOf(join(FIXTURES, 'tiny-sd21.safetensors'));

  it('SDXL keys that make no whole SDXL: family sdxl, not convertible (saying why), counts per SGM prefix', async () => {
    const entries = [
      ...sd15().map((e) => ({ ...e, name: e.name.replace(/^cond_stage_model\./, 'conditioner.embedders.0.') })),
      ...sd21()
        .filter((e) => e.name.startsWith('cond_stage_model.'))
        .map((e) => ({ ...e, name: e.name.replace(/^cond_stage_model\./, 'conditioner.embedders.1.') })),
      { name: 'model.diffusion_model.label_emb.0.0.weight', dtype: 'F16', shape: [64, 256] },
    ];
    const file = join(dir, 'sdxl.safetensors');
    writeHeaderOnly(file, entries, { 'modelspec.architecture': 'stable-diffusion-xl-v1-base' });
    const r = await inspectPath(file);
    assert.equal(r.family, 'sdxl');
    assert.equal(r.convertible, false);
    const sum = (re: RegExp) => entries.filter((e) => re.test(e.name)).reduce((a, e) => a + numel(e.shape), 0);
    assert.equal(r.components.unet.parameters, sum(/^model\.diffusion_model\./));
    assert.equal(r.components.vae.parameters, sum(/^first_stage_model\./));
    assert.equal(r.components.text_encoder.parameters, sum(/^conditioner\.embedders\.0\.(?!.*position_ids$)/));
    assert.equal(r.components.text_encoder_2.parameters, sum(/^conditioner\.embedders\.1\.(?!model\.logit_scale$)/));
    assert.equal(r.unused.tensors, 14); // the DDPM buffers, position_ids and OpenCLIP's logit_scale
    // SD 1.5's UNet has no SDXL added embedding (only label_emb.0.0 was added): open refuses, inspect says why.
    assert.ok(r.warnings.some((w) => /cannot convert it as it is: .*sdxl\.safetensors: .*(add_embedding|text_time)/.test(w)), r.warnings.join('; '));
    assert.match(formatInspectReport(r), /modelspec\.architecture: stable-diffusion-xl-v1-base/);
  });

  it('a 10 GB file is inspected from its header alone', async () => {
    const entries = [...sd15(), { name: 'zz_extra.huge', dtype: 'F16', shape: [5_000_000_000] }];
    const file = join(dir, 'huge.safetensors');
    writeHeaderOnly(file, entries);
    assert.ok(statSync(file).size > 10_000_000_000);
    const start = performance.now();
    const r = await inspectPath(file);
    const ms = performance.now() - start;
    console.log(`      inspect of a ${(statSync(file).size / 1e9).toFixed(1)} GB file: ${ms.toFixed(0)} ms`);
    assert.equal(r.family, 'sd1');
    assert.equal(r.unused.parameters - 5_000_000_000, (await inspectPath(join(FIXTURES, 'tiny-sd15.safetensors'))).unused.parameters);
  });

  it('an SD 1.x file onestep cannot open (a tensor missing): still reported by key prefix, with the reason', async () => {
    const entries = sd15().filter((e) => e.name !== 'model.diffusion_model.out.2.weight');
    const file = join(dir, 'incomplete.safetensors');
    writeHeaderOnly(file, entries);
    const r = await inspectPath(file);
    assert.equal(r.family, 'sd1');
    assert.equal(r.convertible, false);
    const sum = (prefix: string) => entries.filter((e) => e.name.startsWith(prefix)).reduce((a, e) => a + numel(e.shape), 0);
    assert.equal(r.components.unet.parameters, sum('model.diffusion_model.'));
    assert.equal(r.components.text_encoder.parameters, sum('cond_stage_model.') - 77); // position_ids is unused
    assert.ok(r.warnings.some((w) => w.startsWith('onestep cannot convert it as it is:') && /conv_out\.weight|out\.2\.weight/.test(w)), r.warnings.join('\n'));
  });
});
