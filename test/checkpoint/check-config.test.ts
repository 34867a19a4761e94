/**
 * A diffusers config that would build a broken graph is refused at convert time naming the component and field
 * (before, each of these converted with exit 0: head counts of 0 or that do not divide the channels, a negative or
 * huge sample_size, a VAE scaling_factor of 0 that decodes every image to NaN). The network's config reader
 * (architectures/<network>.ts) refuses malformed fields first, naming the config.json; check-config the rest.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { convertCheckpoint } from '../../src/convert.js';
import { BadInputError } from '../../src/errors.js';
import { FIXTURES } from '../support/fixtures.js';

describe('checkpoint/check-config', function () {
  this.timeout(120_000);
  let work: string;
  let folder: string;
  before(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-check-config-'));
    folder = path.join(work, 'tiny-sd15');
    fs.cpSync(path.join(FIXTURES, 'tiny-sd15'), folder, { recursive: true });
  });
  after(() => fs.rmSync(work, { recursive: true, force: true }));

  const cases: [string, string, unknown, RegExp][] = [
    ['unet', 'attention_head_dim', 0, /unet\/config.json: attention_head_dim = 0 is not a positive integer/],
    ['unet', 'attention_head_dim', 7, /unet\/config.json: attention_head_dim = 7 \(heads\) does not divide block_out_channels\[0\] = 32/],
    ['unet', 'sample_size', -64, /unet\/config.json: sample_size = -64 is not a positive integer/],
    ['unet', 'sample_size', 1e9, /sample_size must be a whole number within 1\.\.16384, got 1000000000/],
    ['vae', 'scaling_factor', 0, /\(vae config\): scaling_factor must be a finite number other than 0/],
    ['vae', 'norm_num_groups', 48, /vae\/config.json: block_out_channels = \[32,32,32,32\] has 32 channels, which do not divide into norm_num_groups 48/],
    ['text_encoder', 'num_attention_heads', 0, /text_encoder\/config.json: num_attention_heads = 0 is not a positive integer/],
    ['text_encoder', 'num_attention_heads', 5, /\(text_encoder config\): num_attention_heads 5 does not divide hidden_size 32/],
  ];
  for (const [component, field, value, pattern] of cases) {
    it(`${component} ${field} = ${value}: refused naming the field, nothing written`, async () => {
      const file = path.join(folder, component, 'config.json');
      const original = fs.readFileSync(file, 'utf8');
      fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(original), [field]: value }));
      const out = path.join(work, `out-${component}-${field}`);
      try {
        await assert.rejects(convertCheckpoint(folder, { out }), (e: unknown) => {
          assert.ok(e instanceof BadInputError, String(e));
          assert.match(e.message, pattern);
          return true;
        });
        assert.ok(!fs.existsSync(out));
      } finally {
        fs.writeFileSync(file, original);
      }
    });
  }

  it('the fixtures configs pass (the check refuses only broken values)', async () => {
    const r = await convertCheckpoint(folder, { out: path.join(work, 'ok') });
    assert.ok(fs.existsSync(path.join(r.out, 'model.json')));
  });
});
