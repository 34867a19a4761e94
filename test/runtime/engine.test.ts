import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { convertCheckpoint } from '../../src/convert.js';
import { BadInputError, OnestepError } from '../../src/errors.js';
import { nvidiaGpuPresent } from '../../src/runtime/device.js';
import { OneStepEngine, type GeneratedImage, type ImageRequest } from '../../src/runtime/engine.js';
import { sampleToRgb } from '../../src/runtime/engine-worker.js';
import { torchRandn } from '../../src/runtime/noise.js';
import { FIXTURES, goldens } from '../support/fixtures.js';

const PROMPTS = {
  'tiny-sd15': ['a photo of a cat', 'a watercolor painting of a lighthouse at dusk'],
  'tiny-sd21': ['a photo of a cat', 'a red sports car on a mountain road'],
};
type Model = keyof typeof PROMPTS;
const LATENT = 4 * 8 * 8;

async function goldenPng(name: string): Promise<Uint8Array> {
  const { data, info } = await sharp(path.join(FIXTURES, 'goldens', name)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  assert.equal(info.channels, 3);
  return new Uint8Array(data);
}

/** Fraction of channel values within +-1 of the golden, and the largest difference. */
function closeness(actual: Uint8Array, expected: Uint8Array): { within1: number; maxDiff: number } {
  assert.equal(actual.length, expected.length);
  let ok = 0;
  let maxDiff = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (d <= 1) ok++;
    maxDiff = Math.max(maxDiff, d);
  }
  return { within1: ok / actual.length, maxDiff };
}

function request(index: number, prompt: string, extra: Partial<ImageRequest> = {}): ImageRequest {
  return { index, prompt, negativePrompt: '', seed: BigInt(index), width: 64, height: 64, guidance: 0, ...extra };
}

function byIndex(images: GeneratedImage[]): Map<number, Uint8Array> {
  return new Map(images.map((img) => [img.index, img.rgb]));
}

describe('runtime/engine', function () {
  this.timeout(300_000);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-engine-'));
  const engines: Partial<Record<Model, OneStepEngine>> = {};

  before(async () => {
    for (const model of Object.keys(PROMPTS) as Model[]) {
      const out = path.join(tmp, model);
      await convertCheckpoint(path.join(FIXTURES, model), { out });
      engines[model] = await OneStepEngine.load(out, { device: 'cpu' });
    }
  });

  after(async () => {
    await Promise.all(Object.values(engines).map((e) => e.close()));
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  for (const model of Object.keys(PROMPTS) as Model[]) {
    it(`${model}: the goldens' latents and prompts give the golden PNGs (+-1 on >= 99.9% of values)`, async () => {
      const engine = engines[model]!;
      assert.equal(engine.device, 'cpu');
      const latents = goldens(model).get('onestep.latents')!.data;
      const batch = PROMPTS[model].map((p, i) => request(i, p, { latents: latents.slice(i * LATENT, (i + 1) * LATENT) }));
      const images = await engine.generate(batch);
      assert.deepEqual(images.map((img) => img.index), [0, 1]);
      for (const img of images) {
        assert.equal(img.width, 64);
        assert.equal(img.height, 64);
        assert.deepEqual(img.warnings, []);
        const c = closeness(img.rgb, await goldenPng(`${model}-onestep-${img.index}.png`));
        assert.ok(c.within1 >= 0.999, `${model} image ${img.index}: ${c.within1} within 1, max diff ${c.maxDiff}`);
      }
      const ms = images[0].ms;
      console.log(`      ${model} batch 2, 64x64 ms: tokenize ${ms.tokenize.toFixed(1)}, text ${ms.textEncoder.toFixed(1)}, unet ${ms.denoiser.toFixed(1)}, vae ${ms.decoder.toFixed(1)}, total ${ms.total.toFixed(1)}`);
    });

    it(`${model}: guidance 1.5 with an empty negative prompt gives the golden CFG PNG`, async () => {
      const latents = goldens(model).get('onestep_cfg.latents')!.data;
      const [img] = await engines[model]!.generate([request(0, PROMPTS[model][0], { guidance: 1.5, latents })]);
      const c = closeness(img.rgb, await goldenPng(`${model}-onestep-cfg-0.png`));
      assert.ok(c.within1 >= 0.999, `${model} cfg: ${c.within1} within 1, max diff ${c.maxDiff}`);
    });
  }

  it('gives byte-identical pixels for a (prompt, seed) at any batch size, position and guidance mix', async () => {
    const engine = engines['tiny-sd15']!;
    const a = request(7, 'a photo of a cat', { seed: 1234n });
    const b = request(8, 'a watercolor painting of a lighthouse at dusk', { seed: 99n, guidance: 2, negativePrompt: 'blurry' });
    const c = request(9, 'a red sports car', { seed: 5n });
    const single = byIndex([...(await engine.generate([a])), ...(await engine.generate([b])), ...(await engine.generate([c]))]);
    const pair = byIndex([...(await engine.generate([a, b])), ...(await engine.generate([c]))]);
    const swapped = byIndex(await engine.generate([c, b, a]));
    for (const i of [7, 8, 9]) {
      assert.deepEqual(pair.get(i), single.get(i), `image ${i} batch 2 vs 1`);
      assert.deepEqual(swapped.get(i), single.get(i), `image ${i} swapped vs 1`);
    }
    assert.notDeepEqual(single.get(7), single.get(9));
  });

  it('seeded noise is torch.randn of the seed: a seed equals its noise passed as latents', async () => {
    const engine = engines['tiny-sd15']!;
    const [seeded] = await engine.generate([request(0, 'a photo of a cat', { seed: 42n })]);
    const [given] = await engine.generate([request(0, 'a photo of a cat', { seed: 0n, latents: torchRandn(42n, [1, 4, 8, 8]) })]);
    assert.deepEqual(seeded.rgb, given.rgb);
  });

  it('warns about truncated prompts with the number of dropped tokens', async () => {
    const line = fs
      .readFileSync(path.join(FIXTURES, 'goldens', 'tiny-sd15-tokenizer.jsonl'), 'utf8')
      .split('\n')
      .map((l) => (l ? JSON.parse(l) : undefined))
      .find((r) => r?.truncated);
    const [img] = await engines['tiny-sd15']!.generate([request(0, line.prompt)]);
    assert.equal(img.warnings.length, 1);
    assert.match(img.warnings[0], new RegExp(`${line.n_tokens - 77} tokens were dropped`));
  });

  it('several batches in flight on two workers give the same bytes as one worker', async () => {
    const engine = await OneStepEngine.load(path.join(tmp, 'tiny-sd15'), { device: 'cpu', workers: 2, threads: 1 });
    try {
      assert.equal(engine.workerCount, 2);
      const reqs = [0, 1, 2, 3].map((i) => request(i, `prompt number ${i}`, { seed: BigInt(100 + i) }));
      const parallel = await Promise.all([engine.generate(reqs.slice(0, 2)), engine.generate(reqs.slice(2, 3)), engine.generate(reqs.slice(3))]);
      const reference = byIndex(await engines['tiny-sd15']!.generate(reqs));
      for (const img of parallel.flat()) assert.deepEqual(img.rgb, reference.get(img.index), `image ${img.index}`);
    } finally {
      await engine.close();
    }
  });

  it('rejects bad batches with clear errors and stays usable', async () => {
    const engine = engines['tiny-sd15']!;
    await assert.rejects(engine.generate([]), OnestepError);
    await assert.rejects(engine.generate([request(0, 'x'), request(1, 'y', { width: 128 })]), /differs from the batch/);
    await assert.rejects(engine.generate([request(0, 'x', { width: 60 })]), BadInputError);
    await assert.rejects(engine.generate([request(0, 'x', { latents: new Float32Array(10) })]), /latents have 10 values, expected 256/);
    const [img] = await engine.generate([request(0, 'x')]);
    assert.equal(img.rgb.length, 64 * 64 * 3);
  });

  it('a crashed worker rejects the pending batch instead of hanging', async () => {
    const engine = await OneStepEngine.load(path.join(tmp, 'tiny-sd15'), { device: 'cpu', threads: 1 });
    try {
      const pending = engine.generate([request(0, 'a photo of a cat')]);
      // Simulate a crash of the thread (what a native abort or an out-of-memory kill looks like from here).
      await (engine as unknown as { slots: { worker: { terminate(): Promise<number> } }[] }).slots[0].worker.terminate();
      await assert.rejects(pending, /inference worker exited unexpectedly/);
      await assert.rejects(engine.generate([request(0, 'x')]), /inference worker exited unexpectedly/);
    } finally {
      await engine.close();
    }
  });

  it('fails to load with one clear error: no model directory, explicit CUDA without its provider', async () => {
    await assert.rejects(OneStepEngine.load(path.join(tmp, 'nothing-here'), { device: 'cpu' }), BadInputError);
    await assert.rejects(OneStepEngine.load(path.join(tmp, 'tiny-sd15'), { device: 'tpu' }), /unknown device/);
    // Where the CUDA provider is installed these loads succeed instead; the checks below are for machines without it.
    const cuda = await OneStepEngine.load(path.join(tmp, 'tiny-sd15'), { device: 'cuda', threads: 1 }).catch((e: unknown) => e);
    if (cuda instanceof OneStepEngine) {
      await cuda.close();
      return;
    }
    assert.ok(cuda instanceof OnestepError, String(cuda));
    assert.match(cuda.message, /CUDA device 0 is not usable/);
    assert.match(cuda.hint ?? '', /ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci/);
    const auto = await OneStepEngine.load(path.join(tmp, 'tiny-sd15'), { device: 'auto', threads: 1 });
    try {
      assert.equal(auto.device, 'cpu');
      // A GPU whose provider does not load is worth a note; no GPU at all is the normal case, said nothing about.
      if (nvidiaGpuPresent()) {
        assert.equal(auto.notes.length, 1);
        assert.match(auto.notes[0], /CUDA is not available .*running on CPU/);
      } else assert.deepEqual(auto.notes, []);
    } finally {
      await auto.close();
    }
  });

  it('sampleToRgb: clamps, rounds ties half to even as numpy does, and lays out HWC', () => {
    // Channel-major input of one image with 3 channels and 2 pixels. In float32: s = 0 -> u = 0.5 -> 127.5 -> 128;
    // s = -0.21176469326019287 -> u*255 = 100.5 exactly -> 100 (Math.round would say 101); 1 -> 255; clamps beyond.
    const sample = Float32Array.from([0, 1, -0.21176469326019287, 3, -7, -1]);
    const [rgb] = sampleToRgb(sample, 1, 3, 1, 2);
    assert.deepEqual([...rgb], [128, 100, 0, 255, 255, 0]);
  });
});

