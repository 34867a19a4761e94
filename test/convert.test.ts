/**
 * Acceptance tests of convertCheckpoint: each fixture model is converted once per layout and dtype (in `before`), and
 * the converted graphs, run with onnxruntime on the goldens' inputs, must reproduce the goldens diffusers computed.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cpSync, readFileSync, readdirSync, existsSync, mkdirSync, mkdtempSync, copyFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { sha256Path } from '../src/checkpoint/hash.js';
import { convertCheckpoint, type ConvertOptions, type ConvertResult } from '../src/convert.js';
import { OnestepError } from '../src/errors.js';
import type { ModelManifest } from '../src/runtime/model-dir.js';
import { ClipTokenizer } from '../src/runtime/tokenizer.js';
import type { SafetensorsDType } from '../src/safetensors/dtypes.js';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors/writer.js';
import { rewriteSafetensors } from './checkpoint/helpers.js';
import { caseBound, ulpSensitivity } from './support/bounds.js';
import { FIXTURES, goldens, relErr, type Tensor } from './support/fixtures.js';

type Model = 'tiny-sd15' | 'tiny-sd21';
const GRAPH_FILES = ['text_encoder', 'unet', 'vae_decoder', 'vae_encoder'].flatMap((n) => [`${n}.onnx`, `${n}.onnx.data`]);
const CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407];

let roundToF16 = false;
const halfRound = new Float32Array(1);
/** Nearest float16 value of a float32 (ties to even), by bit arithmetic independent of src/. */
function nearestF16(v: number): number {
  if (v === 0 || !Number.isFinite(v)) return v;
  const e = Math.max(Math.floor(Math.log2(Math.abs(v))), -14);
  const step = 2 ** (e - 10);
  const q = v / step;
  const r = Math.abs(q - Math.trunc(q)) === 0.5 ? 2 * Math.round(q / 2) : Math.round(q);
  halfRound[0] = r * step;
  return halfRound[0];
}

function f32(t: Tensor): ort.Tensor {
  const data = roundToF16 ? Float32Array.from(t.data, nearestF16) : Float32Array.from(t.data);
  return new ort.Tensor('float32', data, t.shape);
}

/**
 * What float16 cannot beat: the fp32 graphs' errors when their float inputs are first rounded to float16. On the
 * tiny SD 2.1 UNet at an 8x8 latent, GroupNorm groups of 2 values at the 1x1 bottleneck make the output so sensitive
 * that input rounding alone costs ~2.6e-2 at t=999.
 */
async function float16Floor(fp32Dir: string, model: Model): Promise<Record<string, number>> {
  roundToF16 = true;
  try {
    return (await goldenErrors(fp32Dir, model)).errors;
  } finally {
    roundToF16 = false;
  }
}

/** Runs one graph of a model directory and returns its outputs' data. */
async function runGraph(dir: string, graph: string, feeds: Record<string, ort.Tensor>): Promise<Record<string, Float32Array>> {
  const session = await ort.InferenceSession.create(join(dir, `${graph}.onnx`));
  try {
    const out = await session.run(feeds);
    return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.data as Float32Array]));
  } finally {
    await session.release();
  }
}

/** relErr of every golden output the converted graphs reproduce, by golden name. */
async function goldenErrors(dir: string, model: Model): Promise<{ errors: Record<string, number>; sensitivities: Record<string, number> }> {
  const g = goldens(model);
  const get = (name: string): Tensor => {
    const t = g.get(name);
    if (!t) throw new Error(`golden ${name} missing`);
    return t;
  };
  const errors: Record<string, number> = {};
  const sensitivities: Record<string, number> = {};

  const ids = get('te.input_ids');
  const te = await runGraph(dir, 'text_encoder', {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.data, (x) => BigInt(x)), ids.shape),
  });
  errors['te.last_hidden_state'] = relErr(te.last_hidden_state, get('te.last_hidden_state').data);
  errors['te.pooler_output'] = relErr(te.pooler_output, get('te.pooler_output').data);

  const context = f32(get('unet.encoder_hidden_states'));
  const unetCases: [string, Tensor, Float32Array][] = [
    ['unet.out_t999', get('unet.sample'), new Float32Array([999, 999])],
    ['unet.out_t500', get('unet.sample'), new Float32Array([500, 500])],
    ['unet.out_mixed', get('unet.sample'), get('unet.timesteps_mixed').data],
    ['unet16.out_t999', get('unet16.sample'), new Float32Array([999, 999])],
  ];
  const unet = await ort.InferenceSession.create(join(dir, 'unet.onnx'));
  try {
    for (const [golden, sample, timesteps] of unetCases) {
      const runAt = async (x: Float32Array) =>
        (await unet.run({ sample: new ort.Tensor('float32', x, sample.shape), timestep: new ort.Tensor('float32', Float32Array.from(timesteps), [timesteps.length]), encoder_hidden_states: context }))
          .out_sample.data as Float32Array;
      const input = f32(sample).data as Float32Array;
      errors[golden] = relErr(await runAt(input), get(golden).data);
      sensitivities[golden] = await ulpSensitivity(runAt, input);
    }
  } finally {
    await unet.release();
  }

  const vae = await runGraph(dir, 'vae_decoder', { latent_sample: f32(get('vae.decoder_input')) });
  errors['vae.decoded'] = relErr(vae.sample, get('vae.decoded').data);
  return { errors, sensitivities };
}

/**
 * Each error within `tolerance`, or within the case's own bound where that is higher: AMPLIFICATION x the graph's
 * 1-ulp input sensitivity (test/support/bounds.ts), and (fp16) twice the measured float16 floor.
 */
function assertGoldens(
  { errors, sensitivities }: { errors: Record<string, number>; sensitivities: Record<string, number> },
  tolerance: number,
  floors?: Record<string, number>,
): void {
  assert.equal(Object.keys(errors).length, 7);
  const bound = (k: string) => Math.max(caseBound(tolerance, sensitivities[k] ?? 0), 2 * (floors?.[k] ?? 0));
  const bad = Object.entries(errors).filter(([k, e]) => !(e <= bound(k)));
  assert.deepEqual(bad, [], `relErr above ${tolerance} (floors ${JSON.stringify(floors)}): ${JSON.stringify(errors)}`);
}

/** The fixture tokenizer goldens: prompt -> input_ids as StableDiffusionPipeline pads them. */
function tokenizerGoldens(model: Model): { prompt: string; input_ids: number[] }[] {
  return readFileSync(join(FIXTURES, 'goldens', `${model}-tokenizer.jsonl`), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
}

function readManifest(dir: string): ModelManifest {
  return JSON.parse(readFileSync(join(dir, 'model.json'), 'utf8'));
}

/** A config-only folder (unet/vae/text_encoder config.json, no scheduler/, no tokenizer/) for a single file. */
function configsOnly(model: Model, dir: string): string {
  for (const c of ['unet', 'vae', 'text_encoder']) {
    mkdirSync(join(dir, c), { recursive: true });
    copyFileSync(join(FIXTURES, model, c, 'config.json'), join(dir, c, 'config.json'));
  }
  return dir;
}

/** A safetensors file's tensors as raw bytes (fixtures are small). */
function rawTensors(file: string): TensorToWrite[] {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  return Object.entries<{ dtype: SafetensorsDType; shape: number[]; data_offsets: [number, number] }>(header)
    .filter(([name]) => name !== '__metadata__')
    .map(([name, v]) => ({ name, dtype: v.dtype, shape: v.shape, data: () => buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]) }));
}

function smallF32(name: string, shape: number[], seed: number): TensorToWrite {
  const numel = shape.reduce((a, b) => a * b, 1);
  const values = Float32Array.from({ length: numel }, (_, i) => Math.sin(seed * 7.3 + i) * 0.02);
  return { name, dtype: 'F32', shape, data: () => new Uint8Array(values.buffer) };
}

/**
 * The layout huggingface_hub's cache gives a downloaded pipeline: blobs/<hash> hold the bytes, snapshots/<rev>/ mirror
 * the repository with relative symlinks into ../blobs. Returns the snapshot folder.
 */
function hubSnapshot(folder: string, cache: string): string {
  const repo = join(cache, 'models--tiny--sd15');
  const snapshot = join(repo, 'snapshots', '0123abcd');
  mkdirSync(join(repo, 'blobs'), { recursive: true });
  const walk = (rel: string): void => {
    for (const e of readdirSync(join(folder, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        mkdirSync(join(snapshot, r), { recursive: true });
        walk(r);
        continue;
      }
      const blob = createHash('sha256').update(readFileSync(join(folder, r))).digest('hex');
      copyFileSync(join(folder, r), join(repo, 'blobs', blob));
      symlinkSync(`${'../'.repeat(r.split('/').length + 1)}blobs/${blob}`, join(snapshot, r));
    }
  };
  mkdirSync(snapshot, { recursive: true });
  walk('');
  return snapshot;
}

describe('convertCheckpoint (tiny fixtures, goldens through onnxruntime)', function () {
  this.timeout(120_000);
  let work: string;
  const converted = new Map<string, ConvertResult>();
  const dirOf = (key: string): string => {
    const r = converted.get(key);
    if (!r) throw new Error(`${key} was not converted`);
    return r.out;
  };

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'onestep-convert-'));
    // The tiny-sd21 file is converted from a copy whose config folder has no scheduler/ and no tokenizer/: its
    // prediction type then comes only from the `prediction` option, its tokenizer from the bundled CLIP vocabulary.
    const sd21File = join(work, 'input', 'tiny-sd21.safetensors');
    mkdirSync(join(work, 'input'));
    copyFileSync(join(FIXTURES, 'tiny-sd21.safetensors'), sd21File);
    const sd21Configs = configsOnly('tiny-sd21', join(work, 'input', 'sd21-configs'));
    const jobs: [string, string, Omit<ConvertOptions, 'out'>][] = [
      ['sd15-folder', join(FIXTURES, 'tiny-sd15'), {}],
      // Beside it lies the tiny-sd15/ folder, found by name for its configs and tokenizer.
      ['sd15-file', join(FIXTURES, 'tiny-sd15.safetensors'), {}],
      ['sd15-folder-fp16', join(FIXTURES, 'tiny-sd15'), { dtype: 'float16' }],
      ['sd21-folder', join(FIXTURES, 'tiny-sd21'), {}],
      ['sd21-file', sd21File, { prediction: 'v_prediction', configDir: sd21Configs }],
      ['sd21-folder-fp16', join(FIXTURES, 'tiny-sd21'), { dtype: 'float16' }],
    ];
    jobs.push(['sd15-hub', hubSnapshot(join(FIXTURES, 'tiny-sd15'), join(work, 'hub')), {}]);
    for (const [key, input, opts] of jobs) converted.set(key, await convertCheckpoint(input, { ...opts, out: join(work, 'models', key) }));
  });

  it('a Hugging Face hub cache snapshot (every file a relative symlink into ../blobs) converts to the same graphs as the folder, and hashes the same', async () => {
    for (const f of GRAPH_FILES) {
      const a = readFileSync(join(dirOf('sd15-folder'), f));
      assert.ok(a.length > 0 && a.equals(readFileSync(join(dirOf('sd15-hub'), f))), `${f} differs`);
    }
    assert.equal(await sha256Path(join(work, 'hub', 'models--tiny--sd15', 'snapshots', '0123abcd')), await sha256Path(join(FIXTURES, 'tiny-sd15')));
  });
  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  for (const [model, family, prediction] of [
    ['tiny-sd15', 'sd1', 'epsilon'],
    ['tiny-sd21', 'sd2', 'v_prediction'],
  ] as const) {
    const short = model === 'tiny-sd15' ? 'sd15' : 'sd21';
    describe(model, () => {
      for (const layout of ['folder', 'file'] as const) {
        it(`${layout}, fp32: text encoder, UNet (t=999, 500, per-sample, 16x16) and VAE decoder reproduce the goldens (relErr <= 1e-4)`, async () => {
          assertGoldens(await goldenErrors(dirOf(`${short}-${layout}`), model), 1e-4);
        });
      }

      it('folder, fp16: the goldens within relErr 2e-2, with f16 weights', async () => {
        const dir = dirOf(`${short}-folder-fp16`);
        assertGoldens(await goldenErrors(dir, model), 2e-2, await float16Floor(dirOf(`${short}-folder`), model));
        assert.equal(readManifest(dir).dtype, 'float16');
        // f16 weights take half the bytes of the f32 conversion's.
        const ratio = converted.get(`${short}-folder-fp16`)!.bytes / converted.get(`${short}-folder`)!.bytes;
        assert.ok(ratio > 0.45 && ratio < 0.55, `fp16/fp32 weight bytes ${ratio}`);
        // Every graph was evaluated once in float16 and none overflows (no float32 kept).
        assert.ok(!converted.get(`${short}-folder-fp16`)!.notes.some((n) => /kept in float32/.test(n)));
      });

      it('the single file and the folder give byte-identical graphs and weight files', () => {
        for (const f of GRAPH_FILES) {
          const a = readFileSync(join(dirOf(`${short}-folder`), f));
          const b = readFileSync(join(dirOf(`${short}-file`), f));
          assert.ok(a.length > 0 && a.equals(b), `${f} differs between the folder and the single-file conversion`);
        }
      });

      it(`model.json: ${family}, ${prediction}, latent scaling 0.18215, components present`, () => {
        for (const layout of ['folder', 'file']) {
          const dir = dirOf(`${short}-${layout}`);
          const m = readManifest(dir);
          assert.equal(m.format, 'onestep-model');
          assert.equal(m.family, family);
          assert.equal(m.dtype, 'float32');
          assert.equal(m.recipe.prediction_type, prediction);
          assert.equal(m.recipe.timestep, 999);
          assert.equal(m.configs.scheduler.prediction_type, prediction);
          assert.equal(m.latent.scaling_factor, 0.18215);
          assert.equal(m.latent.channels, 4);
          assert.equal(m.source.layout, layout === 'folder' ? 'diffusers' : 'single-file');
          assert.match(m.source.sha256, /^[0-9a-f]{64}$/);
          for (const f of [...m.conditioning.map((c) => c.graph), m.denoiser.graph, m.decoder.graph, m.encoder!.graph]) assert.ok(existsSync(join(dir, f)), f);
          assert.deepEqual(m.denoiser.inputs, ['sample', 'timestep', 'encoder_hidden_states']);
          assert.equal(m.version, 2);
          assert.deepEqual(converted.get(`${short}-${layout}`)!.manifest, m);
        }
      });

      it('the tokenizer directory loads and matches the pipeline ids of 150 prompts', async () => {
        const expected = tokenizerGoldens(model);
        assert.equal(expected.length, 150);
        for (const layout of ['folder', 'file']) {
          const dir = dirOf(`${short}-${layout}`);
          const tok = await ClipTokenizer.load(join(dir, readManifest(dir).conditioning[0].tokenizer));
          assert.deepEqual([...tok.encode('a photo of a cat').ids.slice(0, 7)], CAT_IDS);
          for (const { prompt, input_ids } of expected) assert.deepEqual([...tok.encode(prompt).ids], input_ids, `${layout}: ${JSON.stringify(prompt)}`);
        }
      });
    });
  }
});

describe('convertCheckpoint refuses bad input, leaving nothing behind', function () {
  this.timeout(60_000);
  let work: string;
  let outParent: string;
  beforeEach(() => {
    work = mkdtempSync(join(tmpdir(), 'onestep-convert-bad-'));
    outParent = join(work, 'models');
    mkdirSync(outParent);
  });
  afterEach(() => rmSync(work, { recursive: true, force: true }));

  async function refuses(input: string, message: RegExp, opts: Omit<ConvertOptions, 'out'> = {}, out = join(outParent, 'model')): Promise<void> {
    await assert.rejects(convertCheckpoint(input, { ...opts, out }), (e: unknown) => {
      assert.ok(e instanceof OnestepError, `not an OnestepError: ${(e as Error)?.stack}`);
      assert.match(e.message, message);
      return true;
    });
  }

  it('a LoRA passed as a checkpoint', async () => {
    const lora = join(FIXTURES, 'loras', 'tiny-sd15-kohya.safetensors');
    await refuses(lora, /tiny-sd15-kohya\.safetensors: is a LoRA/);
    assert.deepEqual(readdirSync(outParent), []);
  });

  it('a file of unknown tensor names', async () => {
    const file = join(work, 'mystery.safetensors');
    await writeSafetensors(file, [smallF32('blorp.zanzibar.weight', [3, 5], 1), smallF32('quux.17.bias', [5], 2)]);
    await refuses(file, /mystery\.safetensors: has no tensor names onestep recognizes \(2 tensors, e\.g\. blorp\.zanzibar\.weight/);
    assert.deepEqual(readdirSync(outParent), []);
  });

  it('a checkpoint with a missing tensor names the tensor', async () => {
    const file = join(work, 'incomplete.safetensors');
    const dropped = 'model.diffusion_model.middle_block.0.out_layers.3.weight';
    await writeSafetensors(file, rawTensors(join(FIXTURES, 'tiny-sd15.safetensors')).filter((t) => t.name !== dropped));
    await refuses(file, /incomplete\.safetensors: 1 required tensor\(s\) missing: unet\.mid_block\.resnets\.0\.conv2\.weight/, {
      configDir: join(FIXTURES, 'tiny-sd15'),
    });
    assert.deepEqual(readdirSync(outParent), []);
  });

  it('an SDXL-looking file', async () => {
    const file = join(work, 'xl.safetensors');
    await writeSafetensors(file, [
      smallF32('conditioner.embedders.0.transformer.text_model.final_layer_norm.weight', [8], 1),
      smallF32('model.diffusion_model.label_emb.0.0.weight', [8, 4], 2),
      smallF32('model.diffusion_model.input_blocks.0.0.weight', [8, 4, 3, 3], 3),
      smallF32('first_stage_model.decoder.conv_out.weight', [3, 8, 3, 3], 4),
    ]);
    await refuses(file, /xl\.safetensors: is an SDXL \(SGM layout\) checkpoint without OpenCLIP bigG's text_projection/);
    assert.deepEqual(readdirSync(outParent), []);
  });

  it('an existing output folder without force is left as it was', async () => {
    const out = join(outParent, 'taken');
    mkdirSync(out);
    writeFileSync(join(out, 'keep.txt'), 'mine');
    await refuses(join(FIXTURES, 'tiny-sd15'), /taken already exists/, {}, out);
    assert.deepEqual(readdirSync(outParent), ['taken']);
    assert.deepEqual(readdirSync(out), ['keep.txt']);
  });

  it('a PixArt folder with a recipe for SD', async () => {
    await refuses(join(FIXTURES, 'tiny-pixart'), /recipe "yoso" is for sd1 models, not pixart-alpha/, { recipe: 'yoso' });
    assert.deepEqual(readdirSync(outParent), []);
  });

  it('a recipe for another family', async () => {
    await refuses(join(FIXTURES, 'tiny-sd21'), /recipe "instaflow" is for sd1 models, not sd2/, { recipe: 'instaflow' });
    assert.deepEqual(readdirSync(outParent), []);
  });
});

describe('convert --dtype fp16: each float16 graph evaluated once, float32 kept where float16 overflows', function () {
  this.timeout(300_000);
  const work = mkdtempSync(join(tmpdir(), 'onestep-fp16-safety-'));
  after(() => rmSync(work, { recursive: true, force: true }));

  it('a VAE whose decoder activations pass 65504 keeps vae_decoder in float32 (identical to the fp32 conversion), the rest in float16', async () => {
    // tiny-sd15 with decoder.conv_in scaled by 3e5: its weights still fit float16 (max 5.5e4), its output reaches ~1e5-1e6.
    const hot = join(work, 'sd15-hot-vae');
    cpSync(join(FIXTURES, 'tiny-sd15'), hot, { recursive: true });
    const vaeFile = join(hot, 'vae', 'diffusion_pytorch_model.safetensors');
    await rewriteSafetensors(join(FIXTURES, 'tiny-sd15', 'vae', 'diffusion_pytorch_model.safetensors'), vaeFile, { scale: (k) => (k === 'decoder.conv_in.weight' ? 3e5 : undefined) });
    const fp16 = await convertCheckpoint(hot, { out: join(work, 'fp16'), dtype: 'float16' });
    const fp32 = await convertCheckpoint(hot, { out: join(work, 'fp32'), dtype: 'float32' });
    assert.ok(fp16.notes.some((n) => /^kept in float32, as float16 gives NaN\/Inf on a reference input: vae_decoder \(NaN\/Inf at /.test(n)), fp16.notes.join('; '));
    const bytes = (dir: string, g: string) => readFileSync(join(dir, `${g}.onnx.data`));
    assert.ok(bytes(join(work, 'fp16'), 'vae_decoder').equals(bytes(join(work, 'fp32'), 'vae_decoder')));
    assert.ok(bytes(join(work, 'fp16'), 'unet').length < 0.51 * bytes(join(work, 'fp32'), 'unet').length, 'the UNet stays float16');
    assert.ok(!fp32.notes.some((n) => /float16/.test(n)));
    assert.deepEqual(readdirSync(join(work, 'fp16')).filter((f) => /probe|fp16-check/.test(f)), []);
    // The CUDA target (fp16 by default, fused ops the CPU cannot run) is judged by its plain float16 twin.
    const cuda = await convertCheckpoint(hot, { out: join(work, 'cuda'), target: 'cuda' });
    assert.ok(cuda.notes.some((n) => /kept in float32, .*vae_decoder/.test(n)), cuda.notes.join('; '));
    assert.deepEqual(readdirSync(join(work, 'cuda')).filter((f) => /probe|fp16-check/.test(f)), []);
  });
});
