import { createHash } from 'node:crypto';
import { readdir, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { OnestepError } from '../errors.js';
import { requireRegularFile } from '../io/files.js';

// Hashing a multi-GB checkpoint costs seconds of CPU: it runs in a worker thread so that conversion, which reads the
// same file at the same time, is not held up by it on the main thread.
const HASH_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const hash = require('node:crypto').createHash('sha256');
const fd = fs.openSync(workerData, 'r');
const buf = Buffer.allocUnsafe(8 << 20);
try {
  let n;
  while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) hash.update(buf.subarray(0, n));
} finally {
  fs.closeSync(fd);
}
parentPort.postMessage(hash.digest('hex'));
`;

/** sha256 of a file, streamed (checkpoints are GBs), in a worker thread. */
export function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(HASH_WORKER, { eval: true, workerData: file });
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => code !== 0 && reject(new Error(`hashing ${file} stopped (exit ${code})`)));
  });
}

/**
 * The files of a folder as sorted relative paths (`/`-separated), following symlinked files and folders: what a
 * conversion reads through them is part of the folder. A folder that links back to one of its ancestors is an error.
 */
export async function listFiles(root: string): Promise<string[]> {
  const files: string[] = [];
  const walk = async (rel: string, ancestors: Set<string>): Promise<void> => {
    const dir = path.join(root, rel);
    const real = await realpath(dir);
    if (ancestors.has(real)) {
      throw new OnestepError(`${dir}: symlink loop (it leads back to ${real}).`, 'Remove the link that points to a folder above it.');
    }
    const inside = new Set(ancestors).add(real);
    for (const name of (await readdir(dir)).sort()) {
      const relName = rel === '' ? name : `${rel}/${name}`;
      const st = await stat(path.join(root, relName));
      if (st.isDirectory()) await walk(relName, inside);
      else if (st.isFile()) files.push(relName);
    }
  };
  await walk('', new Set());
  return files.sort();
}

/**
 * sha256 of a file, or of a folder as the hash of its files' relative paths and hashes in sorted order
 * (weights, configs and tokenizer files alike, symlinks followed), so a folder's identity does not depend on where it
 * lives.
 */
export async function sha256Path(p: string): Promise<string> {
  if (!(await stat(p)).isDirectory()) {
    requireRegularFile(p, 'a checkpoint');
    return sha256File(p);
  }
  const h = createHash('sha256');
  for (const f of await listFiles(p)) h.update(`${f}\0${await sha256File(path.join(p, f))}\n`);
  return h.digest('hex');
}
