import assert from 'node:assert/strict';
import { join } from 'node:path';
import { FIXTURES, folderWeights, readSafetensors } from '../support/fixtures.js';
import { BadInputError } from '../../src/errors.js';
import { guessLoraFamily } from '../../src/lora/family.js';
import { LoraFile } from '../../src/lora/parse.js';
import { LoraMergedSource, applyLoras, formatMergeReport, planLoraMerge } from '../../src/lora/merge.js';
import { maxRelDiff, scalar, seeded, tempDir, tensor, writeF32File } from './helpers.js';

const LORAS = join(FIXTURES, 'loras');
const KOHYA = join(LORAS, 'tiny-sd15-kohya.safetensors');
const PEFT = join(LORAS, 'tiny-sd15-peft.safetensors');
const golden = (style: 'kohya' | 'peft') => readSafetensors(join(LORAS, `golden-fused-tiny-sd15-${style}.safetensors`));

describe('lora/merge', () => {
  // Read once: folderWeights holds the whole (small) fixture folder in memory and hands out copies.
  let tinySd15: ReturnType<typeof folderWeights> | undefined;
  const baseWeights = () => ({ ...(tinySd15 ??= folderWeights('tiny-sd15')), close: async () => {} });
  for (const [style, path, modules] of [
    ['kohya', KOHYA, 86],
    ['peft', PEFT, 37],
  ] as const) {
    it(`merges the ${style} fixture at scale 0.7 as diffusers' fuse_lora does (goldens), leaving the rest exact`, async () => {
      const base = baseWeights();
      const merged = await LoraMergedSource.create(base, [{ path, scale: 0.7 }], { baseFamily: 'sd1' });
      try {
        const expected = golden(style);
        assert.equal(expected.size, modules);
        assert.deepEqual(merged.report.changedWeights, [...expected.keys()].sort());
        const [lora] = merged.report.loras;
        assert.equal(lora.components.reduce((n, c) => n + c.merged, 0), modules);
        assert.ok(lora.components.every((c) => c.skipped.length === 0 && c.merged === c.present));
        for (const [name, t] of expected) {
          const got = await merged.readF32(name);
          const err = maxRelDiff(got, t.data);
          assert.ok(err <= 1e-5, `${name}: relative error ${err}`);
          // The golden really moved away from the base: the test would catch a merge that does nothing.
          assert.ok(maxRelDiff(await base.readF32(name), t.data) > 1e-4, `${name} unchanged in the golden`);
        }
        for (const name of base.names()) {
          if (expected.has(name)) continue;
          assert.deepEqual(await merged.readF32(name), await base.readF32(name), name);
        }
        assert.match(formatMergeReport(merged.report), /weight tensor\(s\) changed/);
      } finally {
        await merged.close();
      }
    });
  }

  // SDXL: kohya (lora_unet_ in SGM module names, lora_te1_, lora_te2_) and PEFT (unet., text_encoder., text_encoder_2.).
  let tinySdxl: ReturnType<typeof folderWeights> | undefined;
  for (const [style, scale, modules] of [
    ['kohya', 0.8, 99],
    ['peft', 0.6, 46],
  ] as const) {
    it(`merges the SDXL ${style} fixture at scale ${scale} as diffusers' fuse_lora does (goldens), leaving the rest exact`, async () => {
      const base = { ...(tinySdxl ??= folderWeights('tiny-sdxl', ['unet', 'vae', 'text_encoder', 'text_encoder_2'])), close: async () => {} };
      const merged = await LoraMergedSource.create(base, [{ path: join(LORAS, `tiny-sdxl-${style}.safetensors`), scale }], { baseFamily: 'sdxl' });
      try {
        const expected = readSafetensors(join(LORAS, `golden-fused-tiny-sdxl-${style}.safetensors`));
        assert.equal(expected.size, modules);
        assert.deepEqual(merged.report.changedWeights, [...expected.keys()].sort());
        for (const [name, t] of expected) {
          const err = maxRelDiff(await merged.readF32(name), t.data);
          assert.ok(err <= 1e-5, `${name}: relative error ${err}`);
          assert.ok(maxRelDiff(await base.readF32(name), t.data) > 1e-4, `${name} unchanged in the golden`);
        }
        for (const name of base.names()) {
          if (!expected.has(name)) assert.deepEqual(await merged.readF32(name), await base.readF32(name), name);
        }
        const components = merged.report.loras[0].components.map((c) => c.component).sort();
        assert.deepEqual(components, ['text_encoder', 'text_encoder_2', 'unet']);
      } finally {
        await merged.close();
      }
    });
  }

  it('merges several LoRAs in one pass: the deltas add up with their own scales', async () => {
    const base = baseWeights();
    const merged = await LoraMergedSource.create(base, [
      { path: KOHYA, scale: 0.7 },
      { path: PEFT, scale: -0.35 },
    ]);
    try {
      const k = golden('kohya');
      const p = golden('peft');
      const names = new Set([...k.keys(), ...p.keys()]);
      assert.deepEqual(merged.report.changedWeights, [...names].sort());
      for (const name of names) {
        const w = await base.readF32(name);
        const expected = w.map((v, i) => v + (k.has(name) ? k.get(name)!.data[i] - v : 0) - (p.has(name) ? (p.get(name)!.data[i] - v) / 2 : 0));
        const err = maxRelDiff(await merged.readF32(name), expected);
        assert.ok(err <= 2e-5, `${name}: ${err}`);
      }
    } finally {
      await merged.close();
    }
  });

  describe('refusals (before any output)', () => {
    let tmp: Awaited<ReturnType<typeof tempDir>>;
    beforeEach(async () => (tmp = await tempDir()));
    afterEach(() => tmp.cleanup());
    const r = seeded(7);

    it('fails on unmatched keys listing the first 20 and the count; allowUnmatched skips and reports them', async () => {
      const tensors: Record<string, ReturnType<typeof tensor>> = {
        'lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight': tensor(r, 2, 32, 1, 1),
        'lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight': tensor(r, 32, 2, 1, 1),
      };
      for (let i = 0; i < 25; i++) {
        tensors[`lora_unet_down_blocks_0_nothing_${i}.lora_down.weight`] = tensor(r, 2, 32);
        tensors[`lora_unet_down_blocks_0_nothing_${i}.lora_up.weight`] = tensor(r, 32, 2);
      }
      const path = await writeF32File(join(tmp.dir, 'extra.safetensors'), tensors);
      const base = baseWeights();
      await assert.rejects(
        LoraMergedSource.create(base, [{ path, scale: 1 }]),
        (e: unknown) => {
          assert.ok(e instanceof BadInputError);
          assert.match(e.message, /50 LoRA key\(s\) match no weight/);
          assert.match(e.message, /nothing_0\.lora_down/);
          assert.match(e.message, /and 30 more/);
          assert.match(e.hint ?? '', /--allow-unmatched/);
          return true;
        },
      );
      const merged = await LoraMergedSource.create(base, [{ path, scale: 1 }], { allowUnmatched: true });
      try {
        const [unet] = merged.report.loras[0].components;
        assert.equal(unet.present, 26);
        assert.equal(unet.merged, 1);
        assert.equal(unet.skipped.length, 25);
        assert.deepEqual(merged.report.changedWeights, ['unet.down_blocks.0.attentions.0.proj_in.weight']);
        assert.match(formatMergeReport(merged.report), /1 of 26 modules merged, 25 skipped/);
      } finally {
        await merged.close();
      }
    });

    it('NaN/Inf: a non-finite LoRA value, or a scale that overflows the merged weight, is an error naming the file and weight', async () => {
      const up = tensor(r, 32, 2, 1, 1);
      const good = { 'lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight': tensor(r, 2, 32, 1, 1), 'lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight': up };
      const weight = 'unet.down_blocks.0.attentions.0.proj_in.weight';
      const finitePath = await writeF32File(join(tmp.dir, 'finite.safetensors'), good);
      up.data[5] = Number.NaN;
      const nanPath = await writeF32File(join(tmp.dir, 'nan.safetensors'), good);
      for (const [path, scale, pattern] of [
        [nanPath, 1, /nan\.safetensors: .*proj_in.*not finite/],
        // float32 overflows to Inf: 3e38 * (W + delta) where the deltas are O(1).
        [finitePath, 3e38, /finite\.safetensors at scale 3e\+38: .*proj_in\.weight.*not finite/],
      ] as const) {
        const merged = await LoraMergedSource.create(baseWeights(), [{ path, scale }]);
        try {
          await assert.rejects(merged.readF32(weight), (e: unknown) => {
            assert.ok(e instanceof BadInputError, String(e));
            assert.match(e.message, pattern);
            return true;
          });
        } finally {
          await merged.close();
        }
      }
    });

    it('fails on an SDXL LoRA (te2, add_embedding) for an SD 1.5 base, even with allowUnmatched', async () => {
      const path = await writeF32File(join(tmp.dir, 'sdxl.safetensors'), {
        'lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight': tensor(r, 4, 32),
        'lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight': tensor(r, 32, 4),
        'lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight': tensor(r, 4, 64),
        'lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight': tensor(r, 64, 4),
        'lora_unet_add_embedding_linear_1.lora_down.weight': tensor(r, 4, 16),
        'lora_unet_add_embedding_linear_1.lora_up.weight': tensor(r, 128, 4),
        'lora_unet_add_embedding_linear_1.alpha': scalar(2),
      });
      for (const allowUnmatched of [false, true]) {
        await assert.rejects(LoraMergedSource.create(baseWeights(), [{ path, scale: 1 }], { allowUnmatched, baseFamily: 'sd1' }), (e: unknown) => {
          assert.ok(e instanceof BadInputError);
          assert.match(e.message, /sdxl\.safetensors: is a sdxl LoRA/);
          assert.match(e.message, /has no text_encoder_2/);
          assert.match(e.hint ?? '', /made for sdxl/);
          return true;
        });
      }
    });

    it('fails on a shape mismatch, naming module, weight and both shapes', async () => {
      const path = await writeF32File(join(tmp.dir, 'wide.safetensors'), {
        'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight': tensor(r, 4, 768),
        'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight': tensor(r, 32, 4),
      });
      await assert.rejects(LoraMergedSource.create(baseWeights(), [{ path, scale: 1 }], { allowUnmatched: true }), (e: unknown) => {
        assert.ok(e instanceof BadInputError);
        assert.match(e.message, /attn2_to_k -> unet\.down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k\.weight: weight shape \[32,32\] vs LoRA delta \[32, 768\]/);
        assert.match(e.hint ?? '', /sd1 \(cross-attention width 768\)/);
        return true;
      });
    });
  });

  describe('DoRA', () => {
    const r = seeded(11);
    // Independent reference: W' = W + s * (m * (W + D) / ||W + D|| - W), norms computed per output row or input column.
    function reference(w: Float32Array, d: Float32Array, m: Float32Array, out: number, inner: number, perColumn: boolean, s: number): number[] {
      const full = Array.from(w, (v, i) => v + d[i]);
      const norm = (o: number, j: number) => {
        let sum = 0;
        if (perColumn) for (let oo = 0; oo < out; oo++) sum += full[oo * inner + j] ** 2;
        else for (let jj = 0; jj < inner; jj++) sum += full[o * inner + jj] ** 2;
        return Math.sqrt(sum);
      };
      return full.map((v, i) => {
        const o = Math.floor(i / inner);
        const j = i % inner;
        const dora = (v * m[perColumn ? j : o]) / norm(o, j);
        return w[i] + s * (dora - w[i]);
      });
    }

    for (const [label, magShape, perColumn] of [
      ['PEFT lora_magnitude_vector [out] (row norms)', [6], false],
      ['kohya dora_scale [1, in] (column norms)', [1, 5], true],
    ] as const) {
      it(label, async () => {
        const tmp = await tempDir();
        try {
          const down = tensor(r, 3, 5);
          const up = tensor(r, 6, 3);
          const mag = tensor(r, ...magShape);
          const magKey = perColumn ? 'lora_unet_m.dora_scale' : 'unet.m.lora_magnitude_vector';
          const prefix = perColumn ? 'lora_unet_m' : 'unet.m';
          const path = await writeF32File(join(tmp.dir, 'dora.safetensors'), {
            [`${prefix}.${perColumn ? 'lora_down' : 'lora_A'}.weight`]: down,
            [`${prefix}.${perColumn ? 'lora_up' : 'lora_B'}.weight`]: up,
            [magKey]: mag,
            ...(perColumn ? { 'lora_unet_m.alpha': scalar(6) } : {}),
          });
          const file = await LoraFile.open(path);
          const w = r(30);
          const base = { names: () => ['unet.m.weight'], has: () => true, meta: () => ({ shape: [6, 5], dtype: 'F32' as const }) };
          const plan = planLoraMerge(base, [{ file, scale: 0.6 }]);
          const values = Float32Array.from(w);
          await applyLoras(values, [6, 5], plan.byWeight.get('unet.m.weight')!);
          const factor = perColumn ? 6 / 3 : 1;
          const d = new Float32Array(30);
          for (let o = 0; o < 6; o++) for (let i = 0; i < 5; i++) for (let k = 0; k < 3; k++) d[o * 5 + i] += factor * up.data[o * 3 + k] * down.data[k * 5 + i];
          const expected = reference(w, d, mag.data, 6, 5, perColumn, 0.6);
          assert.ok(maxRelDiff(values, expected) < 1e-6, `${maxRelDiff(values, expected)}`);
          await file.close();
        } finally {
          await tmp.cleanup();
        }
      });
    }
  });
});

describe('lora/merge PixArt transformer (PEFT)', () => {
  // A rank-4 PEFT/diffusers LoRA on attention and feed-forward linears of the tiny PixArt transformer, checked
  // against W + scale * (alpha / rank) * B @ A computed here in float64.
  const targets = ['transformer_blocks.0.attn1.to_q', 'transformer_blocks.1.attn2.to_k', 'transformer_blocks.0.ff.net.0.proj', 'proj_out'];
  for (const prefix of ['transformer.', 'base_model.model.'] as const) {
    it(`merges ${prefix}<module>.lora_A/lora_B at scale 0.8, alpha 8, rank 4; the rest stays exact`, async () => {
      const base = { ...folderWeights('tiny-pixart', ['transformer']), close: async () => {} };
      const { dir, cleanup } = await tempDir();
      try {
        const rand = seeded(31);
        const tensors: Record<string, ReturnType<typeof tensor>> = {};
        for (const t of targets) {
          const [out, inp] = base.meta(`transformer.${t}.weight`).shape;
          tensors[`${prefix}${t}.lora_A.weight`] = tensor(rand, 4, inp);
          tensors[`${prefix}${t}.lora_B.weight`] = tensor(rand, out, 4);
          tensors[`${prefix}${t}.alpha`] = scalar(8);
        }
        const path = await writeF32File(join(dir, 'pixart-lora.safetensors'), tensors);
        const described = await LoraFile.open(path);
        assert.deepEqual(guessLoraFamily(described).families, ['pixart-alpha']);
        await described.close();
        const merged = await LoraMergedSource.create(base, [{ path, scale: 0.8 }], { baseFamily: 'pixart-alpha' });
        try {
          assert.deepEqual(merged.report.changedWeights, targets.map((t) => `transformer.${t}.weight`).sort());
          for (const t of targets) {
            const w = await base.readF32(`transformer.${t}.weight`);
            const [out, inp] = base.meta(`transformer.${t}.weight`).shape;
            const a = tensors[`${prefix}${t}.lora_A.weight`].data;
            const b = tensors[`${prefix}${t}.lora_B.weight`].data;
            const want = Float64Array.from(w, (v, idx) => {
              const o = Math.floor(idx / inp);
              const i = idx % inp;
              let d = 0;
              for (let r = 0; r < 4; r++) d += b[o * 4 + r] * a[r * inp + i];
              return v + 0.8 * (8 / 4) * d;
            });
            assert.equal(want.length, out * inp);
            const err = maxRelDiff(await merged.readF32(`transformer.${t}.weight`), want);
            assert.ok(err <= 1e-6, `${t}: ${err}`);
          }
          for (const name of base.names()) {
            if (targets.some((t) => name === `transformer.${t}.weight`)) continue;
            assert.deepEqual(await merged.readF32(name), await base.readF32(name), name);
          }
        } finally {
          await merged.close();
        }
      } finally {
        await cleanup();
      }
    });
  }
});
