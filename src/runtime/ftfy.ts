/**
 * The text fixes of Python's `ftfy.fix_text` (default settings) that matter for prompts, so that CLIP token ids match
 * transformers' CLIPTokenizer, which runs fix_text before tokenizing. Our own implementation of ftfy's documented
 * behaviour. Each pass, repeated until the text stops changing:
 * HTML entities unescaped (unless the text contains "<"), UTF-8 mis-decoded as Latin-1 / Windows-1252 repaired,
 * C1 controls read as Windows-1252, Latin ligatures split, fullwidth/halfwidth forms folded, curly quotes straightened,
 * line breaks unified, lone surrogates replaced, terminal escapes and control characters removed, NFC.
 *
 * Not reproduced: ftfy's statistical "badness" model and its repairs of mixups between other single-byte encodings
 * (Windows-1250/1251, MacRoman, cp437) and of UTF-8 with lost bytes. Here UTF-8 mojibake is repaired when the
 * Latin-1 / Windows-1252 bytes of the text (or of a run within it) form valid multi-byte UTF-8.
 */

/** Windows-1252 bytes 0x80..0x9F; the five bytes it leaves undefined map to the C1 code points, as ftfy's "sloppy" codec. */
const CP1252_HIGH = [
  0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039, 0x152, 0x8d, 0x17d, 0x8f,
  0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x2dc, 0x2122, 0x161, 0x203a, 0x153, 0x9d, 0x17e, 0x178,
];

/** The character each byte decodes to in sloppy Windows-1252. */
export function cp1252Char(byte: number): string {
  return String.fromCharCode(byte >= 0x80 && byte < 0xa0 ? CP1252_HIGH[byte - 0x80] : byte);
}

const CP1252_ENCODE = new Map<number, number>();
for (let b = 0; b < 256; b++) CP1252_ENCODE.set(cp1252Char(b).charCodeAt(0), b);

/** Bytes of the text in sloppy Windows-1252, or undefined if some character has no byte there. */
export function encodeCp1252(text: string): Uint8Array | undefined {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const b = CP1252_ENCODE.get(text.charCodeAt(i));
    if (b === undefined) return undefined;
    out[i] = b;
  }
  return out;
}

function encodeLatin1(text: string): Uint8Array | undefined {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 0xff) return undefined;
    out[i] = c;
  }
  return out;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

function decodeUtf8(bytes: Uint8Array): string | undefined {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// HTML entities

/** Named entities beyond the Latin-1 letters (derived below). Covers XML, HTML 4 symbols and punctuation. */
const NAMED_ENTITIES: Record<string, number> = {
  amp: 0x26, lt: 0x3c, gt: 0x3e, quot: 0x22, apos: 0x27, nbsp: 0xa0, iexcl: 0xa1, cent: 0xa2, pound: 0xa3,
  curren: 0xa4, yen: 0xa5, brvbar: 0xa6, sect: 0xa7, uml: 0xa8, copy: 0xa9, ordf: 0xaa, laquo: 0xab, not: 0xac,
  shy: 0xad, reg: 0xae, macr: 0xaf, deg: 0xb0, plusmn: 0xb1, sup2: 0xb2, sup3: 0xb3, acute: 0xb4, micro: 0xb5,
  para: 0xb6, middot: 0xb7, cedil: 0xb8, sup1: 0xb9, ordm: 0xba, raquo: 0xbb, frac14: 0xbc, frac12: 0xbd,
  frac34: 0xbe, iquest: 0xbf, times: 0xd7, divide: 0xf7, AElig: 0xc6, aelig: 0xe6, ETH: 0xd0, eth: 0xf0,
  THORN: 0xde, thorn: 0xfe, szlig: 0xdf, Oslash: 0xd8, oslash: 0xf8, OElig: 0x152, oelig: 0x153, Scaron: 0x160,
  scaron: 0x161, Yuml: 0x178, fnof: 0x192, circ: 0x2c6, tilde: 0x2dc, ensp: 0x2002, emsp: 0x2003, thinsp: 0x2009,
  zwnj: 0x200c, zwj: 0x200d, lrm: 0x200e, rlm: 0x200f, ndash: 0x2013, mdash: 0x2014, lsquo: 0x2018, rsquo: 0x2019,
  sbquo: 0x201a, ldquo: 0x201c, rdquo: 0x201d, bdquo: 0x201e, dagger: 0x2020, Dagger: 0x2021, bull: 0x2022,
  hellip: 0x2026, permil: 0x2030, prime: 0x2032, Prime: 0x2033, lsaquo: 0x2039, rsaquo: 0x203a, oline: 0x203e,
  frasl: 0x2044, euro: 0x20ac, trade: 0x2122, larr: 0x2190, uarr: 0x2191, rarr: 0x2192, darr: 0x2193,
  harr: 0x2194, rArr: 0x21d2, lArr: 0x21d0, hArr: 0x21d4, forall: 0x2200, part: 0x2202, exist: 0x2203,
  empty: 0x2205, nabla: 0x2207, isin: 0x2208, notin: 0x2209, ni: 0x220b, prod: 0x220f, sum: 0x2211,
  minus: 0x2212, lowast: 0x2217, radic: 0x221a, prop: 0x221d, infin: 0x221e, ang: 0x2220, and: 0x2227,
  or: 0x2228, cap: 0x2229, cup: 0x222a, int: 0x222b, there4: 0x2234, sim: 0x223c, cong: 0x2245, asymp: 0x2248,
  ne: 0x2260, equiv: 0x2261, le: 0x2264, ge: 0x2265, sub: 0x2282, sup: 0x2283, sube: 0x2286, supe: 0x2287,
  oplus: 0x2295, otimes: 0x2297, perp: 0x22a5, sdot: 0x22c5, loz: 0x25ca, spades: 0x2660, clubs: 0x2663,
  hearts: 0x2665, diams: 0x2666, hyphen: 0x2010, dash: 0x2010, star: 0x2606, starf: 0x2605, check: 0x2713,
  cross: 0x2717, sharp: 0x266f, flat: 0x266d, natural: 0x266e, phone: 0x260e, female: 0x2640, male: 0x2642,
  half: 0xbd, frac13: 0x2153, frac23: 0x2154, frac18: 0x215b, frac38: 0x215c, frac58: 0x215d, frac78: 0x215e,
  colon: 0x3a, comma: 0x2c, period: 0x2e, excl: 0x21, quest: 0x3f, num: 0x23, dollar: 0x24, percnt: 0x25,
  lpar: 0x28, rpar: 0x29, ast: 0x2a, plus: 0x2b, sol: 0x2f, semi: 0x3b, equals: 0x3d, commat: 0x40, lsqb: 0x5b,
  rsqb: 0x5d, bsol: 0x5c, lowbar: 0x5f, grave: 0x60, lcub: 0x7b, rcub: 0x7d, verbar: 0x7c, vert: 0x7c,
  Hat: 0x5e, NewLine: 0x0a, Tab: 0x09,
};
const GREEK = 'Alpha Beta Gamma Delta Epsilon Zeta Eta Theta Iota Kappa Lambda Mu Nu Xi Omicron Pi Rho _ Sigma Tau Upsilon Phi Chi Psi Omega';

/** Accent names of HTML's Latin-1 letter entities (&eacute; etc.), by combining mark. */
const ACCENT_NAMES: Record<number, string> = { 0x300: 'grave', 0x301: 'acute', 0x302: 'circ', 0x303: 'tilde', 0x308: 'uml', 0x30a: 'ring', 0x327: 'cedil' };

function buildEntityTable(): Map<string, string> {
  const table = new Map<string, string>();
  for (const [name, cp] of Object.entries(NAMED_ENTITIES)) table.set(name, String.fromCodePoint(cp));
  // Latin-1 letters with one accent: NFD gives letter + mark (é -> e + U+0301 -> "eacute").
  for (let cp = 0xc0; cp <= 0xff; cp++) {
    const decomposed = String.fromCharCode(cp).normalize('NFD');
    if (decomposed.length === 2) {
      const accent = ACCENT_NAMES[decomposed.charCodeAt(1)];
      if (accent) table.set(decomposed[0] + accent, String.fromCharCode(cp));
    }
  }
  GREEK.split(' ').forEach((name, i) => {
    if (name === '_') return; // U+03A2 is unassigned
    table.set(name, String.fromCodePoint(0x391 + i));
    table.set(name.toLowerCase(), String.fromCodePoint(0x3b1 + i));
  });
  table.set('sigmaf', '\u03c2');
  table.set('thetasym', '\u03d1');
  table.set('piv', '\u03d6');
  return table;
}

const ENTITIES = buildEntityTable();
const HTML_ENTITY = /&#?[0-9A-Za-z]{1,24};/g;

/** Noncharacters and controls that Python's html.unescape drops from numeric references. */
function isInvalidCharRef(cp: number): boolean {
  return (
    (cp >= 0x1 && cp <= 0x8) || cp === 0xb || (cp >= 0xe && cp <= 0x1f) || (cp >= 0x7f && cp <= 0x9f) ||
    (cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) === 0xfffe
  );
}

function decodeCharRef(body: string): string | undefined {
  const hex = body[0] === 'x' || body[0] === 'X';
  const digits = hex ? body.slice(1) : body;
  if (!(hex ? /^[0-9A-Fa-f]+$/ : /^[0-9]+$/).test(digits)) return undefined;
  const cp = parseInt(digits, hex ? 16 : 10);
  if (cp >= 0x80 && cp <= 0x9f) return cp1252Char(cp); // HTML5 reads these as Windows-1252 bytes
  if (cp === 0) return '\ufffd';
  if (cp === 0x0d) return '\r';
  if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return '\ufffd';
  if (isInvalidCharRef(cp)) return '';
  return String.fromCodePoint(cp);
}

/** Replaces HTML entities ("&amp;", "&eacute;", "&#39;", "&#x263A;"; an all-caps "&EACUTE;" gives "É"). */
export function unescapeHtml(text: string): string {
  return text.replace(HTML_ENTITY, (entity) => {
    const body = entity.slice(1, -1);
    if (body[0] === '#') return decodeCharRef(body.slice(1)) ?? entity;
    const named = ENTITIES.get(body);
    if (named !== undefined) return named;
    if (body === body.toUpperCase()) {
      const lower = ENTITIES.get(body.toLowerCase());
      if (lower !== undefined) return lower.toUpperCase();
    }
    return entity;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Mojibake: UTF-8 bytes that were decoded as Latin-1 / Windows-1252

/** Every character byte b may have become: its Windows-1252 character, or (read as Latin-1) U+0000 + b. */
function charsOfBytes(from: number, to: number): string {
  let chars = '';
  for (let b = from; b <= to; b++) {
    chars += cp1252Char(b);
    if (b >= 0x80 && b < 0xa0 && cp1252Char(b).charCodeAt(0) !== b) chars += String.fromCharCode(b);
  }
  return `[${chars}]`;
}
const CONT = charsOfBytes(0x80, 0xbf);
/** A Latin-1 / Windows-1252 rendering of one multi-byte UTF-8 sequence. */
const UTF8_AS_SINGLE_BYTES = new RegExp(
  `${charsOfBytes(0xc2, 0xdf)}${CONT}|${charsOfBytes(0xe0, 0xef)}${CONT}{2}|${charsOfBytes(0xf0, 0xf4)}${CONT}{3}`,
  'g',
);

/** Bytes of a run whose characters may mix Windows-1252 and Latin-1 readings. */
function encodeMixed(text: string): Uint8Array | undefined {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const b = CP1252_ENCODE.get(c) ?? (c < 0x100 ? c : undefined);
    if (b === undefined) return undefined;
    out[i] = b;
  }
  return out;
}

function isAscii(text: string): boolean {
  return /^[\x00-\x7f]*$/.test(text);
}

/** One step of mojibake repair; returns the text unchanged when nothing applies. */
function fixEncodingStep(text: string): string {
  if (isAscii(text)) return text;
  UTF8_AS_SINGLE_BYTES.lastIndex = 0;
  if (!UTF8_AS_SINGLE_BYTES.test(text)) return text; // nothing that looks like mis-decoded UTF-8
  // The whole text, read back as the bytes it came from, is UTF-8.
  for (const encode of [encodeLatin1, encodeCp1252]) {
    const bytes = encode(text);
    if (bytes === undefined) continue;
    const decoded = decodeUtf8(bytes);
    if (decoded !== undefined) return decoded;
  }
  // Otherwise repair each run that is a valid UTF-8 sequence on its own (mojibake mixed with correct text).
  return text.replace(UTF8_AS_SINGLE_BYTES, (run) => {
    const bytes = encodeMixed(run);
    return (bytes && decodeUtf8(bytes)) ?? run;
  });
}

export function fixEncoding(text: string): string {
  for (;;) {
    const fixed = fixEncodingStep(text);
    if (fixed === text) return text;
    text = fixed;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Character-level fixes

/** C1 control characters (U+0080..U+009F) read as the Windows-1252 bytes they most likely were. */
export function fixC1Controls(text: string): string {
  return text.replace(/[\x80-\x9f]/g, (c) => cp1252Char(c.charCodeAt(0)));
}

const LIGATURES: Record<string, string> = {
  'Ĳ': 'IJ', 'ĳ': 'ij', 'ﬀ': 'ff', 'ﬁ': 'fi', 'ﬂ': 'fl', 'ﬃ': 'ffi', 'ﬄ': 'ffl', 'ﬅ': 'ſt', 'ﬆ': 'st',
};
export function fixLatinLigatures(text: string): string {
  return text.replace(/[Ĳĳﬀ-ﬆ]/g, (c) => LIGATURES[c] ?? c);
}

/** Fullwidth and halfwidth forms (U+FF01..U+FFEF) to their NFKC equivalents, and the ideographic space to a space. */
export function fixCharacterWidth(text: string): string {
  return text.replace(/[\u3000\uff01-\uffef]/g, (c) => (c === '\u3000' ? ' ' : c.normalize('NFKC')));
}

export function uncurlQuotes(text: string): string {
  return text.replace(/[\u02bc\u2018-\u201b]/g, "'").replace(/[\u201c-\u201f]/g, '"');
}

export function fixLineBreaks(text: string): string {
  return text.replace(/\r\n/g, '\n').replace(/[\r\u2028\u2029\x85]/g, '\n');
}

/** Lone UTF-16 surrogates become U+FFFD (paired ones already are one character in a JavaScript string). */
export function fixSurrogates(text: string): string {
  return text.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

export function removeTerminalEscapes(text: string): string {
  return text.replace(/\x1b\[[\d;]*[A-Za-z]/g, '');
}

/** Control characters ftfy drops: C0 except tab/LF/FF/CR, DEL, deprecated format chars, BOM, interlinear annotation, musical format chars, tags. */
export function removeControlChars(text: string): string {
  return text.replace(
    /[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]|\ud834[\udd73-\udd7a]|\udb40[\udc00-\udc7f]/g,
    '',
  );
}

// ---------------------------------------------------------------------------------------------------------------

function fixSegment(text: string, unescape: boolean): string {
  for (;;) {
    const original = text;
    if (unescape) text = unescapeHtml(text);
    text = fixEncoding(text);
    text = fixC1Controls(text);
    text = fixLatinLigatures(text);
    text = fixCharacterWidth(text);
    text = uncurlQuotes(text);
    text = fixLineBreaks(text);
    text = fixSurrogates(text);
    text = removeTerminalEscapes(text);
    text = removeControlChars(text);
    text = text.normalize('NFC');
    if (text === original) return text;
  }
}

/** ftfy.fix_text with its default settings, limited to the fixes listed at the top of this file. */
export function fixText(text: string): string {
  // Printable ASCII (plus tab and newline) without "&" is left as it is by every fix: skip them all.
  if (/^[\t\n\x20-\x25\x27-\x7e]*$/.test(text)) return text;
  // As ftfy: HTML is only unescaped when the text contains no "<" (then it may be real HTML); lines fixed one by one.
  const unescape = !text.includes('<');
  let out = '';
  for (const line of text.split(/(?<=\n)/)) out += fixSegment(line, unescape);
  return out;
}
