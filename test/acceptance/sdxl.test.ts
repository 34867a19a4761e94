/**
 * Issue "SDXL family and SDXS", through the command line with the flags SD uses (as the workplace acceptance script drives
 * it): tiny-sdxl's folder and single file convert to byte-identical graphs; `generate` with the goldens' latents
 * reproduces diffusers' images plain, with CFG and "", and with CFG and no negative prompt (zeros); `lora merge`
 * writes the fused goldens; tiny-sdxs's images likewise.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { onestep } from '../support/cli.js';
import { FIXTURES, goldens, readSafetensors, relErr } from '../support/fixtures.js';

const G = path.join(FIXTURES, 'goldens');

/** One F32 tensor "latents" in a safetensors file, written by hand. */
function writeLatents(file: string, data: Float32Array, shape: number[]): void {
  let header = JSON.stringify({ latents: { dtype: 'F32', shape, data_offsets: [0, data.byteLength] } });
  header = header.padEnd(Math.ceil(header.length / 8) * 8, ' ');
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(header.length));
  fs.writeFileSync(file, Buffer.concat([size, Buffer.from(header), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

function onestepPrompts(model: string): string[] {
  const section = fs.readFileSync(path.join(G, 'README.md'), 'utf8').split(`\`${model}.safetensors\``)[1];
  return JSON.parse(/One-step prompts: (\[.*?\]);/.exec(section)![1]);
}

/** >= 99.9% of the channel values within 1 of the golden PNG. */
async function sameImage(file: string, golden: string): Promise<void> {
  const [a, b] = await Promise.all([file, path.join(G, golden)].map((f) => sharp(f).removeAlpha().raw().toBuffer()));
  assert.equal(a.length, b.length);
  let within = 0;
  for (let i = 0; i < a.length; i++) if (Math.abs(a[i] - b[i]) <= 1) within++;
  assert.ok(within / a.length >= 0.999, `${golden}: ${within} of ${a.length}`);
}

async function ok(...args: string[]): Promise<void> {
  const r = await onestep(...args);
  assert.equal(r.code, 0, `onestep ${args.join(' ')}: ${r.stderr}`);
}

describe('acceptance: SDXL and SDXS through the CLI', function () {
  this.timeout(300_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-sdxl-cli-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** Runs `generate` on `lines` with the golden's latents (rows = lines) and checks image i against `<prefix>-i.png`. */
  async function images(model: string, fixture: 'tiny-sdxl' | 'tiny-sdxs', latentsName: string, lines: object[], prefix: string): Promise<void> {
    const t = goldens(fixture).get(latentsName)!;
    const name = `${path.basename(model)}-${prefix}`;
    writeLatents(path.join(dir, `${name}.st`), t.data, t.shape);
    fs.writeFileSync(path.join(dir, `${name}.jsonl`), lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
    const out = path.join(dir, `out-${name}`);
    await ok('generate', path.join(dir, `${name}.jsonl`), '--model', model, '--out', out, '--latents', path.join(dir, `${name}.st`), '--quiet');
    const manifest = fs.readFileSync(path.join(out, 'manifest.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { index: number; file: string });
    assert.equal(manifest.length, lines.length);
    for (const e of manifest) await sameImage(path.join(out, e.file), `${prefix}-${e.index}.png`);
  }

  it('tiny-sdxl: folder and single file give the same graphs; plain, CFG "" and CFG without a negative equal diffusers', async () => {
    await ok('convert', path.join(FIXTURES, 'tiny-sdxl'), '-o', path.join(dir, 'sdxl-dir'), '--quiet');
    await ok('convert', path.join(FIXTURES, 'tiny-sdxl.safetensors'), '-o', path.join(dir, 'sdxl-file'), '--quiet');
    const graphs = fs.readdirSync(path.join(dir, 'sdxl-file')).filter((f) => f.includes('.onnx'));
    assert.equal(graphs.length, 10);
    for (const g of graphs) assert.ok(fs.readFileSync(path.join(dir, 'sdxl-file', g)).equals(fs.readFileSync(path.join(dir, 'sdxl-dir', g))), g);
    const [p0, p1] = onestepPrompts('tiny-sdxl');
    const model = path.join(dir, 'sdxl-file');
    await images(model, 'tiny-sdxl', 'onestep.latents', [p0, p1].map((prompt) => ({ prompt, guidance: 0, width: 64, height: 64 })), 'tiny-sdxl-onestep');
    await images(model, 'tiny-sdxl', 'onestep_cfg.latents', [{ prompt: p0, negative_prompt: '', guidance: 1.5, width: 64, height: 64 }], 'tiny-sdxl-onestep-cfg');
    await images(model, 'tiny-sdxl', 'onestep_cfg.latents', [{ prompt: p0, guidance: 1.5, width: 64, height: 64 }], 'tiny-sdxl-onestep-cfg-zeros');
  });

  it('tiny-sdxl: lora merge (kohya 0.8, peft 0.6) writes the fused goldens', async () => {
    for (const [style, scale] of [
      ['kohya', '0.8'],
      ['peft', '0.6'],
    ]) {
      const out = path.join(dir, `merged-${style}`);
      await ok('lora', 'merge', path.join(FIXTURES, 'tiny-sdxl'), `${path.join(FIXTURES, 'loras', `tiny-sdxl-${style}.safetensors`)}:${scale}`, '-o', out, '--dtype', 'fp32', '--quiet');
      const fused = readSafetensors(path.join(FIXTURES, 'loras', `golden-fused-tiny-sdxl-${style}.safetensors`));
      let checked = 0;
      for (const c of ['unet', 'text_encoder', 'text_encoder_2']) {
        const file = fs.readdirSync(path.join(out, c)).find((f) => f.endsWith('.safetensors'))!;
        for (const [key, t] of readSafetensors(path.join(out, c, file))) {
          const g = fused.get(`${c}.${key}`);
          if (!g) continue;
          checked++;
          assert.ok(relErr(t.data, g.data) <= 1e-5, `${c}.${key}`);
        }
      }
      assert.equal(checked, fused.size);
    }
  });

  it('tiny-sdxs: plain and CFG "" equal diffusers', async () => {
    await ok('convert', path.join(FIXTURES, 'tiny-sdxs'), '-o', path.join(dir, 'sdxs'), '--quiet');
    const [p0, p1] = onestepPrompts('tiny-sdxs');
    const model = path.join(dir, 'sdxs');
    await images(model, 'tiny-sdxs', 'onestep.latents', [p0, p1].map((prompt) => ({ prompt, guidance: 0, width: 64, height: 64 })), 'tiny-sdxs-onestep');
    await images(model, 'tiny-sdxs', 'onestep_cfg.latents', [{ prompt: p0, negative_prompt: '', guidance: 1.5, width: 64, height: 64 }], 'tiny-sdxs-onestep-cfg');
  });
});
