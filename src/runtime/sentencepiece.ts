/**
 * SentencePiece without SentencePiece: reads a `spiece.model` (a protobuf ModelProto) ourselves, applies its
 * normalizer as sentencepiece's normalizer.cc does (the precompiled character map is a Darts double-array trie over
 * UTF-8 bytes, longest match wins), segments with the Unigram model's Viterbi search, and writes the model as the
 * Unigram tokenizer.json (Hugging Face tokenizers format) that transformers' T5TokenizerFast uses.
 */
import { BadInputError } from '../errors.js';

/** sentencepiece_model.proto's SentencePiece.Type. */
export type PieceType = 'normal' | 'unknown' | 'control' | 'user_defined' | 'unused' | 'byte';
const PIECE_TYPES: Record<number, PieceType> = { 1: 'normal', 2: 'unknown', 3: 'control', 4: 'user_defined', 5: 'unused', 6: 'byte' };
const MODEL_TYPES: Record<number, string> = { 1: 'unigram', 2: 'bpe', 3: 'word', 4: 'char' };

export interface Piece {
  piece: string;
  score: number;
  type: PieceType;
}

export interface NormalizerSpec {
  name: string;
  /** Darts trie + NUL-terminated replacement strings, as sentencepiece stores them (empty: no character map). */
  precompiledCharsmap: Uint8Array;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
  escapeWhitespaces: boolean;
}

export interface SentencePieceModel {
  pieces: Piece[];
  modelType: string;
  byteFallback: boolean;
  treatWhitespaceAsSuffix: boolean;
  unkId: number;
  normalizer: NormalizerSpec;
}

// ---- protobuf wire format ----

interface Field {
  field: number;
  wire: number;
  /** varint value (wire 0) */
  int?: bigint;
  /** bytes of wire 1, 2, 5 */
  bytes?: Uint8Array;
}

class ProtoError extends Error {}

function readFields(buf: Uint8Array): Field[] {
  const out: Field[] = [];
  let i = 0;
  const varint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (i >= buf.length || shift > 63n) throw new ProtoError('truncated varint');
      const b = buf[i++];
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return result;
      shift += 7n;
    }
  };
  const take = (n: number): Uint8Array => {
    if (n < 0 || i + n > buf.length) throw new ProtoError('truncated field');
    const s = buf.subarray(i, i + n);
    i += n;
    return s;
  };
  while (i < buf.length) {
    const key = Number(varint());
    const field = key >>> 3;
    const wire = key & 7;
    if (field === 0) throw new ProtoError('field number 0');
    if (wire === 0) out.push({ field, wire, int: varint() });
    else if (wire === 1) out.push({ field, wire, bytes: take(8) });
    else if (wire === 2) out.push({ field, wire, bytes: take(Number(varint())) });
    else if (wire === 5) out.push({ field, wire, bytes: take(4) });
    else throw new ProtoError(`wire type ${wire}`);
  }
  return out;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function last(fields: Field[], n: number): Field | undefined {
  for (let k = fields.length - 1; k >= 0; k--) if (fields[k].field === n) return fields[k];
  return undefined;
}

function boolField(fields: Field[], n: number, dflt: boolean): boolean {
  const f = last(fields, n);
  return f?.int === undefined ? dflt : f.int !== 0n;
}

function intField(fields: Field[], n: number, dflt: number): number {
  const f = last(fields, n);
  return f?.int === undefined ? dflt : Number(BigInt.asIntN(32, f.int));
}

/** Parses a serialized sentencepiece ModelProto. `file` names the model in errors. */
export function parseSentencePieceModel(bytes: Uint8Array, file: string): SentencePieceModel {
  const notAModel = (why: string) =>
    new BadInputError(file, `is not a SentencePiece model (${why})`, 'Use the spiece.model that came with the tokenizer folder.');
  try {
    const top = readFields(bytes);
    const pieces: Piece[] = [];
    for (const f of top) {
      if (f.field !== 1) continue;
      if (!f.bytes) throw notAModel('piece is not a message');
      const p = readFields(f.bytes);
      const text = last(p, 1)?.bytes;
      if (!text) throw notAModel(`piece ${pieces.length} has no text`);
      const score = last(p, 2)?.bytes;
      const type = PIECE_TYPES[intField(p, 3, 1)];
      if (!type) throw notAModel(`piece ${pieces.length} has an unknown type`);
      pieces.push({
        piece: utf8.decode(text),
        score: score ? new DataView(score.buffer, score.byteOffset, 4).getFloat32(0, true) : 0,
        type,
      });
    }
    if (pieces.length === 0) throw notAModel('no pieces');
    const trainer = last(top, 2)?.bytes ? readFields(last(top, 2)!.bytes!) : [];
    const norm = last(top, 3)?.bytes ? readFields(last(top, 3)!.bytes!) : [];
    const modelType = MODEL_TYPES[intField(trainer, 3, 1)] ?? 'unknown';
    const unkId = pieces.findIndex((p) => p.type === 'unknown');
    return {
      pieces,
      modelType,
      byteFallback: boolField(trainer, 35, false),
      treatWhitespaceAsSuffix: boolField(trainer, 24, false),
      unkId,
      normalizer: {
        name: last(norm, 1)?.bytes ? utf8.decode(last(norm, 1)!.bytes!) : '',
        precompiledCharsmap: last(norm, 2)?.bytes?.slice() ?? new Uint8Array(0),
        addDummyPrefix: boolField(norm, 3, true),
        removeExtraWhitespaces: boolField(norm, 4, true),
        escapeWhitespaces: boolField(norm, 5, true),
      },
    };
  } catch (e) {
    if (e instanceof ProtoError) throw notAModel(e.message);
    if (e instanceof TypeError) throw notAModel('a piece is not UTF-8');
    throw e;
  }
}

/** What this tokenizer reproduces; anything else is refused with the reason. */
export function checkSupported(model: SentencePieceModel, file: string): void {
  const refuse = (what: string) => new BadInputError(file, `${what}: onestep's SentencePiece reader does not support it`, 'Only T5-style Unigram models (as PixArt ships) are supported.');
  if (model.modelType !== 'unigram') throw refuse(`is a ${model.modelType} model`);
  if (model.unkId < 0) throw refuse('has no unknown piece');
  if (model.byteFallback) throw refuse('uses byte fallback');
  if (model.treatWhitespaceAsSuffix) throw refuse('treats whitespace as a suffix');
  if (model.pieces.some((p) => p.type === 'user_defined')) throw refuse('has user-defined pieces');
}

// ---- normalizer ----

const SPACE_SYMBOL = '\u2581';

/** sentencepiece's precompiled character map: a Darts-clone double array and the replacement strings it points into. */
export class CharsMap {
  private readonly units: Uint32Array;
  private readonly strings: Uint8Array;

  constructor(blob: Uint8Array, file = 'spiece.model') {
    const bad = () => new BadInputError(file, 'has a malformed precompiled character map', 'Use the spiece.model that came with the tokenizer folder.');
    if (blob.length < 4) throw bad();
    const dv = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
    const trieBytes = dv.getUint32(0, true);
    if (trieBytes % 4 || 4 + trieBytes > blob.length || trieBytes === 0) throw bad();
    this.units = new Uint32Array(trieBytes / 4);
    for (let k = 0; k < this.units.length; k++) this.units[k] = dv.getUint32(4 + 4 * k, true);
    this.strings = blob.subarray(4 + trieBytes);
  }

  /** Darts commonPrefixSearch: the longest key that prefixes input[pos..], as [length in bytes, replacement]. */
  longestMatch(input: Uint8Array, pos: number): [number, Uint8Array] | undefined {
    const u = this.units;
    const offset = (unit: number) => (unit >>> 10) << ((unit & (1 << 9)) >>> 6);
    let node = offset(u[0]);
    let best = 0;
    let value = -1;
    for (let i = pos; i < input.length; i++) {
      node ^= input[i];
      if (node >= u.length) break;
      const unit = u[node];
      if ((unit & 0x800000ff) >>> 0 !== input[i]) break; // label
      node ^= offset(unit);
      if ((unit >>> 8) & 1) {
        if (node >= u.length) break;
        best = i + 1 - pos;
        value = u[node] & 0x7fffffff;
      }
    }
    if (value < 0) return undefined;
    let end = value;
    while (end < this.strings.length && this.strings[end] !== 0) end++;
    return [best, this.strings.subarray(value, end)];
  }
}

/** Byte length of the UTF-8 character starting at input[pos] (input is valid UTF-8: it came from a JS string). */
function utf8Length(b: number): number {
  if (b < 0x80) return 1;
  if (b >= 0xf0) return 4;
  if (b >= 0xe0) return 3;
  return 2;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8');
const SPACE = 0x20;
const SPACE_SYMBOL_BYTES = encoder.encode(SPACE_SYMBOL);

/**
 * sentencepiece's Normalizer::Normalize: character-map each longest prefix (else copy one character), drop leading
 * spaces, collapse runs of spaces, add the dummy prefix, escape spaces as U+2581 and drop trailing ones.
 */
export function normalize(text: string, spec: Omit<NormalizerSpec, 'name' | 'precompiledCharsmap'>, charsMap: CharsMap | null): string {
  const input = encoder.encode(text);
  const out: number[] = [];
  const prefix = (pos: number): [number, ArrayLike<number>] => {
    const m = charsMap?.longestMatch(input, pos);
    if (m) return m;
    const n = Math.min(utf8Length(input[pos]), input.length - pos);
    return [n, input.subarray(pos, pos + n)];
  };
  let pos = 0;
  if (spec.removeExtraWhitespaces) {
    while (pos < input.length) {
      const [n, rep] = prefix(pos);
      if (!(rep.length === 1 && rep[0] === SPACE)) break;
      pos += n;
    }
  }
  if (pos >= input.length) return '';
  const pushSpace = () => {
    if (spec.escapeWhitespaces) out.push(...SPACE_SYMBOL_BYTES);
    else out.push(SPACE);
  };
  if (spec.addDummyPrefix) pushSpace();
  let prevSpace = spec.removeExtraWhitespaces;
  while (pos < input.length) {
    const [n, rep] = prefix(pos);
    let k = 0;
    if (prevSpace) while (k < rep.length && rep[k] === SPACE) k++;
    if (k < rep.length) {
      for (; k < rep.length; k++) {
        if (rep[k] === SPACE) pushSpace();
        else out.push(rep[k]);
      }
      prevSpace = rep[rep.length - 1] === SPACE;
    }
    pos += n;
    if (!spec.removeExtraWhitespaces) prevSpace = false;
  }
  let s = decoder.decode(Uint8Array.from(out));
  if (spec.removeExtraWhitespaces) {
    const sp = spec.escapeWhitespaces ? SPACE_SYMBOL : ' ';
    while (s.endsWith(sp)) s = s.slice(0, -sp.length);
  }
  return s;
}

// ---- Unigram segmentation ----

/** sentencepiece's penalty below the lowest piece score for an unknown character. */
const UNK_PENALTY = 10;

/**
 * The Unigram model's best segmentation (sentencepiece's EncodeOptimized, scores summed in float32 as it does): for
 * each end position the best-scoring path, one character at a time; characters no piece covers become <unk>, and a
 * run of them one <unk>. On an exact tie (the same pieces in another order, "-" "--" vs "--" "-") the path whose last
 * piece starts later wins, as in the reference tokenizer that made the goldens; @huggingface/tokenizers 0.2 keeps the
 * earlier one, which is why onestep does not run its Unigram model.
 */
export class UnigramModel {
  private readonly root = new TrieNode();
  private readonly scores: number[];
  private readonly unkScore: number;

  /** `reserved`: ids never produced from text (control, unknown and unused pieces, added tokens). */
  constructor(
    vocab: [string, number][],
    private readonly unkId: number,
    reserved: Set<number>,
  ) {
    let min = Infinity;
    vocab.forEach(([piece, score], id) => {
      if (reserved.has(id) || piece.length === 0) return;
      min = Math.min(min, score);
      let node = this.root;
      for (const ch of piece) {
        let next = node.children.get(ch);
        if (!next) node.children.set(ch, (next = new TrieNode()));
        node = next;
      }
      node.id = id;
    });
    this.scores = vocab.map(([, score]) => Math.fround(score));
    this.unkScore = Math.fround(min - UNK_PENALTY);
  }

  encode(normalized: string): number[] {
    const chars = Array.from(normalized);
    const n = chars.length;
    const score = new Float32Array(n + 1);
    const start = new Int32Array(n + 1).fill(-1);
    const id = new Int32Array(n + 1);
    const relax = (end: number, from: number, pieceId: number, pieceScore: number) => {
      const candidate = Math.fround(pieceScore + score[from]);
      if (start[end] === -1 || candidate >= score[end]) {
        score[end] = candidate;
        start[end] = from;
        id[end] = pieceId;
      }
    };
    for (let from = 0; from < n; from++) {
      let node: TrieNode | undefined = this.root;
      let single = false;
      for (let end = from + 1; end <= n && node; end++) {
        node = node.children.get(chars[end - 1]);
        if (node?.id === undefined) continue;
        relax(end, from, node.id, this.scores[node.id]);
        if (end === from + 1) single = true;
      }
      if (!single) relax(from + 1, from, this.unkId, this.unkScore);
    }
    const ids: number[] = [];
    for (let end = n; end > 0; end = start[end]) ids.push(id[end]);
    ids.reverse();
    return ids.filter((t, k) => !(t === this.unkId && k > 0 && ids[k - 1] === this.unkId));
  }
}

class TrieNode {
  readonly children = new Map<string, TrieNode>();
  id: number | undefined;
}

// ---- tokenizer.json ----

export interface AddedTokenSpec {
  id: number;
  content: string;
  lstrip: boolean;
  rstrip: boolean;
  special: boolean;
}

/**
 * The Hugging Face tokenizer.json transformers' T5 converter writes for this model: Precompiled normalizer (the
 * model's character map), Metaspace pre-tokenizer, Unigram model (pieces and scores; `extraPieces` extend the vocab,
 * as T5's <extra_id_N>), "$A </s>" post-processor. onestep itself runs the normalizer in `normalize` above (the
 * JS library approximates the character map with NFKC), the file stays a faithful standard one.
 */
export function buildUnigramTokenizerJson(model: SentencePieceModel, added: AddedTokenSpec[], eos: { content: string; id: number }): object {
  const vocab: [string, number][] = model.pieces.map((p) => [p.piece, p.score]);
  for (const t of [...added].sort((a, b) => a.id - b.id)) {
    if (t.id >= vocab.length) {
      while (vocab.length < t.id) vocab.push([`<unused_${vocab.length}>`, 0]);
      vocab.push([t.content, 0]);
    }
  }
  const normalizers: object[] = [];
  if (model.normalizer.precompiledCharsmap.length) {
    normalizers.push({ type: 'Precompiled', precompiled_charsmap: Buffer.from(model.normalizer.precompiledCharsmap).toString('base64') });
  }
  if (model.normalizer.removeExtraWhitespaces) {
    normalizers.push({ type: 'Strip', strip_left: false, strip_right: true }, { type: 'Replace', pattern: { Regex: ' {2,}' }, content: SPACE_SYMBOL });
  }
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added.map((t) => ({ id: t.id, content: t.content, single_word: false, lstrip: t.lstrip, rstrip: t.rstrip, normalized: false, special: t.special })),
    normalizer: { type: 'Sequence', normalizers },
    pre_tokenizer: { type: 'Metaspace', replacement: SPACE_SYMBOL, prepend_scheme: model.normalizer.addDummyPrefix ? 'always' : 'never', split: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: eos.content, type_id: 0 } }],
      pair: [
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: eos.content, type_id: 0 } },
        { Sequence: { id: 'B', type_id: 0 } },
        { SpecialToken: { id: eos.content, type_id: 0 } },
      ],
      special_tokens: { [eos.content]: { id: eos.content, ids: [eos.id], tokens: [eos.content] } },
    },
    decoder: { type: 'Metaspace', replacement: SPACE_SYMBOL, prepend_scheme: model.normalizer.addDummyPrefix ? 'always' : 'never', split: true },
    model: { type: 'Unigram', unk_id: model.unkId, vocab, byte_fallback: model.byteFallback },
  };
}
