/**
 * generateImages (the library behind `onestep generate`), in process: determinism across batch sizes and shard splits,
 * resume, interruption through an AbortSignal, and the checks made before any prompt runs.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import sharp from 'sharp';
import { convertCheckpoint } from '../src/convert.js';
import { OnestepError } from '../src/errors.js';
import { generateImages, type GenerateOptions, type GenerateSummary } from '../src/generate.js';
import { FIXTURES } from './support/fixtures.js';

const PROMPTS = [
  'a photo of a cat',
  'a watercolor painting of a lighthouse at dusk',
  'an astronaut riding a horse, highly detailed, 4k',
  'a red sports car on a mountain road',
  'a small cabin in a snowy forest',
  'a bowl of ramen, studio lighting',
  'a photo of a cat',
  'an oil painting of a harbour at night',
];

interface Entry {
  index: number;
  file: string;
  seed: number;
  prompt: string;
}

function readManifest(dir: string): Entry[] {
  const text = fs.readFileSync(path.join(dir, 'manifest.jsonl'), 'utf8');
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Entry);
}

/** index -> the image file's bytes; with `lastWins` a later manifest line for an index replaces an earlier one. */
function imagesByIndex(dir: string, lastWins = false): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (const e of readManifest(dir)) {
    assert.ok(lastWins || !out.has(e.index), `index ${e.index} twice in ${dir}`);
    out.set(e.index, fs.readFileSync(path.join(dir, e.file)));
  }
  return out;
}

describe('generate (library)', function () {
  this.timeout(300_000);
  let work: string;
  let model: string;
  let promptFile: string;

  const options = (out: string, extra: Partial<GenerateOptions> = {}): GenerateOptions => ({
    modelDir: model,
    out,
    batchSize: 1,
    seed: 1234n,
    device: 'cpu',
    format: 'png',
    nameTemplate: '{index:06}-{seed}',
    resume: false,
    strict: false,
    ...extra,
  });

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-generate-'));
    model = path.join(work, 'model');
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: model });
    promptFile = path.join(work, 'prompts.txt');
    fs.writeFileSync(promptFile, PROMPTS.join('\n') + '\n');
  });
  after(() => fs.rmSync(work, { recursive: true, force: true }));

  it('the same (prompt, seed) gives byte-identical PNGs at batch sizes 1, 3 and 8 and under a 2-way shard split', async () => {
    const runs = new Map<string, Map<number, Buffer>>();
    for (const batchSize of [1, 3, 8]) {
      const out = path.join(work, `batch-${batchSize}`);
      const summary = await generateImages(promptFile, options(out, { batchSize }));
      assert.equal(summary.images, 8);
      assert.equal(summary.prompts_read, 8);
      runs.set(`batch ${batchSize}`, imagesByIndex(out));
    }
    const sharded = new Map<number, Buffer>();
    for (const index of [0, 1]) {
      const out = path.join(work, `shard-${index}`);
      const summary = await generateImages(promptFile, options(out, { batchSize: 3, shard: { index, count: 2 } }));
      assert.equal(summary.images, 4);
      for (const [i, bytes] of imagesByIndex(out)) {
        assert.equal(i % 2, index, `shard ${index}/2 holds prompt ${i}`);
        sharded.set(i, bytes);
      }
    }
    runs.set('shards 0/2 + 1/2', sharded);

    const reference = runs.get('batch 1')!;
    assert.deepEqual([...reference.keys()].sort(), [0, 1, 2, 3, 4, 5, 6, 7]);
    for (const [what, run] of runs) {
      assert.equal(run.size, 8, what);
      for (const [i, bytes] of reference) assert.ok(run.get(i)!.equals(bytes), `${what}: image ${i} differs from batch 1`);
    }
    // Prompts 0 and 6 are the same text with seeds 1234 and 1240: different images; distinct prompts differ too.
    const pixels = async (b: Buffer) => (await sharp(b).raw().toBuffer()).toString('hex');
    assert.notEqual(await pixels(reference.get(0)!), await pixels(reference.get(6)!));
    assert.notEqual(await pixels(reference.get(0)!), await pixels(reference.get(1)!));
  });

  it('resume skips what the manifest holds, regenerates what lost its file, and leaves no stale temp files', async () => {
    const out = path.join(work, 'resume');
    const first = await generateImages(promptFile, options(out, { batchSize: 4 }));
    assert.equal(first.images, 8);
    const before = imagesByIndex(out);
    const entries = readManifest(out);
    // Lose image 5's file, and leave a temp file as a SIGKILLed run would (pid 2^22+1 is above Linux's pid_max).
    fs.rmSync(path.join(out, entries.find((e) => e.index === 5)!.file));
    const stale = path.join(out, `.000003-1237.png.tmp-${2 ** 22 + 1}-0123abcd`);
    fs.writeFileSync(stale, 'partial');

    const second = await generateImages(promptFile, options(out, { batchSize: 4, resume: true }));
    assert.equal(second.images, 1);
    assert.equal(second.skipped_existing, 7);
    assert.ok(!fs.existsSync(stale), 'stale temp file removed');
    const lines = readManifest(out);
    assert.equal(lines.length, 9, 'one more line, for the regenerated image');
    assert.deepEqual(lines.at(-1)!.index, 5);
    const after = imagesByIndex(out, true);
    for (const [i, bytes] of before) assert.ok(after.get(i)!.equals(bytes), `image ${i}`);
  });

  it('two runs into one output folder: the second is refused naming the first; each prompt is done once', async () => {
    const out = path.join(work, 'concurrent');
    const results = await Promise.allSettled([generateImages(promptFile, options(out)), generateImages(promptFile, options(out))]);
    const done = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected');
    assert.equal(done.length, 1);
    assert.equal(refused.length, 1);
    assert.ok(refused[0].reason instanceof OnestepError);
    assert.match(refused[0].reason.message, new RegExp(`is in use by another run \\(process ${process.pid}: onestep generate `));
    assert.equal(readManifest(out).length, 8);
    assert.ok(!fs.existsSync(path.join(out, '.onestep.lock')), 'lock released');
  });

  it('resume stops, saying what changed, when a done prompt was made with other settings; same settings skip all', async () => {
    const out = path.join(work, 'resume-changed');
    await generateImages(promptFile, options(out, { batchSize: 4 }));
    const lines = fs.readFileSync(path.join(out, 'manifest.jsonl'), 'utf8');
    const first = readManifest(out)[0] as Entry & Record<string, unknown>;
    assert.equal(first.prediction, 'epsilon');
    assert.equal(typeof first.timestep, 'number');
    assert.match(String(first.model_id), /^[0-9a-f]{16}$/);
    const edited = path.join(work, 'edited.txt');
    fs.writeFileSync(edited, PROMPTS.map((p, i) => (i === 2 ? 'a different third prompt' : p)).join('\n') + '\n');
    for (const [what, file, extra, pattern] of [
      ['seed', promptFile, { seed: 99n }, /prompt 0 \(line 1\).*seed: "1234" -> "99"/],
      ['timestep', promptFile, { timestep: 500 }, /prompt 0 .*timestep: "\d+" -> "500"/],
      ['prompt text', edited, {}, /prompt 2 \(line 3\).*prompt text: "an astronaut riding a horse, highly detailed, 4k" -> "a different third prompt"/],
      ['negative prompt', promptFile, { negativePrompt: 'blurry' }, /negative_prompt: "" -> "blurry"/],
    ] as const) {
      await assert.rejects(generateImages(file, options(out, { batchSize: 4, resume: true, ...extra })), (e: unknown) => {
        assert.ok(e instanceof OnestepError, `${what}: ${e}`);
        assert.match(e.message, pattern, what);
        assert.match(e.hint ?? '', /another folder with -o/);
        return true;
      });
      assert.equal(fs.readFileSync(path.join(out, 'manifest.jsonl'), 'utf8'), lines, `${what}: nothing written`);
    }
    const same = await generateImages(promptFile, options(out, { batchSize: 4, resume: true }));
    assert.equal(same.images, 0);
    assert.equal(same.skipped_existing, 8);
    // A manifest written before these fields existed (no model_id, prediction, timestep, prompt_sha256) still resumes.
    const old = lines.split('\n').filter(Boolean).map((l) => {
      const { model_id, prediction, timestep, prompt_sha256, ...rest } = JSON.parse(l);
      return JSON.stringify(rest);
    });
    fs.writeFileSync(path.join(out, 'manifest.jsonl'), old.join('\n') + '\n');
    assert.equal((await generateImages(promptFile, options(out, { batchSize: 4, resume: true }))).skipped_existing, 8);
  });

  it('a file in the output folder that the manifest does not record is never overwritten by a colliding name', async () => {
    const out = path.join(work, 'foreign');
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, '000000-1234.png'), 'the user\'s own file');
    await generateImages(promptFile, options(out, { batchSize: 4 }));
    assert.equal(fs.readFileSync(path.join(out, '000000-1234.png'), 'utf8'), 'the user\'s own file');
    const first = readManifest(out).find((e) => e.index === 0)!;
    assert.equal(first.file, '000000-1234-0.png');
    assert.ok(fs.statSync(path.join(out, first.file)).size > 100);
  });

  it('NaN/Inf from the model: reported per prompt, never written nor recorded (guidance 1e38 overflows float32)', async () => {
    const out = path.join(work, 'non-finite');
    const warnings: string[] = [];
    const summary = await generateImages(promptFile, options(out, { batchSize: 3, guidance: 1e38, onWarning: (w) => warnings.push(w) }));
    assert.equal(summary.images, 0);
    assert.equal(summary.non_finite, 8);
    assert.equal(warnings.filter((w) => /^prompt \d+ \(line \d+\): the (denoiser|decoder) gave NaN or Inf.*not written/.test(w)).length, 8, warnings.join('\n'));
    assert.equal(fs.readFileSync(path.join(out, 'manifest.jsonl'), 'utf8'), '');
    assert.deepEqual(fs.readdirSync(out).filter((f) => f.endsWith('.png')), []);
  });

  it('a 1 MB prompt line with --format jpeg: generated (CLIP keeps its first 77 tokens), written, the run goes on', async () => {
    const out = path.join(work, 'huge-prompt');
    const file = path.join(work, 'huge.txt');
    const huge = 'a watercolor painting of a lighthouse, '.repeat(27_000);
    fs.writeFileSync(file, ['a photo of a cat', huge, 'a red car'].join('\n') + '\n');
    const warnings: string[] = [];
    const summary = await generateImages(file, options(out, { batchSize: 2, format: 'jpeg', onWarning: (w) => warnings.push(w) }));
    assert.equal(summary.images, 3);
    assert.deepEqual(readManifest(out).map((e) => e.index).sort(), [0, 1, 2]);
    assert.ok(warnings.some((w) => /^prompt 1 \(line 2\): .*longer than 77 tokens/.test(w)), warnings.join('\n'));
  });

  it('progress hooks: onReady once the model is loaded, before any image; --resume reports the done images it skips', async () => {
    const out = path.join(work, 'progress');
    await generateImages(promptFile, options(out, { batchSize: 4 }));
    for (const e of readManifest(out).filter((x) => x.index % 4 === 1)) fs.rmSync(path.join(out, e.file));
    const events: string[] = [];
    let skipped = 0;
    const summary = await generateImages(promptFile, options(out, {
      batchSize: 4,
      resume: true,
      onReady: () => events.push('ready'),
      onSkip: (n) => (skipped = n),
      onImage: (done) => events.push(`image ${done}`),
    }));
    assert.deepEqual(events, ['ready', 'image 1', 'image 2']);
    assert.equal(skipped, 6);
    assert.equal(summary.skipped_existing, 6);
  });

  it('an aborted signal stops reading: the batches in flight finish and are recorded', async () => {
    const out = path.join(work, 'abort');
    const source = new PassThrough();
    const controller = new AbortController();
    source.write(PROMPTS.slice(0, 3).join('\n') + '\n');
    let summary: GenerateSummary | undefined;
    const run = generateImages(source, {
      ...options(out, { batchSize: 1, signal: controller.signal }),
      onImage: () => {
        if (!controller.signal.aborted) {
          controller.abort();
          // More prompts after the stop: they must not be read into new batches.
          source.end(Array.from({ length: 1000 }, (_, i) => `late prompt ${i}`).join('\n'));
        }
      },
    }).then((s) => (summary = s));
    await run;
    assert.ok(summary!.interrupted);
    assert.ok(summary!.images >= 1 && summary!.images <= 3, `${summary!.images} images`);
    const entries = readManifest(out);
    assert.equal(entries.length, summary!.images);
    for (const e of entries) assert.ok(fs.existsSync(path.join(out, e.file)));
  });

  it('a quiet source does not hold back a partial batch: 3 prompts of a batch of 8 run while the stream stays open', async () => {
    const out = path.join(work, 'quiet');
    const source = new PassThrough();
    source.write(PROMPTS.slice(0, 3).join('\n') + '\n');
    let seen = 0;
    let allThree: () => void;
    const three = new Promise<void>((resolve) => (allThree = resolve));
    const run = generateImages(source, {
      ...options(out, { batchSize: 8 }),
      onImage: (done) => {
        seen = done;
        if (done === 3) allThree();
      },
    });
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(`only ${seen} images while the stream is open`)), 120_000));
    await Promise.race([three, timeout]);
    source.end(PROMPTS[3] + '\n');
    const summary = await run;
    assert.equal(summary.images, 4);
    // Batch-invariant: the same bytes as a batch-of-1 run (the first test's, or made here when run alone).
    const referenceDir = path.join(work, 'batch-1');
    if (!fs.existsSync(referenceDir)) await generateImages(promptFile, options(referenceDir));
    const reference = imagesByIndex(referenceDir);
    for (const [i, bytes] of imagesByIndex(out)) assert.ok(bytes.equals(reference.get(i)!), `image ${i}`);
  });

  it('refuses a --width that is not a multiple of 8 before any prompt runs', async () => {
    const out = path.join(work, 'width');
    await assert.rejects(generateImages(promptFile, options(out, { width: 60 })), (e: unknown) => {
      assert.ok(e instanceof OnestepError);
      assert.match(e.message, /width must be a multiple of 8, got 60/);
      return true;
    });
    assert.ok(!fs.existsSync(path.join(out, 'manifest.jsonl')) || readManifest(out).length === 0);
  });
});
