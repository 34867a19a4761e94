import assert from 'node:assert/strict';
import { join } from 'node:path';
import { formatInspectReport, inspectPath } from '../../src/inspect.js';
import { FIXTURES } from '../support/fixtures.js';
import { assertComponents, assertNothingLost, readHeader, tallyBy } from '../support/headers.js';

describe('inspect/lora: fixtures', () => {
  for (const [name, style, prefixes, modules, pairs] of [
    ['tiny-sd15-kohya', 'kohya', { lora_unet_: 'unet', lora_te_: 'text_encoder' }, 86, [[2, 1], [4, 2], [4, 8]]],
    ['tiny-sd15-peft', 'peft', { 'unet.': 'unet', 'text_encoder.': 'text_encoder' }, 37, [[4, 4]]],
  ] as const) {
    it(`loras/${name}: ${style} LoRA, components, modules and rank/alpha as the fixtures README lists them`, async () => {
      const file = join(FIXTURES, 'loras', `${name}.safetensors`);
      const r = await inspectPath(file);
      assert.equal(r.kind, 'lora');
      assert.equal(r.layout, 'lora');
      assert.equal(r.lora?.keyStyle, style);
      // Cross-attention width 32 belongs to no released model: both one-text-encoder families fit.
      assert.equal(r.family, 'sd1|sd2');
      const expected = tallyBy(readHeader(file).tensors, (k) => Object.entries(prefixes).find(([p]) => k.startsWith(p))?.[1]);
      assertComponents(r, expected);
      assertNothingLost(r, [file]);
      assert.equal(r.lora?.modules, modules);
      assert.deepEqual(r.lora?.rankAlpha.map((p) => [p.rank, p.alpha]), pairs);
      assert.deepEqual(r.metadata, readHeader(file).metadata);
      const text = formatInspectReport(r);
      assert.match(text, new RegExp(`Modules: +${modules} `));
      assert.match(text, /Family: +SD 1\.x or SD 2\.x/);
    });
  }
});
