import { Command } from '@oclif/core';
import { OnestepError } from '../errors.js';
import { parseTempName } from '../io/atomic.js';

/** What to do about the operating system's refusals that reach a user (a full disk, a read-only folder, ...). */
const SYSTEM_ERRORS: Record<string, [string, string]> = {
  ENOSPC: ['no space left on the device', 'Free some space (or write elsewhere with -o) and run again; nothing half-written was kept.'],
  EDQUOT: ['disk quota exceeded', 'Free some space (or write elsewhere with -o) and run again.'],
  EACCES: ['permission denied', 'Check the permissions of the file or folder, or write elsewhere with -o.'],
  EPERM: ['operation not permitted', 'Check the permissions of the file or folder, or write elsewhere with -o.'],
  EROFS: ['the file system is read-only', 'Write elsewhere with -o.'],
  ENOENT: ['no such file or folder', 'Check the path.'],
  EISDIR: ['is a folder, not a file', 'Pass a file.'],
  ENOTDIR: ['a part of the path is not a folder', 'Check the path.'],
  ELOOP: ['a symlink loop (a link that leads back to itself)', 'Check where the links in the path point.'],
  EEXIST: ['already exists', 'Pass --force to replace it, or choose another path.'],
  ENAMETOOLONG: ['the path is too long', 'Use a shorter path.'],
  ENOTEMPTY: ['the folder is not empty', 'Choose another output folder, or pass --force to replace it.'],
  EMFILE: ['too many open files', 'Raise the limit (ulimit -n) or lower --workers / --batch-size.'],
  ENOMEM: ['out of memory', 'Lower --batch-size or --workers, or use a smaller image size.'],
};

/** The path a user asked for, not the temp path it was being written through (io/atomic.ts tempPathFor). */
function userPath(p: string): string {
  return p
    .split('/')
    .map((part) => parseTempName(part)?.target ?? part)
    .join('/');
}

/**
 * Every command extends this: an OnestepError (bad input, a refused action) or an operating-system refusal (full
 * disk, permissions) becomes one clear message and a non-zero exit code, never a stack trace. Anything else is a bug
 * and keeps its stack for the report.
 */
export abstract class OnestepCommand extends Command {
  protected async catch(err: Error & { exitCode?: number; oclif?: { exit?: number }; code?: string; path?: string }): Promise<unknown> {
    if (err instanceof OnestepError) {
      this.logToStderr(`Error: ${err.message}`);
      if (err.hint) this.logToStderr(`Hint: ${err.hint}`);
      this.exit(err.exitCode);
    }
    const known = typeof err.code === 'string' ? SYSTEM_ERRORS[err.code] : undefined;
    if (known) {
      // Write errors (ENOSPC) carry no path: name the output the command was writing.
      const where = err.path ? userPath(err.path) : this.outputArg() && `while writing ${this.outputArg()}`;
      this.logToStderr(`Error: ${where ? `${where}: ` : ''}${known[0]} (${err.code})`);
      this.logToStderr(`Hint: ${known[1]}`);
      this.exit(1);
    }
    return super.catch(err);
  }

  private outputArg(): string | undefined {
    for (let i = 0; i < this.argv.length; i++) {
      const a = this.argv[i];
      if (a === '-o' || a === '--out') return this.argv[i + 1];
      if (a.startsWith('--out=')) return a.slice('--out='.length);
    }
    return undefined;
  }
}
