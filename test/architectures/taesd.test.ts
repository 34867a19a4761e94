/**
 * TAESD decoder graph against a plain float64 DecoderTiny written here, on tiny random-weight decoders saved in both
 * namings (diffusers AutoencoderTiny folder, madebyollin's numbered layers), and the encoder graph against a float64
 * EncoderTiny on tiny-sdxs's AutoencoderTiny; then `convert --taesd` end to end through the engine.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import {
  buildTaesdDecoderGraph,
  buildTaesdEncoderGraph,
  expectedTaesdEncoderWeights,
  normalizeTaesdConfig,
  normalizeTaesdEncoderConfig,
  taesdDownscale,
  type TaesdDecoderConfig,
} from '../../src/architectures/taesd.js';
import { openTaesd } from '../../src/checkpoint/taesd.js';
import { sha256Path } from '../../src/checkpoint/hash.js';
import { convertCheckpoint } from '../../src/convert.js';
import { BadInputError } from '../../src/errors.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { OneStepEngine } from '../../src/runtime/engine.js';
import { readModelManifest } from '../../src/runtime/model-dir.js';
import { FIXTURES, folderConfig, folderWeights, goldens, relErr } from '../support/fixtures.js';
import { signedRandom } from '../support/random.js';

const SD_SCALE = 0.18215;

interface T {
  shape: number[];
  data: Float32Array;
}

/**
 * A random DecoderTiny in diffusers' layer numbering (`layers.N...`). `channels[s]` is stage s's width; a stage's
 * first block maps the previous width to it (with a 1x1 skip when they differ, as madebyollin's Block allows).
 */
function randomDecoder(seed: number, latent: number, channels: number[], blocks: number[], out = 3): Map<string, T> {
  const r = signedRandom(seed);
  const w = new Map<string, T>();
  const conv = (name: string, cout: number, cin: number, k: number, bias: boolean) => {
    // Gains keep activations O(1) through 10 residual blocks; the sign-symmetric uniform has variance 1/3.
    const std = Math.sqrt(1.5 / (cin * k * k));
    w.set(`${name}.weight`, { shape: [cout, cin, k, k], data: Float32Array.from({ length: cout * cin * k * k }, () => r() * std * Math.sqrt(3) * 0.8) });
    if (bias) w.set(`${name}.bias`, { shape: [cout], data: Float32Array.from({ length: cout }, () => r() * 0.1) });
  };
  conv('layers.0', channels[0], latent, 3, true);
  let i = 2;
  let width = channels[0];
  blocks.forEach((count, s) => {
    for (let b = 0; b < count; b++, i++) {
      const cin = width;
      width = channels[s];
      conv(`layers.${i}.conv.0`, width, cin, 3, true);
      conv(`layers.${i}.conv.2`, width, width, 3, true);
      conv(`layers.${i}.conv.4`, width, width, 3, true);
      if (cin !== width) conv(`layers.${i}.skip`, width, cin, 1, false);
    }
    if (s < blocks.length - 1) {
      i++; // Upsample
      conv(`layers.${i++}`, width, width, 3, false);
    } else {
      conv(`layers.${i++}`, out, width, 3, true);
    }
  });
  return w;
}

function writeSafetensorsF32(file: string, tensors: Map<string, T>): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const [name, t] of tensors) {
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, ...[...tensors.values()].map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))]));
}

function renamed(tensors: Map<string, T>, rename: (k: string) => string): Map<string, T> {
  return new Map([...tensors].map(([k, t]) => [rename(k), t]));
}

/** madebyollin's numbering: index + 1 (its Sequential starts with the weightless Clamp). */
const madebyollinName = (k: string) => k.replace(/^layers\.(\d+)\./, (_, n) => `${Number(n) + 1}.`);

/** An AutoencoderTiny folder: decoder plus a few encoder tensors that must be ignored. */
function writeAutoencoderTinyFolder(dir: string, decoder: Map<string, T>, config: Record<string, unknown> = {}): void {
  fs.mkdirSync(dir, { recursive: true });
  const encoder = randomDecoder(99, 3, [8], [1]);
  const all = new Map([...renamed(decoder, (k) => `decoder.${k}`), ...renamed(encoder, (k) => `encoder.${k}`)]);
  writeSafetensorsF32(path.join(dir, 'diffusion_pytorch_model.safetensors'), all);
  const cfg = {
    _class_name: 'AutoencoderTiny',
    act_fn: 'relu',
    upsample_fn: 'nearest',
    latent_channels: 4,
    out_channels: 3,
    decoder_block_out_channels: [16, 16, 16, 16],
    num_decoder_blocks: [3, 3, 3, 1],
    upsampling_scaling_factor: 2,
    scaling_factor: 1.0,
    ...config,
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
}

// ---- float64 reference of DecoderTiny.forward ----

interface Img {
  c: number;
  h: number;
  w: number;
  d: Float64Array;
}

/** torch Conv2d with padding k / 2 and `stride` (output side floor((side + 2p - k) / stride) + 1). */
function conv2d(x: Img, weights: Map<string, T>, name: string, stride = 1): Img {
  const wt = weights.get(`${name}.weight`)!;
  const bias = weights.get(`${name}.bias`);
  const [cout, cin, k] = wt.shape;
  assert.equal(cin, x.c, name);
  const p = (k - 1) / 2;
  const oh = Math.floor((x.h + 2 * p - k) / stride) + 1;
  const ow = Math.floor((x.w + 2 * p - k) / stride) + 1;
  const out = new Float64Array(cout * oh * ow);
  for (let o = 0; o < cout; o++) {
    const plane = out.subarray(o * oh * ow, (o + 1) * oh * ow);
    plane.fill(bias ? bias.data[o] : 0);
    for (let i = 0; i < cin; i++) {
      const src = x.d.subarray(i * x.h * x.w, (i + 1) * x.h * x.w);
      for (let ky = 0; ky < k; ky++) {
        for (let kx = 0; kx < k; kx++) {
          const wv = wt.data[((o * cin + i) * k + ky) * k + kx];
          for (let y = 0; y < oh; y++) {
            const sy = y * stride + ky - p;
            if (sy < 0 || sy >= x.h) continue;
            for (let xx = 0; xx < ow; xx++) {
              const sx = xx * stride + kx - p;
              if (sx >= 0 && sx < x.w) plane[y * ow + xx] += wv * src[sy * x.w + sx];
            }
          }
        }
      }
    }
  }
  return { c: cout, h: oh, w: ow, d: out };
}

const map = (x: Img, f: (v: number) => number): Img => ({ ...x, d: x.d.map(f) });
const relu = (x: Img) => map(x, (v) => Math.max(v, 0));

function upsample(x: Img, f: number): Img {
  const h = x.h * f;
  const w = x.w * f;
  const d = new Float64Array(x.c * h * w);
  for (let c = 0; c < x.c; c++) for (let y = 0; y < h; y++) for (let xx = 0; xx < w; xx++) d[(c * h + y) * w + xx] = x.d[(c * x.h + Math.floor(y / f)) * x.w + Math.floor(xx / f)];
  return { c: x.c, h, w, d };
}

/** One latent [C, h, w] as the engine hands it over (x0 / SD_SCALE) -> DecoderTiny output x * 2 - 1. */
function referenceDecode(latentSample: Img, weights: Map<string, T>, cfg: TaesdDecoderConfig): Img {
  let x = map(latentSample, (v) => Math.tanh((v * SD_SCALE) / 3) * 3);
  x = relu(conv2d(x, weights, 'layers.0'));
  let i = 2;
  cfg.num_decoder_blocks.forEach((count, s) => {
    for (let b = 0; b < count; b++, i++) {
      let h = relu(conv2d(x, weights, `layers.${i}.conv.0`));
      h = relu(conv2d(h, weights, `layers.${i}.conv.2`));
      h = conv2d(h, weights, `layers.${i}.conv.4`);
      const skip = weights.has(`layers.${i}.skip.weight`) ? conv2d(x, weights, `layers.${i}.skip`) : x;
      x = relu({ ...h, d: h.d.map((v, j) => v + skip.d[j]) });
    }
    if (s < cfg.num_decoder_blocks.length - 1) {
      x = upsample(x, cfg.upsampling_scaling_factor);
      i++;
    }
    x = conv2d(x, weights, `layers.${i++}`);
  });
  return map(x, (v) => v * 2 - 1);
}

/** EncoderTiny.forward on one image [3, H, W] in [-1, 1]: layers((x + 1) / 2), diffusers' layer numbering. */
function referenceEncode(image: Img, weights: Map<string, T>, blocks: number[]): Img {
  let x = map(image, (v) => (v + 1) / 2);
  let i = 0;
  blocks.forEach((count, s) => {
    x = conv2d(x, weights, `layers.${i++}`, s === 0 ? 1 : 2);
    for (let b = 0; b < count; b++, i++) {
      let h = relu(conv2d(x, weights, `layers.${i}.conv.0`));
      h = relu(conv2d(h, weights, `layers.${i}.conv.2`));
      h = conv2d(h, weights, `layers.${i}.conv.4`);
      x = relu({ ...h, d: h.d.map((v, j) => v + x.d[j]) });
    }
  });
  return conv2d(x, weights, `layers.${i}`);
}

function randomLatents(seed: number, n: number): Float32Array {
  const r = signedRandom(seed);
  // Like x0 / 0.18215: spread about +-15, so the tanh clamp is exercised in both its linear and saturated parts.
  return Float32Array.from({ length: n }, () => r() * 15);
}

async function runDecoder(onnx: string, latents: Float32Array, dims: number[]): Promise<{ data: Float32Array; dims: readonly number[] }> {
  const session = await ort.InferenceSession.create(onnx);
  try {
    const out = await session.run({ latent_sample: new ort.Tensor('float32', latents, dims) });
    return { data: out.sample.data as Float32Array, dims: out.sample.dims };
  } finally {
    await session.release();
  }
}

function referenceBatch(latents: Float32Array, dims: number[], weights: Map<string, T>, cfg: TaesdDecoderConfig): Float64Array {
  const [n, c, h, w] = dims;
  const parts = Array.from({ length: n }, (_, b) => referenceDecode({ c, h, w, d: Float64Array.from(latents.subarray(b * c * h * w, (b + 1) * c * h * w)) }, weights, cfg).d);
  const out = new Float64Array(parts.reduce((a, p) => a + p.length, 0));
  parts.forEach((p, b) => out.set(p, b * p.length));
  return out;
}

describe('architectures/taesd', function () {
  this.timeout(300_000);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-taesd-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const standard: TaesdDecoderConfig = { latent_channels: 4, out_channels: 3, num_decoder_blocks: [3, 3, 3, 1], upsampling_scaling_factor: 2 };
  const decoder = randomDecoder(1, 4, [16, 16, 16, 16], [3, 3, 3, 1]);
  const folder = path.join(tmp, 'taesd-diffusers');
  writeAutoencoderTinyFolder(folder, decoder);

  for (const [dtype, bound] of [
    ['float32', 1e-4],
    ['float16', 2e-2],
  ] as const) {
    it(`AutoencoderTiny folder, ${dtype}: matches the float64 reference at two latent sizes (relErr <= ${bound})`, async () => {
      const taesd = await openTaesd(folder);
      try {
        assert.equal(taesd.layout, 'diffusers');
        assert.deepEqual(taesd.config, standard);
        assert.ok(taesd.weights.names().every((n) => n.startsWith('taesd.decoder.layers.')), 'encoder tensors left out');
        assert.equal(taesd.weights.names().length, decoder.size);
        const graph = buildTaesdDecoderGraph(taesd.weights, taesd.config, dtype, { latentScale: SD_SCALE, latentShift: null });
        await writeModel(graph, tmp, `taesd-${dtype}`);
      } finally {
        await taesd.weights.close();
      }
      const cases: [number[], number][] = [
        [[2, 4, 3, 5], 11],
        [[1, 4, 8, 8], 12],
      ];
      for (const [dims, seed] of cases) {
        const latents = randomLatents(seed, dims.reduce((a, b) => a * b));
        const out = await runDecoder(path.join(tmp, `taesd-${dtype}.onnx`), latents, dims);
        assert.deepEqual(out.dims, [dims[0], 3, dims[2] * 8, dims[3] * 8]);
        const ref = referenceBatch(latents, dims, decoder, standard);
        const err = relErr(out.data, ref);
        assert.ok(err <= bound, `${dtype} ${dims}: relErr ${err}`);
        const spread = Math.max(...ref) - Math.min(...ref);
        assert.ok(spread > 0.5, `reference output too flat to test anything (${spread})`);
      }
    });
  }

  // SDXS ships an AutoencoderTiny as its own vae/ (scaling factor 1.0): the goldens are diffusers' decode.
  for (const [dtype, bound] of [
    ['float32', 1e-4],
    ['float16', 2e-2],
  ] as const) {
    it(`tiny-sdxs vae/ (AutoencoderTiny, scaling 1.0), ${dtype}: reproduces diffusers' vae.decoded (relErr <= ${bound})`, async () => {
      const cfg = normalizeTaesdConfig(folderConfig('tiny-sdxs', 'vae'));
      const graph = buildTaesdDecoderGraph(folderWeights('tiny-sdxs', ['vae']), cfg, dtype, { latentScale: 1, prefix: 'vae.decoder' });
      await writeModel(graph, tmp, `sdxs-${dtype}`);
      const g = goldens('tiny-sdxs');
      const input = g.get('vae.decoder_input')!;
      const out = await runDecoder(path.join(tmp, `sdxs-${dtype}.onnx`), input.data, input.shape);
      const err = relErr(out.data, g.get('vae.decoded')!.data);
      assert.ok(err <= bound, `relErr ${err}`);
    });
  }

  // The encoder (SDXS image-to-image): tiny-sdxs's AutoencoderTiny, against EncoderTiny.forward in float64.
  for (const [dtype, bound] of [
    ['float32', 1e-4],
    ['float16', 2e-2],
  ] as const) {
    it(`tiny-sdxs vae/ encoder, ${dtype}: matches the float64 reference at two image sizes (relErr <= ${bound})`, async () => {
      const cfg = normalizeTaesdEncoderConfig(folderConfig('tiny-sdxs', 'vae'));
      assert.deepEqual(cfg, { in_channels: 3, latent_channels: 4, encoder_block_out_channels: [16, 16, 16, 16], num_encoder_blocks: [1, 3, 3, 3] });
      assert.equal(taesdDownscale(cfg), 8);
      const source = folderWeights('tiny-sdxs', ['vae']);
      const weights = new Map<string, T>();
      for (const name of source.names().filter((n) => n.startsWith('vae.encoder.'))) {
        weights.set(name.slice('vae.encoder.'.length), { shape: source.meta(name).shape, data: await source.readF32(name) });
      }
      // Every encoder tensor is one the graph reads, with the shape it declares.
      const expected = expectedTaesdEncoderWeights(cfg, 'vae.encoder');
      assert.deepEqual([...expected.keys()].sort(), source.names().filter((n) => n.startsWith('vae.encoder.')).sort());
      for (const [name, shape] of expected) assert.deepEqual(source.meta(name).shape, shape, name);
      await writeModel(buildTaesdEncoderGraph(source, cfg, dtype, 'vae.encoder'), tmp, `sdxs-encoder-${dtype}`);
      const session = await ort.InferenceSession.create(path.join(tmp, `sdxs-encoder-${dtype}.onnx`));
      try {
        for (const [dims, seed] of [
          [[2, 3, 16, 24], 31],
          [[1, 3, 64, 64], 32],
        ] as const) {
          const r = signedRandom(seed);
          const [n, c, h, w] = dims;
          const image = Float32Array.from({ length: n * c * h * w }, () => r());
          const out = (await session.run({ sample: new ort.Tensor('float32', image, [...dims]) })).latents;
          assert.deepEqual(out.dims, [n, 4, h / 8, w / 8]);
          const per = c * h * w;
          const ref = new Float64Array((out.data as Float32Array).length);
          for (let b = 0; b < n; b++) {
            const enc = referenceEncode({ c, h, w, d: Float64Array.from(image.subarray(b * per, (b + 1) * per)) }, weights, cfg.num_encoder_blocks);
            ref.set(enc.d, b * enc.d.length);
          }
          const err = relErr(out.data as Float32Array, ref);
          assert.ok(err <= bound, `${dtype} ${dims}: relErr ${err}`);
          assert.ok(Math.max(...ref) - Math.min(...ref) > 0.1, 'reference latents too flat to test anything');
        }
      } finally {
        await session.release();
      }
    });
  }

  it('refuses an AutoencoderTiny encoder config diffusers cannot run (stage widths that differ), naming the file', () => {
    assert.throws(
      () => normalizeTaesdEncoderConfig({ encoder_block_out_channels: [16, 32, 32, 32], num_encoder_blocks: [1, 3, 3, 3] }, 'x/vae/config.json'),
      (e: Error) => e instanceof BadInputError && e.message.includes('x/vae/config.json') && /not all equal/.test(e.message),
    );
    assert.throws(() => normalizeTaesdEncoderConfig({ encoder_block_out_channels: [16, 16], num_encoder_blocks: [1, 3, 3, 3] }, 'c.json'), /one width per stage/);
  });

  it("madebyollin's numbered layers (decoder-only and whole-module files) give the same decoder; config inferred from names", async () => {
    // Stage widths that change, so blocks with a 1x1 skip are exercised too.
    const channels = [16, 12, 12, 8];
    const blocks = [2, 1, 3, 1];
    const odd = randomDecoder(5, 4, channels, blocks);
    assert.ok([...odd.keys()].some((k) => k.endsWith('skip.weight')));
    const decoderOnly = path.join(tmp, 'taesd_decoder.safetensors');
    writeSafetensorsF32(decoderOnly, renamed(odd, madebyollinName));
    const whole = path.join(tmp, 'taesd-whole.safetensors');
    const encoder = renamed(randomDecoder(7, 3, [8], [1]), (k) => `encoder.${madebyollinName(k)}`);
    writeSafetensorsF32(whole, new Map([...encoder, ...renamed(odd, (k) => `decoder.${madebyollinName(k)}`)]));
    const expected: TaesdDecoderConfig = { latent_channels: 4, out_channels: 3, num_decoder_blocks: blocks, upsampling_scaling_factor: 2 };
    const dims = [1, 4, 4, 3];
    const latents = randomLatents(21, 48);
    const ref = referenceBatch(latents, dims, odd, expected);
    for (const [file, name] of [
      [decoderOnly, 'decoder-only'],
      [whole, 'whole'],
    ]) {
      const taesd = await openTaesd(file);
      try {
        assert.equal(taesd.layout, 'taesd');
        assert.deepEqual(taesd.config, expected);
        assert.deepEqual(taesd.weights.meta('taesd.decoder.layers.0.weight').shape, [16, 4, 3, 3]);
        await writeModel(buildTaesdDecoderGraph(taesd.weights, taesd.config, 'float32', { latentScale: SD_SCALE }), tmp, `taesd-${name}`);
      } finally {
        await taesd.weights.close();
      }
      const out = await runDecoder(path.join(tmp, `taesd-${name}.onnx`), latents, dims);
      const err = relErr(out.data, ref);
      assert.ok(err <= 1e-4, `${name}: relErr ${err}`);
    }
  });

  it('a folder holding taesd_decoder.safetensors opens that file', async () => {
    const dir = path.join(tmp, 'taesd-repo');
    fs.mkdirSync(dir);
    writeSafetensorsF32(path.join(dir, 'taesd_decoder.safetensors'), renamed(decoder, madebyollinName));
    writeSafetensorsF32(path.join(dir, 'taesd_encoder.safetensors'), renamed(randomDecoder(3, 3, [8], [1]), madebyollinName));
    const taesd = await openTaesd(dir);
    try {
      assert.equal(taesd.file, path.join(dir, 'taesd_decoder.safetensors'));
      assert.deepEqual(taesd.config, standard);
    } finally {
      await taesd.weights.close();
    }
  });

  it('rejects what is not a TAESD decoder with one clear error naming the file', async () => {
    // madebyollin's Encoder numbering: 0 conv, 1 block, 2 conv (where a decoder's 0 is the weightless Clamp).
    const encoderFile = path.join(tmp, 'taesd_encoder.safetensors');
    const index: Record<string, string> = { 0: '0', 2: '1', 3: '2' };
    writeSafetensorsF32(encoderFile, renamed(randomDecoder(3, 3, [8], [1]), (k) => k.replace(/^layers\.(\d+)\./, (_, n) => `${index[n]}.`)));
    await assert.rejects(openTaesd(encoderFile), (e: Error) => e instanceof BadInputError && e.message.includes(encoderFile) && /not a TAESD decoder/.test(e.message));

    const kl = path.join(FIXTURES, 'tiny-sd15', 'vae');
    await assert.rejects(openTaesd(kl), (e: Error) => e instanceof BadInputError && /AutoencoderKL config, not AutoencoderTiny|no TAESD decoder weights/.test(e.message));

    const silu = path.join(tmp, 'taesd-silu');
    writeAutoencoderTinyFolder(silu, decoder, { act_fn: 'silu' });
    await assert.rejects(openTaesd(silu), (e: Error) => e instanceof BadInputError && /act_fn silu/.test(e.message) && e.message.includes(silu));

    const mismatch = path.join(tmp, 'taesd-mismatch');
    writeAutoencoderTinyFolder(mismatch, decoder, { num_decoder_blocks: [3, 3, 2, 1] });
    await assert.rejects(openTaesd(mismatch), (e: Error) => e instanceof BadInputError && /num_decoder_blocks \[3,3,2,1\].*\[3,3,3,1\]/.test(e.message));

    await assert.rejects(openTaesd(path.join(tmp, 'nowhere')), BadInputError);
  });

  describe('convert --taesd, end to end', () => {
    const PROMPTS = ['a photo of a cat', 'a watercolor painting of a lighthouse at dusk'];
    const LATENT = 4 * 8 * 8;
    let engine: OneStepEngine | undefined;
    const out = path.join(tmp, 'model-taesd');

    after(async () => engine?.close());

    it('writes vae_decoder.onnx from TAESD and records it in model.json', async () => {
      const result = await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out, taesd: folder });
      assert.equal(result.manifest.decoder.kind, 'taesd');
      const manifest = await readModelManifest(out);
      assert.deepEqual(manifest.decoder, { graph: 'vae_decoder.onnx', kind: 'taesd' });
      assert.equal(manifest.latent.scaling_factor, SD_SCALE);
      // The TAESD is part of the model's identity: its hash is recorded like a --vae's.
      assert.deepEqual(manifest.source.components, [{ component: 'taesd', name: path.basename(folder), sha256: await sha256Path(folder) }]);
      // The decoder's weights are TAESD's, not the KL VAE's (whose data file is several times larger).
      const session = await ort.InferenceSession.create(path.join(out, 'vae_decoder.onnx'));
      try {
        assert.deepEqual(session.inputNames, ['latent_sample']);
        assert.deepEqual(session.outputNames, ['sample']);
      } finally {
        await session.release();
      }
    });

    it("the engine's images are TAESD's decode of the goldens' x0 (+-1 on >= 99% of values), at two sizes", async () => {
      engine = await OneStepEngine.load(out, { device: 'cpu' });
      const g = goldens('tiny-sd15');
      const latents = g.get('onestep.latents')!.data;
      const x0 = g.get('onestep.x0_pipeline')!.data;
      const images = await engine.generate(
        PROMPTS.map((prompt, i) => ({ index: i, prompt, negativePrompt: '', seed: 0n, width: 64, height: 64, guidance: 0, latents: latents.slice(i * LATENT, (i + 1) * LATENT) })),
      );
      for (const img of images) {
        assert.equal(img.width, 64);
        assert.equal(img.height, 64);
        assert.equal(img.rgb.length, 64 * 64 * 3);
        const z = Float64Array.from(x0.subarray(img.index * LATENT, (img.index + 1) * LATENT), (v) => v / SD_SCALE);
        const ref = referenceDecode({ c: 4, h: 8, w: 8, d: z }, decoder, standard);
        let close = 0;
        let mid = 0;
        for (let y = 0; y < 64; y++) {
          for (let x = 0; x < 64; x++) {
            for (let c = 0; c < 3; c++) {
              const v = Math.min(Math.max(ref.d[(c * 64 + y) * 64 + x] / 2 + 0.5, 0), 1);
              const expected = Math.round(v * 255);
              if (Math.abs(img.rgb[(y * 64 + x) * 3 + c] - expected) <= 1) close++;
              if (expected > 0 && expected < 255) mid++;
            }
          }
        }
        const n = 64 * 64 * 3;
        assert.ok(close / n >= 0.99, `image ${img.index}: ${close / n} within 1`);
        assert.ok(mid / n > 0.3, `image ${img.index}: mostly clipped, the check is weak (${mid / n})`);
        // Not the KL decoder's golden image.
        const { data } = await sharp(path.join(FIXTURES, 'goldens', `tiny-sd15-onestep-${img.index}.png`)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
        const differing = img.rgb.filter((v, i) => Math.abs(v - data[i]) > 8).length;
        assert.ok(differing / n > 0.5, `image ${img.index} looks like the KL decoder's`);
      }
      const [wide] = await engine.generate([{ index: 5, prompt: PROMPTS[0], negativePrompt: '', seed: 3n, width: 96, height: 64, guidance: 0 }]);
      assert.equal(wide.width, 96);
      assert.equal(wide.height, 64);
      assert.equal(wide.rgb.length, 96 * 64 * 3);
    });

    it('refuses a TAESD whose latents do not fit the checkpoint', async () => {
      const wrong = path.join(tmp, 'taesd-16ch');
      writeAutoencoderTinyFolder(wrong, randomDecoder(4, 16, [8, 8, 8, 8], [1, 1, 1, 1]), { latent_channels: 16, num_decoder_blocks: [1, 1, 1, 1] });
      await assert.rejects(
        convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: path.join(tmp, 'model-wrong'), taesd: wrong }),
        (e: Error) => e instanceof BadInputError && /16-channel latents/.test(e.message),
      );
      assert.ok(!fs.existsSync(path.join(tmp, 'model-wrong')));
    });
  });
});
