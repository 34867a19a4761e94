/**
 * A FIFO, socket or device given where a file is expected never hangs: each entry point (checkpoint, LoRA, --latents,
 * the model hash, and the prompt file but for a named pipe, which is a stream) refuses it before opening, with one
 * clear error naming it.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { sha256Path } from '../../src/checkpoint/hash.js';
import { OnestepError } from '../../src/errors.js';
import { requireRegularFile } from '../../src/io/files.js';
import { readPrompts } from '../../src/io/prompts.js';
import { LoraFile } from '../../src/lora/parse.js';
import { resolveModel } from '../../src/models.js';
import { SafetensorsFile } from '../../src/safetensors/reader.js';

/** Rejects within 5 s (a hang fails the test instead of stalling the suite) with an error matching `pattern`. */
async function refusedQuickly(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('hung for 5 s')), 5000)));
  try {
    await assert.rejects(Promise.race([p, hang]), (e: unknown) => {
      assert.ok(e instanceof OnestepError, String(e));
      assert.match(e.message, pattern);
      return true;
    });
  } finally {
    clearTimeout(timer);
  }
}

describe('io/files: only regular files are read', function () {
  this.timeout(30_000);
  let dir: string;
  let fifo: string;
  let socket: string;
  let server: net.Server;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-files-'));
    fifo = path.join(dir, 'pipe.safetensors');
    execFileSync('mkfifo', [fifo]);
    socket = path.join(dir, 'sock.safetensors');
    server = net.createServer();
    await new Promise<void>((r) => server.listen(socket, r));
  });
  after(() => {
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const specials = () => [
    [fifo, /named pipe \(FIFO\)/],
    [socket, /a socket/],
    ['/dev/zero', /a device/],
  ] as const;

  it('requireRegularFile: passes files and missing paths, refuses the rest naming what they are', () => {
    requireRegularFile(path.join(dir, 'missing'), 'x');
    for (const [p, kind] of specials()) assert.throws(() => requireRegularFile(p, 'a checkpoint'), (e: unknown) => e instanceof OnestepError && kind.test(e.message) && e.message.startsWith(p));
  });

  it('prompt file: a socket or device is refused (a named pipe is a stream, read like stdin: test/commands/generate)', async () => {
    for (const [p, kind] of specials().slice(1)) await refusedQuickly(readPrompts(p).next(), kind);
  });

  it('checkpoint, LoRA and --latents files (SafetensorsFile.open)', async () => {
    for (const [p, kind] of specials()) {
      await refusedQuickly(SafetensorsFile.open(p), kind);
      await refusedQuickly(LoraFile.open(p), kind);
    }
  });

  it('generate --model / --lora: the cache key hash', async () => {
    for (const [p, kind] of specials()) {
      await refusedQuickly(sha256Path(p), kind);
      await refusedQuickly(resolveModel({ model: p, env: { ONESTEP_CACHE: path.join(dir, 'cache') } }), kind);
    }
  });
});
