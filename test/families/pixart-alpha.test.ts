import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { convertCheckpoint } from '../../src/convert.js';
import { BadInputError } from '../../src/errors.js';
import { inspectPath } from '../../src/inspect.js';
import { mergeLorasIntoCheckpoint } from '../../src/lora/merge-checkpoint.js';
import { signedRandom } from '../support/random.js';
import type { ModelManifest } from '../../src/runtime/model-dir.js';
import { T5Tokenizer } from '../../src/runtime/t5-tokenizer.js';
import { f16ToF32, f32ToBf16, f32ToF16, bf16ToF32 } from '../../src/safetensors/dtypes.js';
import { writeSafetensors } from '../../src/safetensors/writer.js';
import { FIXTURES, goldens, readSafetensors, relErr } from '../support/fixtures.js';

const TINY = join(FIXTURES, 'tiny-pixart');
const WEIGHT_FILES = ['transformer/diffusion_pytorch_model.safetensors', 'text_encoder/model.safetensors', 'vae/diffusion_pytorch_model.safetensors'];

type Stored = 'F32' | 'F16' | 'BF16';

/** A copy of tiny-pixart whose weights are stored as `dtype` (written with the project's writer), or as float32 holding `round`ed values. */
async function variant(dir: string, dtype: Stored, round?: (x: Float32Array) => Float32Array): Promise<string> {
  cpSync(TINY, dir, { recursive: true });
  for (const rel of WEIGHT_FILES) {
    const tensors = readSafetensors(join(TINY, rel));
    const bytes = (data: Float32Array): Uint8Array => {
      if (dtype === 'F16') return new Uint8Array(f32ToF16(data).buffer);
      if (dtype === 'BF16') return new Uint8Array(f32ToBf16(data).buffer);
      const v = round ? round(data) : data;
      return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    };
    await writeSafetensors(
      join(dir, rel),
      [...tensors].map(([name, t]) => ({ name, dtype, shape: t.shape, data: () => bytes(t.data) })),
    );
  }
  return dir;
}

describe('families/pixart-alpha', function () {
  this.timeout(300_000);
  const work = mkdtempSync(join(tmpdir(), 'onestep-pixart-family-'));
  after(() => rmSync(work, { recursive: true, force: true }));
  const out = join(work, 'converted');
  let manifest: ModelManifest;
  before(async () => {
    await convertCheckpoint(TINY, { out });
    manifest = JSON.parse(readFileSync(join(out, 'model.json'), 'utf8'));
  });

  it('writes the T5 encoder, the transformer, the VAE and the tokenizer; model.json routes the mask to the transformer', () => {
    const files = readdirSync(out).sort();
    for (const f of ['text_encoder.onnx', 'transformer.onnx', 'vae_decoder.onnx', 'vae_encoder.onnx', 'tokenizer', 'model.json']) assert.ok(files.includes(f), `${f} in ${files}`);
    assert.equal(manifest.family, 'pixart-alpha');
    assert.deepEqual(manifest.conditioning, [
      { tokenizer: 'tokenizer', max_length: 120, graph: 'text_encoder.onnx', attention_mask: true, outputs: { last_hidden_state: 'encoder_hidden_states' }, mask_to: 'encoder_attention_mask' },
    ]);
    assert.equal(manifest.negative, 'encode');
    assert.deepEqual(manifest.denoiser, { graph: 'transformer.onnx', inputs: ['sample', 'timestep', 'encoder_hidden_states', 'encoder_attention_mask'], out_channels: 8 });
    assert.deepEqual(manifest.default_size, { width: 64, height: 64 });
    assert.equal(manifest.latent.scaling_factor, 0.18215);
  });

  it("the converted tokenizer and text encoder give the pipeline's prompt embeddings (te.last_hidden_state)", async () => {
    const tok = await T5Tokenizer.load(join(out, 'tokenizer'));
    const prompts = ['a photo of a cat', 'an astronaut riding a horse, highly detailed, 4k', '', Array(12).fill('a very long prompt with many words').join(', ')];
    const enc = prompts.map((p) => tok.encode(p));
    const ids = new ort.Tensor('int64', BigInt64Array.from(enc.flatMap((e) => [...e.ids].map(BigInt))), [4, 120]);
    const mask = new ort.Tensor('int64', BigInt64Array.from(enc.flatMap((e) => [...e.mask].map(BigInt))), [4, 120]);
    const s = await ort.InferenceSession.create(join(out, 'text_encoder.onnx'));
    try {
      const res = await s.run({ input_ids: ids, attention_mask: mask });
      const err = relErr(res.last_hidden_state.data as Float32Array, goldens('tiny-pixart').get('te.last_hidden_state')!.data);
      assert.ok(err <= 1e-4, `relErr ${err}`);
    } finally {
      await s.release();
    }
  });

  it('float16 and bfloat16 folders convert to exactly the graphs of a float32 folder holding the same values', async () => {
    const roundF16 = (x: Float32Array) => f16ToF32(f32ToF16(x));
    const roundBf16 = (x: Float32Array) => bf16ToF32(f32ToBf16(x));
    for (const [dtype, round] of [
      ['F16', roundF16],
      ['BF16', roundBf16],
    ] as const) {
      const stored = await variant(join(work, `tiny-pixart-${dtype}`), dtype);
      const reference = await variant(join(work, `tiny-pixart-${dtype}-as-f32`), 'F32', round);
      const [a, b] = [join(work, `out-${dtype}`), join(work, `out-${dtype}-ref`)];
      await convertCheckpoint(stored, { out: a });
      await convertCheckpoint(reference, { out: b });
      for (const f of readdirSync(b).filter((n) => /\.(onnx|data)$/.test(n))) {
        assert.ok(readFileSync(join(a, f)).equals(readFileSync(join(b, f))), `${dtype}: ${f} differs`);
      }
      // and the stored values really were rounded: the graphs differ from the float32 original's
      assert.ok(!readFileSync(join(a, 'transformer.onnx.data')).equals(readFileSync(join(out, 'transformer.onnx.data'))));
      const report = await inspectPath(stored);
      assert.equal(report.convertible, true);
    }
  });

  it('a folder missing a transformer tensor: convert names it, inspect says not convertible', async () => {
    const dir = join(work, 'tiny-pixart-broken');
    cpSync(TINY, dir, { recursive: true });
    const rel = WEIGHT_FILES[0];
    const tensors = readSafetensors(join(TINY, rel));
    tensors.delete('transformer_blocks.1.attn2.to_k.weight');
    tensors.delete('proj_out.bias');
    await writeSafetensors(
      join(dir, rel),
      [...tensors].map(([name, t]) => ({ name, dtype: 'F32' as const, shape: t.shape, data: () => new Uint8Array(t.data.buffer) })),
    );
    await assert.rejects(convertCheckpoint(dir, { out: join(work, 'out-broken') }), (e: unknown) => e instanceof BadInputError && /2 required tensor\(s\) missing: transformer\.transformer_blocks\.1\.attn2\.to_k\.weight; transformer\.proj_out\.bias/.test(e.message));
    const report = await inspectPath(dir);
    assert.equal(report.convertible, false);
    assert.ok(report.warnings.some((w) => /attn2\.to_k\.weight/.test(w)), report.warnings.join('\n'));
  });

  it('a misshapen tensor is refused, naming it, before any output exists', async () => {
    const dir = join(work, 'tiny-pixart-misshapen');
    cpSync(TINY, dir, { recursive: true });
    const rel = WEIGHT_FILES[1];
    const tensors = readSafetensors(join(TINY, rel));
    const wo = tensors.get('encoder.block.0.layer.1.DenseReluDense.wo.weight')!;
    tensors.set('encoder.block.0.layer.1.DenseReluDense.wo.weight', { ...wo, shape: [...wo.shape].reverse() });
    await writeSafetensors(
      join(dir, rel),
      [...tensors].map(([name, t]) => ({ name, dtype: 'F32' as const, shape: t.shape, data: () => new Uint8Array(t.data.buffer) })),
    );
    const out = join(work, 'out-misshapen');
    await assert.rejects(convertCheckpoint(dir, { out }), (e: unknown) => e instanceof BadInputError && /1 tensor\(s\) with the wrong shape: text_encoder\.encoder\.block\.0\.layer\.1\.DenseReluDense\.wo\.weight is \[64,32\], expected \[32,64\]/.test(e.message));
    assert.equal(readdirSync(work).includes('out-misshapen'), false);
  });

  it('a T5 saved with only encoder.embed_tokens (tie broken) converts to the same text encoder weights', async () => {
    const dir = join(work, 'tiny-pixart-untied');
    cpSync(TINY, dir, { recursive: true });
    const rel = WEIGHT_FILES[1];
    const tensors = readSafetensors(join(TINY, rel));
    tensors.set('encoder.embed_tokens.weight', tensors.get('shared.weight')!);
    tensors.delete('shared.weight');
    await writeSafetensors(
      join(dir, rel),
      [...tensors].map(([name, t]) => ({ name, dtype: 'F32' as const, shape: t.shape, data: () => new Uint8Array(t.data.buffer) })),
    );
    const a = join(work, 'out-tied');
    const b = join(work, 'out-untied');
    await convertCheckpoint(TINY, { out: a });
    await convertCheckpoint(dir, { out: b });
    assert.ok(readFileSync(join(a, 'text_encoder.onnx.data')).equals(readFileSync(join(b, 'text_encoder.onnx.data'))));
    assert.deepEqual((await inspectPath(dir)).warnings.filter((w) => /embed_tokens|unused/.test(w)), []);
  });

  it("released folders' caption_projection.y_embedding (unused by diffusers) is ignored, any other extra tensor is reported", async () => {
    const dir = join(work, 'tiny-pixart-extra');
    cpSync(TINY, dir, { recursive: true });
    const rel = WEIGHT_FILES[0];
    const tensors = readSafetensors(join(TINY, rel));
    tensors.set('caption_projection.y_embedding', { shape: [120, 32], dtype: 'F32', data: new Float32Array(120 * 32) });
    tensors.set('transformer_blocks.0.attn1.extra', { shape: [2], dtype: 'F32', data: new Float32Array(2) });
    await writeSafetensors(
      join(dir, rel),
      [...tensors].map(([name, t]) => ({ name, dtype: 'F32' as const, shape: t.shape, data: () => new Uint8Array(t.data.buffer) })),
    );
    const report = await inspectPath(dir);
    assert.equal(report.convertible, true);
    const text = report.warnings.join('\n');
    assert.match(text, /transformer\.transformer_blocks\.0\.attn1\.extra/);
    assert.doesNotMatch(text, /y_embedding/);
  });

  it('a transformer config onestep does not build is refused naming transformer/config.json', async () => {
    const dir = join(work, 'tiny-pixart-zero');
    cpSync(TINY, dir, { recursive: true });
    const cfgPath = join(dir, 'transformer', 'config.json');
    writeFileSync(cfgPath, JSON.stringify({ ...JSON.parse(readFileSync(cfgPath, 'utf8')), norm_type: 'ada_norm_zero' }));
    await assert.rejects(convertCheckpoint(dir, { out: join(work, 'out-zero') }), (e: unknown) => e instanceof BadInputError && e.message.startsWith(cfgPath) && /norm_type/.test(e.message));
    assert.equal((await inspectPath(dir)).convertible, false);
  });

  it('a PEFT LoRA on the transformer: convert --lora gives the graphs of the folder lora merge writes', async () => {
    const rand = signedRandom(5);
    const lora: [string, number[]][] = [];
    for (const t of ['transformer_blocks.0.attn1.to_q', 'transformer_blocks.1.attn2.to_v', 'transformer_blocks.1.ff.net.2']) {
      const w = readSafetensors(join(TINY, WEIGHT_FILES[0])).get(`${t}.weight`)!;
      lora.push([`transformer.${t}.lora_A.weight`, [4, w.shape[1]]], [`transformer.${t}.lora_B.weight`, [w.shape[0], 4]]);
    }
    const loraPath = join(work, 'pixart-lora.safetensors');
    await writeSafetensors(
      loraPath,
      lora.map(([name, shape]) => {
        const data = Float32Array.from({ length: shape[0] * shape[1] }, () => rand() * 0.1);
        return { name, dtype: 'F32' as const, shape, data: () => new Uint8Array(data.buffer) };
      }),
    );
    const viaConvert = join(work, 'out-lora');
    await convertCheckpoint(TINY, { out: viaConvert, loras: [{ path: loraPath, scale: 0.7 }] });
    const merged = join(work, 'tiny-pixart-merged');
    const res = await mergeLorasIntoCheckpoint({ base: TINY, loras: [{ path: loraPath, scale: 0.7 }], out: merged });
    assert.equal(res.family, 'pixart-alpha');
    const viaMerge = join(work, 'out-merged');
    await convertCheckpoint(merged, { out: viaMerge });
    for (const f of ['transformer.onnx.data', 'text_encoder.onnx.data']) assert.ok(readFileSync(join(viaConvert, f)).equals(readFileSync(join(viaMerge, f))), f);
    assert.ok(!readFileSync(join(viaConvert, 'transformer.onnx.data')).equals(readFileSync(join(out, 'transformer.onnx.data'))), 'the LoRA changed the transformer');
  });

  it('a PixArtSigmaPipeline folder tokenizes to 300 tokens (its max_sequence_length)', async () => {
    const dir = join(work, 'tiny-pixart-sigma');
    cpSync(TINY, dir, { recursive: true });
    const indexPath = join(dir, 'model_index.json');
    writeFileSync(indexPath, JSON.stringify({ ...JSON.parse(readFileSync(indexPath, 'utf8')), _class_name: 'PixArtSigmaPipeline' }));
    const sigma = join(work, 'out-sigma');
    await convertCheckpoint(dir, { out: sigma });
    const m: ModelManifest = JSON.parse(readFileSync(join(sigma, 'model.json'), 'utf8'));
    assert.equal(m.conditioning[0].max_length, 300);
    const tok = await T5Tokenizer.load(join(sigma, 'tokenizer'));
    assert.equal(tok.encode('a photo of a cat').ids.length, 300);
  });
});
