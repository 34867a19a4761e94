import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DirectFileWriter } from '../../src/io/direct-writer.js';

const MB = 1 << 20;

/** Pieces of every kind a model writer appends: tiny, unaligned, block-sized, larger than two blocks, zero runs. */
function pieces(seed: number): (Uint8Array | number)[] {
  let s = seed;
  const rand = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
  return [bytes(3), 61, bytes(8 * MB), bytes(17 * MB + 5), 0, bytes(1), 4096, bytes(8 * MB - 1), bytes(2 * MB + 777), 13];
}

async function writeAll(path: string, parts: (Uint8Array | number)[], direct?: boolean): Promise<{ expected: Buffer; direct: boolean }> {
  const w = await DirectFileWriter.create(path, { direct });
  const chunks: Uint8Array[] = [];
  for (const p of parts) {
    if (typeof p === 'number') {
      await w.zeros(p);
      chunks.push(new Uint8Array(p));
    } else {
      await w.write(p);
      chunks.push(p);
    }
  }
  const expected = Buffer.concat(chunks);
  assert.equal(w.position, expected.length);
  await w.close();
  return { expected, direct: w.direct };
}

describe('io/direct-writer', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'onestep-direct-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes exactly the appended bytes, with O_DIRECT and through the page cache alike', async () => {
    const parts = pieces(1);
    const direct = await writeAll(join(dir, 'direct.bin'), parts);
    const buffered = await writeAll(join(dir, 'buffered.bin'), parts, false);
    assert.equal(buffered.direct, false);
    // Not a multiple of 4 KiB: the padded last O_DIRECT block is truncated away.
    assert.notEqual(direct.expected.length % 4096, 0);
    assert.ok((await readFile(join(dir, 'direct.bin'))).equals(direct.expected), `direct mode ${direct.direct}`);
    assert.ok((await readFile(join(dir, 'buffered.bin'))).equals(buffered.expected));
  });

  it('writes empty files and files of whole blocks', async () => {
    assert.equal((await writeAll(join(dir, 'empty.bin'), [])).expected.length, 0);
    assert.equal((await stat(join(dir, 'empty.bin'))).size, 0);
    const whole = await writeAll(join(dir, 'whole.bin'), [Uint8Array.from({ length: 16 * MB }, (_, i) => i % 251)]);
    assert.ok((await readFile(join(dir, 'whole.bin'))).equals(whole.expected));
  });

  it('replaces an existing longer file', async () => {
    await writeAll(join(dir, 'f.bin'), [new Uint8Array(9 * MB).fill(9)]);
    const { expected } = await writeAll(join(dir, 'f.bin'), [new Uint8Array(5000).fill(4)]);
    assert.ok((await readFile(join(dir, 'f.bin'))).equals(expected));
  });

  it('on a tmpfs (O_DIRECT refused on older kernels, or taken) the bytes are the same (where one can be mounted)', async function () {
    const mnt = join(dir, 'tmpfs');
    spawnSync('mkdir', [mnt]);
    if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', mnt]).status !== 0) this.skip();
    try {
      const { expected } = await writeAll(join(mnt, 'f.bin'), pieces(2));
      assert.ok((await readFile(join(mnt, 'f.bin'))).equals(expected));
    } finally {
      spawnSync('umount', [mnt]);
    }
  });

  it('a write the device refuses rejects with its error (ENOSPC), and abort closes the file', async function () {
    if (!existsSync('/dev/full')) this.skip();
    const w = await DirectFileWriter.create('/dev/full');
    await assert.rejects(
      (async () => {
        for (let i = 0; i < 4; i++) await w.write(new Uint8Array(8 * MB));
        await w.close();
      })(),
      (e: NodeJS.ErrnoException) => e.code === 'ENOSPC',
    );
    await w.abort();
  });
});
