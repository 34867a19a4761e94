/**
 * The SDXS family end to end on tiny-sdxs: a UNet without a mid block and an AutoencoderTiny as the folder's own
 * vae/ (the decoder, at scaling factor 1.0). The converted graphs reproduce diffusers' goldens and the engine the
 * one-step images (plain and CFG 1.5 with "").
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { convertCheckpoint } from '../../src/convert.js';
import { OneStepEngine, type ImageRequest } from '../../src/runtime/engine.js';
import { img2imgTimestep } from '../../src/runtime/img2img.js';
import { readModelManifest } from '../../src/runtime/model-dir.js';
import { torchRandn } from '../../src/runtime/noise.js';
import { loadTokenizer } from '../../src/runtime/tokenizer.js';
import { alphaBar } from '../../src/runtime/schedule.js';
import { caseBound, ulpSensitivity } from '../support/bounds.js';
import { assertNearGoldenImage, FIXTURES, goldenImageRequest, goldens, relErr, type Tensor } from '../support/fixtures.js';

const gold = goldens('tiny-sdxs');
const get = (name: string): Tensor => {
  const t = gold.get(name);
  if (!t) throw new Error(`golden ${name} missing`);
  return t;
};
const PROMPTS = ['a photo of a cat', 'a close-up picture of an old man standing in the rain'];

describe('families/sdxs (tiny-sdxs)', function () {
  this.timeout(300_000);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-sdxs-'));
  const model = path.join(work, 'model');
  after(() => fs.rmSync(work, { recursive: true, force: true }));
  before(() => convertCheckpoint(path.join(FIXTURES, 'tiny-sdxs'), { out: model }));

  it('writes the text encoder, the UNet and the AutoencoderTiny decoder and encoder; model.json says taesd at scale 1.0', async () => {
    const m = await readModelManifest(model);
    assert.equal(m.family, 'sdxs');
    assert.deepEqual(m.decoder, { graph: 'vae_decoder.onnx', kind: 'taesd' });
    assert.deepEqual(m.encoder, { graph: 'vae_encoder.onnx', kind: 'taesd' });
    assert.deepEqual(m.latent, { channels: 4, scaling_factor: 1, shift_factor: null, downscale: 8 });
    assert.deepEqual(fs.readdirSync(model).filter((f) => f.endsWith('.onnx')).sort(), ['text_encoder.onnx', 'unet.onnx', 'vae_decoder.onnx', 'vae_encoder.onnx']);
  });

  it("image-to-image: the engine's image is the one-step denoise of the TAESD-encoded init image noised with the seed's draw", async () => {
    // The same pipeline computed here from the graphs (the encoder's own test is against a float64 EncoderTiny):
    // z0 = encode(x) * 1.0, x_t = sqrt(abar) z0 + sqrt(1 - abar) randn(seed), x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar).
    const m = await readModelManifest(model);
    const engine = await OneStepEngine.load(model, { device: 'cpu' });
    const open = (g: string) => ort.InferenceSession.create(path.join(model, `${g}.onnx`));
    const [te, unet, enc, dec] = await Promise.all(['text_encoder', 'unet', 'vae_encoder', 'vae_decoder'].map(open));
    try {
      const image = Float32Array.from({ length: 3 * 64 * 64 }, (_, i) => Math.sin(i * 0.37) * 0.9);
      const strength = 0.5;
      const t = img2imgTimestep(strength);
      const seed = 77n;
      const [got] = await engine.generate([{ index: 0, prompt: PROMPTS[0], seed, width: 64, height: 64, guidance: 0, init: { image, strength } }]);
      const { ids } = (await loadTokenizer(path.join(model, 'tokenizer'))).encode(PROMPTS[0]);
      const hidden = (await te.run({ input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, (v) => BigInt(v)), [1, ids.length]) })).last_hidden_state;
      const z0 = (await enc.run({ sample: new ort.Tensor('float32', image, [1, 3, 64, 64]) })).latents.data as Float32Array;
      const abar = alphaBar(m.configs.scheduler, t);
      const noise = torchRandn(seed, [z0.length]);
      const xt = Float32Array.from(z0, (z, i) => Math.sqrt(abar) * z + Math.sqrt(1 - abar) * noise[i]);
      const eps = (await unet.run({ sample: new ort.Tensor('float32', xt, [1, 4, 8, 8]), timestep: new ort.Tensor('float32', Float32Array.of(t), [1]), encoder_hidden_states: hidden })).out_sample.data as Float32Array;
      const x0 = Float32Array.from(xt, (x, i) => (x - Math.sqrt(1 - abar) * eps[i]) / Math.sqrt(abar));
      const sample = (await dec.run({ latent_sample: new ort.Tensor('float32', x0, [1, 4, 8, 8]) })).sample.data as Float32Array;
      let within = 0;
      for (let y = 0; y < 64 * 64; y++) {
        for (let c = 0; c < 3; c++) {
          const want = Math.round(Math.min(1, Math.max(0, sample[c * 64 * 64 + y] / 2 + 0.5)) * 255);
          if (Math.abs(got.rgb[y * 3 + c] - want) <= 1) within++;
        }
      }
      assert.ok(within / (3 * 64 * 64) >= 0.999, `${within} of ${3 * 64 * 64} values within 1`);
      const spread = Math.max(...got.rgb) - Math.min(...got.rgb);
      assert.ok(spread > 20, `image too flat to test anything (${spread})`);
    } finally {
      await Promise.all([engine.close(), te.release(), unet.release(), enc.release(), dec.release()]);
    }
  });

  it('graphs equal diffusers: last_hidden_state, the UNet at t=999/500/mixed (case bounds), the tiny decoder', async () => {
    const open = (g: string) => ort.InferenceSession.create(path.join(model, `${g}.onnx`));
    const te = await open('text_encoder');
    const input = get('te.input_ids');
    const last = (await te.run({ input_ids: new ort.Tensor('int64', BigInt64Array.from(input.data, (v) => BigInt(v)), input.shape) })).last_hidden_state;
    assert.ok(relErr(last.data as Float32Array, get('te.last_hidden_state').data) <= 1e-4);
    await te.release();
    const unet = await open('unet');
    for (const [label, t] of [
      ['unet.out_t999', [999, 999]],
      ['unet.out_t500', [500, 500]],
      ['unet.out_mixed', Array.from(get('unet.timesteps_mixed').data)],
    ] as const) {
      const at = async (x: Float32Array) =>
        (
          await unet.run({
            sample: new ort.Tensor('float32', x, get('unet.sample').shape),
            timestep: new ort.Tensor('float32', Float32Array.from(t), [2]),
            encoder_hidden_states: new ort.Tensor('float32', Float32Array.from(get('unet.encoder_hidden_states').data), get('unet.encoder_hidden_states').shape),
          })
        ).out_sample.data as Float32Array;
      const x = Float32Array.from(get('unet.sample').data);
      const err = relErr(await at(x), get(label).data);
      const bound = caseBound(1e-4, await ulpSensitivity(at, x));
      assert.ok(err <= bound, `${label}: relErr ${err} > ${bound}`);
    }
    await unet.release();
    const dec = await open('vae_decoder');
    const z = get('vae.decoder_input');
    const decoded = (await dec.run({ latent_sample: new ort.Tensor('float32', Float32Array.from(z.data), z.shape) })).sample;
    assert.ok(relErr(decoded.data as Float32Array, get('vae.decoded').data) <= 1e-4);
    await dec.release();
  });

  it('the engine reproduces the one-step images, plain and CFG 1.5 with ""', async () => {
    const engine = await OneStepEngine.load(model, { device: 'cpu', recipe: { timestep: 999 } });
    try {
      const latents = get('onestep.latents').data;
      const req = (i: number, extra: Partial<ImageRequest> = {}) => goldenImageRequest(PROMPTS, latents, i, extra);
      const plain = await engine.generate([req(0), req(1)]);
      await assertNearGoldenImage(plain[0].rgb, 'tiny-sdxs-onestep-0.png');
      await assertNearGoldenImage(plain[1].rgb, 'tiny-sdxs-onestep-1.png');
      const [cfg] = await engine.generate([req(0, { guidance: 1.5, negativePrompt: '' })]);
      await assertNearGoldenImage(cfg.rgb, 'tiny-sdxs-onestep-cfg-0.png');
    } finally {
      await engine.close();
    }
  });
});
