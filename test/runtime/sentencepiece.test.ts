import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { BadInputError } from '../../src/errors.js';
import { buildUnigramTokenizerJson, CharsMap, checkSupported, normalize, parseSentencePieceModel, UnigramModel } from '../../src/runtime/sentencepiece.js';
import { FIXTURES } from '../support/fixtures.js';

const SPIECE = path.join(FIXTURES, 'tiny-pixart', 'tokenizer', 'spiece.model');
const bytes = new Uint8Array(readFileSync(SPIECE));

describe('runtime/sentencepiece', () => {
  const model = parseSentencePieceModel(bytes, SPIECE);
  const charsMap = new CharsMap(model.normalizer.precompiledCharsmap);
  const norm = (s: string) => normalize(s, model.normalizer, charsMap);

  it('reads the ModelProto: pieces, scores, types, trainer and normalizer specs', () => {
    assert.equal(model.pieces.length, 1000);
    assert.deepEqual(model.pieces.slice(0, 3).map((p) => [p.piece, p.type]), [['<unk>', 'unknown'], ['<s>', 'control'], ['</s>', 'control']]);
    assert.equal(model.pieces.filter((p) => p.type === 'normal').length, 997);
    assert.equal(model.unkId, 0);
    assert.equal(model.modelType, 'unigram');
    assert.equal(model.byteFallback, false);
    // scores are float32 (the model stores `float`): piece 7 "▁" is 0xc074de98
    assert.equal(model.pieces[7].piece, '\u2581');
    assert.equal(model.pieces[7].score, new Float32Array(new Uint32Array([0xc074de98]).buffer)[0]);
    assert.equal(model.normalizer.name, 'nmt_nfkc');
    assert.ok(model.normalizer.precompiledCharsmap.length > 1000);
    assert.deepEqual([model.normalizer.addDummyPrefix, model.normalizer.removeExtraWhitespaces, model.normalizer.escapeWhitespaces], [true, true, true]);
  });

  it('normalizes as nmt_nfkc: dummy prefix, whitespace collapsed and escaped, NFKC-folded characters', () => {
    assert.equal(norm('a photo of a cat'), '\u2581a\u2581photo\u2581of\u2581a\u2581cat');
    assert.equal(norm('   a \t\n photo\u00a0cat  '), '\u2581a\u2581photo\u2581cat');
    assert.equal(norm(' \t '), '');
    assert.equal(norm(''), '');
    // Characters whose NFKC form differs: the charsmap gives the same as JavaScript's NFKC here.
    for (const s of ['Ｆｕｌｌｗｉｄｔｈ', 'ﬁne ﬂower', '½ ²', 'Å', 'ｶﾀｶﾅ']) {
      assert.equal(norm(s), '\u2581' + s.normalize('NFKC').replace(/ /g, '\u2581'), s);
    }
    assert.equal(norm('zero\u200bwidth'), '\u2581zero\u2581width'); // nmt_nfkc maps U+200B to a space
  });

  it('refuses what it does not reproduce, naming the file', () => {
    const withTrainerField = (fieldBytes: number[]) => Uint8Array.from([...bytes, 0x12, fieldBytes.length, ...fieldBytes]);
    const bpe = parseSentencePieceModel(withTrainerField([0x18, 0x02]), 'x/spiece.model'); // model_type = BPE
    assert.throws(() => checkSupported(bpe, 'x/spiece.model'), (e: unknown) => e instanceof BadInputError && /x\/spiece.model.*bpe model/.test(e.message));
    const fallback = parseSentencePieceModel(withTrainerField([0x98, 0x02, 0x01]), 'x/spiece.model'); // byte_fallback = true (field 35)
    assert.throws(() => checkSupported(fallback, 'x/spiece.model'), /byte fallback/);
    assert.throws(() => parseSentencePieceModel(bytes.subarray(0, 5000), 'x/spiece.model'), (e: unknown) => e instanceof BadInputError && /x\/spiece.model: is not a SentencePiece model/.test(e.message));
    assert.throws(() => parseSentencePieceModel(new TextEncoder().encode('{"not": "protobuf"}'), 'x/spiece.model'), BadInputError);
  });

  it('Unigram search: best total score, unknown runs fused, exact ties to the later-starting last piece', () => {
    const vocab: [string, number][] = [['<unk>', 0], ['a', -1], ['b', -2], ['ab', -2.5], ['-', -5], ['--', -9], ['x', -1]];
    const m = new UnigramModel(vocab, 0, new Set([0]));
    assert.deepEqual(m.encode('ab'), [3]); // -2.5 beats a+b = -3
    assert.deepEqual(m.encode('aqqb'), [1, 0, 2]); // "qq": one <unk> (score min - 10 each)
    assert.deepEqual(m.encode('---'), [5, 4]); // "-","--" and "--","-" tie at -14: "--" then "-"
    assert.deepEqual(m.encode(''), []);
    const reserved = new UnigramModel(vocab, 0, new Set([0, 6]));
    assert.deepEqual(reserved.encode('x'), [0]); // a reserved piece is never matched
  });

  it('writes a T5TokenizerFast-style tokenizer.json (Precompiled charsmap, Metaspace, Unigram, "$A </s>")', () => {
    const json = buildUnigramTokenizerJson(model, [{ id: 1000, content: '<extra_id_0>', lstrip: true, rstrip: true, special: true }], { content: '</s>', id: 2 }) as any;
    assert.equal(json.model.type, 'Unigram');
    assert.equal(json.model.vocab.length, 1001);
    assert.deepEqual(json.model.vocab[1000], ['<extra_id_0>', 0]);
    assert.equal(json.model.unk_id, 0);
    assert.deepEqual(new Uint8Array(Buffer.from(json.normalizer.normalizers[0].precompiled_charsmap, 'base64')), model.normalizer.precompiledCharsmap);
    assert.equal(json.pre_tokenizer.type, 'Metaspace');
    assert.deepEqual(json.post_processor.special_tokens['</s>'].ids, [2]);
  });
});
