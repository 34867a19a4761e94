import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { convertCheckpoint } from '../src/convert.js';
import { generateImages } from '../src/generate.js';
import { composeGrid, gridLayout, GRIDS_DIR } from '../src/grid.js';
import { FIXTURES } from './support/fixtures.js';

async function rgb(file: string): Promise<{ data: Buffer; width: number; height: number }> {
  const { data, info } = await sharp(file).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

describe('grid', function () {
  this.timeout(300_000);

  it("lays out n images as A1111's default: rows = floor(sqrt n) lowered until it divides n", () => {
    const got = Array.from({ length: 12 }, (_, i) => i + 1).map((n) => `${n}:${gridLayout(n).rows}x${gridLayout(n).cols}`);
    assert.deepEqual(got, ['1:1x1', '2:1x2', '3:1x3', '4:2x2', '5:1x5', '6:2x3', '7:1x7', '8:2x4', '9:3x3', '10:2x5', '11:1x11', '12:3x4']);
  });

  it('puts image i at column i % cols, row floor(i / cols)', () => {
    const img = (v: number) => ({ rgb: new Uint8Array(2 * 3 * 3).fill(v), width: 2, height: 3 });
    const grid = composeGrid([img(10), img(20), img(30), img(40), img(50), img(60)]);
    assert.deepEqual([grid.width, grid.height], [6, 6]);
    const at = (x: number, y: number) => grid.rgb[(y * 6 + x) * 3];
    assert.deepEqual([at(0, 0), at(2, 0), at(4, 0), at(0, 3), at(3, 5), at(5, 5)], [10, 20, 30, 40, 50, 60]);
  });

  it('generate --grid with --images-per-prompt: a grid per batch made of the batch images, with the first one\'s parameters; images do not depend on the batch size', async () => {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-grid-'));
    try {
      const model = path.join(work, 'model');
      await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: model });
      const prompts = path.join(work, 'prompts.txt');
      fs.writeFileSync(prompts, 'a photo of a cat\na lighthouse at dusk\n');
      const run = (out: string, batchSize: number) =>
        generateImages(prompts, { modelDir: model, out, batchSize, seed: 50n, device: 'cpu', format: 'png', nameTemplate: '{index:06}-{seed}', resume: false, strict: false, imagesPerPrompt: 3, grid: true });
      const a = path.join(work, 'a');
      const b = path.join(work, 'b');
      assert.equal((await run(a, 4)).images, 6);
      assert.equal((await run(b, 1)).images, 6);
      const files = fs.readdirSync(a).filter((f) => f.endsWith('.png')).sort();
      assert.deepEqual(files, ['000000-50.png', '000001-51.png', '000002-52.png', '000003-53.png', '000004-54.png', '000005-55.png']);
      for (const f of files) assert.ok(fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))), f);
      // Batches of 4: images 0-3 (a 2x2 grid) and 4-5 (1x2). Batches of 1 make no grid (A1111 skips single images).
      assert.deepEqual(fs.readdirSync(path.join(a, GRIDS_DIR)).sort(), ['grid-000000.png', 'grid-000004.png']);
      assert.equal(fs.existsSync(path.join(b, GRIDS_DIR)), false);
      const grid = await rgb(path.join(a, GRIDS_DIR, 'grid-000000.png'));
      assert.deepEqual([grid.width, grid.height], [128, 128]);
      for (let i = 0; i < 4; i++) {
        const img = await rgb(path.join(a, files[i]));
        const [x0, y0] = [(i % 2) * 64, Math.floor(i / 2) * 64];
        for (let y = 0; y < 64; y++) {
          const want = img.data.subarray(y * 64 * 3, (y + 1) * 64 * 3);
          const got = grid.data.subarray(((y0 + y) * 128 + x0) * 3, ((y0 + y) * 128 + x0 + 64) * 3);
          assert.ok(want.equals(got), `image ${i} row ${y}`);
        }
      }
      const meta = await sharp(path.join(a, GRIDS_DIR, 'grid-000000.png')).metadata();
      const params = meta.comments?.find((c) => c.keyword === 'parameters')?.text;
      assert.match(params ?? '', /^a photo of a cat\nSteps: 1, .*Seed: 50, Size: 64x64/);
      // metadata.jsonl lists the images only, not the grids.
      const rows = fs.readFileSync(path.join(a, 'metadata.jsonl'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
      assert.deepEqual(rows.map((r) => [r.file_name, r.text]), files.map((f, i) => [f, i < 3 ? 'a photo of a cat' : 'a lighthouse at dusk']));
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
});
