import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { copyFile, cp, mkdir, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { FIXTURES, readSafetensors, type Tensor } from '../support/fixtures.js';
import { canonicalToLdm } from '../../src/checkpoint/keymap-sd.js';
import { BadInputError, OnestepError } from '../../src/errors.js';
import { mergeLorasIntoCheckpoint } from '../../src/lora/merge-checkpoint.js';
import { maxRelDiff, rawSafetensors, seeded, tempDir, tensor, writeF32File } from './helpers.js';

const LORAS = join(FIXTURES, 'loras');
const FOLDER = join(FIXTURES, 'tiny-sd15');
const SINGLE = join(FIXTURES, 'tiny-sd15.safetensors');
const lora = (style: string) => join(LORAS, `tiny-sd15-${style}.safetensors`);
const golden = (style: string) => readSafetensors(join(LORAS, `golden-fused-tiny-sd15-${style}.safetensors`));

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => relative(dir, join(d.parentPath, d.name)))
    .sort();
}

/** canonical name -> [file, key] in a diffusers folder (`unet.x` lives in unet/<weights>.safetensors as `x`). */
function folderLocation(dir: string, canonical: string): [string, string] {
  const [component, ...rest] = canonical.split('.');
  const file = readdirSync(join(dir, component)).find((f) => f.endsWith('.safetensors'))!;
  return [join(dir, component, file), rest.join('.')];
}

describe('lora/merge-checkpoint', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => (tmp = await tempDir()));
  afterEach(() => tmp.cleanup());

  for (const style of ['kohya', 'peft']) {
    it(`folder + ${style} at 0.7, --dtype fp32: goldens within 1e-5 x max|w|, everything else equal, other files copied`, async () => {
      const out = join(tmp.dir, 'merged');
      const result = await mergeLorasIntoCheckpoint({ base: FOLDER, loras: [{ path: lora(style), scale: 0.7 }], out, dtype: 'F32' });
      assert.equal(result.layout, 'diffusers');
      assert.deepEqual(filesUnder(out), filesUnder(FOLDER));
      for (const f of filesUnder(FOLDER).filter((f) => !f.endsWith('.safetensors'))) {
        assert.ok(readFileSync(join(out, f)).equals(readFileSync(join(FOLDER, f))), f);
      }
      const expected = golden(style);
      assert.deepEqual(result.report.changedWeights, [...expected.keys()].sort());
      const byFile = new Map<string, Map<string, Tensor>>();
      const read = (f: string) => byFile.get(f) ?? byFile.set(f, readSafetensors(f)).get(f)!;
      for (const [name, t] of expected) {
        const [file, key] = folderLocation(out, name);
        const got = read(file).get(key)!;
        assert.equal(got.dtype, 'F32');
        assert.ok(maxRelDiff(got.data, t.data) <= 1e-5, name);
      }
      for (const component of ['unet', 'vae', 'text_encoder']) {
        const [baseFile] = folderLocation(FOLDER, `${component}.x`);
        const [outFile] = folderLocation(out, `${component}.x`);
        const before = rawSafetensors(baseFile);
        const after = rawSafetensors(outFile);
        assert.deepEqual(after.names, before.names, 'key order kept');
        assert.deepEqual(after.metadata, before.metadata);
        const baseValues = read(baseFile);
        for (const [key, t] of read(outFile)) {
          if (expected.has(`${component}.${key}`)) continue;
          assert.deepEqual(t.data, baseValues.get(key)!.data, `${component}.${key}`);
        }
      }
    });
  }

  it('folder, dtype kept (F16): untouched tensors bit-identical, merged ones the goldens rounded to F16', async () => {
    const out = join(tmp.dir, 'merged');
    await mergeLorasIntoCheckpoint({ base: FOLDER, loras: [{ path: lora('kohya'), scale: 0.7 }], out });
    const expected = golden('kohya');
    for (const component of ['unet', 'vae', 'text_encoder']) {
      const [baseFile] = folderLocation(FOLDER, `${component}.x`);
      const [outFile] = folderLocation(out, `${component}.x`);
      const before = rawSafetensors(baseFile);
      const after = rawSafetensors(outFile);
      const values = readSafetensors(outFile);
      for (const key of before.names) {
        assert.equal(after.dtypes.get(key), before.dtypes.get(key));
        const g = expected.get(`${component}.${key}`);
        if (g) assert.ok(maxRelDiff(values.get(key)!.data, g.data) <= 1e-3, key);
        else assert.ok(after.raw.get(key)!.equals(before.raw.get(key)!), `${component}.${key} not bit-identical`);
      }
    }
  });

  for (const style of ['kohya', 'peft']) {
    it(`single file + ${style} at 0.7, --dtype fp32: same goldens via canonical names; keys, order, metadata kept`, async () => {
      const out = join(tmp.dir, 'merged.safetensors');
      const result = await mergeLorasIntoCheckpoint({ base: SINGLE, loras: [{ path: lora(style), scale: 0.7 }], out, dtype: 'F32' });
      assert.equal(result.layout, 'single-file');
      const before = rawSafetensors(SINGLE);
      const after = rawSafetensors(out);
      assert.deepEqual(after.names, before.names);
      assert.deepEqual(after.metadata, before.metadata);
      const got = readSafetensors(out);
      const base = readSafetensors(SINGLE);
      const expected = golden(style);
      const changedKeys = new Set<string>();
      for (const [name, t] of expected) {
        const key = canonicalToLdm(name)!;
        changedKeys.add(key);
        assert.ok(maxRelDiff(got.get(key)!.data, t.data) <= 1e-5, `${name} (${key})`);
      }
      assert.equal(changedKeys.size, expected.size);
      for (const key of before.names) {
        assert.equal(after.dtypes.get(key), before.dtypes.get(key) === 'I64' ? 'I64' : 'F32', key);
        if (!changedKeys.has(key) && base.has(key)) assert.deepEqual(got.get(key)!.data, base.get(key)!.data, key);
      }
    });
  }

  it('single file, dtype kept: untouched tensors bit-identical', async () => {
    const out = join(tmp.dir, 'merged.safetensors');
    await mergeLorasIntoCheckpoint({ base: SINGLE, loras: [{ path: lora('peft'), scale: 0.7 }], out });
    const changed = new Set([...golden('peft').keys()].map((n) => canonicalToLdm(n)!));
    const before = rawSafetensors(SINGLE);
    const after = rawSafetensors(out);
    let identical = 0;
    for (const key of before.names) {
      const same = after.raw.get(key)!.equals(before.raw.get(key)!);
      assert.equal(same, !changed.has(key), key);
      if (same) identical++;
    }
    assert.equal(identical, before.names.length - 37);
  });

  it('SD 2.x single file: q/k/v LoRAs land in the right rows of OpenCLIP in_proj_weight (same result as the folder)', async () => {
    const r = seeded(21);
    const tensors: Record<string, ReturnType<typeof tensor>> = {};
    for (const p of ['q', 'k', 'v', 'out']) {
      tensors[`lora_te_text_model_encoder_layers_1_self_attn_${p}_proj.lora_down.weight`] = tensor(r, 2, 32);
      tensors[`lora_te_text_model_encoder_layers_1_self_attn_${p}_proj.lora_up.weight`] = tensor(r, 32, 2);
    }
    tensors['lora_unet_mid_block_attentions_0_proj_in.lora_down.weight'] = tensor(r, 2, 64);
    tensors['lora_unet_mid_block_attentions_0_proj_in.lora_up.weight'] = tensor(r, 64, 2);
    const path = await writeF32File(join(tmp.dir, 'te.safetensors'), tensors);
    const single = join(tmp.dir, 'single.safetensors');
    const folder = join(tmp.dir, 'folder');
    await mergeLorasIntoCheckpoint({ base: join(FIXTURES, 'tiny-sd21.safetensors'), loras: [{ path, scale: 0.8 }], out: single, dtype: 'F32' });
    await mergeLorasIntoCheckpoint({ base: join(FIXTURES, 'tiny-sd21'), loras: [{ path, scale: 0.8 }], out: folder, dtype: 'F32' });
    const s = readSafetensors(single);
    const te = readSafetensors(join(folder, 'text_encoder', 'model.safetensors'));
    const unet = readSafetensors(join(folder, 'unet', 'diffusion_pytorch_model.safetensors'));
    const before = readSafetensors(join(FIXTURES, 'tiny-sd21', 'text_encoder', 'model.safetensors'));
    const packed = s.get('cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight')!.data;
    ['q', 'k', 'v'].forEach((p, i) => {
      const key = `text_model.encoder.layers.1.self_attn.${p}_proj.weight`;
      assert.ok(maxRelDiff(te.get(key)!.data, before.get(key)!.data) > 1e-3, `${p} changed`);
      assert.deepEqual(packed.slice(i * 1024, (i + 1) * 1024), te.get(key)!.data, p);
    });
    assert.deepEqual(s.get('cond_stage_model.model.transformer.resblocks.1.attn.out_proj.weight')!.data, te.get('text_model.encoder.layers.1.self_attn.out_proj.weight')!.data);
    const proj = s.get('model.diffusion_model.middle_block.1.proj_in.weight')!;
    assert.deepEqual(proj.data, unet.get('mid_block.attentions.0.proj_in.weight')!.data);
  });

  describe('refusals', () => {
    it('an existing output without --force; with --force it is replaced', async () => {
      const out = join(tmp.dir, 'exists.safetensors');
      await writeFile(out, 'old');
      const opts = { base: SINGLE, loras: [{ path: lora('peft'), scale: 1 }], out };
      await assert.rejects(mergeLorasIntoCheckpoint(opts), (e: unknown) => e instanceof OnestepError && /already exists/.test(e.message) && /--force/.test(e.hint ?? ''));
      assert.equal(readFileSync(out, 'utf8'), 'old');
      await mergeLorasIntoCheckpoint({ ...opts, force: true });
      assert.equal(rawSafetensors(out).names.length, rawSafetensors(SINGLE).names.length);
    });

    it('two concurrent merges to one output without --force: one writes it, the other fails and replaces nothing', async () => {
      for (const [base, name] of [[SINGLE, 'same.safetensors'], [FOLDER, 'same-folder']] as const) {
        const out = join(tmp.dir, name);
        const opts = { base, loras: [{ path: lora('peft'), scale: 1 }], out };
        const results = await Promise.allSettled([mergeLorasIntoCheckpoint(opts), mergeLorasIntoCheckpoint({ ...opts, loras: [{ path: lora('peft'), scale: 0.5 }] })]);
        const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
        assert.equal(failed.length, 1, `${name}: ${results.map((r) => r.status).join(', ')}`);
        assert.ok(failed[0].reason instanceof OnestepError, String(failed[0].reason));
        assert.match(failed[0].reason.message, /appeared while it was being/);
        assert.deepEqual(readdirSync(tmp.dir).filter((n) => n.includes(name)), [name], "no temp left");
      }
    });

    it('an output that is an input, inside the base folder or holding it, even with --force', async () => {
      // On copies: a broken check must not be able to damage the fixtures.
      const folder = join(tmp.dir, 'base');
      const single = join(tmp.dir, 'base.safetensors');
      const peft = join(tmp.dir, 'peft.safetensors');
      await cp(FOLDER, folder, { recursive: true });
      await copyFile(SINGLE, single);
      await copyFile(lora('peft'), peft);
      for (const [base, out] of [
        [single, single],
        [single, peft],
        [folder, folder],
        [folder, join(folder, 'unet', 'x')],
        [folder, tmp.dir],
      ]) {
        await assert.rejects(
          mergeLorasIntoCheckpoint({ base, loras: [{ path: peft, scale: 1 }], out, force: true }),
          (e: unknown) => e instanceof OnestepError && /would overwrite the input/.test(e.message),
          `${base} -> ${out}`,
        );
      }
      assert.ok(readFileSync(single).equals(readFileSync(SINGLE)));
      assert.deepEqual(filesUnder(folder), filesUnder(FOLDER));
    });

    it('a wrong-family LoRA: fails and leaves nothing behind', async () => {
      const r = seeded(3);
      const bad = await writeF32File(join(tmp.dir, 'sdxl-lora.safetensors'), {
        'lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight': tensor(r, 4, 1280),
        'lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight': tensor(r, 5120, 4),
      });
      await mkdir(join(tmp.dir, 'outs'));
      for (const [base, out] of [
        [FOLDER, join(tmp.dir, 'outs', 'folder')],
        [SINGLE, join(tmp.dir, 'outs', 'single.safetensors')],
      ]) {
        await assert.rejects(mergeLorasIntoCheckpoint({ base, loras: [{ path: bad, scale: 1 }], out }), (e: unknown) => e instanceof BadInputError && /sdxl/.test(e.message));
        assert.ok(!existsSync(out));
      }
      assert.deepEqual(readdirSync(join(tmp.dir, 'outs')), []);
    });
  });

  describe('PyTorch inputs (read without executing them)', () => {
    const PT = join(FIXTURES, 'pytorch');
    const sameTensors = (a: string, b: string) => {
      const x = rawSafetensors(a);
      const y = rawSafetensors(b);
      assert.deepEqual([...x.names].sort(), [...y.names].sort());
      for (const n of x.names) assert.ok(x.raw.get(n)!.equals(y.raw.get(n)!) && x.dtypes.get(n) === y.dtypes.get(n), n);
    };

    it('a kohya LoRA saved as .pt merges to the same bytes as the .safetensors LoRA', async () => {
      const fromPt = join(tmp.dir, 'pt.safetensors');
      const fromSt = join(tmp.dir, 'st.safetensors');
      await mergeLorasIntoCheckpoint({ base: SINGLE, loras: [{ path: join(PT, 'tiny-sd15-kohya.pt'), scale: 0.7 }], out: fromPt });
      await mergeLorasIntoCheckpoint({ base: SINGLE, loras: [{ path: lora('kohya'), scale: 0.7 }], out: fromSt });
      assert.ok(readFileSync(fromPt).equals(readFileSync(fromSt)));
    });

    it('a .ckpt base gives the tensors the .safetensors base gives; a PyTorch output name is refused', async () => {
      const fromCkpt = join(tmp.dir, 'ckpt.safetensors');
      const fromSt = join(tmp.dir, 'st.safetensors');
      await mergeLorasIntoCheckpoint({ base: join(PT, 'tiny-sd15.ckpt'), loras: [{ path: lora('kohya'), scale: 0.7 }], out: fromCkpt });
      await mergeLorasIntoCheckpoint({ base: SINGLE, loras: [{ path: lora('kohya'), scale: 0.7 }], out: fromSt });
      sameTensors(fromCkpt, fromSt);
      await assert.rejects(
        mergeLorasIntoCheckpoint({ base: join(PT, 'tiny-sd15.ckpt'), loras: [{ path: lora('kohya'), scale: 0.7 }], out: join(tmp.dir, 'x.ckpt') }),
        (e: unknown) => e instanceof OnestepError && /written as safetensors/.test(e.message),
      );
    });

    it('a diffusers folder whose unet is a .bin: written as diffusion_pytorch_model.safetensors, same tensors as from the safetensors folder', async () => {
      const base = join(tmp.dir, 'bin-folder');
      await cp(FOLDER, base, { recursive: true });
      const { rm } = await import('node:fs/promises');
      await rm(join(base, 'unet', 'diffusion_pytorch_model.safetensors'));
      await copyFile(join(PT, 'tiny-sd15-bin-unet', 'diffusion_pytorch_model.bin'), join(base, 'unet', 'diffusion_pytorch_model.bin'));
      const outBin = join(tmp.dir, 'merged-bin');
      const outSt = join(tmp.dir, 'merged-st');
      const r = await mergeLorasIntoCheckpoint({ base, loras: [{ path: lora('kohya'), scale: 0.7 }], out: outBin, dtype: 'F32' });
      await mergeLorasIntoCheckpoint({ base: FOLDER, loras: [{ path: lora('kohya'), scale: 0.7 }], out: outSt, dtype: 'F32' });
      assert.deepEqual(filesUnder(outBin), filesUnder(outSt));
      assert.ok(r.notes.includes(`${join('unet', 'diffusion_pytorch_model.bin')} (PyTorch) written as ${join('unet', 'diffusion_pytorch_model.safetensors')}`), r.notes.join('\n'));
      for (const c of ['unet', 'vae', 'text_encoder']) {
        const [a] = folderLocation(outBin, `${c}.x`);
        const [b] = folderLocation(outSt, `${c}.x`);
        sameTensors(a, b);
      }
    });
  });
});
