import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { BadInputError } from '../../src/errors.js';
import { InitImages, initImageSize, loadInitImage } from '../../src/io/init-image.js';
import { FIXTURES, goldens } from '../support/fixtures.js';

describe('io/init-image', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'onestep-init-image-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("pixels as the img2img pipeline feeds its VAE encoder: x / 255 * 2 - 1, NCHW (the goldens' init_image exactly)", async () => {
    const g = goldens('tiny-sd15-img2img').get('img2img.init_image')!;
    for (let i = 0; i < 2; i++) {
      const x = await loadInitImage(join(FIXTURES, 'goldens', `tiny-sd15-img2img-init-${i}.png`), 64, 64);
      assert.deepEqual([...x], [...g.data.subarray(i * x.length, (i + 1) * x.length)]);
    }
  });

  it('size rule: the image size floored to the VAE factor when none is asked for; resized to the asked size', async () => {
    const file = join(dir, 'odd.png');
    await sharp({ create: { width: 77, height: 50, channels: 4, background: { r: 200, g: 10, b: 30, alpha: 1 } } }).png().toFile(file);
    assert.deepEqual(await initImageSize(file, 8), { width: 72, height: 48 });
    const x = await loadInitImage(file, 64, 32);
    assert.equal(x.length, 3 * 64 * 32);
    // A flat colour stays that colour through the resize; alpha is dropped.
    assert.ok(Math.abs(x[0] - (200 / 255) * 2 + 1) < 1e-6 && Math.abs(x[64 * 32] - (10 / 255) * 2 + 1) < 1e-6);
    const tiny = join(dir, 'tiny.png');
    await sharp({ create: { width: 5, height: 5, channels: 3, background: '#000' } }).png().toFile(tiny);
    await assert.rejects(initImageSize(tiny, 8), (e: unknown) => e instanceof BadInputError && /smaller than 8/.test(e.message));
    writeFileSync(join(dir, 'bad.png'), 'not an image');
    await assert.rejects(loadInitImage(join(dir, 'bad.png'), 8, 8), (e: unknown) => e instanceof BadInputError && /bad\.png: cannot be read as an image/.test(e.message));
  });

  it('pairing: a line\'s own image (relative to the prompt file), else the flag\'s file, else the i-th file of its folder', async () => {
    const folder = join(dir, 'images');
    mkdirSync(folder);
    for (const n of ['b.png', 'a.png', 'c.jpg', 'notes.txt']) copyFileSync(join(FIXTURES, 'goldens', 'tiny-sd15-img2img-init-0.png'), join(folder, n));
    const prompts = join(dir, 'sub', 'prompts.jsonl');
    const byFolder = await InitImages.open(folder, prompts);
    assert.deepEqual([0, 1, 2].map((i) => byFolder.fileFor(i, undefined)), ['a.png', 'b.png', 'c.jpg'].map((n) => join(folder, n)));
    assert.throws(() => byFolder.fileFor(3, undefined), (e: unknown) => e instanceof BadInputError && /holds 3 images, none for prompt 3/.test(e.message));
    assert.equal(byFolder.fileFor(5, 'x.png'), join(dir, 'sub', 'x.png'));
    const one = await InitImages.open(join(folder, 'a.png'), prompts);
    assert.equal(one.fileFor(9, undefined), join(folder, 'a.png'));
    assert.equal((await InitImages.open(undefined, prompts)).fileFor(0, undefined), undefined);
    await assert.rejects(InitImages.open(join(dir, 'nope'), prompts), /nope: no such file or folder/);
  });
});
