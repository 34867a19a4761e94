import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { buildClipTextGraph, normalizeClipTextConfig, SD_TEXT_OUTPUT, SDXL_TEXT_OUTPUT, SDXL_TEXT2_OUTPUT } from '../../src/architectures/clip-text.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { folderConfig, folderWeights, goldens, relErr } from '../support/fixtures.js';

async function runTextEncoder(model: 'tiny-sd15' | 'tiny-sd21', dtype: 'float32' | 'float16') {
  const cfg = normalizeClipTextConfig(folderConfig(model, 'text_encoder'));
  const graph = buildClipTextGraph(folderWeights(model, ['text_encoder']), cfg, dtype);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-clip-'));
  try {
    const { onnxPath } = await writeModel(graph, dir, 'text_encoder');
    const session = await ort.InferenceSession.create(onnxPath);
    const g = goldens(model);
    const ids = g.get('te.input_ids')!;
    const input = new ort.Tensor('int64', BigInt64Array.from(ids.data, (v) => BigInt(v)), ids.shape);
    const out = await session.run({ input_ids: input });
    await session.release();
    return {
      last: relErr(out.last_hidden_state.data as Float32Array, g.get('te.last_hidden_state')!.data),
      pooled: relErr(out.pooler_output.data as Float32Array, g.get('te.pooler_output')!.data),
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('architectures/clip-text', () => {
  for (const model of ['tiny-sd15', 'tiny-sd21'] as const) {
    it(`${model}: fp32 reproduces transformers' last_hidden_state and pooler_output`, async () => {
      const e = await runTextEncoder(model, 'float32');
      assert.ok(e.last <= 1e-4, `last_hidden_state relErr ${e.last}`);
      assert.ok(e.pooled <= 1e-4, `pooler_output relErr ${e.pooled}`);
    });
    it(`${model}: fp16 stays within 2e-2`, async () => {
      const e = await runTextEncoder(model, 'float16');
      assert.ok(e.last <= 2e-2, `last_hidden_state relErr ${e.last}`);
      assert.ok(e.pooled <= 2e-2, `pooler_output relErr ${e.pooled}`);
    });
  }
});

describe('architectures/clip-text output layers (SDXL)', () => {
  const gold = goldens('tiny-sdxl');
  const get = (name: string) => gold.get(name)!;
  const ids = (name: string) => {
    const t = get(name);
    return new ort.Tensor('int64', BigInt64Array.from(t.data, (v) => BigInt(v)), t.shape);
  };

  async function run(graph: ReturnType<typeof buildClipTextGraph>, feeds: Record<string, ort.Tensor>) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-clip-'));
    try {
      const { onnxPath } = await writeModel(graph, dir, 'text_encoder');
      const session = await ort.InferenceSession.create(onnxPath);
      const out = await session.run(feeds);
      await session.release();
      return out;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  for (const dtype of ['float32', 'float16'] as const) {
    const tol = dtype === 'float32' ? 1e-4 : 2e-2;
    it(`${dtype}: text_encoder hidden_states[-2] without final norm; the last layer and the final norm are not built`, async () => {
      const cfg = normalizeClipTextConfig(folderConfig('tiny-sdxl', 'text_encoder'));
      const graph = buildClipTextGraph(folderWeights('tiny-sdxl', ['text_encoder']), cfg, dtype, SDXL_TEXT_OUTPUT);
      const read = [...graph.initializers.values()].map((i) => i.weight?.key ?? '');
      assert.ok(!read.some((k) => /layers\.2\.|final_layer_norm/.test(k)), 'reads a weight after the output layer');
      const out = await run(graph, { input_ids: ids('te.input_ids') });
      assert.deepEqual(Object.keys(out), ['hidden_states']);
      const err = relErr(out.hidden_states.data as Float32Array, get('te.hidden_states_penultimate').data);
      assert.ok(err <= tol, `hidden_states relErr ${err}`);
    });

    it(`${dtype}: text_encoder_2 hidden_states[-2] and text_embeds (final-norm EOS row @ text_projection)`, async () => {
      const cfg = normalizeClipTextConfig(folderConfig('tiny-sdxl', 'text_encoder_2'));
      const graph = buildClipTextGraph(folderWeights('tiny-sdxl', ['text_encoder_2']), cfg, dtype, SDXL_TEXT2_OUTPUT, 'text_encoder_2');
      const out = await run(graph, { input_ids: ids('te2.input_ids') });
      const hidden = relErr(out.hidden_states.data as Float32Array, get('te2.hidden_states_penultimate').data);
      const pooled = relErr(out.text_embeds.data as Float32Array, get('te2.text_embeds').data);
      assert.deepEqual(out.text_embeds.dims, [4, 12]);
      assert.ok(hidden <= tol, `hidden_states relErr ${hidden}`);
      assert.ok(pooled <= tol, `text_embeds relErr ${pooled}`);
    });
  }

  it('SD output of the same encoder is last_hidden_state (every layer + final norm)', async () => {
    const cfg = normalizeClipTextConfig(folderConfig('tiny-sdxl', 'text_encoder_2'));
    const graph = buildClipTextGraph(folderWeights('tiny-sdxl', ['text_encoder_2']), cfg, 'float32', SD_TEXT_OUTPUT, 'text_encoder_2');
    const out = await run(graph, { input_ids: ids('te2.input_ids') });
    const err = relErr(out.last_hidden_state.data as Float32Array, get('te2.last_hidden_state').data);
    assert.ok(err <= 1e-4, `last_hidden_state relErr ${err}`);
  });

  it('refuses an output layer the encoder does not have', () => {
    const cfg = normalizeClipTextConfig(folderConfig('tiny-sdxl', 'text_encoder'));
    assert.throws(() => buildClipTextGraph(folderWeights('tiny-sdxl', ['text_encoder']), cfg, 'float32', { ...SD_TEXT_OUTPUT, layer: -4 }), /output layer -4 does not exist in a 3-layer encoder/);
  });
});
