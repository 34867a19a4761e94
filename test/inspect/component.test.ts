import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatInspectReport, inspectPath } from '../../src/inspect.js';
import { FIXTURES } from '../support/fixtures.js';
import { entriesOf, numel, writeHeaderOnly } from '../support/headers.js';

describe('inspect/component: a UNet or VAE alone (synthetic headers, data sections are sparse zeros)', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'onestep-inspect-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const sd15 = () => entriesOf(join(FIXTURES, 'tiny-sd15.safetensors'));

  it('a VAE alone (bare LDM keys): a component for convert --vae, counted under canonical names', async () => {
    const entries = sd15()
      .filter((e) => e.name.startsWith('first_stage_model.'))
      .map((e) => ({ ...e, name: e.name.slice('first_stage_model.'.length) }));
    const file = join(dir, 'vae.safetensors');
    writeHeaderOnly(file, entries);
    const r = await inspectPath(file);
    assert.equal(r.kind, 'component');
    assert.equal(r.family, 'unknown');
    assert.equal(r.convertible, false);
    assert.equal(r.components.vae.parameters, entries.reduce((a, e) => a + numel(e.shape), 0));
    assert.equal(r.unused.tensors, 0);
    assert.ok(r.notes.some((n) => /a VAE alone \(ldm keys\): convert it with the checkpoint it belongs to, `onestep convert <base> --vae /.test(n)), r.notes.join('; '));
    assert.match(formatInspectReport(r), /Kind: +VAE alone/);
  });

  it('a UNet alone, diffusers or SGM keys: a component for convert --unet; family from the cross-attention width', async () => {
    const file = join(FIXTURES, 'tiny-sdxl', 'unet', 'diffusion_pytorch_model.safetensors');
    const r = await inspectPath(file);
    assert.equal(r.kind, 'component');
    assert.equal(r.components.unet.parameters, entriesOf(file).reduce((a, e) => a + numel(e.shape), 0));
    assert.ok(r.notes.some((n) => /a UNet alone \(diffusers keys, cross-attention width 24\)/.test(n)));
    // SDXL's real width (2048) names the family; header-only copy of the SGM UNet keys with that width.
    const sgm = entriesOf(join(FIXTURES, 'tiny-sdxl.safetensors'))
      .filter((e) => e.name.startsWith('model.diffusion_model.'))
      .map((e) => ({ ...e, shape: /attn2\.to_[kv]\.weight$/.test(e.name) ? [e.shape[0], 2048] : e.shape }));
    const xl = join(dir, 'xl-unet.safetensors');
    writeHeaderOnly(xl, sgm);
    const r2 = await inspectPath(xl);
    assert.equal(r2.family, 'sdxl');
    assert.match(formatInspectReport(r2), /Kind: +UNet alone[\s\S]*Family: +SDXL/);
  });
});
