/**
 * Seeded fuzzing of the whole reader (container, pickle, tensor views): mutated copies of the fixtures' checkpoints
 * and pickles must each end in success or one typed error (a BadInputError: PickleError, SafetensorsError, ...),
 * within 5 s, and never run anything. CI runs 2000 cases; ONESTEP_FUZZ_CASES=100000 (and ONESTEP_FUZZ_SEED) for
 * the long mode.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BadInputError } from '../../src/errors.js';
import { unpickle } from '../../src/pytorch/pickle.js';
import { torchGlobals } from '../../src/pytorch/torch.js';
import { openTensorFile } from '../../src/safetensors/tensor-file.js';
import { mulberry32 } from '../support/random.js';
import { HOSTILE, PT } from './helpers.js';

const CASES = Number(process.env.ONESTEP_FUZZ_CASES ?? 2000);
const SEED = Number(process.env.ONESTEP_FUZZ_SEED ?? 20261202);
const PER_CASE_MS = 5000;

/** Bytes a mutation likes to write: opcodes that build, call, nest or point elsewhere, and boundary values. */
const INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x28, 0x29, 0x2e, 0x30, 0x32, 0x4a, 0x51, 0x52, 0x58, 0x5d, 0x62, 0x63, 0x68, 0x6a, 0x71, 0x72, 0x73, 0x74, 0x75, 0x7d, 0x81, 0x85, 0x8a, 0x8b, 0x8d, 0x93, 0x94, 0x95];
const WORDS = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe, 64, 1 << 20];

interface Seed {
  name: string;
  bytes: Uint8Array;
  /** The byte range most mutations hit (the pickle inside a container). */
  hot: [number, number];
  /** Whole checkpoint (opened from a file) or a bare pickle (interpreted in memory). */
  kind: 'file' | 'pickle';
}

function seeds(): Seed[] {
  const file = (name: string, hot: [number, number]): Seed => ({ name, bytes: readFileSync(join(PT, name)), hot, kind: 'file' });
  const pickle = (name: string): Seed => {
    const bytes = readFileSync(join(HOSTILE, name));
    return { name, bytes, hot: [0, bytes.length], kind: 'pickle' };
  };
  // dtypes.pt's data.pkl is at 64..1768; dtypes-legacy.pt's pickles at 0..2544 (fixture listings).
  return [
    file('dtypes.pt', [64, 1768]),
    file('dtypes-legacy.pt', [0, 2544]),
    { name: 'state-dict-os-system.bin', bytes: readFileSync(join(HOSTILE, 'state-dict-os-system.bin')), hot: [0, 850], kind: 'file' },
    ...['os-system.pkl', 'nested-reduce.pkl', 'rebuild-from-type.pkl', 'memo-laughs.pkl', 'cycle.pkl', 'memo-sparse-index.pkl'].map(pickle),
  ];
}

function mutate(seed: Seed, next: () => number): Uint8Array {
  let b = Uint8Array.from(seed.bytes);
  const pick = (): number => {
    const [lo, hi] = next() % 4 === 0 ? [0, b.length] : seed.hot;
    return lo + (next() % Math.max(1, Math.min(hi, b.length) - lo));
  };
  const ops = next() % 2 ? 1 : 1 + (next() % 4);
  for (let k = 0; k < ops && b.length > 0; k++) {
    const at = pick();
    switch (next() % 7) {
      case 0:
        b[at] = next() & 0xff;
        break;
      case 1:
        b[at] = INTERESTING[next() % INTERESTING.length];
        break;
      case 2: {
        const w = WORDS[next() % WORDS.length];
        for (let i = 0; i < 4 && at + i < b.length; i++) b[at + i] = (w >>> (8 * i)) & 0xff;
        break;
      }
      case 3: {
        const n = 1 + (next() % 8);
        b = Uint8Array.from([...b.subarray(0, at), ...b.subarray(Math.min(b.length, at + n))]);
        break;
      }
      case 4: {
        const n = 1 + (next() % 32);
        const chunk = b.slice(at, at + n);
        const to = pick();
        b = Uint8Array.from([...b.subarray(0, to), ...chunk, ...b.subarray(to)]);
        break;
      }
      case 5:
        b = b.slice(0, at);
        break;
      default:
        b[at] ^= 1 << (next() % 8);
    }
  }
  return b;
}

describe(`pytorch reader fuzzing (${CASES} cases, seed ${SEED})`, () => {
  let dir: string;
  before(async () => (dir = await mkdtemp(join(tmpdir(), 'onestep-fuzz-'))));
  after(() => rm(dir, { recursive: true, force: true }));

  it('every mutated case ends in success or a typed error within 5 s, and nothing runs', async function () {
    this.timeout(Math.max(120_000, CASES * 50));
    const corpus = seeds();
    const next = mulberry32(SEED);
    const globals = torchGlobals();
    const outcomes = { ok: 0, refused: 0, tensorsRead: 0 };
    const rules = new Map<string, number>();
    let slowest = 0;
    const path = join(dir, 'case.bin');
    for (let i = 0; i < CASES; i++) {
      const seed = corpus[next() % corpus.length];
      const bytes = mutate(seed, next);
      const t0 = performance.now();
      try {
        if (seed.kind === 'pickle') {
          unpickle(bytes, 0, { label: seed.name, globals });
        } else {
          await writeFile(path, bytes);
          const f = await openTensorFile(path);
          try {
            for (const name of f.tensors.keys()) {
              await f.readRaw(name);
              await f.readF32(name);
              outcomes.tensorsRead++;
            }
          } finally {
            await f.close();
          }
        }
        outcomes.ok++;
      } catch (e) {
        if (!(e instanceof BadInputError)) {
          await writeFile(join(tmpdir(), `onestep-fuzz-failure-${SEED}-${i}.bin`), bytes);
          assert.fail(`case ${i} (seed ${SEED}, from ${seed.name}) threw an untyped ${(e as Error)?.constructor?.name}: ${(e as Error)?.stack ?? e}`);
        }
        const rule = /\[(\w+) rule: ([\w-]+)\]/.exec(e.message)?.slice(1).join(':') ?? e.constructor.name;
        rules.set(rule, (rules.get(rule) ?? 0) + 1);
        outcomes.refused++;
      }
      const ms = performance.now() - t0;
      slowest = Math.max(slowest, ms);
      assert.ok(ms < PER_CASE_MS, `case ${i} took ${ms.toFixed(0)} ms`);
    }
    for (const m of ['os-system', 'posix-system', 'nested-reduce', 'rebuild-from-type', 'state-dict-os-system']) {
      assert.equal(existsSync(`/tmp/onestep-pwned-${m}`), false);
    }
    assert.equal(outcomes.ok + outcomes.refused, CASES);
    // Both outcomes occur: the mutations are neither all fatal nor all harmless.
    assert.ok(outcomes.ok > 0 && outcomes.refused > 0, JSON.stringify(outcomes));
    if (process.env.ONESTEP_FUZZ_REPORT) {
      const top = [...rules].sort((a, b) => b[1] - a[1]).slice(0, 12);
      console.log(JSON.stringify({ cases: CASES, seed: SEED, ...outcomes, slowestMs: Math.round(slowest * 10) / 10, rules: Object.fromEntries(top) }));
    }
  });
});
