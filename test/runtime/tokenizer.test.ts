import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BadInputError } from '../../src/errors.js';
import { buildClipTokenizerJson, ClipTokenizer, clipTokenizerFromFolder } from '../../src/runtime/tokenizer.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/', import.meta.url));
const ASSETS = fileURLToPath(new URL('../../assets/clip-vit-l-14/', import.meta.url));

interface Golden {
  prompt: string;
  input_ids: number[];
  n_tokens: number;
  truncated: boolean;
}

async function goldens(model: string): Promise<Golden[]> {
  const text = await readFile(path.join(FIXTURES, 'goldens', `${model}-tokenizer.jsonl`), 'utf8');
  return text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as Golden);
}

const built = new Map<string, Promise<ClipTokenizer>>();
/** One tokenizer per fixture folder for the whole file (building one takes a second or two). */
function folderTokenizer(model: string): Promise<ClipTokenizer> {
  let tok = built.get(model);
  if (!tok) {
    tok = clipTokenizerFromFolder(path.join(FIXTURES, model, 'tokenizer')).then((f) => ClipTokenizer.fromFiles(f.tokenizerJson, f.config));
    built.set(model, tok);
  }
  return tok;
}

function assertMatchesGoldens(tok: ClipTokenizer, cases: Golden[]): void {
  const failures: string[] = [];
  for (const g of cases) {
    const r = tok.encode(g.prompt);
    const same = r.ids.length === g.input_ids.length && r.ids.every((id, i) => id === g.input_ids[i]);
    if (!same || r.nTokens !== g.n_tokens || r.truncated !== g.truncated) {
      failures.push(`${JSON.stringify(g.prompt)}: got ${r.nTokens} [${[...r.ids].slice(0, r.nTokens).join(' ')}], want ${g.n_tokens} [${g.input_ids.slice(0, g.n_tokens).join(' ')}]`);
    }
  }
  assert.deepEqual(failures, []);
}

const CAT = [49406, 320, 1125, 539, 320, 2368, 49407];

describe('runtime/tokenizer', () => {
  for (const [model, padToken, padId] of [['tiny-sd15', '<|endoftext|>', 49407], ['tiny-sd21', '!', 0]] as const) {
    describe(model, () => {
      it(`reads the folder's special tokens (pad ${JSON.stringify(padToken)} = ${padId})`, async () => {
        const { config } = await clipTokenizerFromFolder(path.join(FIXTURES, model, 'tokenizer'));
        assert.deepEqual(config, { maxLength: 77, padToken, padId, bosId: 49406, eosId: 49407 });
      });

      it('reproduces the ids, counts and truncation flags of all 150 golden prompts', async () => {
        const cases = await goldens(model);
        assert.equal(cases.length, 150);
        assertMatchesGoldens(await folderTokenizer(model), cases);
      });

      it('encodes "a photo of a cat" as BOS 320 1125 539 320 2368 EOS + padding', async () => {
        const r = (await folderTokenizer(model)).encode('a photo of a cat');
        assert.deepEqual([...r.ids], [...CAT, ...new Array(77 - CAT.length).fill(padId)]);
        assert.equal(r.nTokens, 7);
        assert.equal(r.truncated, false);
      });

      it('a 1 MB prompt (a phrase repeated, or one 1 MB word) keeps the ids of its start, truncated, without overflowing the stack', async () => {
        const tok = await folderTokenizer(model);
        for (const [huge, start] of [
          ['a photo of a cat, '.repeat(60_000), 'a photo of a cat, '.repeat(100)],
          ['x y '.repeat(250_000), 'x y '.repeat(200)],
        ]) {
          const r = tok.encode(huge);
          assert.equal(r.truncated, true);
          assert.deepEqual([...r.ids], [...tok.encode(start).ids]);
        }
        const word = tok.encode('a'.repeat(1 << 20));
        assert.equal(word.truncated, true);
        assert.equal(word.ids.length, 77);
      });

      it('round-trips through save/load', async () => {
        const dir = await mkdtemp(path.join(tmpdir(), 'onestep-tok-'));
        try {
          const tok = await folderTokenizer(model);
          await tok.save(dir);
          const loaded = await ClipTokenizer.load(dir);
          assert.deepEqual(loaded.config, tok.config);
          assertMatchesGoldens(loaded, await goldens(model));
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      });
    });
  }

  it('treats SD 2.x\'s pad "!" as its own token but leaves SD 1.x\'s "!!!" to BPE', async () => {
    const sd15 = await folderTokenizer('tiny-sd15');
    const sd21 = await folderTokenizer('tiny-sd21');
    const body = (tok: ClipTokenizer, p: string) => [...tok.encode(p).ids].slice(1, tok.encode(p).nTokens - 1);
    assert.deepEqual(body(sd21, 'wow!!!'), [...body(sd21, 'wow'), 0, 0, 0]);
    assert.ok(!body(sd15, 'wow!!!').includes(0));
  });

  it('truncates to BOS + 75 tokens + EOS and reports the untruncated count', async () => {
    const tok = await folderTokenizer('tiny-sd15');
    const r = tok.encode(Array(100).fill('cat').join(' '));
    assert.equal(r.nTokens, 102);
    assert.equal(r.truncated, true);
    assert.equal(r.ids[0], 49406);
    assert.equal(r.ids[76], 49407);
    assert.ok(r.ids.slice(1, 76).every((id) => id === 2368));
  });

  it('builds the same tokenizer from the shipped CLIP ViT-L/14 vocabulary (raw merges.txt lines)', async () => {
    const vocab = JSON.parse(await readFile(path.join(ASSETS, 'vocab.json'), 'utf8')) as Record<string, number>;
    const merges = (await readFile(path.join(ASSETS, 'merges.txt'), 'utf8')).split('\n');
    const special = { bos: '<|startoftext|>', eos: '<|endoftext|>', pad: '<|endoftext|>', unk: '<|endoftext|>' };
    const tok = ClipTokenizer.fromFiles(buildClipTokenizerJson(vocab, merges, special), {
      maxLength: 77, padToken: special.pad, padId: vocab[special.pad], bosId: vocab[special.bos], eosId: vocab[special.eos],
    });
    assertMatchesGoldens(tok, await goldens('tiny-sd15'));
  });

  it('rejects a folder without vocab.json with a BadInputError naming the file', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'onestep-tok-'));
    try {
      await assert.rejects(clipTokenizerFromFolder(dir), (e: unknown) => e instanceof BadInputError && e.message.includes('vocab.json'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
