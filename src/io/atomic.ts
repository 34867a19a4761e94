import { createHash, randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { OnestepError } from '../errors.js';

// Temp paths to remove if the process is interrupted (SIGINT/SIGTERM) or exits while they exist.
const pendingTempPaths = new Set<string>();
let handlersInstalled = false;
const SIGNALS = ['SIGINT', 'SIGTERM'] as const;

function removeAllPendingSync(): void {
  for (const path of pendingTempPaths) {
    try {
      rmSync(path, { recursive: true, force: true });
    } catch {
      // Best effort: the process is going away.
    }
  }
  pendingTempPaths.clear();
}

function onSignal(signal: NodeJS.Signals): void {
  // Another listener (say, the command's graceful stop that lets in-flight writes finish) owns the decision: removing
  // temp files now would break those writes. If it then exits, the 'exit' hook removes whatever is left.
  if (process.listenerCount(signal) > 1) return;
  removeAllPendingSync();
  for (const s of SIGNALS) process.removeListener(s, onSignal);
  process.removeListener('exit', removeAllPendingSync);
  handlersInstalled = false;
  // Re-raise with our handler gone so the process ends as the signal intends (killed by it, exit status 128+n).
  process.kill(process.pid, signal);
}

/**
 * Registers a temp file or folder to remove if the process is interrupted by SIGINT/SIGTERM or exits before the
 * returned function is called (call it once the path is renamed into place or removed). When the program has its own
 * SIGINT/SIGTERM listener, the signal is left to it and the paths are removed at exit instead.
 */
export function registerTempPath(path: string): () => void {
  const absolute = resolve(path);
  pendingTempPaths.add(absolute);
  if (!handlersInstalled) {
    for (const s of SIGNALS) process.on(s, onSignal);
    process.on('exit', removeAllPendingSync);
    handlersInstalled = true;
  }
  return () => {
    pendingTempPaths.delete(absolute);
  };
}

/** Paths currently registered for cleanup (for tests and diagnostics). */
export function pendingTempPathCount(): number {
  return pendingTempPaths.size;
}

/** 8 hex digits naming this host, so a cleanup on a shared file system only judges its own host's processes. */
const HOST_TAG = createHash('sha256').update(hostname()).digest('hex').slice(0, 8);

/** `<pid>-<host tag><random>`: the end of every temp name, which says whose it is. */
export function tempSuffix(): string {
  return `${process.pid}-${HOST_TAG}${randomBytes(4).toString('hex')}`;
}

/** What a temp path is for: a file or folder being written, a folder being built, an old folder moved aside. */
export type TempKind = 'tmp' | 'building' | 'old';

/**
 * The temp path through which `target` is written, in its folder: `.<name>.<kind>-<pid>-<host tag><random>`. Every
 * writer of this project names its temp files and folders so, and parseTempName reads them back.
 */
export function tempPathFor(target: string, kind: TempKind = 'tmp'): string {
  return join(dirname(target), `.${basename(target)}.${kind}-${tempSuffix()}`);
}

/**
 * The temp names tempPathFor writes, then the ones older versions wrote: the suffix without a host tag
 * (`<pid>-<8 or 12 hex>`), the safetensors writer's `<name>.tmp-<suffix>`, the graph cache's `.tmp-<pid>-<hex>` and
 * the gallery's `.<name>.tmp-<pid>`.
 */
const TEMP_NAMES: readonly RegExp[] = [
  /^\.(?<target>.+)\.(?:tmp|building|old)-(?<pid>\d+)-(?<suffix>[0-9a-f]{8,16})$/,
  /^(?<target>.+)\.tmp-(?<pid>\d+)-(?<suffix>[0-9a-f]{8,16})$/,
  /^\.tmp-(?<pid>\d+)-[0-9a-f]+$/,
  /^\.(?<target>.+)\.tmp-(?<pid>\d+)$/,
];

export interface TempName {
  /** The name of what was being written (absent for the graph cache's old temp folders, which did not say). */
  target?: string;
  pid: number;
  /** The host tag of the process that wrote it; absent in older names (taken to be this host's). */
  hostTag?: string;
}

/** Whose temp file or folder `name` is and what it was writing; undefined for a name no writer of this project makes. */
export function parseTempName(name: string): TempName | undefined {
  for (const re of TEMP_NAMES) {
    const g = re.exec(name)?.groups;
    if (!g) continue;
    return { target: g.target, pid: Number(g.pid), hostTag: g.suffix?.length === 16 ? g.suffix.slice(0, 8) : undefined };
  }
  return undefined;
}

function isAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the temp files and folders that processes killed before their cleanup could run (SIGKILL, the OOM killer)
 * left in `dir`: only those of this host's processes that are no longer alive, so a concurrent run keeps its own.
 * Returns the names removed.
 */
export async function removeStaleTemps(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const temp = parseTempName(name);
    if (!temp || (temp.hostTag ?? HOST_TAG) !== HOST_TAG || isAlive(temp.pid)) continue;
    await rm(join(dir, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

/** Writes all of `data` at the handle's position (one write call moves at most 1 GiB, and may move less). */
export async function writeAll(handle: FileHandle, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.byteLength) {
    const { bytesWritten } = await handle.write(data, done, Math.min(data.byteLength - done, 1 << 30));
    done += bytesWritten;
  }
}

/** Makes a rename into `dir` durable. */
export async function fsyncDir(dir: string): Promise<void> {
  // Not every platform lets a folder be opened for fsync; that only costs durability.
  try {
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // ignore
  }
}

/**
 * Writes `data` to `path` so that readers see either the old file or the whole new one, never a partial one: writes a
 * temp file in the same folder, fsyncs it, renames it over `path`. The temp file is removed on error or interruption.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const temp = tempPathFor(path);
  const unregister = registerTempPath(temp);
  try {
    const handle = await open(temp, 'wx', 0o644);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    throw err;
  } finally {
    unregister();
  }
  await fsyncDir(dirname(path));
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/**
 * Builds a folder atomically: `fn` fills a sibling temp folder, which is renamed to `finalDir` only when `fn`
 * succeeds. An existing `finalDir` is refused unless `force`; with `force` it is replaced only after success (moved
 * aside, the new one renamed in, the old one deleted). The temp folder is removed on failure, SIGINT or SIGTERM.
 */
export async function withAtomicDir(
  finalDir: string,
  fn: (tmpDir: string) => Promise<void>,
  opts: { force: boolean },
): Promise<void> {
  if (!opts.force && (await exists(finalDir))) {
    throw new OnestepError(`${finalDir} already exists.`, 'Pass --force to replace it, or choose another output folder.');
  }
  await mkdir(dirname(resolve(finalDir)), { recursive: true });
  await removeStaleTemps(dirname(resolve(finalDir)));
  const temp = tempPathFor(finalDir, 'building');
  const unregister = registerTempPath(temp);
  try {
    await mkdir(temp);
    await fn(temp);
    if (await exists(finalDir)) {
      if (!opts.force) throw new OnestepError(`${finalDir} appeared while it was being built.`, 'Pass --force to replace it.');
      const old = tempPathFor(finalDir, 'old');
      await rename(finalDir, old);
      await rename(temp, finalDir);
      await rm(old, { recursive: true, force: true });
    } else {
      // Another process may have renamed its folder in since the check: rename refuses a non-empty target.
      await rename(temp, finalDir).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOTEMPTY' || e.code === 'EEXIST') throw new OnestepError(`${finalDir} appeared while it was being built.`, 'Pass --force to replace it.');
        throw e;
      });
    }
    await fsyncDir(dirname(resolve(finalDir)));
  } catch (err) {
    await rm(temp, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  } finally {
    unregister();
  }
}
