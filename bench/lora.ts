/**
 * `onestep lora merge` benchmark: a rank-64 random LoRA (kohya keys, every attention, feed-forward, proj_in/out and text
 * encoder projection: what a typical trained LoRA touches) merged into the full-size random SD 1.5 file. Prints wall
 * time next to `cp` of the base (goal: within 2x) and the merging process's peak RSS (goal: < 1 GB).
 *
 * Run: node --import tsx bench/lora.ts
 */
import { existsSync } from 'node:fs';
import { mkdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors/writer.js';
import { measure, ROOT, timeShell } from './measure.js';
import { generateSd15, sd15Tensors } from './sd15-generator.js';

const LORA_TARGET = /^(unet\..*\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)|proj_in|proj_out)|text_encoder\..*\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12]))\.weight$/;

/** A kohya-style LoRA of the given rank for every SD 1.5 module LORA_TARGET names, small random values. */
export function sd15LoraTensors(rank: number): TensorToWrite[] {
  let s = 12345;
  const rand = (n: number): Uint8Array => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      a[i] = ((s >>> 8) / 2 ** 24 - 0.5) * 0.02;
    }
    return new Uint8Array(a.buffer);
  };
  const out: TensorToWrite[] = [];
  for (const t of sd15Tensors()) {
    if (!LORA_TARGET.test(t.canonical)) continue;
    const [component, ...rest] = t.canonical.replace(/\.weight$/, '').split('.');
    const key = `${component === 'unet' ? 'lora_unet' : 'lora_te'}_${rest.join('_')}`;
    const [outF, inF, ...kernel] = t.shape;
    const ones = kernel.map(() => 1);
    out.push({ name: `${key}.alpha`, dtype: 'F32', shape: [], data: () => new Uint8Array(Float32Array.of(rank / 2).buffer) });
    out.push({ name: `${key}.lora_down.weight`, dtype: 'F32', shape: [rank, inF, ...ones], data: () => rand(rank * inF) });
    out.push({ name: `${key}.lora_up.weight`, dtype: 'F32', shape: [outF, rank, ...ones], data: () => rand(outF * rank) });
  }
  return out;
}

export async function benchLoraMerge(opts: { dir?: string; rank?: number } = {}): Promise<void> {
  const dir = resolve(opts.dir ?? join(ROOT, 'bench', '.work'));
  const rank = opts.rank ?? 64;
  await mkdir(dir, { recursive: true });
  const base = join(dir, 'sd15-random-f32.safetensors');
  if (!existsSync(base)) await generateSd15(base, { dtype: 'f32' });
  const lora = join(dir, `lora-rank${rank}.safetensors`);
  const tensors = sd15LoraTensors(rank);
  await writeSafetensors(lora, tensors, { ss_network_dim: String(rank), ss_network_alpha: String(rank / 2) });
  const out = join(dir, 'merged.safetensors');
  await rm(out, { force: true });
  const baseBytes = (await stat(base)).size;
  console.log(`lora merge: rank-${rank} LoRA, ${tensors.length / 3} modules, ${((await stat(lora)).size / 1e6).toFixed(0)} MB, into ${(baseBytes / 1e9).toFixed(2)} GB`);
  const m = await measure([join(ROOT, 'bin', 'run.js'), 'lora', 'merge', base, `${lora}:0.8`, '-o', out, '--quiet']);
  const cp = timeShell('cp "$1" "$2" && sync', base, join(dir, 'cp-copy.safetensors'));
  await rm(join(dir, 'cp-copy.safetensors'), { force: true });
  console.log(`  merge ${m.seconds.toFixed(1)} s (${(baseBytes / 1e6 / m.seconds).toFixed(0)} MB/s), cp+sync ${cp.toFixed(1)} s: ${(m.seconds / cp).toFixed(2)}x cp (goal <= 2x)`);
  console.log(`  peak RSS ${m.peakRssMB.toFixed(0)} MB (goal < 1024 MB; ${m.source})`);
  await rm(out, { force: true });
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  await benchLoraMerge({ rank: Number(process.argv[2] ?? 64) });
}
