/**
 * Issue "dataset outputs": a webdataset run of 1000 prompts on the bundled demo model, SIGKILLed twice and resumed,
 * gives tar shards holding each prompt exactly once (read by GNU tar and by the small reader below, which shares no
 * code with src/io/tar.ts), byte-identical to an uninterrupted run's; a files run's metadata.jsonl matches its images.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { ROOT } from '../support/fixtures.js';

const BIN = path.join(ROOT, 'bin', 'run.js');

/** A minimal ustar reader: 512-byte headers, octal sizes, PAX `path` records; regular files only. */
function readTarMembers(buf: Buffer): { name: string; data: Buffer }[] {
  const out: { name: string; data: Buffer }[] = [];
  let at = 0;
  let paxPath: string | undefined;
  for (;;) {
    assert.ok(at + 512 <= buf.length, 'archive ends before its two zero blocks');
    const h = buf.subarray(at, at + 512);
    if (h.every((b) => b === 0)) {
      assert.ok(buf.subarray(at + 512, at + 1024).every((b) => b === 0), 'second zero block');
      return out;
    }
    const field = (start: number, len: number) => h.toString('utf8', start, start + len).replace(/\0.*$/s, '');
    const size = parseInt(field(124, 12).trim(), 8);
    const type = field(156, 1) || '0';
    const data = buf.subarray(at + 512, at + 512 + size);
    if (type === 'x') paxPath = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(data.toString('utf8'))?.[1];
    else if (type === '0') {
      out.push({ name: paxPath ?? field(0, 100), data });
      paxPath = undefined;
    }
    at += 512 + Math.ceil(size / 512) * 512;
  }
}

function env(cache: string): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env, ONESTEP_CACHE: cache };
  for (const k of ['ONESTEP_MODEL', 'SLURM_ARRAY_TASK_ID', 'SLURM_ARRAY_TASK_COUNT', 'JOB_COMPLETION_INDEX', 'ONESTEP_SHARD_COUNT']) delete e[k];
  return e;
}

function start(args: string[], cache: string): { child: ChildProcess; done: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = spawn(process.execPath, [BIN, 'generate', ...args], { cwd: ROOT, env: env(cache), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return { child, done: new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr }))) };
}

async function waitFor(test: () => boolean, child: ChildProcess, what: string): Promise<void> {
  const deadline = Date.now() + 240_000;
  while (!test()) {
    if (child.exitCode !== null) throw new Error(`the run ended before ${what}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const tars = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /^\d{5}\.tar$/.test(f)).sort() : []);
const temps = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /^\..*\.tmp-/.test(f)) : []);

describe('acceptance: dataset outputs on the demo model', function () {
  this.timeout(600_000);
  let dir: string;
  let cache: string;
  before(function () {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'commands', 'generate.js'))) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'pipe' });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-dataset-'));
    cache = path.join(dir, 'cache');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('webdataset, 1000 prompts, SIGKILLed twice then resumed: every prompt exactly once, same bytes as an uninterrupted run', async () => {
    const total = 1000;
    const prompt = (i: number) => `prompt ${i}: a ${['red', 'green', 'blue'][i % 3]} house, #${i}`;
    const prompts = path.join(dir, 'prompts.txt');
    fs.writeFileSync(prompts, Array.from({ length: total }, (_, i) => prompt(i) + '\n').join(''));
    const out = path.join(dir, 'wds');
    const args = (o: string, p = prompts) => [p, '-o', o, '--seed', '42', '--batch-size', '8', '--device', 'cpu', '--output-format', 'webdataset', '--shard-size', '100', '--resume', '--quiet'];
    const killedAt: string[] = [];
    for (let k = 0; k < 2; k++) {
      // Kill while a shard is being written (a temp tar exists), after 1-3 more complete shards.
      const target = tars(out).length + 1 + Math.floor(Math.random() * 3);
      const run = start(args(out), cache);
      await waitFor(() => tars(out).length >= target && temps(out).length > 0, run.child, `${target} shards`);
      run.child.kill('SIGKILL');
      await run.done;
      killedAt.push(`${tars(out).length} shards + ${temps(out).join(' ')}`);
    }
    const last = start([...args(out), '--json'], cache);
    const res = await last.done;
    assert.equal(res.code, 0, res.stderr);
    const summary = JSON.parse(res.stdout);
    assert.equal(summary.images + summary.skipped_existing, total, `killed at ${killedAt.join('; ')}`);
    assert.ok(summary.skipped_existing >= 200 && summary.skipped_existing % 100 === 0, `complete shards kept: ${summary.skipped_existing}`);
    assert.deepEqual(temps(out), [], 'no temp files left');

    const names = Array.from({ length: 10 }, (_, n) => `${String(n).padStart(5, '0')}.tar`);
    assert.deepEqual(tars(out), names);
    const seen = new Map<number, string>();
    for (const [n, name] of names.entries()) {
      const file = path.join(out, name);
      const members = readTarMembers(fs.readFileSync(file));
      assert.deepEqual(execFileSync('tar', ['-tf', file], { encoding: 'utf8' }).trimEnd().split('\n'), members.map((m) => m.name), `tar -tf ${name}`);
      assert.equal(members.length, 300);
      for (let m = 0; m < members.length; m += 3) {
        const key = members[m].name.replace(/\.png$/, '');
        assert.deepEqual(members.slice(m, m + 3).map((x) => x.name), [`${key}.png`, `${key}.txt`, `${key}.json`]);
        const json = JSON.parse(members[m + 2].data.toString('utf8'));
        assert.equal(json.key, key);
        assert.equal(json.shard, name);
        assert.ok(!seen.has(json.index), `prompt ${json.index} in ${seen.get(json.index)} and ${name}`);
        seen.set(json.index, name);
        assert.equal(Math.floor(json.index / 100), n, `prompt ${json.index} in shard ${n}`);
        assert.equal(members[m + 1].data.toString('utf8'), prompt(json.index));
        assert.equal(json.prompt, prompt(json.index));
        assert.equal(BigInt(json.seed), 42n + BigInt(json.index));
        const info = await sharp(members[m].data).metadata();
        assert.deepEqual([info.format, info.width, info.height], ['png', 64, 64], key);
      }
    }
    assert.equal(seen.size, total);
    // The manifest's last line for each prompt names the shard holding it.
    const last1 = new Map<number, string>();
    for (const line of fs.readFileSync(path.join(out, 'manifest.jsonl'), 'utf8').trimEnd().split('\n')) {
      const e = JSON.parse(line);
      last1.set(e.index, e.shard);
    }
    assert.deepEqual([...last1.entries()].sort((a, b) => a[0] - b[0]), [...seen.entries()].sort((a, b) => a[0] - b[0]));

    // An uninterrupted run of the first 100 prompts writes the same first shard, byte for byte.
    const first100 = path.join(dir, 'first100.txt');
    fs.writeFileSync(first100, Array.from({ length: 100 }, (_, i) => prompt(i) + '\n').join(''));
    const whole = path.join(dir, 'wds-whole');
    const again = await start(args(whole, first100), cache).done;
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(tars(whole), names.slice(0, 1));
    for (const name of names.slice(0, 1)) assert.ok(fs.readFileSync(path.join(whole, name)).equals(fs.readFileSync(path.join(out, name))), `${name} differs`);
  });

  it('webdataset, SIGINT: the incomplete shard is dropped (counted), complete shards and their manifest lines stay', async () => {
    const prompts = path.join(dir, 'sigint.txt');
    fs.writeFileSync(prompts, Array.from({ length: 400 }, (_, i) => `sigint ${i}\n`).join(''));
    const out = path.join(dir, 'wds-sigint');
    const run = start([prompts, '-o', out, '--seed', '1', '--batch-size', '4', '--device', 'cpu', '--output-format', 'webdataset', '--shard-size', '40', '--json'], cache);
    await waitFor(() => tars(out).length >= 1 && temps(out).length > 0, run.child, 'a shard and a half');
    run.child.kill('SIGINT');
    const res = await run.done;
    assert.equal(res.code, 130, res.stderr);
    const summary = JSON.parse(res.stdout);
    assert.ok(summary.dropped > 0, `dropped ${summary.dropped}`);
    assert.equal(summary.images, tars(out).length * 40, `${summary.images} images kept in ${tars(out).length} shards`);
    assert.deepEqual(temps(out), []);
    const lines = fs.readFileSync(path.join(out, 'manifest.jsonl'), 'utf8').trimEnd().split('\n');
    assert.equal(lines.length, summary.images);
  });

  it('webdataset with mixed sizes: every shard holds its own prompts in index order, whatever batch they ran in', async () => {
    const prompts = path.join(dir, 'mixed.jsonl');
    fs.writeFileSync(prompts, Array.from({ length: 10 }, (_, i) => JSON.stringify({ prompt: `mixed ${i}`, ...(i % 3 === 0 ? { width: 128 } : {}) }) + '\n').join(''));
    const out = path.join(dir, 'wds-mixed');
    const res = await start([prompts, '-o', out, '--seed', '3', '--batch-size', '4', '--device', 'cpu', '--output-format', 'webdataset', '--shard-size', '4', '--quiet'], cache).done;
    assert.equal(res.code, 0, res.stderr);
    assert.deepEqual(tars(out), ['00000.tar', '00001.tar', '00002.tar']);
    for (const [n, name] of tars(out).entries()) {
      const members = readTarMembers(fs.readFileSync(path.join(out, name))).filter((m) => m.name.endsWith('.json'));
      const rows = members.map((m) => JSON.parse(m.data.toString()));
      const want = [0, 1, 2, 3].map((k) => n * 4 + k).filter((i) => i < 10);
      assert.deepEqual(rows.map((r) => [r.index, r.width]), want.map((i) => [i, i % 3 === 0 ? 128 : 64]), name);
    }
  });

  it('files, SIGKILLed then resumed: metadata.jsonl has one row per image file (file_name, text = its prompt), nothing else', async () => {
    const total = 60;
    const prompts = path.join(dir, 'files.jsonl');
    fs.writeFileSync(prompts, Array.from({ length: total }, (_, i) => JSON.stringify({ prompt: `files prompt ${i}`, ...(i % 7 === 0 ? { negative_prompt: 'blurry' } : {}) }) + '\n').join(''));
    const out = path.join(dir, 'files');
    const args = [prompts, '-o', out, '--seed', '5', '--batch-size', '4', '--device', 'cpu', '--resume', '--quiet'];
    const images = () => (fs.existsSync(out) ? fs.readdirSync(out).filter((f) => f.endsWith('.png') && !f.startsWith('.')) : []);
    const run = start(args, cache);
    await waitFor(() => images().length >= 10, run.child, '10 images');
    run.child.kill('SIGKILL');
    await run.done;
    const res = await start(args, cache).done;
    assert.equal(res.code, 0, res.stderr);
    const rows = fs.readFileSync(path.join(out, 'metadata.jsonl'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(rows.map((r) => r.file_name).sort(), images().sort());
    assert.equal(rows.length, total);
    for (const r of rows) {
      assert.deepEqual(Object.keys(r).slice(0, 2), ['file_name', 'text']);
      assert.equal(r.text, `files prompt ${r.index}`);
      assert.equal(r.seed, 5 + r.index);
      assert.equal(r.negative_prompt, r.index % 7 === 0 ? 'blurry' : undefined);
      assert.equal(r.model_name, 'tiny-sd15');
    }
  });
});
