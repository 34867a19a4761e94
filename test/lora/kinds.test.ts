import assert from 'node:assert/strict';
import { maxRelDiff, naiveMatmul, scalar, seeded, tempLoraFiles, tensor, type TestTensor } from './helpers.js';

describe('lora/kinds', () => {
  const r = seeded(42);
  const { dir, open } = tempLoraFiles();

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
  });
});
