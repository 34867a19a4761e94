import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { OnestepError } from '../../src/errors.js';
import { ImageSink, modelIdentity, type SinkModel } from '../../src/generate/sink.js';
import { MANIFEST_FILE, openManifest } from '../../src/io/manifest.js';
import { NameAllocator } from '../../src/io/names.js';
import { FilesOutput } from '../../src/io/outputs.js';
import type { PromptRecord } from '../../src/io/prompts.js';
import type { GeneratedImage, ImageRequest } from '../../src/runtime/engine.js';
import type { ModelManifest } from '../../src/runtime/model-dir.js';

const MODEL: SinkModel = { hash: 'ab'.repeat(32), id: '0123456789abcdef', name: 'tiny', prediction: 'epsilon', timestep: 999 };
const MS = { tokenize: 2, textEncoder: 4, denoiser: 8, decoder: 6, total: 20 };

async function openSink(out: string, warnings: string[] = []) {
  const manifest = await openManifest(out);
  const output = new FilesOutput(out, manifest);
  const names = new NameAllocator('{index:06}-{seed}', 'png', manifest.existing());
  const sink = new ImageSink({ out, format: 'png', output, manifest, names, model: MODEL, onWarning: (w) => warnings.push(w) });
  return { sink, output };
}

const record = (index: number): PromptRecord => ({ index, line: index + 1, prompt: `prompt ${index}` });
const request = (r: PromptRecord, seed = 10n + BigInt(r.index)): ImageRequest => ({ index: r.index, prompt: r.prompt, seed, width: 8, height: 8, guidance: 1 });
const image = (index: number, value: number, nonFinite?: string): GeneratedImage => ({
  index,
  width: 8,
  height: 8,
  rgb: nonFinite ? new Uint8Array(0) : new Uint8Array(8 * 8 * 3).fill(value),
  warnings: [],
  nonFinite,
  ms: MS,
});

describe('generate/sink', () => {
  let out: string;
  beforeEach(() => (out = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-sink-'))));
  afterEach(() => fs.rmSync(out, { recursive: true, force: true }));

  it('writes each image with its manifest line; a NaN/Inf image is reported, not written, not recorded', async () => {
    const warnings: string[] = [];
    const { sink, output } = await openSink(out, warnings);
    for (const i of [0, 1, 2]) sink.expect(record(i), request(record(i)), undefined);
    let progress = 0;
    await sink.writeBatch([image(0, 40), image(1, 0, 'NaN in the latents'), image(2, 90)], () => progress++);
    await output.close();
    assert.deepEqual([sink.images, sink.nonFinite, progress], [2, 1, 3]);
    assert.deepEqual(warnings, ['prompt 1 (line 2): NaN in the latents; the image was not written (a later --resume tries it again)']);
    assert.deepEqual(fs.readdirSync(out).filter((f) => f.endsWith('.png')).sort(), ['000000-10.png', '000002-12.png']);
    const { data } = await sharp(path.join(out, '000002-12.png')).raw().toBuffer({ resolveWithObject: true });
    assert.ok(data.every((v) => v === 90), 'the pixels written are the pixels given');
    const lines = fs.readFileSync(path.join(out, MANIFEST_FILE), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    // The images of a batch are written concurrently: their lines come in the order their writes end.
    lines.sort((x, y) => x.index - y.index);
    assert.deepEqual(lines.map((l) => [l.index, l.file, l.seed, l.model, l.model_id, l.prediction, l.timestep]), [
      [0, '000000-10.png', 10, MODEL.hash, MODEL.id, 'epsilon', 999],
      [2, '000002-12.png', 12, MODEL.hash, MODEL.id, 'epsilon', 999],
    ]);
    // Each image's share of its batch's engine time (3 images), then its own encode and write.
    assert.equal(sink.stageMs.denoiser, 8);
    assert.ok(sink.stageMs.encode > 0 && sink.stageMs.write > 0);
  });

  it('--resume: an image made with the same settings is done, with others it is an error saying what changed', async () => {
    const first = await openSink(out);
    first.sink.expect(record(0), request(record(0)), undefined);
    await first.sink.writeBatch([image(0, 40)], () => undefined);
    await first.output.close();

    const again = await openSink(out);
    assert.equal(await again.sink.done(record(0), request(record(0)), undefined), true);
    assert.equal(again.sink.skipped, 1);
    assert.equal(await again.sink.done(record(1), request(record(1)), undefined), false, 'not made yet');
    const changed = await again.sink.done(record(0), request(record(0), 99n), undefined);
    assert.ok(changed instanceof OnestepError && /prompt 0 \(line 1\).*other settings than this run: .*seed/.test(changed.message), String(changed));
    await again.output.close();
  });
});

describe('generate/sink modelIdentity', () => {
  const manifest = (source: Partial<ModelManifest['source']> = {}, extra: Partial<ModelManifest> = {}): ModelManifest =>
    ({
      dtype: 'float32',
      decoder: { graph: 'vae_decoder.onnx', kind: 'autoencoder-kl' },
      source: { name: 'base.safetensors', layout: 'single-file', sha256: 'ab'.repeat(32), loras: [{ name: 'l.safetensors', sha256: 'cd'.repeat(32), scale: 0.8 }], ...source },
      ...extra,
    }) as ModelManifest;

  it('is the hash of checkpoint, LoRAs, dtype and decoder for a model without replaced components or int8 (as before)', () => {
    const before = createHash('sha256')
      .update(JSON.stringify({ sha256: 'ab'.repeat(32), loras: [['cd'.repeat(32), 0.8]], dtype: 'float32', decoder: 'autoencoder-kl' }))
      .digest('hex')
      .slice(0, 16);
    assert.equal(modelIdentity(manifest()), before);
    assert.equal(modelIdentity(manifest({ name: 'renamed.safetensors', components: [] })), before);
  });

  it('tells apart models that differ in a --unet / --vae / --taesd component or in int8', () => {
    const unet = (sha: string) => manifest({ components: [{ component: 'unet', name: 'u.safetensors', sha256: sha }] });
    const ids = [
      modelIdentity(manifest()),
      modelIdentity(unet('ef'.repeat(32))),
      modelIdentity(unet('01'.repeat(32))),
      modelIdentity(manifest({ components: [{ component: 'vae', name: 'u.safetensors', sha256: 'ef'.repeat(32) }] })),
      modelIdentity(manifest({}, { quantize: 'int8' })),
    ];
    assert.equal(new Set(ids).size, ids.length, ids.join(' '));
    assert.equal(modelIdentity(unet('ef'.repeat(32))), modelIdentity(manifest({ components: [{ component: 'unet', name: 'other-name', sha256: 'ef'.repeat(32) }] })));
  });
});
