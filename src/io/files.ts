/**
 * Inputs are regular files. A FIFO, socket or device given where a file is expected would block on open or read
 * forever (or, /dev/zero, never end), so it is refused before anything opens it.
 */
import { closeSync, openSync, statSync, unlinkSync, type Stats } from 'node:fs';
import path from 'node:path';
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

/**
 * An output folder that can be written: it exists as a folder and is writable, or its nearest existing ancestor is a
 * writable folder (it will be created). Checked before a model is loaded, so a read-only or mistyped -o is reported
 * for what it is (not as ENOENT half a minute later).
 */
export function requireWritableFolder(dir: string, flag = '-o'): void {
  let at = path.resolve(dir);
  for (;;) {
    let st: Stats | undefined;
    try {
      st = statSync(at, { throwIfNoEntry: false });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // ENOTDIR: a part of the path is a file; the walk up finds it and says so.
      if (code !== 'ENOTDIR') {
        throw new BadInputError(dir, code === 'ELOOP' ? 'is a symlink loop.' : `cannot be used as an output folder (${code}).`, `Check the path given to ${flag}.`);
      }
    }
    if (!st) {
      const parent = path.dirname(at);
      if (parent === at) break;
      at = parent;
      continue;
    }
    if (!st.isDirectory()) {
      const what = at === path.resolve(dir) ? 'is' : `is inside ${at}, which is`;
      throw new BadInputError(dir, `${what} ${fileKind(st)}, not a folder.`, `Give ${flag} a folder (it is created when missing).`);
    }
    // A probe file, not access(2): root passes access() on folders it still cannot write (/proc, sysfs, a read-only
    // bind mount reports EROFS only on write).
    const probe = path.join(at, `.onestep-probe-${process.pid}`);
    try {
      closeSync(openSync(probe, 'wx'));
      unlinkSync(probe);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'EROFS' ? 'is on a read-only file system' : code === 'EACCES' || code === 'EPERM' ? 'is not writable (permission denied)' : `does not accept new files (${code})`;
      throw new BadInputError(dir, at === path.resolve(dir) ? `${why}.` : `cannot be created: ${at} ${why}.`, `Write elsewhere with ${flag}.`);
    }
    return;
  }
}
