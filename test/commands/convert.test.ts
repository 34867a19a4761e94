/**
 * `onestep convert` end to end: the built CLI (`node bin/run.js`, from dist/) in a child process, as a user runs it.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { onestep } from '../support/cli.js';
import { FIXTURES, ROOT, goldens, relErr } from '../support/fixtures.js';

/** The text encoder of a converted model reproduces the golden embeddings. */
async function textEncoderError(dir: string, model: 'tiny-sd15' | 'tiny-sd21'): Promise<number> {
  const g = goldens(model);
  const ids = g.get('te.input_ids')!;
  const session = await ort.InferenceSession.create(join(dir, 'text_encoder.onnx'));
  try {
    const out = await session.run({ input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.data, (x) => BigInt(x)), ids.shape) });
    return relErr(out.last_hidden_state.data as Float32Array, g.get('te.last_hidden_state')!.data);
  } finally {
    await session.release();
  }
}

/** A failed run: non-zero exit, one `Error: ...` line, no stack trace. */
function assertCleanFailure(res: { code: number; stdout: string; stderr: string }, message: RegExp): void {
  assert.notEqual(res.code, 0, res.stdout);
  const lines = res.stderr.split('\n');
  const errorLines = lines.filter((l) => /\bError: /.test(l));
  assert.equal(errorLines.length, 1, res.stderr);
  assert.match(errorLines[0], message);
  assert.ok(!lines.some((l) => l.startsWith('    at ')), `stack trace in:\n${res.stderr}`);
}

describe('onestep convert (spawned CLI)', function () {
  this.timeout(120_000);
  let work: string;
  let models: string;

  before(function () {
    if (!existsSync(join(ROOT, 'dist', 'commands', 'convert.js'))) {
      this.timeout(300_000);
      execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'pipe' });
    }
  });
  beforeEach(() => {
    work = mkdtempSync(join(tmpdir(), 'onestep-cli-convert-'));
    models = join(work, 'models');
    mkdirSync(models);
  });
  afterEach(() => rmSync(work, { recursive: true, force: true }));

  it('--quantize int8: int8 UNet and decoder, said on stdout and in a note; with --dtype fp16 one clear error', async () => {
    const out = join(models, 'sd15-int8');
    const res = await onestep('convert', join(FIXTURES, 'tiny-sd15.safetensors'), '-o', out, '--quantize', 'int8');
    assert.equal(res.code, 0, res.stderr);
    assert.equal(res.stdout, `${out}: sd1, float32 (int8 UNet and decoder), recipe default (epsilon at t=999, guidance 0)\n`);
    assert.match(res.stderr, /note: int8: unet \d+ convs \+ \d+ matmuls, vae_decoder \d+ convs \+ \d+ matmuls, activation ranges calibrated on/);
    const refused = await onestep('convert', join(FIXTURES, 'tiny-sd15.safetensors'), '-o', join(models, 'x'), '--quantize', 'int8', '--dtype', 'fp16');
    assertCleanFailure(refused, /--quantize int8 makes int8 graphs for the CPU from float32 ones/);
    assert.ok(!existsSync(join(models, 'x')));
  });

  it('converts a single file: summary on stdout, progress and notes on stderr, exit 0, a working model', async () => {
    const out = join(models, 'sd15');
    const res = await onestep('convert', join(FIXTURES, 'tiny-sd15.safetensors'), '-o', out);
    assert.equal(res.code, 0, res.stderr);
    assert.equal(res.stdout, `${out}: sd1, float32, recipe default (epsilon at t=999, guidance 0)\n`);
    assert.match(res.stderr, /converted .*tiny-sd15\.safetensors -> .*sd15 \([\d.]+ MB of weights in [\d.]+ s\)/);
    assert.match(res.stderr, /note: configs from .*tiny-sd15 \(unet, vae, text_encoder\)/);
    assert.deepEqual(readdirSync(models), ['sd15']);
    const files = readdirSync(out).sort();
    for (const f of ['model.json', 'text_encoder.onnx', 'unet.onnx', 'vae_decoder.onnx', 'vae_encoder.onnx', 'tokenizer']) assert.ok(files.includes(f), f);
    assert.ok((await textEncoderError(out, 'tiny-sd15')) <= 1e-4);
  });

  it('--dtype fp16 --recipe --quiet --force over an existing folder', async () => {
    const out = join(models, 'sd21');
    mkdirSync(out);
    writeFileSync(join(out, 'old.txt'), 'replaced');
    const args = ['convert', join(FIXTURES, 'tiny-sd21'), '-o', out, '--dtype', 'fp16', '--recipe', 'sd-turbo', '--quiet'];
    const refused = await onestep(...args);
    assertCleanFailure(refused, /sd21 already exists/);
    assert.deepEqual(readdirSync(out), ['old.txt']);

    const res = await onestep(...args, '--force');
    assert.equal(res.code, 0, res.stderr);
    assert.equal(res.stdout, `${out}: sd2, float16, recipe sd-turbo (epsilon at t=999, guidance 0)\n`);
    assert.equal(res.stderr, '', 'quiet: nothing on stderr');
    assert.ok(!readdirSync(out).includes('old.txt'));
    assert.deepEqual(readdirSync(models), ['sd21'], 'no temp siblings left');
    assert.ok((await textEncoderError(out, 'tiny-sd21')) <= 2e-2);
  });

  for (const [what, input, message] of [
    ['a LoRA as the checkpoint', join(FIXTURES, 'loras', 'tiny-sd15-kohya.safetensors'), /^Error: .*tiny-sd15-kohya\.safetensors: is a LoRA/],
    ['a path that does not exist', join(FIXTURES, 'no-such-model.safetensors'), /^Error: .*no-such-model\.safetensors: no such file or folder/],
    ['a folder that is not a diffusers pipeline', join(FIXTURES, 'goldens'), /^Error: .*goldens: is a folder without model_index\.json/],
  ] as const) {
    it(`${what}: exit 1, one Error line, no stack trace, no output folder`, async () => {
      const res = await onestep('convert', input, '-o', join(models, 'out'));
      assertCleanFailure(res, message);
      assert.equal(res.code, 1);
      assert.deepEqual(readdirSync(models), []);
    });
  }

  it('a bad flag value is refused before anything is read', async () => {
    const res = await onestep('convert', join(FIXTURES, 'tiny-sd15'), '-o', join(models, 'out'), '--dtype', 'fp8');
    assertCleanFailure(res, /Expected --dtype=fp8 to be one of: fp32, fp16/);
    assert.deepEqual(readdirSync(models), []);
  });
});
