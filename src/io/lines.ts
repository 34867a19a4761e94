/** One line of a byte stream: its 1-based number and its bytes without the `\n` (and without a trailing `\r`). */
export interface RawLine {
  line: number;
  bytes: Buffer;
  /** True when the line was longer than `maxLineBytes`: `bytes` is then empty and the line must be reported. */
  tooLong: boolean;
}

/** Longest line kept in memory; a longer one is skipped (and reported) so memory stays bounded on any input. */
export const DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024;

/**
 * Splits a byte stream on `\n` without decoding it, so each line can be validated on its own (invalid UTF-8 on line 7
 * must not poison line 8). Memory is bounded by the longest kept line plus one chunk. A last line without `\n` is
 * still yielded.
 */
export async function* splitLines(
  stream: AsyncIterable<Buffer | string>,
  maxLineBytes = DEFAULT_MAX_LINE_BYTES,
): AsyncGenerator<RawLine> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let overflow = false;
  let lineNumber = 0;

  const finish = (tail: Buffer): RawLine => {
    lineNumber++;
    if (overflow) {
      overflow = false;
      pending = [];
      pendingBytes = 0;
      return { line: lineNumber, bytes: Buffer.alloc(0), tooLong: true };
    }
    let bytes = pending.length === 0 ? tail : Buffer.concat([...pending, tail]);
    pending = [];
    pendingBytes = 0;
    if (bytes.length > 0 && bytes[bytes.length - 1] === 0x0d) bytes = bytes.subarray(0, bytes.length - 1);
    if (bytes.length > maxLineBytes) return { line: lineNumber, bytes: Buffer.alloc(0), tooLong: true };
    return { line: lineNumber, bytes, tooLong: false };
  };

  const keep = (part: Buffer): void => {
    if (overflow || part.length === 0) return;
    pendingBytes += part.length;
    if (pendingBytes > maxLineBytes + 1) {
      overflow = true;
      pending = [];
      pendingBytes = 0;
    } else {
      // Copy: the stream may reuse its chunk buffers.
      pending.push(Buffer.from(part));
    }
  };

  for await (const chunk of stream) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    let start = 0;
    for (;;) {
      const nl = buf.indexOf(0x0a, start);
      if (nl < 0) break;
      yield finish(buf.subarray(start, nl));
      start = nl + 1;
    }
    keep(buf.subarray(start));
  }
  if (pendingBytes > 0 || overflow) yield finish(Buffer.alloc(0));
}

export function hasBom(bytes: Uint8Array): boolean {
  return bytes.length >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf;
}

/** The first byte that is not a space, tab or CR (nor, with `skipBom`, a leading UTF-8 BOM); -1 when there is none. */
export function firstNonSpaceByte(bytes: Buffer, skipBom = false): number {
  let i = 0;
  if (skipBom && hasBom(bytes)) i = 3;
  for (; i < bytes.length; i++) {
    const b = bytes[i];
    if (b !== 0x20 && b !== 0x09 && b !== 0x0d && b !== 0x0b && b !== 0x0c) return b;
  }
  return -1;
}
