import { OnestepError } from '../errors.js';

/** What a name template can use for one image. */
export interface NameFields {
  index: number;
  seed: bigint;
  prompt: string;
  /** The JSONL line's `name`, when it has one. */
  name?: string;
  width: number;
  height: number;
}

export const DEFAULT_NAME_TEMPLATE = '{index:06}-{seed}';
/** Longest file stem in UTF-8 bytes; leaves room for `-<index>` and the extension within the usual 255-byte limit. */
export const MAX_STEM_BYTES = 200;
const DEFAULT_PROMPT_CHARS = 40;

type Part = { literal: string } | { field: keyof NameFields; width?: number };

const FIELDS: readonly (keyof NameFields)[] = ['index', 'seed', 'prompt', 'name', 'width', 'height'];
const TEMPLATE_HINT = `Fields: ${FIELDS.join(', ')}; e.g. --name "{index:06}-{seed}-{prompt:40}". {index:06} zero-pads to 6 digits, {prompt:40} keeps at most 40 characters.`;

/** A parsed `--name` template: `{field}` or `{field:N}`; everything else is literal text. */
export class NameTemplate {
  private readonly parts: Part[];

  constructor(readonly template: string) {
    this.parts = [];
    const pattern = /\{([^{}]*)\}|([^{}]+)|([{}])/g;
    for (const match of template.matchAll(pattern)) {
      if (match[3] !== undefined) throw new OnestepError(`Name template "${template}" has an unmatched "${match[3]}".`, TEMPLATE_HINT);
      if (match[2] !== undefined) {
        this.parts.push({ literal: match[2] });
        continue;
      }
      const [field, spec, ...rest] = match[1].split(':');
      if (!(FIELDS as readonly string[]).includes(field)) {
        throw new OnestepError(`Name template "${template}" has an unknown field {${match[1]}}.`, TEMPLATE_HINT);
      }
      if (rest.length > 0 || (spec !== undefined && !/^\d{1,3}$/.test(spec))) {
        throw new OnestepError(`Name template "${template}": {${match[1]}} needs a number after the colon.`, TEMPLATE_HINT);
      }
      this.parts.push({ field: field as keyof NameFields, width: spec === undefined ? undefined : Number(spec) });
    }
    if (this.parts.length === 0) throw new OnestepError('The name template is empty.', TEMPLATE_HINT);
  }

  /** The file stem (no extension) for one image: path-safe, at most MAX_STEM_BYTES. */
  render(fields: NameFields): string {
    let out = '';
    for (const part of this.parts) {
      if ('literal' in part) {
        out += part.literal;
        continue;
      }
      switch (part.field) {
        case 'index':
        case 'seed':
        case 'width':
        case 'height':
          out += String(fields[part.field]).padStart(part.width ?? 0, '0');
          break;
        case 'prompt':
          out += slug(fields.prompt, part.width ?? DEFAULT_PROMPT_CHARS);
          break;
        case 'name':
          // A prompt without a name falls back to its zero-padded index, so names stay distinct and sortable.
          out += fields.name !== undefined ? fields.name.slice(0, part.width ?? undefined) : String(fields.index).padStart(6, '0');
          break;
      }
    }
    const safe = safeFileStem(out);
    return safe === '' ? String(fields.index).padStart(6, '0') : safe;
  }
}

/** Lowercase words of letters and digits joined by `-`, at most `maxChars` characters (a cut never ends in `-`). */
export function slug(text: string, maxChars: number): string {
  const words = text.normalize('NFKC').toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
  const chars = Array.from(words.join('-')).slice(0, maxChars);
  return chars.join('').replace(/-+$/, '');
}

function truncateUtf8(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text) <= maxBytes) return text;
  let out = '';
  let bytes = 0;
  for (const ch of text) {
    const size = Buffer.byteLength(ch);
    if (bytes + size > maxBytes) break;
    out += ch;
    bytes += size;
  }
  return out;
}

/**
 * Makes any text a safe file stem inside the output folder: no path separators, no control characters, none of
 * `<>:"|?*` (Windows), no `..`, no leading dot (hidden files) or trailing dot/space, at most MAX_STEM_BYTES bytes.
 * Can return '' (the caller falls back to the index).
 */
export function safeFileStem(text: string): string {
  let s = text
    .normalize('NFC')
    // Controls, line separators and bidi controls (an RLO makes `x\u202Egnp.exe` display as `xexe.png`).
    .replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]/g, '')
    .replace(/[/\\<>:"|?*]/g, '_')
    .replace(/\.{2,}/g, '.');
  s = truncateUtf8(s, MAX_STEM_BYTES);
  s = s.replace(/^[.\s]+/, '').replace(/[.\s]+$/, '');
  // Windows reserves device names, with any extension after them (`nul.png` is the null device there).
  const device = /^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)(?=$|[.\s])/i.exec(s);
  if (device) s = `${device[1]}_${s.slice(device[1].length)}`;
  return s;
}

/**
 * Hands out unique file names (stem + extension) in one output folder. A name already given in this run, or held in
 * the manifest by a different index, gets `-<index>` appended. Comparison ignores case, so names stay distinct on
 * case-insensitive file systems too. An index keeps its manifest name on resume.
 */
export class NameAllocator {
  private readonly used = new Map<string, number>();
  private readonly template: NameTemplate;

  constructor(
    template: string | NameTemplate,
    private readonly extension: string,
    existing: Iterable<{ index: number; file: string }> = [],
  ) {
    this.template = typeof template === 'string' ? new NameTemplate(template) : template;
    for (const entry of existing) this.used.set(entry.file.toLowerCase(), entry.index);
  }

  /**
   * `mayTakeOver(file)`: whether a file no manifest line records may be replaced under this name. generate allows it
   * only when the file already holds exactly the bytes it is about to write: the image of a run killed between its
   * rename and its manifest line, which the resumed run then keeps under its own name instead of duplicating it.
   */
  allocate(fields: NameFields, mayTakeOver?: (file: string) => boolean): string {
    const stem = this.template.render(fields);
    for (let attempt = 0; ; attempt++) {
      const suffix = attempt === 0 ? '' : attempt === 1 ? `-${fields.index}` : `-${fields.index}-${attempt}`;
      const file = `${stem}${suffix}.${this.extension}`;
      const holder = this.used.get(file.toLowerCase());
      if (holder === undefined || holder === fields.index || (holder === -1 && mayTakeOver?.(file))) {
        this.used.set(file.toLowerCase(), fields.index);
        return file;
      }
    }
  }
}
