import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BadInputError } from '../../src/errors.js';
import { listTar, readTar, tarArchive, BLOCK } from '../../src/io/tar.js';
import { mulberry32 } from '../support/random.js';

function randomBytes(n: number, seed: number): Buffer {
  const rnd = mulberry32(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = rnd() & 0xff;
  return b;
}

function hasPython(): boolean {
  try {
    execFileSync('python3', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('io/tar', () => {
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-tar-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  // Sizes around the 512-byte block edges, an empty member, a name over the 100-byte ustar field, a non-ASCII name.
  const members = [
    { name: '000000-1.png', data: randomBytes(1000, 1) },
    { name: '000000-1.txt', data: Buffer.from('a photo of a cat\n') },
    { name: '000000-1.json', data: Buffer.alloc(0) },
    { name: 'block.bin', data: randomBytes(BLOCK, 2) },
    { name: 'two-blocks-less-one.bin', data: randomBytes(2 * BLOCK - 1, 3) },
    { name: `${'long-name-'.repeat(15)}end.txt`, data: Buffer.from('long') },
    { name: 'café-日本.txt', data: Buffer.from('utf8 name') },
  ];

  it('our reader, GNU tar and Python tarfile read back every member, in order, byte for byte', () => {
    const file = path.join(dir, 'a.tar');
    fs.writeFileSync(file, tarArchive(members));
    return readTar(file).then((got) => {
      assert.deepEqual(got.map((m) => m.name), members.map((m) => m.name));
      for (let i = 0; i < members.length; i++) assert.ok(got[i].data.equals(members[i].data), members[i].name);

      const listed = execFileSync('tar', ['-tf', file], { encoding: 'utf8' }).trimEnd().split('\n');
      assert.deepEqual(listed, members.map((m) => m.name));
      const out = path.join(dir, 'x');
      fs.mkdirSync(out);
      execFileSync('tar', ['-xf', file, '-C', out]);
      for (const m of members) assert.ok(fs.readFileSync(path.join(out, m.name)).equals(m.data), `tar -x ${m.name}`);
      // Deterministic headers: mtime 0, uid/gid 0, mode 0644.
      const verbose = execFileSync('tar', ['--numeric-owner', '-tvf', file], { encoding: 'utf8' }).trimEnd().split('\n');
      for (const line of verbose) assert.match(line, /^-rw-r--r-- 0\/0 .* 1970-01-01 00:00 /, line);

      // Python's tarfile too, where this machine has Python (CI images may not).
      if (!hasPython()) return;
      const py = execFileSync('python3', ['-c', 'import sys,tarfile,json\nt=tarfile.open(sys.argv[1])\nprint(json.dumps([[m.name,m.size,m.mtime,m.mode] for m in t.getmembers()]))', file], { encoding: 'utf8' });
      assert.deepEqual(JSON.parse(py), members.map((m) => [m.name, m.data.length, 0, 0o644]));
    });
  });

  it('the same members give byte-identical archives', () => {
    assert.ok(tarArchive(members).equals(tarArchive(members.map((m) => ({ name: m.name, data: Buffer.from(m.data) })))));
  });

  it('reads what GNU tar writes (ustar and GNU long names)', async () => {
    const src = path.join(dir, 'src');
    fs.mkdirSync(src);
    const long = `${'x'.repeat(120)}.txt`;
    fs.writeFileSync(path.join(src, 'short.txt'), 'short');
    fs.writeFileSync(path.join(src, long), 'long');
    for (const format of ['ustar', 'gnu', 'pax']) {
      const file = path.join(dir, `gnu-${format}.tar`);
      const names = format === 'ustar' ? ['short.txt'] : ['short.txt', long];
      execFileSync('tar', [`--format=${format}`, '-cf', file, '-C', src, ...names]);
      const got = await readTar(file);
      assert.deepEqual(got.map((m) => [m.name, m.data.toString()]), names.map((n) => [n, n === long ? 'long' : 'short']), format);
    }
  });

  it('refuses an archive cut short or with a corrupt header, naming the file', async () => {
    const whole = tarArchive(members);
    const cut = path.join(dir, 'cut.tar');
    fs.writeFileSync(cut, whole.subarray(0, whole.length - 2 * BLOCK - 100));
    await assert.rejects(listTar(cut), (e: Error) => e instanceof BadInputError && e.message.includes('cut.tar'));
    const noEnd = path.join(dir, 'noend.tar');
    fs.writeFileSync(noEnd, whole.subarray(0, whole.length - 2 * BLOCK));
    await assert.rejects(listTar(noEnd), /not finished/);
    const bad = Buffer.from(whole);
    bad[10] ^= 1;
    const corrupt = path.join(dir, 'corrupt.tar');
    fs.writeFileSync(corrupt, bad);
    await assert.rejects(listTar(corrupt), /checksum/);
  });
});
