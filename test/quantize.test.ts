import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { convertCheckpoint } from '../src/convert.js';
import { OnestepError } from '../src/errors.js';
import { decodeModelStructure } from '../src/onnx/read-model.js';
import { OneStepEngine } from '../src/runtime/engine.js';
import { FIXTURES, goldens } from './support/fixtures.js';

const LATENT = 4 * 8 * 8;
const PROMPTS = {
  'tiny-sd15': ['a photo of a cat', 'a watercolor painting of a lighthouse at dusk'],
  'tiny-sd21': ['a photo of a cat', 'a red sports car on a mountain road'],
};
type Model = keyof typeof PROMPTS;
const MIN_PSNR: Record<Model, number> = { 'tiny-sd15': 33, 'tiny-sd21': 22 };

async function goldenPng(name: string): Promise<Uint8Array> {
  const { data } = await sharp(path.join(FIXTURES, 'goldens', name)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return new Uint8Array(data);
}

function psnr(a: Uint8Array, b: Uint8Array): number {
  assert.equal(a.length, b.length);
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i] - b[i]) ** 2;
  return se === 0 ? Infinity : 10 * Math.log10((255 * 255) / (se / a.length));
}

describe('quantize (convert --quantize int8)', function () {
  this.timeout(300_000);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-quantize-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  for (const model of Object.keys(PROMPTS) as Model[]) {
    it(`${model}: int8 UNet and decoder run as QLinearConv / QGemm and give the golden images within the PSNR bound`, async () => {
      const out = path.join(tmp, model);
      const result = await convertCheckpoint(path.join(FIXTURES, model), { out, quantize: 'int8' });
      assert.equal(result.manifest.quantize, 'int8');
      assert.ok(result.notes.some((n) => /^int8: unet \d+ convs \+ \d+ matmuls, vae_decoder \d+ convs/.test(n)), result.notes.join('\n'));
      const json = JSON.parse(fs.readFileSync(path.join(out, 'model.json'), 'utf8'));
      assert.equal(json.quantize, 'int8');
      assert.ok(!fs.readdirSync(out).some((f) => f.includes('probe')), 'no probe graph left behind');
      // What ORT runs: every QDQ-wrapped Conv / MatMul fused into an int8 kernel; float ones only where int8.ts keeps
      // them (convs of <= 8 channels; MatMuls over < 256 rows, which at 64x64 is all of these UNets' 64 tokens).
      for (const g of ['unet', 'vae_decoder']) {
        const written = decodeModelStructure(fs.readFileSync(path.join(out, `${g}.onnx`))).nodes;
        const wrapped = (op: string) => written.filter((n) => n.opType === op && n.inputs[1].endsWith('/w_dq')).length;
        const plain = (op: string) => written.filter((n) => n.opType === op && !n.inputs[1].endsWith('/w_dq')).length;
        const optimized = path.join(tmp, `${model}-${g}.opt.onnx`);
        const session = await ort.InferenceSession.create(path.join(out, `${g}.onnx`), { graphOptimizationLevel: 'all', optimizedModelFilePath: optimized, logSeverityLevel: 3 });
        await session.release();
        const ops = decodeModelStructure(fs.readFileSync(optimized)).nodes.map((n) => n.opType);
        const count = (...names: string[]) => ops.filter((o) => names.includes(o)).length;
        assert.ok(wrapped('Conv') >= 10, `${g}: ${wrapped('Conv')} int8 convs`);
        assert.equal(count('QLinearConv'), wrapped('Conv'), `${g}: QLinearConv`);
        assert.equal(count('Conv', 'FusedConv'), plain('Conv'), `${g}: float convs`);
        assert.equal(count('QGemm', 'QLinearMatMul', 'MatMulIntegerToFloat'), wrapped('MatMul'), `${g}: int8 matmuls`);
      }

      const engine = await OneStepEngine.load(out, { device: 'cpu' });
      try {
        const latents = goldens(model).get('onestep.latents')!.data;
        const batch = PROMPTS[model].map((prompt, i) => ({ index: i, prompt, negativePrompt: '', seed: BigInt(i), width: 64, height: 64, guidance: 0, latents: latents.slice(i * LATENT, (i + 1) * LATENT) }));
        const images = await engine.generate(batch);
        for (const img of images) {
          const p = psnr(img.rgb, await goldenPng(`${model}-onestep-${img.index}.png`));
          console.log(`      ${model} image ${img.index}: int8 against the float32 golden: PSNR ${p.toFixed(1)} dB`);
          // The bound: measured on an AMD EPYC (AVX-512 VNNI) 37.8-40.9 dB (tiny-sd15) and 25.8-26.6 dB (tiny-sd21,
          // whose 32-channel layers quantize worse), less 4 dB for CPUs whose int8 kernels round or saturate
          // differently (AVX2 without VNNI); a float32 conversion is within +-1 of the golden, a wrong graph ~10 dB.
          assert.ok(p >= MIN_PSNR[model], `${model} image ${img.index}: PSNR ${p.toFixed(1)} dB against the golden (bound ${MIN_PSNR[model]})`);
        }
      } finally {
        await engine.close();
      }
    });
  }

  it('writes the same bytes when converting the same checkpoint again', async () => {
    const again = path.join(tmp, 'tiny-sd15-again');
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: again, quantize: 'int8' });
    for (const f of ['unet.onnx', 'unet.onnx.data', 'vae_decoder.onnx', 'vae_decoder.onnx.data', 'model.json']) {
      assert.ok(fs.readFileSync(path.join(tmp, 'tiny-sd15', f)).equals(fs.readFileSync(path.join(again, f))), f);
    }
  });

  it('refuses --quantize with --dtype fp16 or --target cuda before converting anything', async () => {
    for (const opts of [{ dtype: 'float16' as const }, { target: 'cuda' as const }]) {
      const out = path.join(tmp, 'refused');
      await assert.rejects(convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out, quantize: 'int8', ...opts }), (e: Error) => e instanceof OnestepError && /--quantize int8/.test(e.message));
      assert.ok(!fs.existsSync(out));
    }
  });
});
