import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { copyFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OnestepError } from '../src/errors.js';
import { PickleError } from '../src/pytorch/pickle.js';
import { toSafetensors } from '../src/to-safetensors.js';
import { FIXTURES } from './support/fixtures.js';
import { HOSTILE, PT, goldenRaw } from './pytorch/helpers.js';
import { makeTempDir } from './safetensors/helpers.js';

describe('to-safetensors', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await makeTempDir()));
  afterEach(() => cleanup());

  it('both containers of the dtype zoo give the golden tensors, contiguous, with metadata naming the source', async () => {
    const golden = goldenRaw(join(PT, 'dtypes.safetensors'));
    for (const [file, format] of [['dtypes.pt', 'pytorch-zip'], ['dtypes-legacy.pt', 'pytorch-legacy']]) {
      const out = join(dir, `${file}.safetensors`);
      const r = await toSafetensors(join(PT, file), out);
      assert.equal(r.tensors, 22);
      const got = goldenRaw(out);
      assert.deepEqual(got.metadata, { format: 'pt', 'onestep.source': file, 'onestep.source_format': format });
      assert.deepEqual([...got.tensors.keys()].sort(), [...golden.tensors.keys()].sort());
      for (const [name, want] of golden.tensors) {
        const t = got.tensors.get(name)!;
        assert.deepEqual([t.dtype, t.shape], [want.dtype, want.shape], name);
        assert.ok(Buffer.from(t.bytes).equals(Buffer.from(want.bytes)), name);
      }
    }
  });

  it('a Lightning .ckpt: its state_dict as tiny-sd15.safetensors holds it, deterministic, inert globals noted', async () => {
    const a = join(dir, 'a.safetensors');
    const b = join(dir, 'b.safetensors');
    const r = await toSafetensors(join(PT, 'tiny-sd15.ckpt'), a);
    await toSafetensors(join(PT, 'tiny-sd15.ckpt'), b);
    assert.ok(readFileSync(a).equals(readFileSync(b)), 'same input, same bytes');
    assert.equal(r.tensors, 989);
    assert.match(r.notes[0], /989 tensors from its 'state_dict' entry/);
    const got = goldenRaw(a);
    assert.equal(got.metadata['onestep.source_inert_globals'], 'pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint,pytorch_lightning.utilities.parsing.AttributeDict');
    const golden = goldenRaw(join(FIXTURES, 'tiny-sd15.safetensors'));
    assert.equal(got.tensors.size, golden.tensors.size);
    for (const [name, want] of golden.tensors) assert.ok(Buffer.from(got.tensors.get(name)!.bytes).equals(Buffer.from(want.bytes)), name);
  });

  it('refuses an existing output (unless forced), a non-.safetensors name and the input itself; a refused input leaves nothing', async () => {
    const out = join(dir, 'out.safetensors');
    await writeFile(out, 'keep');
    await assert.rejects(toSafetensors(join(PT, 'dtypes.pt'), out), (e: unknown) => e instanceof OnestepError && /already exists/.test(e.message));
    assert.equal(readFileSync(out, 'utf8'), 'keep');
    await toSafetensors(join(PT, 'dtypes.pt'), out, { force: true });
    assert.equal(goldenRaw(out).tensors.size, 22);
    await assert.rejects(toSafetensors(join(PT, 'dtypes.pt'), join(dir, 'out.pt')), /not named \.safetensors/);
    const same = join(dir, 'same.safetensors');
    await copyFile(join(PT, 'dtypes.pt'), same);
    await assert.rejects(toSafetensors(same, same), /is the input/);
    const before = readdirSync(dir).sort();
    await assert.rejects(toSafetensors(join(HOSTILE, 'zip-view-out-of-bounds.pt'), join(dir, 'hostile.safetensors')), PickleError);
    assert.deepEqual(readdirSync(dir).sort(), before, 'no output, no temp file');
  });
});
