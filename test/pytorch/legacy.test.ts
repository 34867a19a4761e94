import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PickleError, PyDict } from '../../src/pytorch/pickle.js';
import { isLegacy, isPickleStream, readLegacy } from '../../src/pytorch/legacy.js';
import { TensorRef, torchGlobals } from '../../src/pytorch/torch.js';
import { Ops, PT, legacyCheckpoint } from './helpers.js';

const read = (bytes: Uint8Array) =>
  readLegacy('x.pt', bytes, bytes.length, torchGlobals(), async (o) => Buffer.from(bytes).readBigInt64LE(o));

describe('pytorch/legacy', () => {
  it('dtypes-legacy.pt: five pickles, storages located by the sorted key list (the listing\'s offsets)', async () => {
    const bytes = readFileSync(join(PT, 'dtypes-legacy.pt'));
    assert.ok(isLegacy(bytes) && isPickleStream(bytes));
    const { root, dataOffsets, storages } = await read(bytes);
    assert.ok(root.value instanceof PyDict);
    assert.equal(root.end, 2114);
    assert.equal(storages.size, 20);
    // The first key in file order starts right after the key-list pickle (which ends at 2544) and its int64 count.
    assert.equal(dataOffsets.get('106334465877440'), 2544 + 8);
    const f32 = (root.value as PyDict).map.get('f32') as TensorRef;
    assert.deepEqual([f32.shape, f32.stride, f32.storage.type.dtype], [[3, 5], [5, 1], 'F32']);
  });

  it('checks every storage against the pickle and the bytes left', async () => {
    const object = new Ops().proto(2).emptyDict().str('w').floatTensor('7', 2, [2], [1]).setitem().stop().done();
    assert.equal((await read(legacyCheckpoint(object, { '7': [1, 2] }))).dataOffsets.size, 1);
    const rule = (r: string) => (e: unknown) => e instanceof PickleError && e.rule === r;
    await assert.rejects(read(legacyCheckpoint(object, { '7': [1, 2, 3] })), rule('legacy-numel'));
    await assert.rejects(read(legacyCheckpoint(object, { '7': [1, 2], '8': [1] })), rule('legacy-keys'));
    await assert.rejects(read(legacyCheckpoint(object, {})), rule('missing-storage'));
    const full = legacyCheckpoint(object, { '7': [1, 2] });
    await assert.rejects(read(full.subarray(0, full.length - 1)), rule('storage-truncated'));
    const bigEndian = Buffer.from(full);
    bigEndian[bigEndian.indexOf(Buffer.from('little_endian')) + 'little_endian'.length] = 0x89;
    await assert.rejects(read(bigEndian), rule('byte-order'));
  });
});
