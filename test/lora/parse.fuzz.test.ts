/**
 * Fuzzed LoRA files built from the kohya and PEFT fixtures' modules (subsets, shapes and ranks changed, alphas and
 * values made hostile, keys renamed, LoHa/LoKr/DoRA keys added): opening, planning against tiny-sd15 and merging
 * every changed weight succeeds or refuses with one OnestepError; never a crash, a hang or an open fd.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OnestepError } from '../../src/errors.js';
import { LoraMergedSource } from '../../src/lora/merge.js';
import { writeSafetensors } from '../../src/safetensors/writer.js';
import { FIXTURES, folderWeights } from '../support/fixtures.js';
import { assertClean, fuzz, FUZZ_CASES, type Rand } from '../support/fuzz.js';
import { rawSafetensors } from './helpers.js';

interface Entry {
  name: string;
  shape: number[];
  data: Float32Array;
}

function fixtureEntries(style: string): Map<string, Entry[]> {
  const file = rawSafetensors(path.join(FIXTURES, 'loras', `tiny-sd15-${style}.safetensors`));
  const modules = new Map<string, Entry[]>();
  const header = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'loras', `tiny-sd15-${style}.safetensors`)).subarray(8, 8 + Number(fs.readFileSync(path.join(FIXTURES, 'loras', `tiny-sd15-${style}.safetensors`)).readBigUInt64LE(0))).toString());
  for (const name of file.names) {
    const raw = file.raw.get(name)!;
    const data = new Float32Array(Uint8Array.from(raw).buffer);
    const prefix = name.replace(/\.(alpha|lora_down\.weight|lora_up\.weight|lora_A\.weight|lora_B\.weight)$/, '');
    modules.set(prefix, [...(modules.get(prefix) ?? []), { name, shape: header[name].shape, data }]);
  }
  return modules;
}

const HOSTILE = [Number.NaN, Infinity, -Infinity, 0, -1, 1e38, 3.4e38, 1e-45, 65504, 1e6];
const SUFFIXES = ['.hada_w1_a', '.hada_w1_b', '.hada_w2_a', '.hada_w2_b', '.lokr_w1', '.lokr_w2', '.lokr_w2_a', '.lokr_w2_b', '.dora_scale', '.lora_mid.weight', '.diff', '.diff_b', '.scale', '.weight', '.bias'];

function randomData(r: Rand, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => (r.unit() * 2 - 1) * 0.1);
}

function caseTensors(r: Rand, modules: Map<string, Entry[]>[]): Entry[] {
  const source = r.pick(modules);
  const prefixes = [...source.keys()];
  const chosen = Array.from({ length: 1 + r.int(2) }, () => r.pick(prefixes));
  const out = new Map<string, Entry>();
  for (const prefix of chosen) for (const e of source.get(prefix)!) out.set(e.name, { ...e, data: Float32Array.from(e.data) });
  const entries = [...out.values()];
  const mutations = r.int(4);
  for (let m = 0; m < mutations && entries.length; m++) {
    const e = r.pick(entries);
    switch (r.int(8)) {
      case 0: entries.splice(entries.indexOf(e), 1); break;
      case 1: { // another shape (rank, transposed, extra dims), fresh values
        const shape = r.int(3) === 0 ? [...e.shape].reverse() : e.shape.map((d) => (r.bool(0.3) ? Math.max(0, d + r.int(5) - 2) : d));
        if (r.int(5) === 0) shape.push(1 + r.int(3));
        e.shape = shape;
        e.data = randomData(r, shape.reduce((a, b) => a * b, 1));
        break;
      }
      case 2: if (e.data.length) e.data[r.int(e.data.length)] = r.pick(HOSTILE); break;
      case 3: e.data.fill(r.pick(HOSTILE)); break;
      case 4: e.name = e.name.replace(/^lora_(unet|te)_/, r.pick(['lora_unet_', 'lora_te_', 'lora_te1_', 'lora_te2_', 'unet.', ''])); break;
      case 5: { // an extra tensor of another LoRA kind on the same module
        const prefix = e.name.replace(/\.[^.]+(\.weight)?$/, '');
        const shape = Array.from({ length: 1 + r.int(3) }, () => 1 + r.int(8));
        entries.push({ name: prefix + r.pick(SUFFIXES), shape, data: randomData(r, shape.reduce((a, b) => a * b, 1)) });
        break;
      }
      case 6: entries.push({ name: e.name.replace(/\.[^.]*$/, '.alpha'), shape: r.bool() ? [] : [1 + r.int(3)], data: Float32Array.of(r.pick(HOSTILE)) }); break;
      default: entries.push({ name: `lora_unet_${'x'.repeat(r.int(30))}_${r.int(99)}.lora_down.weight`, shape: [2, 2], data: randomData(r, 4) });
    }
  }
  // Names must be unique in a file.
  const unique = new Map(entries.map((e) => [e.name, e]));
  return [...unique.values()].filter((e) => e.data.length === e.shape.reduce((a, b) => a * b, 1));
}

describe('lora fuzz', function () {
  this.timeout(Math.max(120_000, FUZZ_CASES * 100));
  let dir: string;
  // The writer fsyncs each file: in memory (/dev/shm) that costs nothing, on a busy disk it is most of a case's time.
  before(() => (dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'onestep-fuzz-lora-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it(`${FUZZ_CASES} fuzzed LoRA files: merged into tiny-sd15 or refused with one clear error; no crash, hang or leftover`, async () => {
    const modules = [fixtureEntries('kohya'), fixtureEntries('peft')];
    const weights = folderWeights('tiny-sd15');
    const file = path.join(dir, 'fuzz.safetensors');
    const fig = await fuzz(
      'LoRA files',
      FUZZ_CASES,
      async (r) => {
        const tensors = caseTensors(r, modules);
        await writeSafetensors(
          file,
          tensors.map((t) => ({ name: t.name, dtype: 'F32' as const, shape: t.shape, data: () => new Uint8Array(t.data.buffer) })),
        );
        const merged = await LoraMergedSource.create({ ...weights, close: async () => {} }, [{ path: file, scale: r.pick([1, 0.7, -2, 0, 1e30]) }], {
          allowUnmatched: r.bool(),
          baseFamily: 'sd1',
        });
        try {
          // Two merged weights per case: the merge math and its NaN/Inf checks, at a cost that keeps 2000 cases to seconds.
          for (const name of merged.report.changedWeights.slice(0, 2)) await merged.readF32(name);
        } finally {
          await merged.close();
        }
      },
      (e) => e instanceof OnestepError,
      () => fs.readdirSync(dir).filter((f) => f !== 'fuzz.safetensors'),
    );
    assertClean(fig);
  });
});
