import assert from 'node:assert/strict';
import { join } from 'node:path';
import { inspectPath } from '../../src/inspect.js';
import { formatInspectReport } from '../../src/inspect/format.js';
import { FIXTURES } from '../support/fixtures.js';
import type { InspectReport } from '../../src/inspect/report.js';

describe('inspect/format', () => {
  const report: InspectReport = {
    path: 'model.safetensors',
    kind: 'checkpoint',
    layout: 'single-file',
    family: 'sdxl',
    convertible: true,
    totalParameters: 3_500_000_000,
    components: {
      unet: { parameters: 2_567_463_684, tensors: 1680, dtypes: { F16: 2_567_463_684 } },
      text_encoder: { parameters: 123_060_480, tensors: 196, dtypes: { F16: 123_060_480 } },
    },
    unused: { parameters: 0, tensors: 0, examples: [] },
    config: { unet: { sample_size: 128, cross_attention_dim: 2048 } },
    metadata: { 'modelspec.title': 'SDXL-Turbo', 'other.key': 'x' },
    notes: ['configs inferred from tensor shapes'],
    warnings: ['something to know'],
  };

  it('names kind, layout, the family by its label, convertibility and every component with its count', () => {
    const text = formatInspectReport(report);
    assert.match(text, /^model\.safetensors\n/);
    assert.match(text, /Kind:\s+checkpoint/);
    assert.match(text, /Family:\s+SDXL\n/);
    assert.match(text, /Convertible:\s+yes/);
    assert.match(text, /Parameters:\s+3\.50B \(3,500,000,000\)/);
    assert.match(text, /unet\s+2,567,463,684\s+2\.57B\s+1680 tensors\s+F16/);
    assert.match(text, /text_encoder\s+123,060,480/);
    assert.match(text, /modelspec\.title: SDXL-Turbo/);
    assert.doesNotMatch(text, /other\.key/); // highlighted metadata only; --json has all of it
    assert.match(text, /something to know/);
  });

  it('a LoRA that fits several families lists them with "or"', () => {
    const text = formatInspectReport({ ...report, kind: 'lora', layout: 'lora', family: 'sd1|sd2' });
    assert.match(text, /Family:\s+SD 1\.x or SD 2\.x/);
    assert.doesNotMatch(text, /Convertible:/);
  });

  describe('on a fixture', () => {
    it('human output names layout, family and every component count', async () => {
      const r = await inspectPath(join(FIXTURES, 'tiny-sd15.safetensors'));
      const text = formatInspectReport(r);
      assert.match(text, /Layout: +single file/);
      assert.match(text, /Family: +SD 1\.x/);
      for (const [c, v] of Object.entries(r.components)) assert.match(text, new RegExp(`${c} +${v.parameters.toLocaleString('en-US')} `));
    });
  });
});
