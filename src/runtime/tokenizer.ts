/**
 * CLIP's tokenizer, reproducing the ids of transformers' (slow) CLIPTokenizer as StableDiffusionPipeline uses it:
 * split the raw prompt on the special tokens (bos, eos, pad), then per piece ftfy-style text fixes, whitespace
 * cleanup and lowercasing, then byte-level BPE (via @huggingface/tokenizers) with "</w>" marking word ends;
 * finally BOS ... EOS truncated to maxLength and padded with the pad token.
 */
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { BadInputError, OnestepError } from '../errors.js';
import { fixText } from './ftfy.js';
import { T5Tokenizer } from './t5-tokenizer.js';

/** CLIP's word pattern (the slow tokenizer's, minus its two special tokens which we split off beforehand). */
const CLIP_SPLIT_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";
/** CLIP keeps at most this many merges (49152 BPE tokens - 256 bytes - 2 specials, counting from 1). */
const CLIP_MAX_MERGES = 49152 - 256 - 2;

export interface ClipSpecialTokens {
  bos: string;
  eos: string;
  pad: string;
  unk: string;
}

export interface ClipTokenizerConfig {
  maxLength: number;
  padToken: string;
  padId: number;
  bosId: number;
  eosId: number;
}

export interface ClipTokenizerFiles {
  tokenizerJson: object;
  config: ClipTokenizerConfig;
}

const TOKENIZER_JSON = 'tokenizer.json';
const CONFIG_JSON = 'onestep-tokenizer.json';

/**
 * A tokenizer.json (Hugging Face tokenizers format) for CLIP from vocab.json and the lines of merges.txt (a
 * "#version" header and blank lines are skipped). bos/eos/unk become added tokens. The pad token is not one: when it
 * is an ordinary token (SD 2.x's "!"), transformers splits it off the raw prompt only, which ClipTokenizer does.
 */
export function buildClipTokenizerJson(vocab: Record<string, number>, merges: string[], special: ClipSpecialTokens): object {
  const mergeLines = merges
    .map((line) => line.replace(/\r$/, ''))
    .filter((line) => line.trim().length > 0 && !line.startsWith('#version'))
    .slice(0, CLIP_MAX_MERGES);
  const added = new Map<string, number>();
  for (const content of [special.bos, special.eos, special.unk]) {
    const id = vocab[content];
    if (id !== undefined && !added.has(content)) added.set(content, id);
  }
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [...added].map(([content, id]) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: true,
      special: true,
    })),
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'NFC' },
        { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' },
        { type: 'Lowercase' },
      ],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: CLIP_SPLIT_PATTERN }, behavior: 'Removed', invert: true },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'RobertaProcessing',
      sep: [special.eos, vocab[special.eos]],
      cls: [special.bos, vocab[special.bos]],
      trim_offsets: false,
      add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: special.unk,
      continuing_subword_prefix: '',
      end_of_word_suffix: '</w>',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: mergeLines,
    },
  };
}

/** A tokenizer file's text; a missing file is a BadInputError ending in 'file not found'. */
async function readTokenizerFile(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new BadInputError(file, 'file not found', 'The tokenizer folder must hold vocab.json and merges.txt.');
    throw e;
  }
}

async function readJson(file: string): Promise<unknown> {
  const text = await readTokenizerFile(file);
  try {
    return JSON.parse(text);
  } catch {
    throw new BadInputError(file, 'is not valid JSON');
  }
}

/** A special token as tokenizer_config.json / special_tokens_map.json write it: a string or {content: string}. */
function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  return undefined;
}

/** Reads a diffusers tokenizer folder (vocab.json, merges.txt, tokenizer_config.json and/or special_tokens_map.json). */
export async function clipTokenizerFromFolder(dir: string): Promise<ClipTokenizerFiles> {
  const vocabPath = path.join(dir, 'vocab.json');
  const vocab = await readJson(vocabPath);
  if (!vocab || typeof vocab !== 'object' || Array.isArray(vocab) || !Object.values(vocab).every((v) => Number.isInteger(v))) {
    throw new BadInputError(vocabPath, 'is not a token -> id map', 'Use the vocab.json of a CLIP tokenizer.');
  }
  const mergesPath = path.join(dir, 'merges.txt');
  const mergesText = await readTokenizerFile(mergesPath);

  const settings: Record<string, unknown> = {};
  let maxLength = 77;
  for (const name of ['special_tokens_map.json', 'tokenizer_config.json']) {
    const file = path.join(dir, name);
    let json: unknown;
    try {
      json = await readJson(file);
    } catch (e) {
      if (e instanceof BadInputError && e.message.endsWith('file not found')) continue;
      throw e;
    }
    if (!json || typeof json !== 'object') throw new BadInputError(file, 'is not a JSON object');
    const obj = json as Record<string, unknown>;
    for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) {
      const content = tokenContent(obj[key]);
      if (content !== undefined) settings[key] = content; // tokenizer_config.json wins, as transformers reads it last
    }
    if (name === 'tokenizer_config.json' && Number.isInteger(obj.model_max_length) && (obj.model_max_length as number) < 1e6) {
      maxLength = obj.model_max_length as number;
    }
  }
  const ids = vocab as Record<string, number>;
  const special: ClipSpecialTokens = {
    bos: (settings.bos_token as string | undefined) ?? '<|startoftext|>',
    eos: (settings.eos_token as string | undefined) ?? '<|endoftext|>',
    unk: (settings.unk_token as string | undefined) ?? '<|endoftext|>',
    pad: (settings.pad_token as string | undefined) ?? '<|endoftext|>',
  };
  for (const [role, token] of Object.entries(special)) {
    if (ids[token] === undefined) {
      throw new BadInputError(vocabPath, `has no id for the ${role} token ${JSON.stringify(token)}`, 'Check the tokenizer folder: its files do not belong together.');
    }
  }
  return {
    tokenizerJson: buildClipTokenizerJson(ids, mergesText.split('\n'), special),
    config: { maxLength, padToken: special.pad, padId: ids[special.pad], bosId: ids[special.bos], eosId: ids[special.eos] },
  };
}

/**
 * Python's str.isspace() set, which `re`'s \s matches: CLIP's whitespace_clean collapses these to one space.
 * (JavaScript's \s differs: it lacks U+001C-U+001F and U+0085, and includes U+FEFF.)
 */
const PY_WHITESPACE_RUN = /[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/g;

/** The text preparation of transformers' CLIPTokenizer: ftfy.fix_text, whitespace collapsed and trimmed, lowercased. */
export function cleanClipText(text: string): string {
  return fixText(text).replace(PY_WHITESPACE_RUN, ' ').replace(/^ | $/g, '').toLowerCase();
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Prompt text tokenized per piece, at most: every token covers at least one character, so this holds far more than
 * the 77 tokens a CLIP encoder takes (and the counts past it only feed the "tokens were dropped" warning).
 */
const MAX_TOKENIZED_CHARS = 16384;
const MAX_USEFUL_TOKENS = 4096;

export class ClipTokenizer {
  private readonly specialSplit: RegExp;
  private readonly specialIds: Map<string, number>;

  private constructor(
    private readonly tokenizer: Tokenizer,
    private readonly tokenizerJson: object,
    readonly config: ClipTokenizerConfig,
  ) {
    // transformers splits the raw prompt on every special token (exact, case-sensitive, longest first) before
    // cleaning; the pad token counts too, which is why SD 2.x's "!" always becomes its own token.
    const specials = new Map<string, number>();
    const bos = tokenizer.id_to_token(config.bosId);
    const eos = tokenizer.id_to_token(config.eosId);
    if (bos === undefined || eos === undefined) {
      throw new OnestepError('The tokenizer vocabulary lacks the BOS/EOS ids its config names.', 'Convert the checkpoint again.');
    }
    specials.set(bos, config.bosId);
    specials.set(eos, config.eosId);
    specials.set(config.padToken, config.padId);
    this.specialIds = specials;
    const alternatives = [...specials.keys()].sort((a, b) => b.length - a.length).map(escapeRegExp);
    this.specialSplit = new RegExp(`(${alternatives.join('|')})`, 'u');
  }

  static fromFiles(tokenizerJson: object, config: ClipTokenizerConfig): ClipTokenizer {
    const tokenizer = new Tokenizer(tokenizerJson, { model_max_length: config.maxLength, clean_up_tokenization_spaces: true });
    return new ClipTokenizer(tokenizer, tokenizerJson, config);
  }

  static async load(dir: string): Promise<ClipTokenizer> {
    const tokenizerJson = await readJson(path.join(dir, TOKENIZER_JSON));
    const configPath = path.join(dir, CONFIG_JSON);
    const config = (await readJson(configPath)) as Partial<ClipTokenizerConfig>;
    for (const key of ['maxLength', 'padId', 'bosId', 'eosId'] as const) {
      if (!Number.isInteger(config?.[key])) throw new BadInputError(configPath, `lacks an integer "${key}"`, 'Convert the checkpoint again.');
    }
    if (typeof config.padToken !== 'string') throw new BadInputError(configPath, 'lacks "padToken"', 'Convert the checkpoint again.');
    return ClipTokenizer.fromFiles(tokenizerJson as object, config as ClipTokenizerConfig);
  }

  /** Writes tokenizer.json (Hugging Face format) and onestep-tokenizer.json (this class's config) into dir. */
  async save(dir: string): Promise<void> {
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, TOKENIZER_JSON), JSON.stringify(this.tokenizerJson));
    await writeFile(path.join(dir, CONFIG_JSON), JSON.stringify(this.config, null, 2) + '\n');
  }

  /** Token ids of the prompt without BOS/EOS, untruncated. */
  tokenize(prompt: string): number[] {
    const ids: number[] = [];
    for (const piece of prompt.split(this.specialSplit)) {
      if (piece.length === 0) continue;
      const special = this.specialIds.get(piece);
      if (special !== undefined) {
        ids.push(special);
        continue;
      }
      let cleaned = cleanClipText(piece);
      if (cleaned.length === 0) continue;
      if (ids.length > MAX_USEFUL_TOKENS) break;
      // Only the first tokens are used (77 with BOS/EOS): a 1 MB prompt is cut at a word boundary far past them, so
      // the kept tokens are the same, instead of running BPE over a megabyte (20 s for a 1 MB word).
      if (cleaned.length > MAX_TOKENIZED_CHARS) {
        const space = cleaned.lastIndexOf(' ', MAX_TOKENIZED_CHARS);
        cleaned = cleaned.slice(0, space > MAX_TOKENIZED_CHARS / 2 ? space : MAX_TOKENIZED_CHARS);
      }
      // A loop, not push(...ids): a 1 MB prompt has ~250k ids, more arguments than the stack holds.
      for (const id of this.tokenizer.encode(cleaned, { add_special_tokens: false }).ids) ids.push(id);
    }
    return ids;
  }

  /** ids padded/truncated to maxLength exactly as diffusers' StableDiffusionPipeline does (BOS ... EOS, then pad), plus the untruncated token count incl. BOS/EOS */
  encode(prompt: string): { ids: Int32Array; nTokens: number; truncated: boolean } {
    const body = this.tokenize(prompt);
    const { maxLength, bosId, eosId, padId } = this.config;
    const keep = Math.min(body.length, maxLength - 2);
    const ids = new Int32Array(maxLength).fill(padId);
    ids[0] = bosId;
    for (let i = 0; i < keep; i++) ids[1 + i] = body[i];
    ids[1 + keep] = eosId;
    const nTokens = body.length + 2;
    return { ids, nTokens, truncated: nTokens > maxLength };
  }
}

/** What the inference pipeline needs of any tokenizer: fixed-length ids (and the attention mask) for a prompt. */
export interface PromptTokenizer {
  encode(prompt: string): { ids: Int32Array; mask?: Int32Array; nTokens: number; truncated: boolean };
}

/**
 * Tokenizer kinds by the `kind` field of a model directory's onestep-tokenizer.json (absent: CLIP, which every model
 * directory before PixArt used).
 */
export const TOKENIZER_LOADERS: Record<string, (dir: string) => Promise<PromptTokenizer>> = {
  clip: (dir) => ClipTokenizer.load(dir),
  t5: (dir) => T5Tokenizer.load(dir),
};

/** Loads a model directory's tokenizer folder, whatever its kind. */
export async function loadTokenizer(dir: string): Promise<PromptTokenizer> {
  const configPath = path.join(dir, CONFIG_JSON);
  const config = (await readJson(configPath)) as { kind?: unknown } | null;
  const kind = typeof config?.kind === 'string' ? config.kind : 'clip';
  const load = TOKENIZER_LOADERS[kind];
  if (!load) throw new BadInputError(configPath, `names tokenizer kind "${kind}", which this onestep does not know`, 'Convert the checkpoint again, or upgrade onestep.');
  return load(dir);
}
