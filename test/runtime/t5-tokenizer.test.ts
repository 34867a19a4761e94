import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { BadInputError } from '../../src/errors.js';
import { pixartPreprocess, T5Tokenizer } from '../../src/runtime/t5-tokenizer.js';
import { FIXTURES, goldens } from '../support/fixtures.js';

const FOLDER = path.join(FIXTURES, 'tiny-pixart', 'tokenizer');

interface Golden {
  prompt: string;
  input_ids: number[];
  attention_mask: number[];
  n_tokens: number;
  truncated: boolean;
}

const cases: Golden[] = readFileSync(path.join(FIXTURES, 'goldens', 'tiny-pixart-t5-tokenizer.jsonl'), 'utf8')
  .split('\n')
  .filter((l) => l.trim())
  .map((l) => JSON.parse(l));

function mismatches(tok: T5Tokenizer): string[] {
  const out: string[] = [];
  for (const g of cases) {
    const r = tok.encode(g.prompt);
    const same = r.ids.every((id, i) => id === g.input_ids[i]) && r.mask.every((m, i) => m === g.attention_mask[i]);
    if (!same || r.ids.length !== 120 || r.nTokens !== g.n_tokens || r.truncated !== g.truncated) out.push(JSON.stringify(g.prompt));
  }
  return out;
}

describe('runtime/t5-tokenizer', () => {
  let tok: T5Tokenizer;
  const dirs: string[] = [];
  before(async () => {
    tok = await T5Tokenizer.fromFolder(FOLDER);
  });
  after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
  const tmp = () => {
    const d = mkdtempSync(path.join(tmpdir(), 'onestep-t5tok-'));
    dirs.push(d);
    return d;
  };

  it(`reproduces transformers' T5Tokenizer ids, masks and lengths for all ${cases.length} golden prompts`, () => {
    assert.equal(cases.length, 150);
    assert.deepEqual(mismatches(tok), []);
  });

  it('gives the pipeline inputs of the goldens after PixArt preprocessing (lower().strip())', () => {
    const g = goldens('tiny-pixart');
    const prompts = ['a photo of a cat', 'an astronaut riding a horse, highly detailed, 4k', '', Array(12).fill('a very long prompt with many words').join(', ')];
    const ids = g.get('te.input_ids')!;
    const mask = g.get('te.attention_mask')!;
    prompts.forEach((p, row) => {
      const r = tok.encode(pixartPreprocess(p));
      assert.deepEqual([...r.ids], [...ids.data.subarray(row * 120, (row + 1) * 120)], `ids of ${JSON.stringify(p)}`);
      assert.deepEqual([...r.mask], [...mask.data.subarray(row * 120, (row + 1) * 120)], `mask of ${JSON.stringify(p)}`);
    });
    assert.equal(pixartPreprocess('  A Photo\u00a0Of A Cat \x1c'), 'a photo\u00a0of a cat');
  });

  it("with preprocess 'lower-strip' (as a PixArt model directory saves it) encode applies the pipeline's preprocessing", async () => {
    const pipeline = await T5Tokenizer.fromFolder(FOLDER, { preprocess: 'lower-strip' });
    const dir = tmp();
    await pipeline.save(dir);
    const loaded = await T5Tokenizer.load(dir);
    for (const p of ['  A Photo Of A Cat ', 'DON\'T SHOUT', 'a photo of a cat']) {
      assert.deepEqual([...loaded.encode(p).ids], [...tok.encode(pixartPreprocess(p)).ids], p);
    }
    assert.notDeepEqual([...loaded.encode('A Photo').ids], [...tok.encode('A Photo').ids]);
  });

  it('splits added tokens off the raw prompt; <extra_id_N> eats the whitespace around it; </s> is not doubled', () => {
    const a = tok.tokenize('a cat');
    const b = tok.tokenize('a dog');
    assert.deepEqual(tok.tokenize('a cat  <extra_id_0>  a dog'), [...a, 1099, ...b]);
    assert.deepEqual(tok.tokenize('a cat</s>a dog'), [...a, 2, ...b]);
    const e = tok.encode('a cat</s>');
    assert.deepEqual([...e.ids.subarray(0, a.length + 2)], [...a, 2, 1100]);
    assert.equal(e.nTokens, a.length + 1);
    assert.ok(!tok.tokenize('<s>').includes(1), '<s> is a control piece: never produced from text');
  });

  it('saves tokenizer.json + onestep-tokenizer.json and loads back to the same ids', async () => {
    const dir = tmp();
    await tok.save(dir);
    const json = JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
    assert.equal(json.model.type, 'Unigram');
    assert.equal(json.model.vocab.length, 1101);
    const loaded = await T5Tokenizer.load(dir);
    assert.deepEqual(mismatches(loaded), []);
  });

  it('reads a folder without added_tokens_decoder (older layout: extra ids derived, added_tokens.json)', async () => {
    const dir = tmp();
    cpSync(FOLDER, dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    delete cfg.added_tokens_decoder;
    writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(cfg));
    const old = await T5Tokenizer.fromFolder(dir);
    assert.deepEqual(old.config.addedTokens.map((t) => [t.id, t.content]), tok.config.addedTokens.map((t) => [t.id, t.content]));
    assert.deepEqual(mismatches(old), []);
  });

  it('reads a T5TokenizerFast folder that has only tokenizer.json (no spiece.model)', async () => {
    const dir = tmp();
    await tok.save(dir); // the standard tokenizer.json layout, as transformers' T5 converter writes it
    rmSync(path.join(dir, 'onestep-tokenizer.json'));
    for (const f of ['tokenizer_config.json', 'special_tokens_map.json']) cpSync(path.join(FOLDER, f), path.join(dir, f));
    const cfg = JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    delete cfg.added_tokens_decoder; // the added tokens then come from tokenizer.json itself
    writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(cfg));
    const fast = await T5Tokenizer.fromFolder(dir);
    assert.deepEqual(mismatches(fast), []);
    const json = JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
    json.pre_tokenizer.prepend_scheme = 'first';
    writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json));
    await assert.rejects(T5Tokenizer.fromFolder(dir), /non-legacy/);
  });

  it('refuses legacy=false and a missing spiece.model with the file named', async () => {
    const dir = tmp();
    cpSync(FOLDER, dir, { recursive: true });
    const cfgPath = path.join(dir, 'tokenizer_config.json');
    writeFileSync(cfgPath, JSON.stringify({ ...JSON.parse(readFileSync(cfgPath, 'utf8')), legacy: false }));
    await assert.rejects(T5Tokenizer.fromFolder(dir), (e: unknown) => e instanceof BadInputError && e.message.includes(cfgPath) && /legacy/.test(e.message));
    writeFileSync(cfgPath, JSON.stringify({ ...JSON.parse(readFileSync(cfgPath, 'utf8')), legacy: true }));
    rmSync(path.join(dir, 'spiece.model'));
    await assert.rejects(T5Tokenizer.fromFolder(dir), (e: unknown) => e instanceof BadInputError && /spiece.model: file not found/.test(e.message));
  });
});
