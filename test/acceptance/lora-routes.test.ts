/**
 * Issue "LoRA at convert and generate time": the two routes agree. `lora merge` then `convert`, and `convert --lora`
 * of the base, give byte-identical graphs and weights, hence byte-identical images.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import sharp from 'sharp';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { convertCheckpoint } from '../../src/convert.js';
import { mergeLorasIntoCheckpoint } from '../../src/lora/merge-checkpoint.js';
import { FIXTURES, ROOT } from '../support/fixtures.js';

describe('acceptance: LoRA routes agree', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-lora-routes-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('merge then convert == convert --lora (graphs, weights and images)', async () => {
    const base = path.join(FIXTURES, 'tiny-sd15');
    const loras = [
      { path: path.join(FIXTURES, 'loras', 'tiny-sd15-kohya.safetensors'), scale: 0.7 },
      { path: path.join(FIXTURES, 'loras', 'tiny-sd15-peft.safetensors'), scale: -0.3 },
    ];
    // The merged checkpoint keeps float32 values: stored in the base's float16 they would be rounded, and the
    // routes would differ by that rounding alone.
    await mergeLorasIntoCheckpoint({ base, loras, out: path.join(dir, 'merged'), dtype: 'F32' });
    await convertCheckpoint(path.join(dir, 'merged'), { out: path.join(dir, 'a') });
    await convertCheckpoint(base, { out: path.join(dir, 'b'), loras });
    const files = fs.readdirSync(path.join(dir, 'a')).filter((f) => f.includes('.onnx'));
    assert.equal(files.length, 8);
    for (const f of files) {
      assert.ok(fs.readFileSync(path.join(dir, 'a', f)).equals(fs.readFileSync(path.join(dir, 'b', f))), `${f} differs`);
    }
    // And the LoRA changed something: the plain conversion's weights differ.
    await convertCheckpoint(base, { out: path.join(dir, 'plain') });
    assert.ok(!fs.readFileSync(path.join(dir, 'plain', 'unet.onnx.data')).equals(fs.readFileSync(path.join(dir, 'b', 'unet.onnx.data'))));

    const prompts = path.join(dir, 'p.txt');
    fs.writeFileSync(prompts, 'a photo of a cat\na watercolor painting of a lighthouse at dusk\n');
    for (const m of ['a', 'b']) {
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'generate', prompts, '--model', path.join(dir, m), '-o', path.join(dir, `out-${m}`), '--seed', '7', '--width', '64', '--height', '64', '--quiet'], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
    }
    const images = fs.readdirSync(path.join(dir, 'out-a')).filter((f) => f.endsWith('.png')).sort();
    assert.equal(images.length, 2);
    // Pixels, not files: the embedded parameters name each model's own source hash.
    for (const f of images) {
      const [a, b] = await Promise.all(['out-a', 'out-b'].map((o) => sharp(path.join(dir, o, f)).raw().toBuffer()));
      assert.ok(a.equals(b), f);
    }
  });
});
