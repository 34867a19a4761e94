/**
 * `onestep generate` end to end: the built CLI (`node bin/run.js`, from dist/) in a child process, as a user runs it:
 * golden images, streaming from a named pipe, SIGKILL + --resume, SIGINT, bad prompt lines, the bundled demo model, --json.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { convertCheckpoint } from '../../src/convert.js';
import { FIXTURES, ROOT, goldens } from '../support/fixtures.js';

const BIN = path.join(ROOT, 'bin', 'run.js');
const TEMP_FILE = /^\..*\.tmp-/;

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

interface Running {
  child: ChildProcess;
  done: Promise<Finished>;
}

/** Environment of every run: a private model cache, no ONESTEP_MODEL or shard variables from the caller. */
function cleanEnv(cache: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ONESTEP_CACHE: cache, ...extra };
  for (const k of ['ONESTEP_MODEL', 'SLURM_ARRAY_TASK_ID', 'SLURM_ARRAY_TASK_COUNT', 'JOB_COMPLETION_INDEX', 'ONESTEP_SHARD_COUNT']) {
    if (!(k in extra)) delete env[k];
  }
  return env;
}

function start(args: string[], env: NodeJS.ProcessEnv, stdin: 'pipe' | 'ignore' = 'ignore'): Running {
  const started = Date.now();
  const child = spawn(process.execPath, [BIN, 'generate', ...args], { cwd: ROOT, env, stdio: [stdin, 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<Finished>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: Date.now() - started }));
  });
  return { child, done };
}

function generate(args: string[], env: NodeJS.ProcessEnv): Promise<Finished> {
  return start(args, env).done;
}

/** Finished image files in a folder (not temp files). */
function images(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((f) => /\.(png|webp|jpg)$/.test(f) && !f.startsWith('.'));
}

async function waitFor(what: string, test: () => boolean, timeoutMs: number, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!test()) {
    if (child && child.exitCode !== null) throw new Error(`the run ended (code ${child.exitCode}) before ${what}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

interface Entry {
  index: number;
  file: string;
  seed: number | string;
  prompt: string;
}

/** manifest.jsonl as entries; every line must be whole JSON ending in a newline. */
function readManifest(dir: string): Entry[] {
  const text = fs.readFileSync(path.join(dir, 'manifest.jsonl'), 'utf8');
  if (text === '') return [];
  assert.ok(text.endsWith('\n'), 'the manifest ends with a whole line');
  return text
    .slice(0, -1)
    .split('\n')
    .map((line) => JSON.parse(line) as Entry);
}

async function rgb(file: string): Promise<{ data: Uint8Array; width: number; height: number }> {
  const { data, info } = await sharp(file).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  assert.equal(info.channels, 3);
  return { data: new Uint8Array(data), width: info.width, height: info.height };
}

/** One F32 tensor "latents" in a safetensors file (written here by hand, independent of src/safetensors). */
function writeLatents(file: string, data: Float32Array, shape: number[]): void {
  let header = JSON.stringify({ latents: { dtype: 'F32', shape, data_offsets: [0, data.byteLength] } });
  header = header.padEnd(Math.ceil(header.length / 8) * 8, ' ');
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(header.length));
  fs.writeFileSync(file, Buffer.concat([size, Buffer.from(header), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

function writeJsonl(file: string, lines: object[]): void {
  fs.writeFileSync(file, lines.map((l) => JSON.stringify(l) + '\n').join(''));
}

/** Asserts >= 99.9% of channel values within +-1 of the golden PNG. */
async function assertMatchesGolden(file: string, golden: string): Promise<void> {
  const got = await rgb(file);
  const want = await rgb(path.join(FIXTURES, 'goldens', golden));
  assert.deepEqual([got.width, got.height], [want.width, want.height]);
  let within = 0;
  let maxDiff = 0;
  for (let i = 0; i < want.data.length; i++) {
    const d = Math.abs(got.data[i] - want.data[i]);
    if (d <= 1) within++;
    maxDiff = Math.max(maxDiff, d);
  }
  assert.ok(within / want.data.length >= 0.999, `${golden}: ${within}/${want.data.length} within 1, max diff ${maxDiff}`);
}

/** Every manifest entry once, its file present and decodable, nothing temporary left over. */
async function assertCleanFolder(dir: string, entries: Entry[]): Promise<void> {
  const seen = new Set<number>();
  for (const e of entries) {
    assert.ok(!seen.has(e.index), `index ${e.index} is in the manifest twice`);
    seen.add(e.index);
    const img = await rgb(path.join(dir, e.file));
    assert.deepEqual([img.width, img.height], [64, 64], e.file);
  }
  assert.deepEqual(fs.readdirSync(dir).filter((f) => TEMP_FILE.test(f)), [], 'temp files left over');
}

describe('onestep generate (spawned CLI)', function () {
  this.timeout(300_000);
  let work: string;
  let cache: string;
  let sd15: string;

  before(async function () {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'commands', 'generate.js'))) {
      execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'pipe' });
    }
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-cli-generate-'));
    cache = path.join(work, 'cache');
    sd15 = path.join(work, 'tiny-sd15');
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: sd15 });
  });
  after(() => fs.rmSync(work, { recursive: true, force: true }));

  const cases = [
    { model: 'tiny-sd15', prompts: ['a photo of a cat', 'a watercolor painting of a lighthouse at dusk'] },
    { model: 'tiny-sd21', prompts: ['a photo of a cat', 'a red sports car on a mountain road'] },
    // PixArt's goldens are a one-step DDPM at t=999 (the folder has no recipe: the default timestep is 999 too).
    { model: 'tiny-pixart', prompts: ['a photo of a cat', 'a small cabin in a snowy forest'], extra: ['--timestep', '999'] },
  ] as const;
  for (const { model, prompts, ...rest } of cases) {
    const extra: readonly string[] = 'extra' in rest ? rest.extra : [];
    it(`${model}: the goldens' latents and prompts give the golden PNGs, without and with guidance`, async () => {
      const dir = path.join(work, `goldens-${model}`);
      fs.mkdirSync(dir);
      const g = goldens(model);
      // tiny-sd15 from its converted model directory; the others as diffusers folders, converted into the cache on first use.
      const modelArg = model === 'tiny-sd15' ? sd15 : path.join(FIXTURES, model);
      const common = ['--model', modelArg, '--width', '64', '--height', '64', '--device', 'cpu', '--seed', '0', ...extra];

      const latents = g.get('onestep.latents')!;
      assert.deepEqual(latents.shape, [2, 4, 8, 8]);
      writeLatents(path.join(dir, 'latents.safetensors'), latents.data, latents.shape);
      writeJsonl(path.join(dir, 'prompts.jsonl'), prompts.map((prompt) => ({ prompt })));
      const plain = await generate(
        [path.join(dir, 'prompts.jsonl'), ...common, '-o', path.join(dir, 'plain'), '--latents', path.join(dir, 'latents.safetensors'), '--guidance', '0', '--batch-size', '2'],
        cleanEnv(cache),
      );
      assert.equal(plain.code, 0, plain.stderr);
      const plainEntries = readManifest(path.join(dir, 'plain'));
      assert.deepEqual(plainEntries.map((e) => e.index).sort(), [0, 1]);
      for (const e of plainEntries) await assertMatchesGolden(path.join(dir, 'plain', e.file), `${model}-onestep-${e.index}.png`);

      // tiny-pixart's goldens do not store onestep_cfg.latents: its CFG case used onestep.latents[0:1], as the others.
      const cfgLatents = g.get('onestep_cfg.latents') ?? { shape: [1, 4, 8, 8], data: latents.data.slice(0, 4 * 8 * 8), dtype: 'F32' };
      writeLatents(path.join(dir, 'cfg.safetensors'), cfgLatents.data, cfgLatents.shape);
      writeJsonl(path.join(dir, 'cfg.jsonl'), [{ prompt: prompts[0], negative_prompt: '', guidance: 1.5 }]);
      const cfg = await generate([path.join(dir, 'cfg.jsonl'), ...common, '-o', path.join(dir, 'cfg'), '--latents', path.join(dir, 'cfg.safetensors')], cleanEnv(cache));
      assert.equal(cfg.code, 0, cfg.stderr);
      const [entry] = readManifest(path.join(dir, 'cfg'));
      assert.equal(entry.index, 0);
      await assertMatchesGolden(path.join(dir, 'cfg', entry.file), `${model}-onestep-cfg-0.png`);
      if (model !== 'tiny-sd15') {
        assert.match(plain.stderr, new RegExp(`converting .*${model}`));
        assert.match(cfg.stderr, /using the converted model cached in/);
      }
    });
  }

  it('streams: the first images of a 100k-line named pipe are written while the pipe is still open (batch 8, 5 lines so far)', async () => {
    const dir = path.join(work, 'stream');
    fs.mkdirSync(dir);
    const fifo = path.join(dir, 'prompts.fifo');
    execFileSync('mkfifo', [fifo]);
    const out = path.join(dir, 'out');
    // A batch of 8 with 5 lines written: the partial batch must run while the pipe stays open.
    const run = start([fifo, '--model', sd15, '-o', out, '--seed', '5', '--device', 'cpu', '--batch-size', '8', '--json'], cleanEnv(cache));
    const writer = fs.createWriteStream(fifo);
    writer.on('error', () => undefined); // EPIPE once the run has stopped reading
    const line = (i: number) => `prompt number ${i}\n`;
    writer.write(Array.from({ length: 5 }, (_, i) => line(i)).join(''));
    try {
      await waitFor('the first image', () => images(out).length > 0, 240_000, run.child);
    } catch (e) {
      run.child.kill('SIGKILL');
      writer.destroy();
      throw new Error(`${(e as Error).message}\n${(await run.done).stderr}`);
    }
    // The rest of the 100k lines, then stop the run: it must not need the whole file before its first images.
    writer.write(Array.from({ length: 100_000 - 5 }, (_, i) => line(i + 5)).join(''));
    run.child.kill('SIGINT');
    writer.end();
    const res = await run.done;
    assert.equal(res.code, 130, res.stderr);
    const summary = JSON.parse(res.stdout);
    assert.equal(summary.interrupted, true);
    assert.ok(summary.images >= 1 && summary.images < 1000, `${summary.images} images`);
    const entries = readManifest(out);
    assert.equal(entries.length, summary.images);
    await assertCleanFolder(out, entries);
  });

  it('SIGKILL at random points three times, then --resume: every prompt exactly once, valid images, no temp files', async () => {
    const dir = path.join(work, 'resume');
    fs.mkdirSync(dir);
    const prompts = path.join(dir, 'prompts.txt');
    const total = 20;
    fs.writeFileSync(prompts, Array.from({ length: total }, (_, i) => `a picture of thing ${i}\n`).join(''));
    const out = path.join(dir, 'out');
    const args = [prompts, '--model', sd15, '-o', out, '--seed', '77', '--batch-size', '2', '--device', 'cpu', '--resume', '--quiet'];
    const killedAt: number[] = [];
    for (let k = 0; k < 3; k++) {
      const before = images(out).length;
      if (before >= total) break;
      const target = Math.min(total, before + 1 + Math.floor(Math.random() * 4));
      const run = start(args, cleanEnv(cache));
      await waitFor(`${target} images`, () => images(out).length >= target || run.child.exitCode !== null, 240_000);
      run.child.kill('SIGKILL');
      await run.done;
      killedAt.push(images(out).length);
    }
    const last = await generate([...args, '--json'], cleanEnv(cache));
    assert.equal(last.code, 0, last.stderr);
    const summary = JSON.parse(last.stdout);
    const entries = readManifest(out);
    assert.deepEqual(
      entries.map((e) => e.index).sort((a, b) => a - b),
      Array.from({ length: total }, (_, i) => i),
      `killed after ${killedAt.join(', ')} images`,
    );
    assert.equal(summary.images + summary.skipped_existing, total);
    for (const e of entries) assert.equal(BigInt(e.seed), 77n + BigInt(e.index));
    await assertCleanFolder(out, entries);
  });

  it('SIGINT: finishes or drops the batches in flight, flushes the manifest, exits 130', async () => {
    const dir = path.join(work, 'sigint');
    fs.mkdirSync(dir);
    const prompts = path.join(dir, 'prompts.txt');
    fs.writeFileSync(prompts, Array.from({ length: 200 }, (_, i) => `sigint prompt ${i}\n`).join(''));
    const out = path.join(dir, 'out');
    const run = start([prompts, '--model', sd15, '-o', out, '--seed', '3', '--batch-size', '2', '--device', 'cpu', '--json'], cleanEnv(cache));
    await waitFor('the first image', () => images(out).length > 0, 240_000, run.child);
    run.child.kill('SIGINT');
    const res = await run.done;
    assert.equal(res.code, 130, res.stderr);
    assert.match(res.stderr, /interrupted/);
    const summary = JSON.parse(res.stdout);
    assert.equal(summary.interrupted, true);
    const entries = readManifest(out);
    assert.equal(entries.length, summary.images);
    assert.ok(summary.images < 200);
    await assertCleanFolder(out, entries);
    assert.deepEqual(images(out).sort(), entries.map((e) => e.file).sort(), 'every image on disk is in the manifest');
  });

  it('Ctrl-C typed in a terminal (a pseudo-terminal, via script): the first stops and exits 130, a second quits at once by SIGINT', async function () {
    if (spawnSync('script', ['--version']).status !== 0) this.skip(); // util-linux's script: in every Debian
    const dir = path.join(work, 'ctrl-c');
    fs.mkdirSync(dir);
    const prompts = path.join(dir, 'prompts.txt');
    fs.writeFileSync(prompts, Array.from({ length: 400 }, (_, i) => `ctrl-c prompt ${i}\n`).join(''));
    for (const presses of [1, 2]) {
      const out = path.join(dir, `out-${presses}`);
      const cmd = [process.execPath, BIN, 'generate', prompts, '--model', sd15, '-o', out, '--seed', '3', '--device', 'cpu', '--width', '128', '--height', '128']
        .map((a) => `'${a}'`)
        .join(' ');
      // script runs the command on a new pseudo-terminal: stderr is a TTY (the spinner runs) and a \x03 written to it is
      // a typed Ctrl-C, which the terminal turns into SIGINT unless something put it in raw mode.
      const child = spawn('script', ['-qfec', `stty cols 100 rows 30; exec ${cmd}`, '/dev/null'], { cwd: ROOT, env: cleanEnv(cache), stdio: ['pipe', 'pipe', 'pipe'] });
      let tty = '';
      child.stdout!.setEncoding('utf8').on('data', (d: string) => (tty += d));
      const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      await waitFor('the spinner counting images', () => /\d+ images, /.test(tty), 240_000, child);
      child.stdin!.write('\x03');
      if (presses === 2) {
        await new Promise((r) => setTimeout(r, 300));
        child.stdin!.write('\x03');
      }
      const pressed = Date.now();
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      const code = await done;
      clearTimeout(timer);
      const plain = tty.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
      // script -e gives the command's status: 130 for exit(130), 128 + 2 for death by SIGINT (not 134, SIGABRT).
      assert.equal(code, 130, `${presses} Ctrl-C: status ${code} after ${Date.now() - pressed} ms\n${plain.slice(-2000)}`);
      assert.match(plain, /interrupted: finishing the batches in flight/);
      assert.doesNotMatch(plain, /Napi::Error|terminate called|Abort/);
      if (presses === 1) assert.match(plain, /images in [\d.]+ s/);
      const entries = readManifest(out);
      assert.deepEqual(images(out).sort(), entries.map((e) => e.file).sort(), 'every image on disk is in the manifest');
      assert.deepEqual(fs.readdirSync(out).filter((f) => TEMP_FILE.test(f) || f === '.onestep.lock'), [], 'no temp files, no lock left');
    }
  });

  it('cheap checks come before loading or converting a model: prompt file, --name, -o, sizes, guidance, a folder that is no model', async () => {
    const dir = path.join(work, 'early');
    fs.mkdirSync(dir);
    const prompts = path.join(dir, 'p.txt');
    fs.writeFileSync(prompts, 'a cat\n');
    const aFile = path.join(dir, 'a-file');
    fs.writeFileSync(aFile, 'x');
    fs.symlinkSync(path.join(dir, 'loop-b'), path.join(dir, 'loop-a'));
    fs.symlinkSync(path.join(dir, 'loop-a'), path.join(dir, 'loop-b'));
    // Not a model: a folder holding a large file (hashing it would take seconds before any message).
    const notModel = path.join(dir, 'not-a-model');
    fs.mkdirSync(notModel);
    fs.writeFileSync(path.join(notModel, 'big.bin'), Buffer.alloc(256 << 20));
    const checkpoint = path.join(FIXTURES, 'tiny-sd15.safetensors');
    const out = path.join(dir, 'out');
    const cases: [string[], RegExp][] = [
      [[path.join(dir, 'missing.txt')], /missing\.txt: no such prompt file/],
      [[prompts, '--name', '{bogus}'], /unknown field \{bogus\}/],
      [[prompts, '-o', aFile], /a-file: is a regular file, not a folder/],
      [[prompts, '-o', path.join(aFile, 'sub')], /sub: is inside .*a-file, which is a regular file, not a folder/],
      [[prompts, '-o', path.join(dir, 'loop-a')], /loop-a: is a symlink loop/],
      [[prompts, '-o', '/sys/onestep-out'], /onestep-out: cannot be created: \/sys (is on a read-only file system|is not writable)/],
      [[prompts, '--width', '20000'], /--width.*between 8 and 16384/],
      [[prompts, '--guidance', '-1'], /--guidance must be >= 0/],
      [[prompts, '--model', notModel], /not-a-model: is a folder with neither model\.json .* nor model_index\.json/],
    ];
    for (const [args, pattern] of cases) {
      const started = Date.now();
      const res = await generate([...args, ...(args.includes('--model') ? [] : ['--model', checkpoint]), ...(args.includes('-o') ? [] : ['-o', out])], cleanEnv(path.join(dir, 'cache')));
      assert.equal(res.code, 1, `${args.join(' ')}: ${res.stderr}`);
      assert.match(res.stderr, pattern);
      assert.doesNotMatch(res.stderr, /\n\s+at |converting/, args.join(' '));
      // Nothing converted or hashed into the cache, nothing written.
      assert.ok(!fs.existsSync(path.join(dir, 'cache')), `${args.join(' ')}: the cache was touched`);
      assert.ok(!fs.existsSync(out), `${args.join(' ')}: -o was created`);
      assert.ok(Date.now() - started < 20_000);
    }
  });

  it('bad lines are reported with line numbers and skipped; --strict stops at the first naming file:line', async () => {
    const dir = path.join(work, 'bad');
    fs.mkdirSync(dir);
    const prompts = path.join(dir, 'prompts.jsonl');
    fs.writeFileSync(
      prompts,
      Buffer.concat([
        Buffer.from('{"prompt": "good one"}\n'),
        Buffer.from('{"prompt": "broken\n'),
        Buffer.from('{"prompt": "good two"}\n'),
        Buffer.from([0x7b, 0x22, 0x70, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d, 0x0a]),
        Buffer.from('{"prompt": "odd size", "width": 60}\n'),
        Buffer.from('{"prompt": "good three"}\n'),
      ]),
    );
    const out = path.join(dir, 'out');
    const res = await generate([prompts, '--model', sd15, '-o', out, '--seed', '1', '--device', 'cpu', '--batch-size', '3', '--json'], cleanEnv(cache));
    assert.equal(res.code, 0, res.stderr);
    for (const [line, what] of [[2, /invalid JSON/], [4, /invalid UTF-8/], [5, /multiple of 8/]] as const) {
      const reported = res.stderr.split('\n').find((l) => l.includes(`prompts.jsonl:${line}:`));
      assert.ok(reported, `line ${line} reported in:\n${res.stderr}`);
      assert.match(reported, what);
    }
    const summary = JSON.parse(res.stdout);
    assert.equal(summary.images, 3);
    assert.equal(summary.bad_lines, 3);
    assert.match(res.stderr, /3 bad lines skipped/);
    // A bad line keeps its index, so later prompts keep their seeds when it is fixed.
    assert.deepEqual(readManifest(out).map((e) => e.index).sort(), [0, 2, 5]);

    const strict = await generate([prompts, '--model', sd15, '-o', path.join(dir, 'strict'), '--seed', '1', '--device', 'cpu', '--strict'], cleanEnv(cache));
    assert.notEqual(strict.code, 0);
    assert.match(strict.stderr, /Error: .*prompts\.jsonl:2: invalid JSON/);
    assert.ok(!strict.stderr.split('\n').some((l) => l.startsWith('    at ')), strict.stderr);
  });

  it('--latents that do not fit the prompts or the image size: one clear error', async () => {
    const dir = path.join(work, 'latents');
    fs.mkdirSync(dir);
    const prompts = path.join(dir, 'prompts.txt');
    fs.writeFileSync(prompts, 'one\ntwo\n');
    writeLatents(path.join(dir, 'small.safetensors'), new Float32Array(4 * 4 * 4), [1, 4, 4, 4]);
    const res = await generate([prompts, '--model', sd15, '-o', path.join(dir, 'out'), '--device', 'cpu', '--latents', path.join(dir, 'small.safetensors')], cleanEnv(cache));
    assert.equal(res.code, 1, res.stderr);
    const errors = res.stderr.split('\n').filter((l) => l.startsWith('Error: '));
    assert.equal(errors.length, 1, res.stderr);
    assert.match(errors[0], /small\.safetensors: .*\[4, 4, 4\].*\[4, 8, 8\]/);
    assert.ok(!res.stderr.split('\n').some((l) => l.startsWith('    at ')), res.stderr);
  });

  it('the bundled demo model by default: converted into ONESTEP_CACHE once, then reused; --json summary', async () => {
    const demoCache = path.join(work, 'demo-cache');
    const out = path.join(work, 'demo-out');
    const args = [path.join('examples', 'prompts.txt'), '--seed', '11'];
    const first = await generate([...args, '-o', out], cleanEnv(demoCache));
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /bundled demo model/);
    assert.match(first.stderr, /converting .*tiny-sd15\.safetensors/);
    const [cached] = fs.readdirSync(path.join(demoCache, 'models'));
    const modelJson = path.join(demoCache, 'models', cached, 'model.json');
    const stamp = fs.statSync(modelJson);
    assert.equal(images(out).length, 5);

    const second = await generate([...args, '-o', path.join(work, 'demo-out-2'), '--json'], cleanEnv(demoCache));
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stderr, /bundled demo model/);
    assert.match(second.stderr, /using the converted model cached in/);
    assert.doesNotMatch(second.stderr, /converting/);
    assert.deepEqual(fs.readdirSync(path.join(demoCache, 'models')), [cached]);
    const again = fs.statSync(modelJson);
    assert.deepEqual([again.ino, again.mtimeMs], [stamp.ino, stamp.mtimeMs], 'the cached model was not rebuilt');
    console.log(`      demo model: first run ${first.ms} ms (converts), second ${second.ms} ms (cached)`);

    const summary = JSON.parse(second.stdout);
    assert.equal(summary.images, 5);
    assert.equal(summary.interrupted, false);
    assert.ok(summary.seconds > 0);
    assert.ok(Math.abs(summary.images_per_second - summary.images / summary.seconds) <= 0.05 * summary.images_per_second + 0.01);
    for (const stage of ['tokenize', 'textEncoder', 'denoiser', 'decoder', 'encode', 'write']) {
      assert.equal(typeof summary.stage_ms[stage], 'number', stage);
      assert.ok(summary.stage_ms[stage] >= 0, stage);
    }
    assert.ok(summary.stage_ms.denoiser > 0 && summary.stage_ms.decoder > 0);
    // Same seed, same prompts, same model: the same pixels in both runs.
    for (const f of images(out)) assert.ok(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(work, 'demo-out-2', f))), f);
  });
});
