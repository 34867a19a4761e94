import assert from 'node:assert/strict';
import { copyFile, cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OnestepError } from '../../src/errors.js';
import { openCheckpoint, type Checkpoint } from '../../src/checkpoint/open.js';
import { MappedSource } from '../../src/checkpoint/sources.js';
import { rewriteSafetensors } from './helpers.js';
import type { ClipTextConfig } from '../../src/checkpoint/configs.js';

/** The CLIP text encoder config of an SD checkpoint (configs.text_encoder is T5's in PixArt). */
const clip = (c: Checkpoint) => c.configs.text_encoder as ClipTextConfig | undefined;

const FIX = 'test/fixtures';

async function withCheckpoint<T>(path: string, fn: (c: Checkpoint) => Promise<T>, opts?: Parameters<typeof openCheckpoint>[1]): Promise<T> {
  const c = await openCheckpoint(path, opts);
  try {
    return await fn(c);
  } finally {
    await c.weights.close();
  }
}

async function expectError(path: string, pattern: RegExp): Promise<OnestepError> {
  try {
    const c = await openCheckpoint(path);
    await c.weights.close();
  } catch (e) {
    assert.ok(e instanceof OnestepError, `expected an OnestepError, got ${String(e)}`);
    assert.match(e.message, pattern);
    return e;
  }
  assert.fail(`${path} opened without error`);
}

describe('checkpoint/open', () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'onestep-open-'));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  for (const model of ['tiny-sd15', 'tiny-sd21'] as const) {
    it(`${model}: the single file gives the folder's canonical tensors, value for value`, async () => {
      const folder = await openCheckpoint(join(FIX, model));
      const file = await openCheckpoint(join(FIX, `${model}.safetensors`));
      try {
        const names = folder.weights.names();
        assert.ok(names.length > 900);
        const extra = file.weights.names().filter((n) => !folder.weights.has(n));
        // SD 2.x: OpenCLIP's text_projection is mapped (transposed) but CLIPTextModel has no such weight, and the
        // file's last block (unused: SD 2.x conditions on the penultimate layer) is not in diffusers' folder.
        const sd2Extra = ['text_encoder.text_projection.weight', ...file.weights.names().filter((n) => n.startsWith('text_encoder.text_model.encoder.layers.2.'))];
        assert.deepEqual(extra.sort(), model === 'tiny-sd21' ? sd2Extra.sort() : []);
        let values = 0;
        for (const name of names) {
          assert.ok(file.weights.has(name), `single file lacks ${name}`);
          const a = folder.weights.meta(name);
          const b = file.weights.meta(name);
          assert.deepEqual(b.shape, a.shape, name);
          const fa = await folder.weights.readF32(name);
          const fb = await file.weights.readF32(name);
          assert.equal(fb.length, fa.length, name);
          assert.ok(Buffer.from(fa.buffer, fa.byteOffset, fa.byteLength).equals(Buffer.from(fb.buffer, fb.byteOffset, fb.byteLength)), `values differ: ${name}`);
          values += fa.length;
        }
        assert.ok(values > 2_000_000);
      } finally {
        await folder.weights.close();
        await file.weights.close();
      }
    });
  }

  it('tiny-sd15 folder: family, configs, tokenizer, nothing unmapped', async () => {
    await withCheckpoint(join(FIX, 'tiny-sd15'), async (c) => {
      assert.equal(c.layout, 'diffusers');
      assert.equal(c.family.id, 'sd1');
      assert.deepEqual(c.configs.unet?.attention_head_dim, [8, 8, 8, 8]);
      assert.equal(clip(c)?.num_attention_heads, 4);
      assert.equal(clip(c)?.hidden_act, 'quick_gelu');
      assert.equal(c.scheduler.prediction_type, 'epsilon');
      assert.equal(c.scheduler.beta_schedule, 'scaled_linear');
      assert.equal(c.tokenizerDirs.tokenizer, join(FIX, 'tiny-sd15', 'tokenizer'));
      assert.deepEqual(c.unmappedKeys, []);
      assert.equal(c.weights.meta('unet.conv_in.weight').dtype, 'F16');
    });
  });

  it('tiny-sd21 folder: sd2, v_prediction from the scheduler config, overridable', async () => {
    await withCheckpoint(join(FIX, 'tiny-sd21'), async (c) => {
      assert.equal(c.family.id, 'sd2');
      assert.equal(c.scheduler.prediction_type, 'v_prediction');
      assert.deepEqual(c.configs.unet?.attention_head_dim, [1, 2, 4, 4]);
      assert.equal(c.configs.unet?.use_linear_projection, true);
      assert.equal(clip(c)?.hidden_act, 'gelu');
      assert.equal(clip(c)?.num_hidden_layers, 2);
    });
    await withCheckpoint(join(FIX, 'tiny-sd21'), async (c) => assert.equal(c.scheduler.prediction_type, 'epsilon'), {
      predictionType: 'epsilon',
    });
  });

  it('single files: family, notes, nothing unmapped, the file\'s own keys recoverable', async () => {
    await withCheckpoint(join(FIX, 'tiny-sd15.safetensors'), async (c) => {
      assert.equal(c.layout, 'single-file');
      assert.equal(c.family.id, 'sd1');
      assert.equal(c.tokenizerDirs.tokenizer, join(FIX, 'tiny-sd15', 'tokenizer')); // the same-named folder beside the file
      assert.deepEqual(c.unmappedKeys, []);
      assert.equal(c.scheduler.prediction_type, 'epsilon');
      assert.ok(c.weights instanceof MappedSource);
      const src = (c.weights as MappedSource).sourceOf('vae.decoder.mid_block.attentions.0.to_q.weight');
      assert.equal(src.key, 'first_stage_model.decoder.mid.attn_1.q.weight');
      assert.deepEqual(src.storedShape, [32, 32, 1, 1]);
      assert.deepEqual(c.weights.meta('vae.decoder.mid_block.attentions.0.to_q.weight').shape, [32, 32]);
    });
    await withCheckpoint(
      join(FIX, 'tiny-sd21.safetensors'),
      async (c) => {
        assert.equal(c.family.id, 'sd2');
        assert.deepEqual(c.unmappedKeys, []);
        assert.equal(c.scheduler.prediction_type, 'v_prediction');
        assert.equal(clip(c)?.num_hidden_layers, 3);
        assert.equal(c.textEncoderOutput?.layer, -2);
        assert.ok(c.notes.some((n) => /penultimate/.test(n)));
        const q = (c.weights as MappedSource).sourceOf('text_encoder.text_model.encoder.layers.1.self_attn.k_proj.bias');
        assert.equal(q.key, 'cond_stage_model.model.transformer.resblocks.1.attn.in_proj_bias');
        assert.deepEqual(q.rows, [32, 64]);
      },
      { predictionType: 'v_prediction' },
    );
  });

  it('reads configs shapes cannot tell from a diffusers folder beside the file or named with configDir', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onestep-configdir-'));
    try {
      const lone = join(dir, 'model.safetensors');
      await copyFile(join(FIX, 'tiny-sd21.safetensors'), lone);
      await withCheckpoint(lone, async (c) => {
        assert.deepEqual(c.configs.unet?.attention_head_dim, [1, 1, 1, 1]); // SD 2.x rule: channels / 64, at least 1
        assert.equal(clip(c)?.num_attention_heads, 1);
        assert.equal(c.scheduler.prediction_type, 'epsilon');
        assert.equal(c.tokenizerDirs.tokenizer, undefined);
      });
      const check = async (c: Checkpoint) => {
        assert.deepEqual(c.configs.unet?.attention_head_dim, [1, 2, 4, 4]);
        assert.equal(clip(c)?.num_attention_heads, 2);
        assert.equal(clip(c)?.num_hidden_layers, 3); // the file's whole tower; the config's 2 layers = layer -2
        assert.equal(c.textEncoderOutput?.layer, -2);
        assert.equal(c.scheduler.prediction_type, 'v_prediction');
        assert.match(c.tokenizerDirs.tokenizer ?? '', /tokenizer$/);
        assert.ok(c.notes.some((n) => /override the ones inferred from shapes/.test(n)));
      };
      await withCheckpoint(lone, check, { configDir: join(FIX, 'tiny-sd21') });
      await cp(join(FIX, 'tiny-sd21'), join(dir, 'model'), { recursive: true });
      await withCheckpoint(lone, check);
      // An explicit prediction type still wins over the folder's scheduler.
      await withCheckpoint(lone, async (c) => assert.equal(c.scheduler.prediction_type, 'epsilon'), { predictionType: 'epsilon' });
      await assert.rejects(openCheckpoint(lone, { configDir: join(dir, 'nope') }), /nope: no such file or folder/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('tiny-pixart folder: opened as PixArt-α (transformer, T5 encoder, VAE; the scheduler from its config)', async () => {
    await withCheckpoint(join(FIX, 'tiny-pixart'), async (c) => {
      assert.equal(c.family.id, 'pixart-alpha');
      assert.equal(c.layout, 'diffusers');
      const comps = new Set(c.weights.names().map((n) => n.slice(0, n.indexOf('.'))));
      assert.deepEqual([...comps].sort(), ['text_encoder', 'transformer', 'vae']);
      assert.deepEqual(Object.keys(c.configs).sort(), ['text_encoder', 'transformer', 'vae']);
      assert.equal(c.scheduler.beta_schedule, 'linear');
      assert.deepEqual(c.unmappedKeys, []);
      assert.ok(c.tokenizerDirs.tokenizer?.endsWith('tokenizer'));
    });
  });

  it('refuses LoRA files with a pointer to lora merge / --lora', async () => {
    for (const f of ['tiny-sd15-kohya.safetensors', 'tiny-sd15-peft.safetensors']) {
      const e = await expectError(join(FIX, 'loras', f), /is a LoRA/);
      assert.match(e.hint ?? '', /onestep lora merge/);
      assert.match(e.hint ?? '', /--lora/);
    }
  });

  it('refuses unknown key sets, naming a few keys', async () => {
    await expectError(join(FIX, 'goldens', 'tiny-sd15.safetensors'), /no tensor names onestep recognizes.*onestep\.alpha_bar/);
  });

  it('refuses an SGM file without OpenCLIP bigG, saying what is missing', async () => {
    const path = join(tmp, 'sdxl.safetensors');
    await rewriteSafetensors(join(FIX, 'tiny-sd15.safetensors'), path, {
      rename: (k) => k.replace(/^cond_stage_model\.transformer\./, 'conditioner.embedders.0.transformer.'),
    });
    await expectError(path, /sdxl\.safetensors: is an SDXL \(SGM layout\) checkpoint without OpenCLIP bigG's text_projection/);
  });

  it('refuses damaged pickle files, truncated files and folders without model_index.json', async () => {
    const ckpt = join(tmp, 'model.ckpt');
    await writeFile(ckpt, Buffer.from('PK\x03\x04 not a zip'));
    await expectError(ckpt, /model\.ckpt.*pickle/i);
    // A file is read as what its bytes are: safetensors named .ckpt is safetensors.
    await copyFile(join(FIX, 'tiny-sd15.safetensors'), ckpt);
    await (await openCheckpoint(ckpt)).weights.close();

    const truncated = join(tmp, 'truncated.safetensors');
    const bytes = await readFile(join(FIX, 'tiny-sd15.safetensors'));
    await writeFile(truncated, bytes.subarray(0, bytes.length - 1000));
    await expectError(truncated, /truncated\.safetensors/);

    await expectError(join(FIX, 'tiny-sd15', 'unet'), /model_index\.json/);
    await expectError(join(tmp, 'nope.safetensors'), /no such file/);
  });

  it('names missing and misshapen tensors', async () => {
    const missing = join(tmp, 'missing.safetensors');
    await rewriteSafetensors(join(FIX, 'tiny-sd15.safetensors'), missing, {
      drop: (k) => k === 'model.diffusion_model.middle_block.1.proj_in.weight' || k === 'first_stage_model.decoder.up.0.block.1.conv2.bias',
    });
    const e = await expectError(missing, /2 required tensor\(s\) missing: unet\.mid_block\.attentions\.0\.proj_in\.weight; vae\.decoder\.up_blocks\.3\.resnets\.1\.conv2\.bias/);
    assert.match(e.message, /missing\.safetensors: /);

    const misshapen = join(tmp, 'misshapen.safetensors');
    await rewriteSafetensors(join(FIX, 'tiny-sd15.safetensors'), misshapen, {
      reshape: (k) => (k === 'first_stage_model.decoder.conv_in.bias' ? [2, 16] : undefined),
    });
    await expectError(misshapen, /wrong shape: vae\.decoder\.conv_in\.bias is \[2,16\], expected \[32\]/);
  });

  it('prefers EMA weights when every UNet tensor has one, and says so', async () => {
    const path = join(tmp, 'ema.safetensors');
    const emaOf = (k: string) => 'model_ema.' + k.split('.').slice(1).join('');
    // EMA copies hold the plain weights negated, so the test sees which ones were read.
    await rewriteSafetensors(join(FIX, 'tiny-sd15.safetensors'), path, {
      extra: (k) => (k.startsWith('model.diffusion_model.') ? { name: emaOf(k), negate: true } : undefined),
      extraPlain: [{ name: 'model_ema.decay', shape: [], values: [0.9999] }],
    });
    await withCheckpoint(path, async (c) => {
      assert.ok(c.notes.includes('EMA weights present and used (model_ema.*)'));
      assert.deepEqual(c.unmappedKeys, []);
      const plain = await openCheckpoint(join(FIX, 'tiny-sd15.safetensors'));
      try {
        for (const name of ['unet.conv_in.weight', 'unet.up_blocks.0.upsamplers.0.conv.weight', 'vae.decoder.conv_in.weight']) {
          const a = await plain.weights.readF32(name);
          const b = await c.weights.readF32(name);
          const sign = name.startsWith('unet.') ? -1 : 1;
          assert.deepEqual([...b], [...a].map((v) => sign * v), name);
        }
      } finally {
        await plain.weights.close();
      }
    });
  });

  it('honours the onestep.config metadata for what shapes cannot tell', async () => {
    const path = join(tmp, 'sd21-meta.safetensors');
    const config = { unet: { attention_head_dim: [1, 2, 4, 4], sample_size: 8 }, text_encoder: { num_attention_heads: 2 } };
    await rewriteSafetensors(join(FIX, 'tiny-sd21.safetensors'), path, { metadata: { 'onestep.config': JSON.stringify(config) } });
    const folder = await openCheckpoint(join(FIX, 'tiny-sd21'), { predictionType: 'epsilon' });
    try {
      await withCheckpoint(path, async (c) => {
        assert.deepEqual(c.configs.unet, folder.configs.unet);
        // The file holds the 3-block tower; diffusers' folder keeps the 2 layers SD 2.x uses (hidden_states[-2] of 3).
        assert.deepEqual({ ...clip(c), num_hidden_layers: 2 }, clip(folder));
        assert.equal(c.textEncoderOutput?.layer, -2);
        assert.deepEqual({ ...c.configs.vae, sample_size: 0 }, { ...folder.configs.vae, sample_size: 0 });
        assert.deepEqual(c.scheduler, folder.scheduler);
        assert.ok(c.notes.some((n) => /onestep\.config/.test(n)));
      });
    } finally {
      await folder.weights.close();
    }
    const bad = join(tmp, 'bad-meta.safetensors');
    await rewriteSafetensors(join(FIX, 'tiny-sd21.safetensors'), bad, { metadata: { 'onestep.config': '{not json' } });
    await expectError(bad, /onestep\.config.*not valid JSON/);
  });

  it('reads legacy diffusers VAE attention names (query/key/value/proj_attn) as the current ones', async () => {
    const dir = join(tmp, 'legacy-sd15');
    await cp(join(FIX, 'tiny-sd15'), dir, { recursive: true });
    const vaeFile = join(dir, 'vae', 'diffusion_pytorch_model.safetensors');
    const renamed = join(tmp, 'legacy-vae.safetensors');
    const legacy = { to_q: 'query', to_k: 'key', to_v: 'value', 'to_out.0': 'proj_attn' } as Record<string, string>;
    await rewriteSafetensors(vaeFile, renamed, {
      rename: (k) => k.replace(/(attentions\.0\.)(to_q|to_k|to_v|to_out\.0)\./, (_, h: string, p: string) => `${h}${legacy[p]}.`),
    });
    await copyFile(renamed, vaeFile);
    const original = await openCheckpoint(join(FIX, 'tiny-sd15'));
    try {
      await withCheckpoint(dir, async (c) => {
        assert.deepEqual(c.weights.names(), original.weights.names());
        const name = 'vae.decoder.mid_block.attentions.0.to_out.0.weight';
        assert.deepEqual(await c.weights.readF32(name), await original.weights.readF32(name));
      });
    } finally {
      await original.weights.close();
    }
  });

  it('uses every OpenCLIP block when the metadata says the text encoder has that many layers', async () => {
    const path = join(tmp, 'sd21-all-blocks.safetensors');
    await rewriteSafetensors(join(FIX, 'tiny-sd21.safetensors'), path, {
      metadata: { 'onestep.config': JSON.stringify({ text_encoder: { num_hidden_layers: 3 } }) },
    });
    await withCheckpoint(path, async (c) => {
      assert.equal(clip(c)?.num_hidden_layers, 3);
      assert.equal(c.textEncoderOutput?.layer, -1);
      assert.ok(c.weights.has('text_encoder.text_model.encoder.layers.2.mlp.fc1.weight'));
      assert.ok(c.notes.some((n) => /all 3 OpenCLIP blocks used/.test(n)));
    });
  });
});
