/**
 * An exclusive lock on an output folder: a lock file holding the owner's pid, host and process start time, created
 * with O_EXCL. A lock left by a dead process on this host (SIGKILL, OOM, a requeued Slurm task) is taken over; one of
 * a live process, or of another host (whose processes cannot be checked from here), is a clear error naming it.
 */
import { readFileSync, rmSync } from 'node:fs';
import { mkdir, open, readFile, rm, rmdir, stat } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { OnestepError } from '../errors.js';

export const LOCK_FILE = '.onestep.lock';

interface LockOwner {
  pid: number;
  host: string;
  /** The process's start time in clock ticks since boot (/proc/<pid>/stat), so a reused pid is not taken for the owner. */
  start?: string;
  command?: string;
}

/** Field 22 of /proc/<pid>/stat, or undefined where there is no /proc. */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Whether the process that wrote `owner` (on this host) still runs. */
export function ownerAlive(owner: Pick<LockOwner, 'pid' | 'start'>): boolean {
  if (owner.pid === process.pid) return true;
  try {
    process.kill(owner.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const start = processStart(owner.pid);
  return owner.start === undefined || start === undefined || start === owner.start;
}

function parseOwner(text: string): LockOwner | undefined {
  try {
    const v = JSON.parse(text) as LockOwner;
    return Number.isSafeInteger(v.pid) && v.pid > 0 && typeof v.host === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}

export interface FolderLock {
  file: string;
  /** Set when a stale lock (of a dead process) was taken over: who held it. */
  tookOverFrom?: string;
  release(): Promise<void>;
}

const held = new Set<string>();
let exitHookInstalled = false;

/**
 * Takes the lock of `dir` (created when missing) for `what` (a command line, for the message another run gets).
 * Throws an OnestepError when another live run holds it.
 */
export async function lockFolder(dir: string, what = 'onestep'): Promise<FolderLock> {
  await mkdir(dir, { recursive: true });
  const file = join(dir, LOCK_FILE);
  const me: LockOwner = { pid: process.pid, host: os.hostname(), start: processStart(process.pid), command: what };
  let tookOverFrom: string | undefined;
  for (let attempt = 0; ; attempt++) {
    try {
      const handle = await open(file, 'wx', 0o644);
      try {
        await handle.writeFile(JSON.stringify(me) + '\n');
      } finally {
        await handle.close();
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 5) throw err;
    }
    const text = await readFile(file, 'utf8').catch(() => '');
    const owner = parseOwner(text);
    if (owner && (owner.host !== me.host || ownerAlive(owner))) {
      const where = owner.host === me.host ? `process ${owner.pid}` : `process ${owner.pid} on host ${owner.host}`;
      throw new OnestepError(
        `${dir} is in use by another run (${where}${owner.command ? `: ${owner.command}` : ''}).`,
        owner.host === me.host
          ? 'Wait for it to finish, or write to another folder with -o (give each shard its own folder).'
          : `Give each run its own folder with -o. If that run is gone, remove ${file}.`,
      );
    }
    // Stale (its process is dead) or unreadable (torn by a crash mid-write): take it over. Two runs doing this at once
    // are serialized by a takeover folder (mkdir is atomic), so one removes the stale lock and the other then finds the
    // winner's live lock.
    const mutex = `${file}.takeover`;
    try {
      await mkdir(mutex);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // Left by a process killed mid-takeover (it takes milliseconds): remove an old one, else wait and retry.
      const age = Date.now() - (await stat(mutex).then((s) => s.mtimeMs, () => Date.now()));
      if (age > 10_000) await rmdir(mutex).catch(() => undefined);
      else await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    try {
      if ((await readFile(file, 'utf8').catch(() => undefined)) === text) {
        await rm(file, { force: true });
        tookOverFrom = owner ? `process ${owner.pid}` : 'an unreadable lock file';
      }
    } finally {
      await rmdir(mutex).catch(() => undefined);
    }
  }
  held.add(file);
  if (!exitHookInstalled) {
    // A run that exits without releasing (process.exit at a second Ctrl-C) does not leave its lock behind.
    process.on('exit', () => {
      for (const f of held) rmSync(f, { force: true });
    });
    exitHookInstalled = true;
  }
  return {
    file,
    tookOverFrom,
    release: async () => {
      if (!held.delete(file)) return;
      await rm(file, { force: true });
    },
  };
}
