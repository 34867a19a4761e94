import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BadInputError } from '../../src/errors.js';
import { MODEL_FORMAT, MODEL_FORMAT_VERSION, readModelManifest } from '../../src/runtime/model-dir.js';

describe('runtime/model-dir', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'onestep-model-dir-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  async function refuses(file: string, message: RegExp, hint: RegExp): Promise<void> {
    await assert.rejects(readModelManifest(dir), (e: unknown) => {
      assert.ok(e instanceof BadInputError, String(e));
      assert.equal(e.file, file);
      assert.match(e.message, message);
      assert.match(e.hint ?? '', hint);
      return true;
    });
  }

  it('a model.json of the right format and version but without the fields a model needs is refused naming one', async () => {
    // A converted model.json is read back as is: test/runtime/model-check.test.ts.
    const manifest = { format: MODEL_FORMAT, version: MODEL_FORMAT_VERSION, family: 'sd1', files: { unet: 'unet.onnx' } };
    await writeFile(join(dir, 'model.json'), JSON.stringify(manifest));
    await refuses(join(dir, 'model.json'), /dtype must be "float32" or "float16"/, /Convert the checkpoint again/);
  });

  it('a folder without model.json', async () => {
    await refuses(dir, /not a onestep model directory/, /onestep convert <checkpoint> -o/);
  });

  it('model.json that is not JSON, of another format, or of a newer version', async () => {
    const file = join(dir, 'model.json');
    await writeFile(file, '{"format": ');
    await refuses(file, /invalid JSON/, /Convert the checkpoint again/);
    await writeFile(file, JSON.stringify({ format: 'other', version: 1 }));
    await refuses(file, /format is "other", expected "onestep-model"/, /onestep convert/);
    await writeFile(file, JSON.stringify({ format: MODEL_FORMAT, version: MODEL_FORMAT_VERSION + 1 }));
    await refuses(file, /newer than this onestep understands/, /Upgrade onestep/);
  });
});
