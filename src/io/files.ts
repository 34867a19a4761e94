/**
 * Inputs are regular files. A FIFO, socket or device given where a file is expected would block on open or read
 * forever (or, /dev/zero, never end), so it is refused before anything opens it.
 */
import { statSync, type Stats } from 'node:fs';
import { BadInputError } from '../errors.js';

/** What a stat result is, in words, for a message. */
export function fileKind(st: Stats): string {
  if (st.isFile()) return 'a regular file';
  if (st.isDirectory()) return 'a folder';
  if (st.isFIFO()) return 'a named pipe (FIFO)';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  return 'not a regular file';
}

/**
 * Throws a BadInputError naming `path` unless it is a regular file (symlinks followed). Paths that do not exist pass:
 * the caller's own open reports them in its words.
 */
export function requireRegularFile(path: string, what: string, hint?: string): void {
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st || st.isFile()) return;
  throw new BadInputError(path, `is ${fileKind(st)}, not a regular file: ${what} must be a file.`, hint);
}
