import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { Worker } from 'node:worker_threads';

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
 * sha256 of a file, or of a folder as the hash of its files' relative paths and hashes in sorted order
 * (weights, configs and tokenizer files alike), so a folder's identity does not depend on where it lives.
 */
export async function sha256Path(p: string): Promise<string> {
  if (!(await stat(p)).isDirectory()) return sha256File(p);
  const files: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, e.name);
      if (e.isDirectory()) await walk(full);
      else if (e.isFile()) files.push(path.relative(p, full).split(path.sep).join('/'));
    }
  };
  await walk(p);
  files.sort();
  const h = createHash('sha256');
  for (const f of files) h.update(`${f}\0${await sha256File(path.join(p, f))}\n`);
  return h.digest('hex');
}
