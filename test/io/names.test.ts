import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve, relative } from 'node:path';
import { OnestepError } from '../../src/errors.js';
import { DEFAULT_NAME_TEMPLATE, MAX_STEM_BYTES, NameAllocator, NameTemplate, safeFileStem, slug, type NameFields } from '../../src/io/names.js';

const base: NameFields = { index: 7, seed: 1234n, prompt: 'A Red Fox, jumping over: the lazy dog!', width: 512, height: 768 };

describe('io/names', () => {
  it('renders every field with zero padding and slugged, bounded prompts', () => {
    assert.equal(new NameTemplate(DEFAULT_NAME_TEMPLATE).render(base), '000007-1234');
    assert.equal(new NameTemplate('{index:06}-{seed}-{prompt:40}').render(base), '000007-1234-a-red-fox-jumping-over-the-lazy-dog');
    assert.equal(new NameTemplate('{prompt:12}').render(base), 'a-red-fox-ju');
    assert.equal(new NameTemplate('{prompt:6}').render(base), 'a-red', 'a cut never ends in -');
    assert.equal(new NameTemplate('img_{width}x{height}_{seed:8}').render(base), 'img_512x768_00001234');
    assert.equal(new NameTemplate('{name}').render({ ...base, name: 'hero shot' }), 'hero shot');
    assert.equal(new NameTemplate('{name}').render(base), '000007', 'no name falls back to the index');
    assert.equal(slug('Ünïcödé 猫 ＡＢＣ', 20), 'ünïcödé-猫-abc');
  });

  it('rejects bad templates with an OnestepError', () => {
    for (const bad of ['{bogus}', '{index:x}', '{index', 'a}b', '', '{prompt:1:2}']) {
      assert.throws(() => new NameTemplate(bad), OnestepError, bad);
    }
  });

  it('makes names path-safe: no separators, no .., no control characters, bounded length', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onestep-names-'));
    try {
      const nasty = [
        '../../etc/passwd',
        '..',
        '.',
        '/abs/path',
        'C:\\Windows\\system32',
        'tab\there\nnewline\u0000nul\u001b[31m',
        'a<b>c:d"e|f?g*h',
        '.hidden',
        'trailing. ',
        '名前'.repeat(200),
        '\u2028',
      ];
      const t = new NameTemplate('{name}');
      const stems = new Set<string>();
      for (const name of nasty) {
        const stem = t.render({ ...base, name });
        assert.ok(stem.length > 0);
        assert.ok(!/[/\\\u0000-\u001f\u007f<>:"|?*]/.test(stem), JSON.stringify(stem));
        assert.ok(!stem.includes('..'), stem);
        assert.ok(!stem.startsWith('.') && !stem.endsWith('.') && !stem.endsWith(' '), stem);
        assert.ok(Buffer.byteLength(stem) <= MAX_STEM_BYTES, `${Buffer.byteLength(stem)} bytes`);
        // Writing it really lands inside the folder.
        const path = resolve(dir, `${stem}.png`);
        assert.equal(relative(dir, path).includes('/'), false);
        await writeFile(path, 'x');
        stems.add(stem);
      }
      assert.deepEqual((await readdir(dir)).sort(), [...stems].map((s) => `${s}.png`).sort());
      assert.equal(safeFileStem('...'), '');
      assert.equal(t.render({ ...base, name: '...' }), '000007', 'an empty result falls back to the index');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('avoids Windows reserved device names (con, nul, com1, ... also with an extension after them) and bidi controls', () => {
    for (const reserved of ['con', 'CON', 'nul', 'Aux', 'prn', 'com1', 'COM9', 'lpt1', 'con.tar', 'nul .x', 'conin$', 'conout$']) {
      const stem = safeFileStem(reserved);
      const device = stem.split('.')[0].trim().toLowerCase();
      assert.ok(!/^(con|prn|aux|nul|com[0-9]|lpt[0-9]|conin\$|conout\$)$/.test(device), `${reserved} -> ${stem}`);
      assert.ok(stem.length > 0);
    }
    // Not reserved: longer words that start like one.
    assert.equal(safeFileStem('console'), 'console');
    assert.equal(safeFileStem('com10'), 'com10');
    // Bidi controls (RLO and friends) would make a name display as another: removed.
    assert.equal(safeFileStem('evil\u202Egnp.exe'), 'evilgnp.exe');
    for (const c of ['\u200E', '\u200F', '\u061C', '\u202A', '\u202B', '\u202C', '\u202D', '\u2066', '\u2067', '\u2068', '\u2069']) assert.equal(safeFileStem(`a${c}b`), 'ab', escape(c));
    const t = new NameTemplate('{prompt:40}');
    assert.equal(t.render({ index: 3, seed: 1n, prompt: 'NUL', width: 8, height: 8 }), 'nul_');
  });

  it('avoids collisions within a run and with the manifest, keeping an index its own name on resume', () => {
    const names = new NameAllocator('{prompt:10}', 'png', [
      { index: 0, file: 'a-cat.png' },
      { index: 5, file: 'a-dog.png' },
    ]);
    const at = (index: number, prompt: string) => names.allocate({ ...base, index, prompt });
    assert.equal(at(0, 'a cat'), 'a-cat.png', 'same index keeps its manifest name');
    assert.equal(at(1, 'A cat!'), 'a-cat-1.png', 'same slug in this run');
    assert.equal(at(2, 'a dog'), 'a-dog-2.png', 'held by index 5 in the manifest');
    assert.equal(at(5, 'a dog'), 'a-dog.png');
    assert.equal(at(3, 'a bird'), 'a-bird.png');
    // A prompt whose slug already looks like a suffixed name still ends up unique.
    assert.equal(at(4, 'a cat 1'), 'a-cat-1-4.png');
    assert.equal(at(1, 'a cat'), 'a-cat-1.png', 'asking again for an index gives its name again');
    const caseless = new NameAllocator('{name}', 'webp', [{ index: 0, file: 'Hero.webp' }]);
    assert.equal(caseless.allocate({ ...base, index: 1, name: 'hero' }), 'hero-1.webp', 'case-insensitive file systems');
  });
});

describe('io/names NameAllocator take-over', () => {
  it('a file no manifest line records keeps its name only when allowed (generate: when it holds the very bytes to write)', () => {
    const fields = { index: 8, seed: 13n, prompt: 'a cat', width: 64, height: 64 };
    const fresh = () => new NameAllocator('{index:06}-{seed}', 'png', [{ index: -1, file: '000008-13.png' }]);
    assert.equal(fresh().allocate(fields), '000008-13-8.png');
    assert.equal(fresh().allocate(fields, () => false), '000008-13-8.png');
    assert.equal(fresh().allocate(fields, (f) => f === '000008-13.png'), '000008-13.png');
    // A file another index records is never taken over.
    assert.equal(new NameAllocator('{index:06}-{seed}', 'png', [{ index: 3, file: '000008-13.png' }]).allocate(fields, () => true), '000008-13-8.png');
  });
});
