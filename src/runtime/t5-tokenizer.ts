/**
 * T5's tokenizer, reproducing the ids and attention mask of transformers' (slow, legacy) T5Tokenizer as
 * PixArtAlphaPipeline calls it (padding="max_length", max_length 120, truncation, add_special_tokens): the prompt is
 * split on the added tokens (an <extra_id_N> also eats the whitespace around it), every other piece is normalized as
 * sentencepiece does and segmented by the Unigram model, a run of unknown characters becoming one <unk>; then
 * truncated to max_length - 1, "</s>" appended (unless already last), padded with <pad>.
 */
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { BadInputError } from '../errors.js';
import { buildUnigramTokenizerJson, checkSupported, CharsMap, normalize, parseSentencePieceModel, UnigramModel, type AddedTokenSpec, type NormalizerSpec, type SentencePieceModel } from './sentencepiece.js';

export interface T5TokenizerConfig {
  kind: 't5';
  maxLength: number;
  eosId: number;
  padId: number;
  /** Tokens split off the raw prompt before sentencepiece sees it (transformers' added tokens). */
  addedTokens: AddedTokenSpec[];
  /** Pieces sentencepiece never produces from text (control, unknown, unused): not matched by the Unigram model. */
  reservedIds: number[];
  normalizer: Omit<NormalizerSpec, 'name' | 'precompiledCharsmap'>;
  /**
   * The pipeline's own text preprocessing before the tokenizer: 'lower-strip' is PixArtAlphaPipeline's with
   * clean_caption=False (prompt.lower().strip()); absent: none (the tokenizer alone, as transformers calls it).
   */
  preprocess?: 'lower-strip';
}

export interface T5Encoding {
  ids: Int32Array;
  mask: Int32Array;
  /** Untruncated length including </s>. */
  nTokens: number;
  truncated: boolean;
}

/** PixArt-alpha's max_sequence_length. */
export const PIXART_MAX_LENGTH = 120;

const TOKENIZER_JSON = 'tokenizer.json';
const CONFIG_JSON = 'onestep-tokenizer.json';

async function readJsonFile(file: string, missingHint: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new BadInputError(file, 'file not found', missingHint);
    throw e;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new BadInputError(file, 'is not valid JSON');
  }
}

async function optionalJson(file: string): Promise<Record<string, any> | undefined> {
  try {
    const json = await readJsonFile(file, '');
    if (!json || typeof json !== 'object' || Array.isArray(json)) throw new BadInputError(file, 'is not a JSON object');
    return json as Record<string, any>;
  } catch (e) {
    if (e instanceof BadInputError && e.message.endsWith('file not found')) return undefined;
    throw e;
  }
}

function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') return (value as { content: string }).content;
  return undefined;
}

/** Python's str.isspace() set (what str.strip()/lstrip()/rstrip() remove). */
const PY_SPACE = '\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const LEADING_SPACE = new RegExp(`^[${PY_SPACE}]+`);
const TRAILING_SPACE = new RegExp(`[${PY_SPACE}]+$`);

/** str.strip() as Python does it. */
export function pyStrip(s: string): string {
  return s.replace(LEADING_SPACE, '').replace(TRAILING_SPACE, '');
}

/** PixArtAlphaPipeline's text preprocessing with clean_caption=False: prompt.lower().strip(). */
export function pixartPreprocess(prompt: string): string {
  return pyStrip(prompt.toLowerCase());
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * The SentencePiece model inside a T5TokenizerFast tokenizer.json (Unigram vocab, Precompiled character map,
 * Metaspace). Piece types are not recorded there: the added tokens (</s>, <pad>, <unk>, <extra_id_N>) stand for the
 * reserved ones.
 */
function modelFromTokenizerJson(json: Record<string, any>, file: string): { model: SentencePieceModel; added: AddedTokenSpec[] } {
  const m = json.model;
  if (m?.type !== 'Unigram' || !Array.isArray(m.vocab) || !Number.isInteger(m.unk_id)) {
    throw new BadInputError(file, 'is not a Unigram (T5) tokenizer', 'Use the tokenizer folder of a T5 text encoder.');
  }
  if (m.byte_fallback) throw new BadInputError(file, 'uses byte fallback: onestep does not support it', 'Only T5-style Unigram tokenizers (as PixArt ships) are supported.');
  const norms: any[] = json.normalizer?.type === 'Sequence' ? json.normalizer.normalizers ?? [] : json.normalizer ? [json.normalizer] : [];
  const charsmap = norms.find((n) => n?.type === 'Precompiled')?.precompiled_charsmap;
  const pre: any[] = json.pre_tokenizer?.type === 'Sequence' ? json.pre_tokenizer.pretokenizers ?? [] : json.pre_tokenizer ? [json.pre_tokenizer] : [];
  const metaspace = pre.find((p) => p?.type === 'Metaspace');
  if (metaspace?.prepend_scheme === 'first') {
    throw new BadInputError(file, 'is a non-legacy T5 tokenizer (Metaspace prepend_scheme "first")', 'onestep reproduces the legacy T5Tokenizer (the default, and what PixArt ships).');
  }
  const addDummyPrefix = metaspace ? metaspace.add_prefix_space ?? metaspace.prepend_scheme !== 'never' : true;
  const added: AddedTokenSpec[] = (Array.isArray(json.added_tokens) ? json.added_tokens : []).map((t: any) => ({
    id: t.id,
    content: t.content,
    lstrip: !!t.lstrip,
    rstrip: !!t.rstrip,
    special: t.special !== false,
  }));
  const addedIds = new Set(added.map((t) => t.id));
  const model: SentencePieceModel = {
    pieces: (m.vocab as [string, number][]).map(([piece, score], id) => ({ piece, score, type: id === m.unk_id ? 'unknown' : addedIds.has(id) ? 'control' : 'normal' })),
    modelType: 'unigram',
    byteFallback: false,
    treatWhitespaceAsSuffix: false,
    unkId: m.unk_id,
    normalizer: {
      name: 'tokenizer.json',
      precompiledCharsmap: typeof charsmap === 'string' ? new Uint8Array(Buffer.from(charsmap, 'base64')) : new Uint8Array(0),
      addDummyPrefix,
      removeExtraWhitespaces: true,
      escapeWhitespaces: true,
    },
  };
  if (model.normalizer.precompiledCharsmap.length) new CharsMap(model.normalizer.precompiledCharsmap, file);
  return { model, added };
}

export class T5Tokenizer {
  private readonly model: UnigramModel;
  private readonly charsMap: CharsMap | null;
  private readonly addedSplit: RegExp | null;
  private readonly added: Map<string, AddedTokenSpec>;

  private constructor(
    private readonly tokenizerJson: Record<string, any>,
    readonly config: T5TokenizerConfig,
  ) {
    const b64 = (tokenizerJson.normalizer?.normalizers ?? []).find((n: any) => n?.type === 'Precompiled')?.precompiled_charsmap;
    this.charsMap = typeof b64 === 'string' && b64.length ? new CharsMap(new Uint8Array(Buffer.from(b64, 'base64'))) : null;
    const reserved = new Set([...config.reservedIds, ...config.addedTokens.map((t) => t.id)]);
    this.model = new UnigramModel(tokenizerJson.model.vocab, tokenizerJson.model.unk_id, reserved);
    this.added = new Map(config.addedTokens.map((t) => [t.content, t]));
    const alternatives = [...this.added.keys()].sort((a, b) => b.length - a.length).map(escapeRegExp);
    this.addedSplit = alternatives.length ? new RegExp(`(${alternatives.join('|')})`, 'u') : null;
  }

  static fromFiles(tokenizerJson: object, config: T5TokenizerConfig): T5Tokenizer {
    return new T5Tokenizer(tokenizerJson as Record<string, any>, config);
  }

  /**
   * A transformers T5 tokenizer folder: spiece.model (T5Tokenizer), or only a tokenizer.json (T5TokenizerFast), plus
   * tokenizer_config.json (its added_tokens_decoder) and/or special_tokens_map.json / added_tokens.json.
   */
  static async fromFolder(dir: string, opts: { maxLength?: number; preprocess?: T5TokenizerConfig['preprocess'] } = {}): Promise<T5Tokenizer> {
    const maxLength = opts.maxLength ?? PIXART_MAX_LENGTH;
    const configPath = path.join(dir, 'tokenizer_config.json');
    const config = (await optionalJson(configPath)) ?? {};
    const specialMap = (await optionalJson(path.join(dir, 'special_tokens_map.json'))) ?? {};
    if (config.legacy === false) {
      throw new BadInputError(configPath, 'sets legacy: false', 'onestep reproduces the legacy T5Tokenizer (the default, and what PixArt ships); set "legacy": true.');
    }
    const spiecePath = path.join(dir, 'spiece.model');
    let bytes: Uint8Array | undefined;
    try {
      bytes = new Uint8Array(await readFile(spiecePath));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    let model: SentencePieceModel;
    let fastAdded: AddedTokenSpec[] | undefined;
    if (bytes) {
      model = parseSentencePieceModel(bytes, spiecePath);
      checkSupported(model, spiecePath);
      if (model.normalizer.precompiledCharsmap.length) new CharsMap(model.normalizer.precompiledCharsmap, spiecePath);
    } else {
      const jsonPath = path.join(dir, TOKENIZER_JSON);
      const json = await optionalJson(jsonPath);
      if (!json) throw new BadInputError(spiecePath, 'file not found', 'A T5 tokenizer folder must hold spiece.model (or a T5TokenizerFast tokenizer.json).');
      ({ model, added: fastAdded } = modelFromTokenizerJson(json, jsonPath));
    }

    const pieceId = new Map(model.pieces.map((p, i) => [p.piece, i]));
    const added = new Map<number, AddedTokenSpec>();
    const decoder = config.added_tokens_decoder;
    if (decoder && typeof decoder === 'object') {
      for (const [k, v] of Object.entries<any>(decoder)) {
        const id = Number(k);
        if (!Number.isInteger(id) || typeof v?.content !== 'string') throw new BadInputError(configPath, `has a malformed added_tokens_decoder entry ${JSON.stringify(k)}`);
        added.set(id, { id, content: v.content, lstrip: !!v.lstrip, rstrip: !!v.rstrip, special: v.special !== false });
      }
    } else if (fastAdded) {
      for (const t of fastAdded) added.set(t.id, t);
    } else {
      // Older folders: T5Tokenizer adds <extra_id_0..N-1> at the top of the vocab, then any missing specials.
      const extra = Number.isInteger(config.extra_ids) ? (config.extra_ids as number) : 100;
      for (let i = 0; i < extra; i++) {
        const id = model.pieces.length - 1 + extra - i;
        added.set(id, { id, content: `<extra_id_${i}>`, lstrip: true, rstrip: true, special: true });
      }
      const addedJson = (await optionalJson(path.join(dir, 'added_tokens.json'))) ?? {};
      for (const [content, id] of Object.entries<any>(addedJson)) {
        if (Number.isInteger(id) && ![...added.values()].some((t) => t.content === content)) added.set(id, { id, content, lstrip: false, rstrip: false, special: true });
      }
      for (const key of ['unk_token', 'eos_token', 'pad_token']) {
        const content = tokenContent(config[key]) ?? tokenContent(specialMap[key]);
        const id = content === undefined ? undefined : pieceId.get(content);
        if (content !== undefined && id !== undefined && !added.has(id)) added.set(id, { id, content, lstrip: false, rstrip: false, special: true });
      }
    }
    const idOf = (role: string, dflt: string): { content: string; id: number } => {
      const content = tokenContent(config[role]) ?? tokenContent(specialMap[role]) ?? dflt;
      const entry = [...added.values()].find((t) => t.content === content);
      const id = entry?.id ?? pieceId.get(content);
      if (id === undefined) throw new BadInputError(configPath, `has no id for the ${role} ${JSON.stringify(content)}`, 'Check the tokenizer folder: its files do not belong together.');
      return { content, id };
    };
    const eos = idOf('eos_token', '</s>');
    const pad = idOf('pad_token', '<pad>');
    const addedTokens = [...added.values()].sort((a, b) => a.id - b.id);
    const reservedIds = model.pieces.flatMap((p, i) => (p.type === 'normal' ? [] : [i]));
    const json = buildUnigramTokenizerJson(model, addedTokens, eos);
    const { addDummyPrefix, removeExtraWhitespaces, escapeWhitespaces } = model.normalizer;
    return new T5Tokenizer(json as Record<string, any>, {
      kind: 't5',
      maxLength,
      eosId: eos.id,
      padId: pad.id,
      addedTokens,
      reservedIds,
      normalizer: { addDummyPrefix, removeExtraWhitespaces, escapeWhitespaces },
      ...(opts.preprocess ? { preprocess: opts.preprocess } : {}),
    });
  }

  /** A converted tokenizer folder (tokenizer.json + onestep-tokenizer.json). */
  static async load(dir: string): Promise<T5Tokenizer> {
    const again = 'Convert the checkpoint again.';
    const json = await readJsonFile(path.join(dir, TOKENIZER_JSON), again);
    const configPath = path.join(dir, CONFIG_JSON);
    const config = (await readJsonFile(configPath, again)) as Partial<T5TokenizerConfig>;
    if (config?.kind !== 't5') throw new BadInputError(configPath, 'is not a T5 tokenizer config', again);
    for (const key of ['maxLength', 'eosId', 'padId'] as const) {
      if (!Number.isInteger(config[key])) throw new BadInputError(configPath, `lacks an integer "${key}"`, again);
    }
    if (!Array.isArray(config.addedTokens) || !Array.isArray(config.reservedIds) || !config.normalizer) throw new BadInputError(configPath, 'is incomplete', again);
    const model = (json as Record<string, any>)?.model;
    if (model?.type !== 'Unigram' || !Array.isArray(model.vocab)) throw new BadInputError(path.join(dir, TOKENIZER_JSON), 'is not a Unigram tokenizer', again);
    return new T5Tokenizer(json as Record<string, any>, config as T5TokenizerConfig);
  }

  async save(dir: string): Promise<void> {
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, TOKENIZER_JSON), JSON.stringify(this.tokenizerJson));
    await writeFile(path.join(dir, CONFIG_JSON), JSON.stringify(this.config, null, 2) + '\n');
  }

  /** sentencepiece's segmentation of one piece of text (no added tokens in it). */
  private encodeText(text: string): number[] {
    const normalized = normalize(text, this.config.normalizer, this.charsMap);
    if (normalized.length === 0) return [];
    return this.model.encode(normalized);
  }

  /** Token ids of the prompt as T5Tokenizer.tokenize + convert_tokens_to_ids give them (no </s>, untruncated). */
  tokenize(prompt: string): number[] {
    const parts = this.addedSplit ? prompt.split(this.addedSplit) : [prompt];
    // split() with a capture group alternates text, token, text, ...: odd indices are added tokens.
    for (let i = 1; i < parts.length; i += 2) {
      const t = this.added.get(parts[i])!;
      if (t.rstrip) parts[i + 1] = parts[i + 1].replace(LEADING_SPACE, '');
      if (t.lstrip) parts[i - 1] = parts[i - 1].replace(TRAILING_SPACE, '');
    }
    const ids: number[] = [];
    parts.forEach((part, i) => {
      if (part.length === 0) return;
      if (i % 2) ids.push(this.added.get(part)!.id);
      else ids.push(...this.encodeText(part));
    });
    return ids;
  }

  /**
   * ids and attention mask as the PixArt pipeline gets them (its preprocessing when configured, then
   * padding="max_length", truncation, add_special_tokens).
   */
  encode(prompt: string): T5Encoding {
    const body = this.tokenize(this.config.preprocess === 'lower-strip' ? pixartPreprocess(prompt) : prompt);
    const { maxLength, eosId, padId } = this.config;
    const nTokens = body.length && body[body.length - 1] === eosId ? body.length : body.length + 1;
    const kept = body.slice(0, maxLength - 1);
    if (kept.length === 0 || kept[kept.length - 1] !== eosId) kept.push(eosId);
    const ids = new Int32Array(maxLength).fill(padId);
    const mask = new Int32Array(maxLength);
    ids.set(kept);
    mask.fill(1, 0, kept.length);
    return { ids, mask, nTokens, truncated: nTokens > maxLength };
  }
}
