import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PickleError } from '../../src/pytorch/pickle.js';
import { ZipArchive } from '../../src/pytorch/zip.js';
import { PT } from './helpers.js';

async function archive(bytes: Uint8Array): Promise<ZipArchive> {
  const dir = await mkdtemp(join(tmpdir(), 'onestep-zip-'));
  try {
    await writeFile(join(dir, 'x.pt'), bytes);
    const h = await open(join(dir, 'x.pt'), 'r');
    try {
      return await ZipArchive.open(h, 'x.pt', bytes.length);
    } finally {
      await h.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('pytorch/zip', () => {
  it("reads torch.save's records from the central directory (zip64 end record, data descriptors, 64-byte alignment)", async () => {
    const bytes = readFileSync(join(PT, 'dtypes.pt'));
    const zip = await archive(bytes);
    // The fixture listing: data.pkl at 64 (1704 bytes), data/0 at 1856 (60), data/12 at 2368 (0 bytes), version "3\n".
    assert.deepEqual(zip.records.get('dtypes/data.pkl'), { name: 'dtypes/data.pkl', size: 1704, dataOffset: 64 });
    assert.deepEqual(zip.records.get('dtypes/data/0'), { name: 'dtypes/data/0', size: 60, dataOffset: 1856 });
    assert.deepEqual(zip.records.get('dtypes/data/12'), { name: 'dtypes/data/12', size: 0, dataOffset: 2368 });
    const version = zip.records.get('dtypes/version')!;
    assert.equal(bytes.subarray(version.dataOffset, version.dataOffset + version.size).toString(), '3\n');
    assert.equal(zip.records.size, 22);
  });

  it('refuses damaged directories with one PickleError: truncated, offsets outside, compressed records', async () => {
    const bytes = readFileSync(join(PT, 'dtypes.pt'));
    const refused = async (b: Uint8Array, message: RegExp) =>
      assert.rejects(archive(b), (e: unknown) => e instanceof PickleError && e.rule === 'zip' && message.test(e.message));
    await refused(bytes.subarray(0, bytes.length - 30), /no end-of-central-directory record/);
    // Point the first central entry's local header past the data section.
    const cd = bytes.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    const far = Buffer.from(bytes);
    far.writeUInt32LE(0xfffffff0, cd + 42);
    await refused(far, /zip64 field of dtypes\/data\.pkl is too short|outside the data section/);
    const deflated = Buffer.from(bytes);
    deflated.writeUInt16LE(8, cd + 10);
    await refused(deflated, /compressed \(method 8\)/);
  });
});
