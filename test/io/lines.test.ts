import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { firstNonSpaceByte, hasBom, splitLines } from '../../src/io/lines.js';

async function collect(chunks: Buffer[], max?: number) {
  const out = [];
  for await (const l of splitLines(Readable.from(chunks), max)) out.push({ line: l.line, text: l.bytes.toString('latin1'), tooLong: l.tooLong });
  return out;
}

describe('io/lines', () => {
  it('splits on \\n across any chunk boundaries, strips \\r, keeps an unterminated last line', async () => {
    const text = 'alpha\r\nbeta\n\ngamma delta\nlast';
    const expected = text.split('\n').map((t, i) => ({ line: i + 1, text: t.replace(/\r$/, ''), tooLong: false }));
    const bytes = Buffer.from(text, 'latin1');
    for (let size = 1; size <= bytes.length; size++) {
      const chunks = [];
      for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.subarray(i, i + size));
      assert.deepEqual(await collect(chunks), expected, `chunk size ${size}`);
    }
    assert.deepEqual(await collect([Buffer.from('a\n')]), [{ line: 1, text: 'a', tooLong: false }]);
    assert.deepEqual(await collect([]), []);
  });

  it('marks over-long lines without keeping them, and goes on with the next line', async () => {
    const long = 'x'.repeat(100);
    for (const size of [7, 1000]) {
      const bytes = Buffer.from(`ok\n${long}\nnext\n${long}`, 'latin1');
      const chunks = [];
      for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.subarray(i, i + size));
      assert.deepEqual(await collect(chunks, 50), [
        { line: 1, text: 'ok', tooLong: false },
        { line: 2, text: '', tooLong: true },
        { line: 3, text: 'next', tooLong: false },
        { line: 4, text: '', tooLong: true },
      ]);
    }
  });

  it('finds the first non-space byte, skipping a BOM only when asked', () => {
    assert.equal(firstNonSpaceByte(Buffer.from(' \t #x')), 0x23);
    assert.equal(firstNonSpaceByte(Buffer.from(' \t\r')), -1);
    const bom = Buffer.from([0xef, 0xbb, 0xbf, 0x7b]);
    assert.equal(hasBom(bom), true);
    assert.equal(firstNonSpaceByte(bom, true), 0x7b);
    assert.equal(firstNonSpaceByte(bom, false), 0xef);
  });
});
