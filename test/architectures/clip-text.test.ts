import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { buildClipTextGraph, normalizeClipTextConfig } from '../../src/architectures/clip-text.js';
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
