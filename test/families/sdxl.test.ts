/**
 * The SDXL family end to end on tiny-sdxl: the diffusers folder and the SGM single file convert to the same graphs,
 * the graphs reproduce diffusers' goldens (both text encoders, pooled text_embeds, the UNet with its text-time
 * conditioning, the VAE), the engine reproduces the one-step images (plain, CFG with "" and CFG without a negative
 * prompt, where force_zeros_for_empty_prompt gives zeros), and a LoRA merge of the folder writes diffusers' fused tensors.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { convertCheckpoint } from '../../src/convert.js';
import { mergeLorasIntoCheckpoint } from '../../src/lora/merge-checkpoint.js';
import { OneStepEngine, type ImageRequest } from '../../src/runtime/engine.js';
import { readModelManifest } from '../../src/runtime/model-dir.js';
import { ClipTokenizer } from '../../src/runtime/tokenizer.js';
import { rewriteSafetensors } from '../checkpoint/helpers.js';
import { caseBound, ulpSensitivity } from '../support/bounds.js';
import { assertNearGoldenImage, FIXTURES, goldenImageRequest, goldens, readSafetensors, relErr, type Tensor } from '../support/fixtures.js';

const gold = goldens('tiny-sdxl');
const get = (name: string): Tensor => {
  const t = gold.get(name);
  if (!t) throw new Error(`golden ${name} missing`);
  return t;
};
const PROMPTS = ['a photo of a cat', 'a lighthouse on a cliff at sunset, oil painting'];
const f32 = (t: Tensor, data = t.data) => new ort.Tensor('float32', Float32Array.from(data), t.shape);
const ids = (t: Tensor) => new ort.Tensor('int64', BigInt64Array.from(t.data, (v) => BigInt(v)), t.shape);

async function run(dir: string, graph: string, feeds: Record<string, ort.Tensor>): Promise<Record<string, Float32Array>> {
  const s = await ort.InferenceSession.create(path.join(dir, `${graph}.onnx`));
  try {
    const out = await s.run(feeds);
    return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.data as Float32Array]));
  } finally {
    await s.release();
  }
}

describe('families/sdxl (tiny-sdxl)', function () {
  this.timeout(300_000);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-sdxl-'));
  const folderModel = path.join(work, 'folder');
  const fileModel = path.join(work, 'file');
  after(() => fs.rmSync(work, { recursive: true, force: true }));

  before(async () => {
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sdxl'), { out: folderModel });
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sdxl.safetensors'), { out: fileModel });
  });

  it('the folder and the SGM single file give byte-identical graphs; model.json routes both encoders', async () => {
    const graphs = fs.readdirSync(folderModel).filter((f) => /\.onnx(\.data)?$/.test(f)).sort();
    assert.deepEqual(graphs, ['text_encoder', 'text_encoder_2', 'unet', 'vae_decoder', 'vae_encoder'].flatMap((g) => [`${g}.onnx`, `${g}.onnx.data`]));
    for (const g of graphs) assert.ok(fs.readFileSync(path.join(folderModel, g)).equals(fs.readFileSync(path.join(fileModel, g))), g);
    const m = await readModelManifest(folderModel);
    assert.equal(m.family, 'sdxl');
    assert.deepEqual(
      m.conditioning.map((c) => [c.tokenizer, c.graph, c.outputs]),
      [
        ['tokenizer', 'text_encoder.onnx', { hidden_states: 'encoder_hidden_states' }],
        ['tokenizer_2', 'text_encoder_2.onnx', { hidden_states: 'encoder_hidden_states', text_embeds: 'text_embeds' }],
      ],
    );
    assert.equal(m.negative, 'zeros-when-absent');
    assert.deepEqual(m.denoiser.inputs, ['sample', 'timestep', 'encoder_hidden_states', 'text_embeds', 'time_ids']);
    assert.equal(m.latent.scaling_factor, 0.13025);
    assert.equal((await readModelManifest(fileModel)).latent.scaling_factor, 0.13025);
  });

  it('SGM files in float32 and bfloat16 open too: float32 gives the same graphs, bfloat16 those of its values in float32', async () => {
    const copy = async (name: string, opts: Parameters<typeof rewriteSafetensors>[2]) => {
      await rewriteSafetensors(path.join(FIXTURES, 'tiny-sdxl.safetensors'), path.join(work, name), opts);
      return path.join(work, name);
    };
    const configDir = path.join(FIXTURES, 'tiny-sdxl');
    const f32File = await copy('sdxl-f32.safetensors', { dtype: 'F32' });
    await convertCheckpoint(f32File, { out: path.join(work, 'f32'), configDir });
    const bf16File = await copy('sdxl-bf16.safetensors', { dtype: 'BF16' });
    await convertCheckpoint(bf16File, { out: path.join(work, 'bf16'), configDir });
    // The bfloat16 values, stored exactly as float32.
    await rewriteSafetensors(bf16File, path.join(work, 'sdxl-bf16-as-f32.safetensors'), { bf16AsF32: true });
    await convertCheckpoint(path.join(work, 'sdxl-bf16-as-f32.safetensors'), { out: path.join(work, 'bf16-as-f32'), configDir });
    const data = (dir: string, g: string) => fs.readFileSync(path.join(dir, `${g}.onnx.data`));
    for (const g of ['text_encoder', 'text_encoder_2', 'unet', 'vae_decoder']) {
      assert.ok(data(path.join(work, 'f32'), g).equals(data(fileModel, g)), `f32 ${g}`);
      assert.ok(data(path.join(work, 'bf16'), g).equals(data(path.join(work, 'bf16-as-f32'), g)), `bf16 ${g}`);
      assert.ok(!data(path.join(work, 'bf16'), g).equals(data(fileModel, g)), `bf16 ${g} really rounded`);
    }
  });

  it('both tokenizers (tokenizer pads with <|endoftext|>, tokenizer_2 with "!") match the pipeline ids of 150 prompts', async () => {
    // A single file with no config folder beside it gets CLIP's vocabulary shipped with onestep, with SDXL's pads.
    fs.copyFileSync(path.join(FIXTURES, 'tiny-sdxl.safetensors'), path.join(work, 'alone.safetensors'));
    const alone = path.join(work, 'alone');
    await convertCheckpoint(path.join(work, 'alone.safetensors'), { out: alone });
    for (const [dir, file] of [
      ['tokenizer', 'tiny-sdxl-tokenizer.jsonl'],
      ['tokenizer_2', 'tiny-sdxl-tokenizer_2.jsonl'],
    ]) {
      const expected = fs.readFileSync(path.join(FIXTURES, 'goldens', file), 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as { prompt: string; input_ids: number[] });
      assert.equal(expected.length, 150);
      for (const model of [folderModel, fileModel, alone]) {
        const tok = await ClipTokenizer.load(path.join(model, dir));
        for (const { prompt, input_ids } of expected) assert.deepEqual([...tok.encode(prompt).ids], input_ids, `${dir}: ${JSON.stringify(prompt)}`);
      }
    }
  });

  it('text encoders: hidden_states[-2] of both and the pooled text_embeds equal transformers\' (relErr <= 1e-4)', async () => {
    const te = await run(folderModel, 'text_encoder', { input_ids: ids(get('te.input_ids')) });
    const te2 = await run(folderModel, 'text_encoder_2', { input_ids: ids(get('te2.input_ids')) });
    const errors = {
      hidden: relErr(te.hidden_states, get('te.hidden_states_penultimate').data),
      hidden2: relErr(te2.hidden_states, get('te2.hidden_states_penultimate').data),
      pooled: relErr(te2.text_embeds, get('te2.text_embeds').data),
    };
    for (const [k, e] of Object.entries(errors)) assert.ok(e <= 1e-4, `${k}: relErr ${e}`);
  });

  it('UNet at t=999, 500 and per-sample timesteps with text_embeds and time_ids, and the VAE, equal diffusers\'', async () => {
    const s = await ort.InferenceSession.create(path.join(folderModel, 'unet.onnx'));
    try {
      for (const [label, t] of [
        ['unet.out_t999', [999, 999]],
        ['unet.out_t500', [500, 500]],
        ['unet.out_mixed', Array.from(get('unet.timesteps_mixed').data)],
      ] as const) {
        const at = async (x: Float32Array) =>
          (
            await s.run({
              sample: new ort.Tensor('float32', x, get('unet.sample').shape),
              timestep: new ort.Tensor('float32', Float32Array.from(t), [2]),
              encoder_hidden_states: f32(get('unet.encoder_hidden_states')),
              text_embeds: f32(get('unet.text_embeds')),
              time_ids: f32(get('unet.time_ids')),
            })
          ).out_sample.data as Float32Array;
        const err = relErr(await at(Float32Array.from(get('unet.sample').data)), get(label).data);
        // The case's own bound: 16x the output change from a one-ulp change of the input (support/bounds.ts).
        const bound = caseBound(1e-4, await ulpSensitivity(at, Float32Array.from(get('unet.sample').data)));
        assert.ok(err <= bound, `${label}: relErr ${err} > ${bound}`);
      }
    } finally {
      await s.release();
    }
    const vae = await run(folderModel, 'vae_decoder', { latent_sample: f32(get('vae.decoder_input')) });
    assert.ok(relErr(vae.sample, get('vae.decoded').data) <= 1e-4);
  });

  it('the engine reproduces the one-step images: plain, CFG 1.5 with "" (encoded) and with no negative (zeros)', async () => {
    const engine = await OneStepEngine.load(fileModel, { device: 'cpu', recipe: { timestep: 999 } });
    try {
      const latents = get('onestep.latents').data;
      const req = (i: number, extra: Partial<ImageRequest> = {}) => goldenImageRequest(PROMPTS, latents, i, extra);
      const plain = await engine.generate([req(0), req(1)]);
      await assertNearGoldenImage(plain[0].rgb, 'tiny-sdxl-onestep-0.png');
      await assertNearGoldenImage(plain[1].rgb, 'tiny-sdxl-onestep-1.png');
      const [encoded] = await engine.generate([req(0, { guidance: 1.5, negativePrompt: '' })]);
      await assertNearGoldenImage(encoded.rgb, 'tiny-sdxl-onestep-cfg-0.png');
      const [zeros] = await engine.generate([req(0, { guidance: 1.5 })]);
      await assertNearGoldenImage(zeros.rgb, 'tiny-sdxl-onestep-cfg-zeros-0.png');
      // The two negatives really differ, and so do the images.
      assert.ok(!Buffer.from(encoded.rgb).equals(Buffer.from(zeros.rgb)));
      // time_ids: the defaults are the image size and crop (0, 0); other size conditioning changes the image.
      const [explicit] = await engine.generate([req(0, { timeIds: [64, 64, 0, 0, 64, 64] })]);
      assert.ok(Buffer.from(explicit.rgb).equals(Buffer.from(plain[0].rgb)));
      const [resized] = await engine.generate([req(0, { timeIds: [1024, 1024, 0, 0, 64, 64] })]);
      assert.ok(!Buffer.from(resized.rgb).equals(Buffer.from(plain[0].rgb)));
    } finally {
      await engine.close();
    }
  });

  for (const [style, scale] of [
    ['kohya', 0.8],
    ['peft', 0.6],
  ] as const) {
    it(`lora merge of the folder (${style}, ${scale}) writes diffusers' fused tensors into unet/, text_encoder/, text_encoder_2/`, async () => {
      const out = path.join(work, `merged-${style}`);
      const loras = path.join(FIXTURES, 'loras');
      await mergeLorasIntoCheckpoint({ base: path.join(FIXTURES, 'tiny-sdxl'), loras: [{ path: path.join(loras, `tiny-sdxl-${style}.safetensors`), scale }], out, dtype: 'F32' });
      const fused = readSafetensors(path.join(loras, `golden-fused-tiny-sdxl-${style}.safetensors`));
      const components = new Set<string>();
      for (const [c, file] of [
        ['unet', 'unet/diffusion_pytorch_model.safetensors'],
        ['text_encoder', 'text_encoder/model.safetensors'],
        ['text_encoder_2', 'text_encoder_2/model.safetensors'],
      ]) {
        for (const [key, t] of readSafetensors(path.join(out, file))) {
          const g = fused.get(`${c}.${key}`);
          if (!g) continue;
          components.add(c);
          assert.ok(relErr(t.data, g.data) <= 1e-5, `${c}.${key}`);
        }
      }
      assert.deepEqual([...components].sort(), ['text_encoder', 'text_encoder_2', 'unet']);
    });
  }
});
