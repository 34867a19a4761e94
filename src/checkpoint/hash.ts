import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';

/** sha256 of a file, streamed (checkpoints are GBs). */
export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
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
