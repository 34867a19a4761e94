import assert from 'node:assert/strict';
import { copyFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PickleError } from '../../src/pytorch/pickle.js';
import { PyTorchFile } from '../../src/pytorch/tensor-file.js';
import { SafetensorsError } from '../../src/safetensors/errors.js';
import { SafetensorsFile } from '../../src/safetensors/reader.js';
import { isPyTorchFile, openTensorFile } from '../../src/safetensors/tensor-file.js';
import { PT } from '../pytorch/helpers.js';
import { makeTempDir } from './helpers.js';

describe('safetensors/tensor-file', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await makeTempDir()));
  afterEach(() => cleanup());

  it('decides by content: a torch zip, a legacy file and safetensors are read as what they are, whatever their names', async () => {
    const cases: [string, string, 'zip' | 'legacy' | 'safetensors'][] = [
      ['dtypes.pt', 'a.bin', 'zip'],
      ['dtypes.pt', 'renamed.safetensors', 'zip'],
      ['dtypes-legacy.pt', 'b.ckpt', 'legacy'],
      ['dtypes-legacy.pt', 'c.pth', 'legacy'],
      ['dtypes.safetensors', 'd.bin', 'safetensors'],
      ['dtypes.safetensors', 'e.safetensors', 'safetensors'],
    ];
    for (const [from, name, want] of cases) {
      await copyFile(join(PT, from), join(dir, name));
      const f = await openTensorFile(join(dir, name));
      try {
        assert.equal(isPyTorchFile(f) ? (f as PyTorchFile).container : f instanceof SafetensorsFile ? 'safetensors' : '?', want, name);
        assert.equal(f.tensors.size, 22);
        assert.deepEqual([...(await f.readF32('f32'))].length, 15);
      } finally {
        await f.close();
      }
    }
  });

  it('a PyTorch name with neither format inside, a raw pickle, and a damaged safetensors each give one clear error', async () => {
    await writeFile(join(dir, 'x.pt'), 'not a checkpoint at all');
    await assert.rejects(openTensorFile(join(dir, 'x.pt')), (e: unknown) => e instanceof PickleError && e.rule === 'not-pytorch' && /x\.pt/.test(e.message));
    await writeFile(join(dir, 'y.safetensors'), Uint8Array.of(0x80, 0x02, 0x4b, 0x05, 0x2e));
    await assert.rejects(openTensorFile(join(dir, 'y.safetensors')), (e: unknown) => e instanceof PickleError && e.rule === 'legacy-magic');
    await writeFile(join(dir, 'z.safetensors'), Uint8Array.of(1, 2, 3));
    await assert.rejects(openTensorFile(join(dir, 'z.safetensors')), (e: unknown) => e instanceof SafetensorsError);
    await assert.rejects(openTensorFile(join(dir, 'absent.bin')), (e: unknown) => e instanceof SafetensorsError && e.rule === 'not-found');
  });
});
