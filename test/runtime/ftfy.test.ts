import assert from 'node:assert/strict';
import {
  cp1252Char,
  encodeCp1252,
  fixCharacterWidth,
  fixEncoding,
  fixLatinLigatures,
  fixLineBreaks,
  fixSurrogates,
  fixText,
  removeControlChars,
  removeTerminalEscapes,
  uncurlQuotes,
  unescapeHtml,
} from '../../src/runtime/ftfy.js';

/** Mojibake made independently of ftfy.ts: UTF-8 bytes read as Latin-1 by Node's Buffer. */
function mojibake(text: string): string {
  return Buffer.from(text, 'utf8').toString('latin1');
}

describe('runtime/ftfy', () => {
  describe('Windows-1252 table', () => {
    // Node 20's TextDecoder('windows-1252') decodes as Latin-1, so the reference is the published mapping itself.
    it('maps bytes as Windows-1252 (undefined bytes as C1 controls) and encodes back', () => {
      const known: [number, string][] = [
        [0x41, 'A'], [0x80, '\u20ac'], [0x81, '\x81'], [0x85, '\u2026'], [0x8a, '\u0160'], [0x8d, '\x8d'], [0x8f, '\x8f'],
        [0x90, '\x90'], [0x91, '\u2018'], [0x94, '\u201d'], [0x97, '\u2014'], [0x99, '\u2122'], [0x9d, '\x9d'],
        [0x9f, '\u0178'], [0xa0, '\xa0'], [0xe9, '\xe9'], [0xff, '\xff'],
      ];
      for (const [byte, char] of known) assert.equal(cp1252Char(byte), char, `byte 0x${byte.toString(16)}`);
      const all = new Set<string>();
      for (let b = 0; b < 256; b++) {
        all.add(cp1252Char(b));
        assert.deepEqual(encodeCp1252(cp1252Char(b)), Uint8Array.of(b));
        if (b < 0x80 || b >= 0xa0) assert.equal(cp1252Char(b).charCodeAt(0), b);
      }
      assert.equal(all.size, 256);
      assert.equal(encodeCp1252('\u2713'), undefined);
    });
  });

  describe('HTML entities', () => {
    it('unescapes named, decimal and hex references once per call', () => {
      assert.equal(unescapeHtml('fish &amp; chips'), 'fish & chips');
      assert.equal(unescapeHtml('&lt;b&gt; &quot;x&quot; &#39;y&#39; &#x263A; &eacute;&Ntilde;&hellip;'), '<b> "x" \'y\' \u263a é\u00d1\u2026');
      assert.equal(unescapeHtml('&amp;amp;'), '&amp;');
      assert.equal(unescapeHtml('&EACUTE;'), 'É');
      assert.equal(unescapeHtml('&#150; &#0; &#x110000;'), '\u2013 \ufffd \ufffd');
      assert.equal(unescapeHtml('&nosuchentity; & alone; &#xZZ;'), '&nosuchentity; & alone; &#xZZ;');
    });

    it('unescapes until stable in fixText, but not when the text contains "<"', () => {
      assert.equal(fixText('&amp;amp; double escaped'), '& double escaped');
      assert.equal(fixText('&amp;amp;amp;'), '&');
      assert.equal(fixText('<b>&amp;</b>'), '<b>&amp;</b>');
    });
  });

  describe('mojibake', () => {
    const samples = ['café', 'naïve résumé façade', '“curly” — dash …', 'Łódź żółw', '東京の夜景', 'emoji 😀👍🏽', 'Москва'];

    it('repairs UTF-8 text that was decoded as Windows-1252 or Latin-1', () => {
      assert.equal(fixText('cafÃ© mojibake that ftfy repairs'), 'café mojibake that ftfy repairs');
      assert.equal(fixText('â€œcurlyâ€\u009d â€” dash â€¦ donâ€™t'), '"curly" — dash … don\'t');
      for (const s of samples) assert.equal(fixText(mojibake(s)), fixText(s), s);
    });

    it('repairs twice-decoded text and mojibake runs inside otherwise correct text', () => {
      for (const s of samples) assert.equal(fixEncoding(mojibake(mojibake(s))), s, s);
      assert.equal(fixEncoding(`${mojibake('café')} \u2713`), 'café \u2713');
    });

    it('leaves correct non-ASCII text alone', () => {
      for (const s of ['café naïve résumé façade crème brûlée', 'straße über Ärger öl grüße', '© ® ™ °C ± × ÷ ∞ ≤ ≥', 'señor niño', 'em—dash en–dash ellipsis…']) {
        assert.equal(fixEncoding(s), s);
      }
    });
  });

  describe('character fixes', () => {
    it('folds fullwidth and halfwidth forms and the ideographic space', () => {
      assert.equal(fixCharacterWidth('Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３！'), 'Fullwidth ABC 123!');
      assert.equal(fixCharacterWidth('a\u3000b \uff76\uff85'), 'a b \u30ab\u30ca');
    });

    it('splits Latin ligatures', () => {
      assert.equal(fixLatinLigatures('ﬁne ﬂower ﬀ ﬃ ﬄ ﬆ Ĳ'), 'fine flower ff ffi ffl st IJ');
    });

    it('straightens curly quotes', () => {
      assert.equal(uncurlQuotes('“curly” ‘curly single’ ‛x‟'), '"curly" \'curly single\' \'x"');
    });

    it('unifies line breaks, removes terminal escapes and control characters, replaces lone surrogates', () => {
      assert.equal(fixLineBreaks('a\r\nb\rc\u2028d\u2029e\x85f'), 'a\nb\nc\nd\ne\nf');
      assert.equal(removeTerminalEscapes('\x1b[1;31mred\x1b[0m'), 'red');
      assert.equal(removeControlChars('\ufeffa\x00b\x07c\td\ne\x7f\u206a'), 'abc\td\ne');
      assert.equal(fixSurrogates('a\ud800b\udc00c\ud83d\ude00'), 'a\ufffdb\ufffdc\ud83d\ude00');
    });

    it('applies NFC and keeps zero-width and other format characters', () => {
      assert.equal(fixText('cafe\u0301'), 'café');
      assert.equal(fixText('zero\u200bwidth\u200cjoiner\u200dtest'), 'zero\u200bwidth\u200cjoiner\u200dtest');
    });

    it('fixes C1 controls as Windows-1252 and leaves plain ASCII untouched', () => {
      assert.equal(fixText('\x93quoted\x94 \x80'), '"quoted" €');
      const ascii = 'a photo of a cat, 4k <|endoftext|> & more';
      assert.equal(fixText(ascii), ascii);
    });
  });
});
