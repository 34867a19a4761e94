import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BadInputError } from '../src/errors.js';
import { cacheRoot, DEMO_CHECKPOINT, isModelDir, rememberedSha256, resolveModel } from '../src/models.js';
import { FIXTURES, ROOT } from './support/fixtures.js';

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

describe('models', function () {
  this.timeout(300_000);
  let work: string;
  beforeEach(() => (work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-models-'))));
  afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

  it('cacheRoot: ONESTEP_CACHE, else $XDG_CACHE_HOME/onestep, else ~/.cache/onestep', () => {
    assert.equal(cacheRoot({ ONESTEP_CACHE: '/c', XDG_CACHE_HOME: '/x' }), '/c');
    assert.equal(cacheRoot({ XDG_CACHE_HOME: '/x' }), path.join('/x', 'onestep'));
    assert.equal(cacheRoot({}), path.join(os.homedir(), '.cache', 'onestep'));
  });

  it('the demo checkpoint is the bundled tiny SD 1.5 single file', () => {
    assert.equal(DEMO_CHECKPOINT, path.join(ROOT, 'assets', 'demo', 'tiny-sd15.safetensors'));
    assert.equal(sha256(DEMO_CHECKPOINT), sha256(path.join(FIXTURES, 'tiny-sd15.safetensors')));
  });

  it('no --model and no ONESTEP_MODEL: the demo, converted once into the cache, then reused', async () => {
    const env = { ONESTEP_CACHE: path.join(work, 'cache') };
    const first = await resolveModel({ env });
    assert.ok(first.notes.some((n) => /bundled demo model/.test(n)), first.notes.join('\n'));
    assert.ok(first.notes.some((n) => /^converting .*tiny-sd15\.safetensors into /.test(n)), first.notes.join('\n'));
    assert.equal(path.dirname(first.dir), path.join(env.ONESTEP_CACHE, 'models'));
    assert.ok(isModelDir(first.dir));
    const manifest = JSON.parse(fs.readFileSync(path.join(first.dir, 'model.json'), 'utf8'));
    assert.equal(manifest.source.sha256, sha256(DEMO_CHECKPOINT));
    assert.equal(manifest.dtype, 'float32');
    const stamp = fs.statSync(path.join(first.dir, 'model.json')).mtimeMs;

    const second = await resolveModel({ env });
    assert.equal(second.dir, first.dir);
    assert.ok(second.notes.some((n) => n.startsWith('using the converted model cached in')), second.notes.join('\n'));
    assert.ok(!second.notes.some((n) => n.startsWith('converting')));
    assert.equal(fs.statSync(path.join(first.dir, 'model.json')).mtimeMs, stamp);

    // Another dtype is another cache entry; a folder left by hand (no model.json) at the key is replaced.
    const fp16 = await resolveModel({ env, dtype: 'float16' });
    assert.notEqual(fp16.dir, first.dir);
    assert.equal(JSON.parse(fs.readFileSync(path.join(fp16.dir, 'model.json'), 'utf8')).dtype, 'float16');
    fs.rmSync(fp16.dir, { recursive: true });
    fs.mkdirSync(fp16.dir);
    fs.writeFileSync(path.join(fp16.dir, 'junk.txt'), 'x');
    const rebuilt = await resolveModel({ env, dtype: 'float16' });
    assert.equal(rebuilt.dir, fp16.dir);
    assert.ok(isModelDir(rebuilt.dir));
    assert.ok(!fs.existsSync(path.join(rebuilt.dir, 'junk.txt')));
  });

  it('ONESTEP_MODEL names the model when --model is not given; --model wins; a model directory is used as is', async () => {
    const cache = path.join(work, 'cache');
    const fromEnv = await resolveModel({ env: { ONESTEP_CACHE: cache, ONESTEP_MODEL: path.join(FIXTURES, 'tiny-sd21') } });
    assert.ok(!fromEnv.notes.some((n) => /demo/.test(n)));
    const manifest = JSON.parse(fs.readFileSync(path.join(fromEnv.dir, 'model.json'), 'utf8'));
    assert.equal(manifest.family, 'sd2');

    // A converted directory (here the cache entry itself) is taken as is, whatever ONESTEP_MODEL says.
    const direct = await resolveModel({ model: fromEnv.dir, loras: [{ path: 'x.safetensors', scale: 1 }], env: { ONESTEP_MODEL: DEMO_CHECKPOINT } });
    assert.equal(direct.dir, fromEnv.dir);
    assert.ok(direct.notes.some((n) => /--lora is ignored/.test(n)));
  });

  it('rememberedSha256: the checkpoint hash (file or folder) is computed once per file state, then read back', async () => {
    const root = path.join(work, 'cache');
    const file = path.join(work, 'ckpt.safetensors');
    fs.copyFileSync(path.join(FIXTURES, 'tiny-sd15.safetensors'), file);
    assert.equal(await rememberedSha256(file, root), sha256(file));
    const [memo] = fs.readdirSync(path.join(root, 'hashes'));
    // What is remembered is what is returned: plant a different value to see that the second call reads it back.
    const planted = 'f'.repeat(64);
    fs.writeFileSync(path.join(root, 'hashes', memo), planted);
    assert.equal(await rememberedSha256(file, root), planted);
    // Any change of size or mtime is a new state: hashed again.
    fs.appendFileSync(file, 'x');
    assert.equal(await rememberedSha256(file, root), sha256(file));
    assert.equal(fs.readdirSync(path.join(root, 'hashes')).length, 2);

    // A folder: the same value as sha256Path's formula (independently: relative path NUL sha256 per file, sorted).
    const folder = path.join(FIXTURES, 'tiny-sd21');
    const files: string[] = [];
    const walk = (rel: string) => {
      for (const e of fs.readdirSync(path.join(folder, rel), { withFileTypes: true })) {
        if (e.isDirectory()) walk(path.posix.join(rel, e.name));
        else files.push(path.posix.join(rel, e.name));
      }
    };
    walk('');
    const h = createHash('sha256');
    for (const f of files.sort()) h.update(`${f}\0${sha256(path.join(folder, f))}\n`);
    assert.equal(await rememberedSha256(folder, root), h.digest('hex'));
  });

  it('rememberedSha256: folders that differ only in a symlinked unet/ get different hashes (so different cache keys)', async () => {
    const root = path.join(work, 'cache');
    const unets = ['u1', 'u2'].map((n) => {
      fs.mkdirSync(path.join(work, n));
      fs.writeFileSync(path.join(work, n, 'diffusion_pytorch_model.safetensors'), n);
      return path.join(work, n);
    });
    const [a, b] = ['a', 'b'].map((n, i) => {
      fs.mkdirSync(path.join(work, n));
      fs.writeFileSync(path.join(work, n, 'model_index.json'), '{}');
      fs.symlinkSync(unets[i], path.join(work, n, 'unet'));
      return path.join(work, n);
    });
    assert.notEqual(await rememberedSha256(a, root), await rememberedSha256(b, root));
    // Re-pointing a's link to u2 is a new state, not the remembered u1 hash.
    fs.rmSync(path.join(a, 'unet'));
    fs.symlinkSync(unets[1], path.join(a, 'unet'));
    assert.equal(await rememberedSha256(a, root), await rememberedSha256(b, root));
  });

  it('a model path that does not exist: one clear BadInputError naming it', async () => {
    await assert.rejects(resolveModel({ model: path.join(work, 'nope.safetensors'), env: { ONESTEP_CACHE: work } }), (e: unknown) => {
      assert.ok(e instanceof BadInputError);
      assert.match(e.message, /nope\.safetensors: no such file or folder/);
      return true;
    });
  });

  it('concurrent conversions of one checkpoint share one cache folder and both succeed', async () => {
    const env = { ONESTEP_CACHE: path.join(work, 'cache') };
    const model = path.join(FIXTURES, 'tiny-sd15.safetensors');
    // The inode of model.json as each call returns: a later finisher must not replace the folder the first one handed out.
    const seen: number[] = [];
    const resolveOnce = () => resolveModel({ model, env }).then((r) => (seen.push(fs.statSync(path.join(r.dir, 'model.json')).ino), r));
    const [a, b] = await Promise.all([resolveOnce(), resolveOnce()]);
    assert.equal(a.dir, b.dir);
    const final = fs.statSync(path.join(a.dir, 'model.json')).ino;
    assert.deepEqual(seen, [final, final]);
    assert.ok(isModelDir(a.dir));
    assert.deepEqual(fs.readdirSync(path.join(env.ONESTEP_CACHE, 'models')), [path.basename(a.dir)], 'no temp folders left');
  });
});
