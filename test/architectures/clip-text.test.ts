import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import {
  buildClipTextGraph,
  CLIP_EOS_TOKEN_ID,
  clipTextConfigFromJson,
  clipTextConfigFromShapes,
  SD_TEXT_OUTPUT,
  SDXL_TEXT_OUTPUT,
  SDXL_TEXT2_OUTPUT,
} from '../../src/architectures/clip-text.js';
import { shapeView } from '../../src/checkpoint/configs.js';
import { openCheckpoint } from '../../src/checkpoint/open.js';
import { BadInputError } from '../../src/errors.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { FIXTURES, folderConfig, folderWeights, goldens, relErr } from '../support/fixtures.js';

async function runTextEncoder(model: 'tiny-sd15' | 'tiny-sd21', dtype: 'float32' | 'float16') {
  const cfg = clipTextConfigFromJson(folderConfig(model, 'text_encoder'), 'text_encoder/config.json');
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
      const cfg = clipTextConfigFromJson(folderConfig('tiny-sdxl', 'text_encoder'), 'text_encoder/config.json');
      const graph = buildClipTextGraph(folderWeights('tiny-sdxl', ['text_encoder']), cfg, dtype, SDXL_TEXT_OUTPUT);
      const read = [...graph.initializers.values()].map((i) => i.weight?.key ?? '');
      assert.ok(!read.some((k) => /layers\.2\.|final_layer_norm/.test(k)), 'reads a weight after the output layer');
      const out = await run(graph, { input_ids: ids('te.input_ids') });
      assert.deepEqual(Object.keys(out), ['hidden_states']);
      const err = relErr(out.hidden_states.data as Float32Array, get('te.hidden_states_penultimate').data);
      assert.ok(err <= tol, `hidden_states relErr ${err}`);
    });

    it(`${dtype}: text_encoder_2 hidden_states[-2] and text_embeds (final-norm EOS row @ text_projection)`, async () => {
      const cfg = clipTextConfigFromJson(folderConfig('tiny-sdxl', 'text_encoder_2'), 'text_encoder_2/config.json');
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
    const cfg = clipTextConfigFromJson(folderConfig('tiny-sdxl', 'text_encoder_2'), 'text_encoder_2/config.json');
    const graph = buildClipTextGraph(folderWeights('tiny-sdxl', ['text_encoder_2']), cfg, 'float32', SD_TEXT_OUTPUT, 'text_encoder_2');
    const out = await run(graph, { input_ids: ids('te2.input_ids') });
    const err = relErr(out.last_hidden_state.data as Float32Array, get('te2.last_hidden_state').data);
    assert.ok(err <= 1e-4, `last_hidden_state relErr ${err}`);
  });

  it('refuses an output layer the encoder does not have', () => {
    const cfg = clipTextConfigFromJson(folderConfig('tiny-sdxl', 'text_encoder'), 'text_encoder/config.json');
    assert.throws(() => buildClipTextGraph(folderWeights('tiny-sdxl', ['text_encoder']), cfg, 'float32', { ...SD_TEXT_OUTPUT, layer: -4 }), /output layer -4 does not exist in a 3-layer encoder/);
  });
});

describe('architectures/clip-text config', () => {
  it('reads CLIPTextConfig config.json with its defaults, and rejects what it cannot build naming the file and field', () => {
    const t = clipTextConfigFromJson(folderConfig('tiny-sd21', 'text_encoder'), 'text_encoder/config.json');
    assert.equal(t.hidden_act, 'gelu');
    assert.equal(t.num_attention_heads, 2);
    assert.equal(t.projection_dim, null);
    assert.equal(t.eos_token_id, CLIP_EOS_TOKEN_ID, 'legacy eos_token_id 2 means argmax pooling = first 49407');
    assert.equal(clipTextConfigFromJson(folderConfig('tiny-sdxl', 'text_encoder_2'), 'x').projection_dim, 12);
    const defaults = clipTextConfigFromJson({}, 'x');
    assert.deepEqual([defaults.hidden_size, defaults.num_hidden_layers, defaults.hidden_act, defaults.eos_token_id], [512, 12, 'quick_gelu', 49407]);
    assert.throws(
      () => clipTextConfigFromJson({ hidden_act: 'relu' }, 'x/text_encoder/config.json'),
      (e: unknown) => e instanceof BadInputError && /^x\/text_encoder\/config.json: hidden_act = "relu" is not supported/.test(e.message),
    );
  });

  for (const [model, act] of [
    ['tiny-sd15', 'quick_gelu'],
    ['tiny-sd21', 'gelu'],
  ] as const) {
    it(`${model}: the config inferred from the single file's shapes agrees with the folder's config.json`, async () => {
      const c = await openCheckpoint(path.join(FIXTURES, `${model}.safetensors`));
      try {
        const te = clipTextConfigFromShapes(shapeView(c.weights, 'x'), act);
        const ref = folderConfig(model, 'text_encoder');
        for (const key of ['vocab_size', 'hidden_size', 'intermediate_size', 'max_position_embeddings', 'hidden_act', 'layer_norm_eps'] as const) {
          assert.deepEqual(te[key], ref[key], key);
        }
        // The SD 2.x file holds OpenCLIP's whole tower (3 blocks); diffusers' folder only the 2 layers SD 2.x uses.
        assert.equal(te.num_hidden_layers, ref.num_hidden_layers + (model === 'tiny-sd21' ? 1 : 0));
        assert.equal(te.num_attention_heads, 1);
        assert.equal(te.eos_token_id, CLIP_EOS_TOKEN_ID);
      } finally {
        await c.weights.close();
      }
    });
  }
});
