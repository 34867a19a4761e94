import assert from 'node:assert/strict';
import { join } from 'node:path';
import { FIXTURES, folderWeights } from '../support/fixtures.js';
import { BadInputError } from '../../src/errors.js';
import { LoraFile, buildTargetIndex, describeLora, kron, resolveTarget } from '../../src/lora/parse.js';
import { matmul } from '../../src/lora/matmul.js';
import { maxRelDiff, scalar, seeded, tempDir, tensor, writeF32File, type TestTensor } from './helpers.js';

const LORAS = join(FIXTURES, 'loras');

/** Naive references, written index by index from the published formulas (no shared code with src). */
function naiveMatmul(a: Float32Array, b: Float32Array, m: number, k: number, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p] * b[p * n + j];
      out.push(s);
    }
  return out;
}

describe('lora/parse', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => (tmp = await tempDir()));
  afterEach(() => tmp.cleanup());
  const r = seeded(42);
  const open = async (tensors: Record<string, TestTensor>, metadata?: Record<string, string>) =>
    LoraFile.open(await writeF32File(join(tmp.dir, `l${Math.random().toString(36).slice(2)}.safetensors`), tensors, metadata));

  describe('fixtures', () => {
    it('kohya: 86 modules, rank/alpha pairs (2,1) (4,2) (4,8), all resolved against tiny-sd15', async () => {
      const file = await LoraFile.open(join(LORAS, 'tiny-sd15-kohya.safetensors'));
      try {
        const s = file.summary();
        assert.equal(file.modules.length, 86);
        assert.equal(s.style, 'kohya');
        assert.deepEqual(
          s.rankAlpha.map((p) => [p.rank, p.alpha]),
          [
            [2, 1],
            [4, 2],
            [4, 8],
          ],
        );
        assert.equal(file.unrecognized.size, 0);
        const index = buildTargetIndex(folderWeights('tiny-sd15').names());
        const targets = file.modules.map((m) => resolveTarget(m.group, index));
        assert.ok(targets.every((t) => t !== undefined));
        assert.ok(targets.includes('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0'));
        assert.ok(targets.includes('text_encoder.text_model.encoder.layers.0.self_attn.q_proj'));
        const conv = file.modules.find((m) => m.prefix === 'lora_unet_down_blocks_0_resnets_0_conv1')!;
        assert.deepEqual([conv.outFeatures, conv.inFlat, conv.kernel], [32, 32 * 9, [3, 3]]);
      } finally {
        await file.close();
      }
    });

    it('peft: 37 modules, rank 4 with alpha = rank (no alphas stored)', async () => {
      const file = await LoraFile.open(join(LORAS, 'tiny-sd15-peft.safetensors'));
      try {
        assert.equal(file.modules.length, 37);
        assert.equal(file.summary().style, 'peft');
        assert.deepEqual(file.summary().rankAlpha, [{ rank: 4, alpha: 4, modules: 37 }]);
      } finally {
        await file.close();
      }
    });

    it('describeLora: key style, components, module count, families (tiny: SD1 or SD2 by names)', async () => {
      const d = await describeLora(join(LORAS, 'tiny-sd15-kohya.safetensors'));
      assert.equal(d.keyStyle, 'kohya');
      assert.deepEqual(d.components, { text_encoder: 18, unet: 68 });
      assert.equal(d.moduleCount, 86);
      assert.deepEqual(d.families, ['sd1', 'sd2']);
      assert.deepEqual(d.kinds, { lora: 86 });
    });
  });

  it('family guesses: te2 -> sdxl; cross-attention width 768 -> sd1, 1024 -> sd2', async () => {
    const dir = tmp.dir;
    const cases: [Record<string, TestTensor>, string][] = [
      [{ 'lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight': tensor(r, 2, 8), 'lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight': tensor(r, 8, 2) }, 'sdxl'],
      [{ 'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight': tensor(r, 2, 768), 'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight': tensor(r, 8, 2) }, 'sd1'],
      [{ 'lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v.lora_down.weight': tensor(r, 2, 1024), 'lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v.lora_up.weight': tensor(r, 8, 2) }, 'sd2'],
    ];
    for (const [i, [tensors, family]] of cases.entries()) {
      const d = await describeLora(await writeF32File(join(dir, `f${i}.safetensors`), tensors));
      assert.deepEqual(d.families, [family]);
    }
  });

  describe('key formats -> targets', () => {
    const names = [
      'unet.down_blocks.1.attentions.0.proj_in.weight',
      'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight',
      'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight',
      'unet.up_blocks.1.resnets.0.conv_shortcut.weight',
      'text_encoder.text_model.encoder.layers.1.self_attn.k_proj.weight',
    ];
    const index = buildTargetIndex(names);
    const pair = (prefix: string, down = '.lora_down.weight', up = '.lora_up.weight') => ({
      [`${prefix}${down}`]: tensor(r, 2, 4),
      [`${prefix}${up}`]: tensor(r, 4, 2),
    });

    const cases: [string, Record<string, TestTensor>, string][] = [
      ['kohya diffusers-style', pair('lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0'), 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0'],
      ['kohya LDM-style', pair('lora_unet_input_blocks_4_1_proj_in'), 'unet.down_blocks.1.attentions.0.proj_in'],
      ['kohya LDM-style resnet skip', pair('lora_unet_output_blocks_3_0_skip_connection'), 'unet.up_blocks.1.resnets.0.conv_shortcut'],
      ['kohya te', pair('lora_te_text_model_encoder_layers_1_self_attn_k_proj'), 'text_encoder.text_model.encoder.layers.1.self_attn.k_proj'],
      ['kohya te1 (SDXL naming)', pair('lora_te1_text_model_encoder_layers_1_self_attn_k_proj'), 'text_encoder.text_model.encoder.layers.1.self_attn.k_proj'],
      ['PEFT', pair('unet.down_blocks.1.attentions.0.proj_in', '.lora_A.weight', '.lora_B.weight'), 'unet.down_blocks.1.attentions.0.proj_in'],
      ['diffusers .lora.down', pair('unet.down_blocks.1.attentions.0.proj_in', '.lora.down.weight', '.lora.up.weight'), 'unet.down_blocks.1.attentions.0.proj_in'],
      ['diffusers text lora_linear_layer', pair('text_encoder.text_model.encoder.layers.1.self_attn.k_proj', '.lora_linear_layer.down.weight', '.lora_linear_layer.up.weight'), 'text_encoder.text_model.encoder.layers.1.self_attn.k_proj'],
      ['legacy attention processor', pair('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora', '.down.weight', '.up.weight'), 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0'],
      ['legacy processor, unprefixed', pair('down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora', '.down.weight', '.up.weight'), 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q'],
    ];
    for (const [label, tensors, target] of cases) {
      it(label, async () => {
        const file = await open(tensors);
        try {
          assert.equal(file.modules.length, 1);
          assert.equal(resolveTarget(file.modules[0].group, index), target);
        } finally {
          await file.close();
        }
      });
    }

    it('a file with no LoRA tensors is refused with the file named', async () => {
      const path = await writeF32File(join(tmp.dir, 'notlora.safetensors'), { 'model.diffusion_model.x.weight': tensor(r, 2, 2) });
      await assert.rejects(LoraFile.open(path), (e: unknown) => e instanceof BadInputError && e.message.startsWith(path) && /no LoRA modules/.test(e.message));
    });
  });

  describe('deltas against naive formulas', () => {
    it('LoRA linear: (alpha/rank) up @ down; alpha 0 or missing -> alpha = rank', async () => {
      for (const alpha of [3, 0, undefined]) {
        const down = tensor(r, 4, 7);
        const up = tensor(r, 5, 4);
        const file = await open({ 'lora_unet_m.lora_down.weight': down, 'lora_unet_m.lora_up.weight': up, ...(alpha === undefined ? {} : { 'lora_unet_m.alpha': scalar(alpha) }) });
        const m = file.modules[0];
        const factor = alpha ? alpha / 4 : 1;
        assert.equal(m.alpha, alpha || 4);
        const expected = naiveMatmul(up.data, down.data, 5, 4, 7).map((v) => v * factor);
        assert.ok(maxRelDiff(await m.delta(), expected) < 1e-6);
        await file.close();
      }
    });

    it('PEFT alpha from lora_adapter_metadata (component prefix, alpha_pattern, rsLoRA)', async () => {
      const meta = {
        lora_adapter_metadata: JSON.stringify({ 'unet.r': 4, 'unet.lora_alpha': 8, 'unet.alpha_pattern': { 'attn1.to_q': 2 }, 'text_encoder.lora_alpha': 4, 'text_encoder.use_rslora': true }),
      };
      const file = await open(
        {
          'unet.a.attn1.to_k.lora_A.weight': tensor(r, 4, 3),
          'unet.a.attn1.to_k.lora_B.weight': tensor(r, 3, 4),
          'unet.a.attn1.to_q.lora_A.weight': tensor(r, 4, 3),
          'unet.a.attn1.to_q.lora_B.weight': tensor(r, 3, 4),
          'text_encoder.q_proj.lora_A.weight': tensor(r, 4, 3),
          'text_encoder.q_proj.lora_B.weight': tensor(r, 3, 4),
        },
        meta,
      );
      const factor = (p: string) => file.modules.find((m) => m.prefix === p)!.factor;
      assert.equal(factor('unet.a.attn1.to_k'), 2);
      assert.equal(factor('unet.a.attn1.to_q'), 0.5);
      assert.equal(factor('text_encoder.q_proj'), 4 / Math.sqrt(4));
      await file.close();
    });

    it('conv: 3x3 down with 1x1 up composes as a convolution [out, in, 3, 3]', async () => {
      const down = tensor(r, 2, 3, 3, 3);
      const up = tensor(r, 4, 2, 1, 1);
      const file = await open({ 'lora_unet_c.lora_down.weight': down, 'lora_unet_c.lora_up.weight': up, 'lora_unet_c.alpha': scalar(1) });
      const expected: number[] = [];
      for (let o = 0; o < 4; o++)
        for (let i = 0; i < 3; i++)
          for (let y = 0; y < 3; y++)
            for (let x = 0; x < 3; x++) {
              let s = 0;
              for (let k = 0; k < 2; k++) s += up.data[o * 2 + k] * down.data[((k * 3 + i) * 3 + y) * 3 + x];
              expected.push(0.5 * s);
            }
      assert.ok(maxRelDiff(await file.modules[0].delta(), expected) < 1e-6);
      await file.close();
    });

    it('LoCon CP (lora_mid): einsum(mid[n,m,y,x], up[o,n], down[m,i])', async () => {
      const [o, i, rk] = [4, 3, 2];
      const up = tensor(r, o, rk, 1, 1);
      const down = tensor(r, rk, i, 1, 1);
      const mid = tensor(r, rk, rk, 3, 3);
      const file = await open({ 'lora_unet_c.lora_up.weight': up, 'lora_unet_c.lora_down.weight': down, 'lora_unet_c.lora_mid.weight': mid });
      const expected: number[] = [];
      for (let a = 0; a < o; a++)
        for (let b = 0; b < i; b++)
          for (let s = 0; s < 9; s++) {
            let v = 0;
            for (let n = 0; n < rk; n++) for (let m = 0; m < rk; m++) v += mid.data[(n * rk + m) * 9 + s] * up.data[a * rk + n] * down.data[m * i + b];
            expected.push(v);
          }
      const m = file.modules[0];
      assert.deepEqual([m.outFeatures, m.inFlat, m.kernel], [4, 27, [3, 3]]);
      assert.ok(maxRelDiff(await m.delta(), expected) < 1e-6);
      await file.close();
    });

    it('LoHa: ((w1a@w1b) * (w2a@w2b)) * alpha/rank', async () => {
      const t = { a1: tensor(r, 5, 3), b1: tensor(r, 3, 6), a2: tensor(r, 5, 3), b2: tensor(r, 3, 6) };
      const file = await open({ 'lora_unet_h.hada_w1_a': t.a1, 'lora_unet_h.hada_w1_b': t.b1, 'lora_unet_h.hada_w2_a': t.a2, 'lora_unet_h.hada_w2_b': t.b2, 'lora_unet_h.alpha': scalar(1.5) });
      const w1 = naiveMatmul(t.a1.data, t.b1.data, 5, 3, 6);
      const w2 = naiveMatmul(t.a2.data, t.b2.data, 5, 3, 6);
      const expected = w1.map((v, k) => v * w2[k] * 0.5);
      assert.equal(file.modules[0].kind, 'loha');
      assert.ok(maxRelDiff(await file.modules[0].delta(), expected) < 1e-6);
      await file.close();
    });

    it('LoHa Tucker: einsum(t[i,j,y,x], a[i,p], b[j,q]) per factor', async () => {
      const [out, inn, rk] = [4, 3, 2];
      const t = {
        t1: tensor(r, rk, rk, 3, 3),
        a1: tensor(r, rk, out),
        b1: tensor(r, rk, inn),
        t2: tensor(r, rk, rk, 3, 3),
        a2: tensor(r, rk, out),
        b2: tensor(r, rk, inn),
      };
      const file = await open({
        'lora_unet_h.hada_t1': t.t1,
        'lora_unet_h.hada_w1_a': t.a1,
        'lora_unet_h.hada_w1_b': t.b1,
        'lora_unet_h.hada_t2': t.t2,
        'lora_unet_h.hada_w2_a': t.a2,
        'lora_unet_h.hada_w2_b': t.b2,
      });
      const rebuild = (tt: TestTensor, a: TestTensor, b: TestTensor) => {
        const res: number[] = [];
        for (let p = 0; p < out; p++)
          for (let q = 0; q < inn; q++)
            for (let s = 0; s < 9; s++) {
              let v = 0;
              for (let i = 0; i < rk; i++) for (let j = 0; j < rk; j++) v += tt.data[(i * rk + j) * 9 + s] * a.data[i * out + p] * b.data[j * inn + q];
              res.push(v);
            }
        return res;
      };
      const w1 = rebuild(t.t1, t.a1, t.b1);
      const w2 = rebuild(t.t2, t.a2, t.b2);
      const m = file.modules[0];
      assert.deepEqual([m.outFeatures, m.inFlat, m.kernel], [4, 27, [3, 3]]);
      assert.ok(maxRelDiff(await m.delta(), w1.map((v, k) => v * w2[k])) < 1e-6);
      await file.close();
    });

    it('LoKr: kron(w1, w2_a@w2_b) * alpha/rank, conv w2 [c, d, 3, 3]; full factors at scale 1', async () => {
      const w1 = tensor(r, 2, 3);
      const w2a = tensor(r, 4, 2);
      const w2b = tensor(r, 2, 5, 3, 3);
      const file = await open({ 'lora_unet_k.lokr_w1': w1, 'lora_unet_k.lokr_w2_a': w2a, 'lora_unet_k.lokr_w2_b': w2b, 'lora_unet_k.alpha': scalar(1) });
      const w2 = naiveMatmul(w2a.data, w2b.data, 4, 2, 45); // [4, 5, 3, 3]
      // torch.kron of [2,3,1,1] and [4,5,3,3] -> [8, 15, 3, 3]: out[i*4+k, j*5+l, y, x] = w1[i,j] * w2[k,l,y,x]
      const expected = new Array(8 * 15 * 9).fill(0);
      for (let i = 0; i < 2; i++)
        for (let j = 0; j < 3; j++)
          for (let k = 0; k < 4; k++)
            for (let l = 0; l < 5; l++)
              for (let s = 0; s < 9; s++) expected[((i * 4 + k) * 15 + (j * 5 + l)) * 9 + s] = 0.5 * w1.data[i * 3 + j] * w2[(k * 5 + l) * 9 + s];
      const m = file.modules[0];
      assert.deepEqual([m.outFeatures, m.inFlat, m.kernel], [8, 135, [3, 3]]);
      assert.ok(maxRelDiff(await m.delta(), expected) < 1e-6);
      await file.close();

      const full = await open({ 'lora_unet_k.lokr_w1': w1, 'lora_unet_k.lokr_w2': tensor(r, 4, 5), 'lora_unet_k.alpha': scalar(7) });
      assert.equal(full.modules[0].factor, 1);
      await full.close();
    });

    it('matmul and kron helpers agree with the naive forms', async () => {
      const a = r(12);
      const b = r(20);
      assert.ok(maxRelDiff(await matmul(a, b, 3, 4, 5), naiveMatmul(a, b, 3, 4, 5)) < 1e-6);
      const k = kron(Float32Array.of(1, 2), 1, 2, Float32Array.of(3, 4, 5, 6), 2, 2);
      assert.deepEqual([...k], [3, 4, 6, 8, 5, 6, 10, 12]);
    });

    it('unsupported tensors are reported, not silently dropped', async () => {
      const file = await open({ ...{ 'lora_unet_m.lora_down.weight': tensor(r, 2, 4), 'lora_unet_m.lora_up.weight': tensor(r, 4, 2) }, 'lora_unet_m.diff_b': tensor(r, 4), 'lora_unet_x.lora_down.weight': tensor(r, 2, 4) });
      assert.equal(file.modules.length, 1);
      assert.deepEqual([...file.unrecognized.keys()].sort(), ['lora_unet_m.diff_b', 'lora_unet_x.lora_down.weight']);
      await file.close();
    });
  });
});
