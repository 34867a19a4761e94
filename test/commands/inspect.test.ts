/**
 * End to end: spawns the built CLI (`node bin/run.js inspect ...`), as users run it. The CI builds before testing;
 * locally the build runs here when dist/ lacks the inspect sources or is older than them.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onestep, type CliRun } from '../support/cli.js';
import { FIXTURES, ROOT } from '../support/fixtures.js';

function distIsStale(): boolean {
  const pairs = [
    ['src/inspect.ts', 'dist/inspect.js'],
    ['src/commands/inspect.ts', 'dist/commands/inspect.js'],
  ];
  return pairs.some(([src, out]) => !existsSync(join(ROOT, out)) || statSync(join(ROOT, out)).mtimeMs < statSync(join(ROOT, src)).mtimeMs);
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** Shapes of a safetensors file's tensors, read from its header independently of src/. */
function headerShapes(file: string): number[][] {
  const fd = openSync(file, 'r');
  try {
    const len = Buffer.alloc(8);
    readSync(fd, len, 0, 8, 0);
    const json = Buffer.alloc(Number(len.readBigUInt64LE(0)));
    readSync(fd, json, 0, json.length, 8);
    const header = JSON.parse(json.toString('utf8')) as Record<string, { shape: number[] }>;
    return Object.entries(header)
      .filter(([k]) => k !== '__metadata__')
      .map(([, v]) => v.shape);
  } finally {
    closeSync(fd);
  }
}

describe('onestep inspect (CLI)', function () {
  this.timeout(180_000);

  before(() => {
    if (!distIsStale()) return;
    // tsc emits even when files elsewhere in the tree fail to type-check; dist/ is not wiped, so parallel runs keep working.
    try {
      execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: ROOT, stdio: 'pipe' });
    } catch {
      // reported below if the inspect files did not come out
    }
    if (!existsSync(join(ROOT, 'oclif.manifest.json'))) {
      execFileSync(process.execPath, [join(ROOT, 'node_modules', 'oclif', 'bin', 'run.js'), 'manifest'], { cwd: ROOT, stdio: 'pipe' });
    }
    assert.ok(!distIsStale(), 'building dist/ for the CLI failed');
  });

  const cases = [
    { path: 'tiny-sd15.safetensors', kind: 'checkpoint', layout: 'single-file', family: 'sd1', label: 'SD 1.x' },
    { path: 'tiny-sd15', kind: 'checkpoint', layout: 'diffusers', family: 'sd1', label: 'SD 1.x' },
    { path: 'tiny-sd21.safetensors', kind: 'checkpoint', layout: 'single-file', family: 'sd2', label: 'SD 2.x' },
    { path: 'tiny-sd21', kind: 'checkpoint', layout: 'diffusers', family: 'sd2', label: 'SD 2.x' },
    { path: 'tiny-pixart', kind: 'checkpoint', layout: 'diffusers', family: 'pixart-alpha', label: 'PixArt-α' },
    { path: 'loras/tiny-sd15-kohya.safetensors', kind: 'lora', layout: 'lora', family: 'sd1|sd2', label: 'SD 1.x or SD 2.x' },
    { path: 'loras/tiny-sd15-peft.safetensors', kind: 'lora', layout: 'lora', family: 'sd1|sd2', label: 'SD 1.x or SD 2.x' },
  ];

  /** Stored parameters of a fixture file or folder (every tensor of every .safetensors), from the headers. */
  function storedParameters(path: string): number {
    const files = statSync(path).isDirectory()
      ? ['unet', 'vae', 'text_encoder', 'transformer']
          .map((c) => join(path, c))
          .filter(existsSync)
          .flatMap((d) => ['diffusion_pytorch_model.safetensors', 'model.safetensors'].map((f) => join(d, f)).filter(existsSync))
      : [path];
    let n = 0;
    for (const f of files) for (const shape of headerShapes(f)) n += numel(shape);
    return n;
  }

  it('identifies every fixture, in JSON and in human output', async () => {
    const runs = await Promise.all(cases.flatMap((c) => [onestep('inspect', join(FIXTURES, c.path), '--json'), onestep('inspect', join(FIXTURES, c.path))]));
    cases.forEach((c, i) => {
      const json = runs[2 * i];
      const human = runs[2 * i + 1];
      assert.equal(json.code, 0, json.stderr);
      const report = JSON.parse(json.stdout);
      assert.equal(report.kind, c.kind, c.path);
      assert.equal(report.layout, c.layout, c.path);
      assert.equal(report.family, c.family, c.path);
      assert.equal(report.totalParameters + report.unused.parameters, storedParameters(join(FIXTURES, c.path)), c.path);
      assert.equal(human.code, 0, human.stderr);
      assert.match(human.stdout, new RegExp(`Family: +${c.label.replace(/\./g, '\\.')}`), c.path);
      for (const [name, comp] of Object.entries(report.components as Record<string, { parameters: number }>)) {
        assert.match(human.stdout, new RegExp(`\\b${name} +${comp.parameters.toLocaleString('en-US')} `), `${c.path} ${name}`);
      }
    });
  });

  describe('unreadable input: one "Error:" line, non-zero exit, no stack trace', () => {
    let dir: string;
    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'onestep-inspect-cli-'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    const assertCleanFailure = (run: CliRun, pattern: RegExp) => {
      assert.notEqual(run.code, 0);
      assert.equal(run.stdout, '');
      const lines = run.stderr.trim().split('\n');
      assert.equal(lines.filter((l) => l.startsWith('Error:')).length, 1, run.stderr);
      assert.match(lines[0], /^Error: /);
      assert.match(run.stderr, pattern);
      assert.ok(!/^\s+at /m.test(run.stderr), run.stderr);
    };

    it('a damaged pickle checkpoint is refused with one clear error', async () => {
      const ckpt = join(dir, 'model.ckpt');
      writeFileSync(ckpt, Buffer.from('PK\x03\x04 not really a zip'));
      const disguised = join(dir, 'model.safetensors');
      writeFileSync(disguised, Buffer.from([0x80, 0x02, 0x7d, 0x71, 0x00, 0x28, 0x58, 0x01, 0x00]));
      for (const path of [ckpt, disguised]) {
        const run = await onestep('inspect', path);
        assertCleanFailure(run, /pickle/);
        assert.match(run.stderr, /safetensors/);
      }
    });

    it('a truncated file', async () => {
      const file = join(dir, 'truncated.safetensors');
      writeFileSync(file, readFileSync(join(FIXTURES, 'tiny-sd15.safetensors')).subarray(0, 500_000));
      assertCleanFailure(await onestep('inspect', file, '--json'), /truncated\.safetensors/);
    });

    it('a missing path', async () => {
      assertCleanFailure(await onestep('inspect', join(dir, 'missing.safetensors')), /no such file/);
    });
  });
});
