/**
 * Issue "image-to-image in one step": `generate` with init images reproduces diffusers' StableDiffusionImg2ImgPipeline
 * (Euler, trailing spacing, one step) on tiny-sd15 and tiny-sd21 at two strengths, PNG values within 1, and the images
 * are byte-identical at batch sizes 1 and 3 (and when text-to-image prompts share their batches).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { convertCheckpoint } from '../../src/convert.js';
import { onestep } from '../support/cli.js';
import { FIXTURES, goldens, relErr } from '../support/fixtures.js';

const G = path.join(FIXTURES, 'goldens');

function prompts(model: string): string[] {
  const readme = fs.readFileSync(path.join(G, 'README.md'), 'utf8');
  const section = readme.split(`\`${model}-img2img.safetensors\``)[1];
  return JSON.parse(/Prompts: (\[.*?\]) \(one per image\)/.exec(section)![1]);
}

async function pixels(file: string): Promise<Buffer> {
  return sharp(file).removeAlpha().raw().toBuffer();
}

describe('acceptance: image-to-image', function () {
  this.timeout(180_000);
  let dir: string;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-img2img-'));
    for (const m of ['tiny-sd15', 'tiny-sd21']) await convertCheckpoint(path.join(FIXTURES, m), { out: path.join(dir, m) });
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("the VAE encoder's posterior mean and std equal the pipeline's", async () => {
    const g = goldens('tiny-sd15-img2img');
    const s = await ort.InferenceSession.create(path.join(dir, 'tiny-sd15', 'vae_encoder.onnx'));
    try {
      const image = g.get('img2img.init_image')!;
      const out = await s.run({ sample: new ort.Tensor('float32', image.data, image.shape) });
      const errs = [relErr(out.latent_dist_mean.data as Float32Array, g.get('img2img.posterior_mean')!.data), relErr(out.latent_dist_std.data as Float32Array, g.get('img2img.posterior_std')!.data)];
      console.log(`      relErr mean ${errs[0].toExponential(2)}, std ${errs[1].toExponential(2)}`);
      assert.ok(errs.every((e) => e <= 1e-4), String(errs)); // the fp32 golden tolerance of the other graphs
    } finally {
      await s.release();
    }
  });

  for (const model of ['tiny-sd15', 'tiny-sd21']) {
    for (const [name, strength] of [['n2-s50', 0.5], ['n4-s25', 0.25]] as const) {
      it(`${model} strength ${strength}: diffusers' images within 1, byte-identical at batch 1 and 3`, async () => {
        // Relative image paths resolve against the prompt file's folder.
        const work = path.join(dir, `${model}-${name}`);
        const seeds = goldens(`${model}-img2img` as 'tiny-sd15-img2img').get(`img2img_${name.replace('-', '_')}.seeds`)!.data;
        fs.mkdirSync(work);
        const lines = prompts(model).map((p, i) => {
          fs.copyFileSync(path.join(G, `${model}-img2img-init-${i}.png`), path.join(work, `init-${i}.png`));
          return JSON.stringify({ prompt: p, image: `init-${i}.png`, strength, seed: seeds[i], width: 64, height: 64, guidance: 0 });
        });
        // A text-to-image line in between: it shares the batch and changes nothing of the others.
        lines.splice(1, 0, JSON.stringify({ prompt: 'a red bicycle', seed: 5, width: 64, height: 64 }));
        fs.writeFileSync(path.join(work, 'p.jsonl'), lines.join('\n') + '\n');
        const outs: string[] = [];
        for (const b of [1, 3]) {
          const out = path.join(work, `out-b${b}`);
          const r = await onestep('generate', path.join(work, 'p.jsonl'), '--model', path.join(dir, model), '-o', out, '--batch-size', String(b), '--rng', 'torch', '--name', '{index}', '--quiet');
          assert.equal(r.code, 0, r.stderr);
          outs.push(out);
        }
        for (const [k, index] of [0, 2].entries()) {
          const [a, b] = await Promise.all(outs.map((o) => pixels(path.join(o, `${index}.png`))));
          assert.ok(a.equals(b), `image ${index}: batch 1 and batch 3 differ`);
          const golden = await pixels(path.join(G, `${model}-img2img-${name}-${k}.png`));
          let worst = 0;
          for (let j = 0; j < a.length; j++) worst = Math.max(worst, Math.abs(a[j] - golden[j]));
          assert.ok(worst <= 1, `image ${index}: off by ${worst}`);
        }
      });
    }
  }

  it('--resume compares the init image and the strength: the same run skips, a changed strength stops and says so', async () => {
    const out = path.join(dir, 'resume');
    const init = path.join(G, 'tiny-sd15-img2img-init-0.png');
    const run = (strength: string, ...more: string[]) =>
      onestep('generate', '-p', 'a photo of a cat', '--init-image', init, '--strength', strength, '--model', path.join(dir, 'tiny-sd15'), '-o', out, '--seed', '3', '--quiet', ...more);
    assert.equal((await run('0.5')).code, 0);
    const line = JSON.parse(fs.readFileSync(path.join(out, 'manifest.jsonl'), 'utf8').trim());
    assert.equal(line.strength, 0.5);
    assert.equal(line.timestep, 499);
    assert.match(line.init_image, /^[0-9a-f]{64}$/);
    const again = await run('0.5', '--resume', '--json');
    assert.equal(again.code, 0, again.stderr);
    assert.equal(JSON.parse(again.stdout).skipped_existing, 1);
    const changed = await run('0.25', '--resume');
    assert.notEqual(changed.code, 0);
    assert.match(changed.stderr, /strength/);
  });

  it('a model without a VAE encoder says so for an image-to-image prompt', async () => {
    const model = path.join(dir, 'no-encoder');
    fs.cpSync(path.join(dir, 'tiny-sd15'), model, { recursive: true });
    const manifest = JSON.parse(fs.readFileSync(path.join(model, 'model.json'), 'utf8'));
    delete manifest.encoder;
    fs.writeFileSync(path.join(model, 'model.json'), JSON.stringify(manifest));
    const r = await onestep('generate', '-p', 'a cat', '--init-image', path.join(G, 'tiny-sd15-img2img-init-0.png'), '--model', model, '-o', path.join(dir, 'no-encoder-out'), '--quiet');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /no VAE encoder, so it cannot do image-to-image/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });
});
