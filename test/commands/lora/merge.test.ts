import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runCli } from '../../support/cli.js';
import { FIXTURES, ROOT, readSafetensors } from '../../support/fixtures.js';
import { canonicalToLdm } from '../../../src/checkpoint/keymap-sd.js';
import { maxRelDiff, seeded, tempDir, tensor, writeF32File } from '../../lora/helpers.js';

const LORAS = join(FIXTURES, 'loras');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) newest = Math.max(newest, statSync(join(e.parentPath, e.name)).mtimeMs);
  }
  return newest;
}

/** `node bin/dev.js ...`; resolves with exit code and output instead of throwing. */
const onestep = (...args: string[]) => runCli('dev.js', args);

describe('onestep lora merge (spawned CLI)', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;

  before(function () {
    // bin/dev.js falls back to dist/ when oclif cannot map dist/commands to the TypeScript sources: keep dist fresh.
    const built = join(ROOT, 'dist', 'commands', 'lora', 'merge.js');
    if (!existsSync(built) || statSync(built).mtimeMs < newestMtime(join(ROOT, 'src'))) {
      this.timeout(180_000);
      try {
        execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json')], { cwd: ROOT, stdio: 'pipe' });
      } catch {
        // Type errors elsewhere in the tree still emit JavaScript; the run below shows whether the CLI works.
      }
    }
  });
  beforeEach(async () => (tmp = await tempDir()));
  afterEach(() => tmp.cleanup());

  it('merges kohya:0.7 into the single file, prints the report, and matches the golden', async () => {
    const out = join(tmp.dir, 'merged.safetensors');
    const res = await onestep('lora', 'merge', join(FIXTURES, 'tiny-sd15.safetensors'), `${join(LORAS, 'tiny-sd15-kohya.safetensors')}:0.7`, '-o', out, '--dtype', 'fp32', '-q');
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, /unet: 68 of 68 modules merged/);
    assert.match(res.stdout, /text_encoder: 18 of 18 modules merged/);
    assert.match(res.stdout, /86 weight tensor\(s\) changed/);
    const got = readSafetensors(out);
    for (const [name, t] of readSafetensors(join(LORAS, 'golden-fused-tiny-sd15-kohya.safetensors'))) {
      assert.ok(maxRelDiff(got.get(canonicalToLdm(name)!)!.data, t.data) <= 1e-5, name);
    }
  });

  it('two LoRAs into the folder; refuses the existing output without --force', async () => {
    const out = join(tmp.dir, 'merged');
    const args = ['lora', 'merge', join(FIXTURES, 'tiny-sd15'), `${join(LORAS, 'tiny-sd15-kohya.safetensors')}:0.5`, join(LORAS, 'tiny-sd15-peft.safetensors'), '-o', out, '-q'];
    const first = await onestep(...args);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /tiny-sd15-peft\.safetensors \(scale 1, peft keys\)/);
    assert.ok(existsSync(join(out, 'unet', 'diffusion_pytorch_model.safetensors')));
    const again = await onestep(...args);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already exists/);
    assert.doesNotMatch(again.stderr.slice(again.stderr.indexOf('Error:')), /\n\s+at /, 'no stack trace');
  });

  it('an unmatched key fails with one clear message; --allow-unmatched merges the rest', async () => {
    const r = seeded(5);
    const lora = await writeF32File(join(tmp.dir, 'odd.safetensors'), {
      'lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight': tensor(r, 2, 32),
      'lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight': tensor(r, 128, 2),
      'lora_te_text_model_encoder_layers_9_mlp_fc1.lora_down.weight': tensor(r, 2, 32),
      'lora_te_text_model_encoder_layers_9_mlp_fc1.lora_up.weight': tensor(r, 128, 2),
    });
    const out = join(tmp.dir, 'merged.safetensors');
    const base = join(FIXTURES, 'tiny-sd15.safetensors');
    const failed = await onestep('lora', 'merge', base, lora, '-o', out);
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /Error: .*odd\.safetensors: 2 LoRA key\(s\) match no weight/);
    assert.match(failed.stderr, /layers_9_mlp_fc1\.lora_down\.weight/);
    assert.ok(!existsSync(out));
    const ok = await onestep('lora', 'merge', base, lora, '-o', out, '--allow-unmatched', '-q');
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /text_encoder: 1 of 2 modules merged, 1 skipped/);
  });
});
