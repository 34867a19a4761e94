import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { buildT5EncoderGraph, expectedT5Weights, normalizeT5Config, relativePositionBuckets } from '../../src/architectures/t5-encoder.js';
import { OnestepError } from '../../src/errors.js';
import { writeModel } from '../../src/onnx/write-model.js';
import { folderConfig, folderWeights, goldens, relErr } from '../support/fixtures.js';

const cfg = normalizeT5Config(folderConfig('tiny-pixart', 'text_encoder'));
const gold = goldens('tiny-pixart');
const ids = gold.get('te.input_ids')!;
const mask = gold.get('te.attention_mask')!;
const expected = gold.get('te.last_hidden_state')!;
const toInt64 = (t: { data: Float32Array; shape: number[] }) => new ort.Tensor('int64', BigInt64Array.from(t.data, (v) => BigInt(v)), t.shape);

describe('architectures/t5-encoder', () => {
  const dirs: string[] = [];
  const sessions = new Map<string, ort.InferenceSession>();
  after(async () => {
    for (const s of sessions.values()) await s.release();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });
  async function session(dtype: 'float32' | 'float16'): Promise<ort.InferenceSession> {
    if (!sessions.has(dtype)) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-t5-'));
      dirs.push(dir);
      const { onnxPath } = await writeModel(buildT5EncoderGraph(folderWeights('tiny-pixart', ['text_encoder']), cfg, dtype), dir, 'text_encoder');
      sessions.set(dtype, await ort.InferenceSession.create(onnxPath));
    }
    return sessions.get(dtype)!;
  }

  it('reads the fixture config (T5 v1.1: gated-gelu)', () => {
    assert.deepEqual(
      [cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, cfg.feed_forward_proj],
      [32, 8, 64, 2, 4, 32, 128, 'gated-gelu'],
    );
    assert.throws(() => normalizeT5Config({ feed_forward_proj: 'gated-silu' }, 'x/config.json'), (e: unknown) => e instanceof OnestepError && /x\/config.json: feed_forward_proj "gated-silu"/.test(e.message));
  });

  it('expects exactly the tensors transformers saves, with their shapes (the builder declares every one)', () => {
    const stored = folderWeights('tiny-pixart', ['text_encoder']);
    const expectedShapes = expectedT5Weights(cfg);
    assert.deepEqual([...expectedShapes.keys()].sort(), stored.names());
    for (const [name, shape] of expectedShapes) assert.deepEqual(shape, stored.meta(name).shape, name);
    // a file saved with the tie broken stores the embedding under encoder.embed_tokens instead of shared
    const untied = expectedT5Weights(cfg, 'encoder.embed_tokens');
    assert.deepEqual(untied.get('text_encoder.encoder.embed_tokens.weight'), [cfg.vocab_size, cfg.d_model]);
    assert.equal(untied.has('text_encoder.shared.weight'), false);
  });

  it('relative position buckets match T5 (bidirectional, 32 buckets, max distance 128)', () => {
    const b = relativePositionBuckets(32, 128);
    const at = (offset: number) => b[offset + 128];
    // exact below 8, key after query in the upper half, logarithmic to 128, saturated beyond
    assert.deepEqual([0, 1, 7, -1, -7].map(at), [0, 17, 23, 1, 7]);
    // float64 reference: 8 + floor(log(n / 8) / log(16) * 8), away from the float32-sensitive boundaries
    for (const n of [9, 12, 20, 40, 100, 127]) assert.equal(at(-n), 8 + Math.floor((Math.log(n / 8) / Math.log(16)) * 8), `offset -${n}`);
    assert.deepEqual([16, 32, 64, 128].map((n) => at(-n)), [10, 12, 14, 15]);
    assert.equal(at(128), 31);
  });

  it('float32 reproduces transformers last_hidden_state with the attention mask, within 1e-4', async () => {
    const s = await session('float32');
    const out = await s.run({ input_ids: toInt64(ids), attention_mask: toInt64(mask) });
    assert.deepEqual(out.last_hidden_state.dims, expected.shape);
    const err = relErr(out.last_hidden_state.data as Float32Array, expected.data);
    console.log(`      relErr ${err.toExponential(2)}`);
    assert.ok(err <= 1e-4, `relErr ${err}`);
  });

  it('the mask matters: without it the padded positions change the result', async () => {
    const s = await session('float32');
    const ones = new ort.Tensor('int64', new BigInt64Array(mask.data.length).fill(1n), mask.shape);
    const out = await s.run({ input_ids: toInt64(ids), attention_mask: ones });
    assert.ok(relErr(out.last_hidden_state.data as Float32Array, expected.data) > 1e-2);
  });

  it('float16 stays within 2e-2', async () => {
    const s = await session('float16');
    const out = await s.run({ input_ids: toInt64(ids), attention_mask: toInt64(mask) });
    const err = relErr(out.last_hidden_state.data as Float32Array, expected.data);
    console.log(`      relErr ${err.toExponential(2)}`);
    assert.ok(err <= 2e-2, `relErr ${err}`);
  });
});
