/**
 * Issue "PyTorch checkpoints read without executing anything", end to end: a Lightning .ckpt and a diffusers folder
 * whose UNet is a .bin convert to graphs byte-identical to those of the safetensors files holding the same tensors;
 * `convert --lora` takes a .pt LoRA; `inspect` says what a .ckpt is; `generate --model x.ckpt` runs.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { convertCheckpoint } from '../../src/convert.js';
import { inspectPath } from '../../src/inspect.js';
import { FIXTURES, ROOT } from '../support/fixtures.js';

const PT = path.join(FIXTURES, 'pytorch');
const GRAPHS = ['text_encoder', 'unet', 'vae_decoder', 'vae_encoder'].flatMap((n) => [`${n}.onnx`, `${n}.onnx.data`]);

function assertSameGraphs(a: string, b: string): void {
  for (const f of GRAPHS) assert.ok(fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))), `${f} differs between ${a} and ${b}`);
}

describe('acceptance: PyTorch checkpoints', function () {
  this.timeout(120_000);
  let dir: string;
  let binFolder: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-pytorch-'));
    // tiny-sd15 with its UNet as diffusers' save_pretrained(safe_serialization=False) wrote it.
    binFolder = path.join(dir, 'bin-folder');
    fs.cpSync(path.join(FIXTURES, 'tiny-sd15'), binFolder, { recursive: true });
    fs.rmSync(path.join(binFolder, 'unet', 'diffusion_pytorch_model.safetensors'));
    fs.copyFileSync(path.join(PT, 'tiny-sd15-bin-unet', 'diffusion_pytorch_model.bin'), path.join(binFolder, 'unet', 'diffusion_pytorch_model.bin'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('tiny-sd15.ckpt and a folder with a .bin UNet convert to the graphs of the safetensors folder, byte for byte', async () => {
    const folder = path.join(FIXTURES, 'tiny-sd15');
    await convertCheckpoint(folder, { out: path.join(dir, 'from-folder') });
    await convertCheckpoint(binFolder, { out: path.join(dir, 'from-bin-folder') });
    // Head counts are not in tensor shapes: the single file takes the folder's configs, as its .safetensors twin does.
    await convertCheckpoint(path.join(PT, 'tiny-sd15.ckpt'), { out: path.join(dir, 'from-ckpt'), configDir: folder });
    assertSameGraphs(path.join(dir, 'from-folder'), path.join(dir, 'from-bin-folder'));
    assertSameGraphs(path.join(dir, 'from-folder'), path.join(dir, 'from-ckpt'));
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'from-ckpt', 'model.json'), 'utf8'));
    assert.equal(manifest.source.name, 'tiny-sd15.ckpt');
  });

  it('convert --lora with the kohya LoRA as .pt equals --lora with its .safetensors', async () => {
    const base = path.join(FIXTURES, 'tiny-sd15');
    await convertCheckpoint(base, { out: path.join(dir, 'lora-pt'), loras: [{ path: path.join(PT, 'tiny-sd15-kohya.pt'), scale: 0.7 }] });
    await convertCheckpoint(base, { out: path.join(dir, 'lora-st'), loras: [{ path: path.join(FIXTURES, 'loras', 'tiny-sd15-kohya.safetensors'), scale: 0.7 }] });
    assertSameGraphs(path.join(dir, 'lora-pt'), path.join(dir, 'lora-st'));
  });

  it('inspect on a .ckpt: family, layout, parameters, and the globals kept as inert placeholders', async () => {
    const r = await inspectPath(path.join(PT, 'tiny-sd15.ckpt'));
    assert.deepEqual([r.kind, r.layout, r.family, r.convertible], ['checkpoint', 'single-file', 'sd1', true]);
    const fromSafetensors = await inspectPath(path.join(FIXTURES, 'tiny-sd15.safetensors'));
    assert.equal(r.totalParameters, fromSafetensors.totalParameters);
    assert.match(
      r.notes[0],
      /^tiny-sd15\.ckpt: PyTorch pickle \(torch\.save zip container, protocol 2\) read without executing it, 989 tensors from its 'state_dict' entry; 2 non-tensor global\(s\) kept as inert placeholders, never called: pytorch_lightning\.callbacks\.model_checkpoint\.ModelCheckpoint, pytorch_lightning\.utilities\.parsing\.AttributeDict$/,
    );
    // A diffusers folder whose UNet is a .bin: the component says how it was read.
    const folder = await inspectPath(binFolder);
    assert.deepEqual([folder.layout, folder.family, folder.convertible], ['diffusers', 'sd1', true]);
    assert.match(folder.notes[0], /^unet\/diffusion_pytorch_model\.bin: PyTorch pickle \(torch\.save zip container, protocol 2\) read without executing it, 684 tensors$/);
    assert.equal(folder.totalParameters, fromSafetensors.totalParameters);
  });

  it('a .ckpt takes its configs from a same-named diffusers folder beside it, as a .safetensors does', async () => {
    const beside = path.join(dir, 'beside');
    fs.mkdirSync(beside);
    fs.copyFileSync(path.join(PT, 'tiny-sd15.ckpt'), path.join(beside, 'tiny-sd15.ckpt'));
    fs.cpSync(path.join(FIXTURES, 'tiny-sd15'), path.join(beside, 'tiny-sd15'), { recursive: true });
    await convertCheckpoint(path.join(beside, 'tiny-sd15.ckpt'), { out: path.join(dir, 'from-ckpt-beside') });
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15.safetensors'), { out: path.join(dir, 'from-safetensors') });
    assertSameGraphs(path.join(dir, 'from-safetensors'), path.join(dir, 'from-ckpt-beside'));
  });

  it('generate --model x.ckpt converts it once and writes an image', async () => {
    const prompts = path.join(dir, 'prompts.txt');
    fs.writeFileSync(prompts, 'a cat\n');
    const out = path.join(dir, 'images');
    const run = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'run.js'), 'generate', prompts, '--model', path.join(PT, 'tiny-sd15.ckpt'), '-o', out, '--width', '64', '--height', '64'], {
      env: { ...process.env, ONESTEP_CACHE: path.join(dir, 'cache') },
      encoding: 'utf8',
    });
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stderr, /converting .*tiny-sd15\.ckpt/);
    assert.equal(fs.readdirSync(out).filter((f) => f.endsWith('.png')).length, 1, fs.readdirSync(out).join(', '));
  });
});
