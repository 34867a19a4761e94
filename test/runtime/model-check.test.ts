/**
 * model.json is checked before anything loads: paths stay inside the model folder (item: a `../` graph path used to
 * load a graph from elsewhere and run with exit 0), and a malformed field is one BadInputError naming it.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { convertCheckpoint } from '../../src/convert.js';
import { BadInputError } from '../../src/errors.js';
import { readModelManifest } from '../../src/runtime/model-dir.js';
import { FIXTURES } from '../support/fixtures.js';

describe('runtime/model-check', function () {
  this.timeout(120_000);
  let work: string;
  let model: string;
  let original: Record<string, any>;
  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-model-check-'));
    model = path.join(work, 'model');
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: model });
    original = JSON.parse(fs.readFileSync(path.join(model, 'model.json'), 'utf8'));
    // A graph outside the model folder, as a `../` path could reach.
    fs.mkdirSync(path.join(work, 'elsewhere'));
    fs.copyFileSync(path.join(model, original.denoiser.graph), path.join(work, 'elsewhere', 'unet.onnx'));
  });
  after(() => fs.rmSync(work, { recursive: true, force: true }));
  afterEach(() => fs.writeFileSync(path.join(model, 'model.json'), JSON.stringify(original)));

  const edit = (change: (m: Record<string, any>) => void) => {
    const m = structuredClone(original);
    change(m);
    fs.writeFileSync(path.join(model, 'model.json'), JSON.stringify(m));
  };
  const refused = async (pattern: RegExp) =>
    assert.rejects(readModelManifest(model), (e: unknown) => {
      assert.ok(e instanceof BadInputError, String(e));
      assert.equal(e.file, path.join(model, 'model.json'));
      assert.match(e.message, pattern);
      assert.match(e.hint ?? '', /Convert the checkpoint again/);
      return true;
    });

  it('a converted model.json passes', async () => {
    assert.deepEqual(await readModelManifest(model), original);
  });

  it('graph and tokenizer paths: ../, absolute, a symlink out of the folder, missing, a FIFO', async () => {
    edit((m) => (m.denoiser.graph = '../elsewhere/unet.onnx'));
    await refused(/denoiser\.graph "\.\.\/elsewhere\/unet\.onnx" points outside the model folder/);
    edit((m) => (m.conditioning[0].graph = path.join(work, 'elsewhere', 'unet.onnx')));
    await refused(/conditioning\[0\]\.graph ".*" points outside the model folder/);
    fs.symlinkSync(path.join(work, 'elsewhere'), path.join(model, 'link'));
    edit((m) => (m.decoder.graph = 'link/unet.onnx'));
    await refused(/decoder\.graph "link\/unet\.onnx" is a symlink out of the model folder/);
    edit((m) => (m.conditioning[0].tokenizer = 'no-such-folder'));
    await refused(/conditioning\[0\]\.tokenizer names "no-such-folder", which does not exist/);
    execFileSync('mkfifo', [path.join(model, 'pipe.onnx')]);
    edit((m) => (m.encoder.graph = 'pipe.onnx'));
    await refused(/encoder\.graph "pipe\.onnx" is a named pipe \(FIFO\), not a regular file/);
  });

  it('malformed fields are named: scaling_factor 0, types, ranges', async () => {
    const cases: [(m: Record<string, any>) => void, RegExp][] = [
      [(m) => (m.latent.scaling_factor = 0), /latent\.scaling_factor must be a finite number other than 0, got 0/],
      [(m) => (m.latent.scaling_factor = '0.18'), /latent\.scaling_factor must be a finite number/],
      [(m) => delete m.conditioning, /conditioning must be a non-empty list/],
      [(m) => (m.conditioning[0].max_length = -1), /conditioning\[0\]\.max_length must be a whole number within 1\.\.4096, got -1/],
      [(m) => (m.default_size.width = 100), /default_size\.width 100 is not a multiple of latent\.downscale 8/],
      [(m) => (m.default_size.height = 1e9), /default_size\.height must be a whole number within 8\.\.16384/],
      [(m) => (m.recipe.prediction_type = 'noise'), /recipe\.prediction_type must be one of epsilon/],
      [(m) => (m.recipe.timestep = 5000), /recipe\.timestep must be within 0\.\.1000/],
      [(m) => (m.denoiser = null), /denoiser must be an object/],
      [(m) => (m.dtype = 'int8'), /dtype must be "float32" or "float16"/],
      // Found by the fuzz test: a raw ENAMETOOLONG from stat, and a TypeError for a model.json of `null`.
      [(m) => (m.denoiser.graph = 'x'.repeat(70_000)), /denoiser\.graph "x{77}\.\.\." cannot be used \(ENAMETOOLONG\)/],
    ];
    for (const [change, pattern] of cases) {
      edit(change);
      await refused(pattern);
    }
    for (const text of ['null', '[]', '42']) {
      fs.writeFileSync(path.join(model, 'model.json'), text);
      await refused(/not a model manifest object/);
    }
  });
});
