/**
 * Fuzzing harness: seeded cases (the same seed gives the same cases on every machine), each of which must end in
 * success or in the expected error class (a clear OnestepError), within 5 s, leaving no open file descriptors or
 * files behind. ONESTEP_FUZZ_CASES sets the case count per kind (CI: 2000, sized to seconds); the long mode
 * (e.g. ONESTEP_FUZZ_CASES=100000) prints the figures: cases, crashes, hangs, leftovers, slowest case.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { mulberry32 } from './random.js';

export const FUZZ_CASES = Number(process.env.ONESTEP_FUZZ_CASES ?? 2000);
const HANG_MS = 5000;

/** A seeded source of random choices for one case. */
export class Rand {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.next() / 2 ** 32) * n);
  }
  unit(): number {
    return this.next() / 2 ** 32;
  }
  bool(p = 0.5): boolean {
    return this.unit() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  /** A value likely to break a parser that trusts its input. */
  hostileValue(depth = 0): unknown {
    switch (this.int(depth > 2 ? 14 : 17)) {
      case 0: return null;
      case 1: return this.bool();
      case 2: return 0;
      case 3: return -1;
      case 4: return this.pick([1e308, -1e308, 2 ** 53 + 2, 2 ** 64, 1e-320, 0.5, -0.0, 3.7]);
      case 5: return this.int(1 << 20) - (1 << 19);
      case 6: return '';
      case 7: return this.pick(['../../etc/passwd', '/etc/passwd', '..', '.', 'a/../../b', '\u0000', 'NaN', 'Infinity', '-1', '1e999', 'F32', '__proto__', 'constructor']);
      case 8: return 'x'.repeat(this.int(3) === 0 ? 70_000 : this.int(40));
      case 9: return String.fromCharCode(...Array.from({ length: 1 + this.int(12) }, () => this.int(0x10000)));
      case 10: return this.int(100);
      case 11: return [];
      case 12: return {};
      case 13: return this.int(2) ? 'float32' : 'epsilon';
      case 14: return Array.from({ length: this.int(5) }, () => this.hostileValue(depth + 1));
      case 15: return Object.fromEntries(Array.from({ length: this.int(4) }, () => [this.pick(['a', 'shape', 'dtype', 'graph', '__proto__', '']), this.hostileValue(depth + 1)]));
      default: return [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]];
    }
  }
}

/** Mutates a JSON document in place 1-3 times: a field deleted, replaced by a hostile value, or a hostile field added. */
export function mutateJson(doc: unknown, r: Rand): unknown {
  const times = 1 + r.int(3);
  let root = doc;
  for (let t = 0; t < times; t++) {
    const containers: [Record<string, unknown> | unknown[], string | number][] = [];
    const walk = (v: unknown): void => {
      if (typeof v !== 'object' || v === null) return;
      if (Array.isArray(v)) v.forEach((x, i) => (containers.push([v, i]), walk(x)));
      else for (const k of Object.keys(v)) containers.push([v as Record<string, unknown>, k]), walk((v as Record<string, unknown>)[k]);
    };
    walk(root);
    if (containers.length === 0 || r.int(20) === 0) {
      root = r.hostileValue();
      continue;
    }
    const [parent, key] = r.pick(containers);
    const p = parent as Record<string | number, unknown>;
    switch (r.int(4)) {
      case 0:
        if (Array.isArray(parent)) parent.splice(key as number, 1);
        else delete p[key];
        break;
      case 1:
      case 2:
        p[key] = r.hostileValue();
        break;
      default:
        if (!Array.isArray(parent)) p[r.pick(['extra', 'graph', 'shape', '__proto__', String(r.int(9))])] = r.hostileValue();
        else parent.push(r.hostileValue());
    }
  }
  return root;
}

/** Text of a JSON document, sometimes damaged as bytes (a flip, a cut, an inserted byte). */
export function damagedText(text: string, r: Rand): Buffer {
  const b = Buffer.from(text, 'utf8');
  if (r.int(4) !== 0) return b;
  const at = r.int(b.length + 1);
  switch (r.int(3)) {
    case 0: return b.subarray(0, at);
    case 1: return Buffer.concat([b.subarray(0, at), r.bytes(1 + r.int(3)), b.subarray(at)]);
    default: {
      const c = Buffer.from(b);
      if (c.length) c[Math.min(at, c.length - 1)] ^= 1 << r.int(8);
      return c;
    }
  }
}

/**
 * Descriptors open on the fuzzed files or the fixtures (what a case could leak). Not every descriptor: ONNX Runtime
 * (the LoRA matmuls) keeps its own files and pipes open once loaded.
 */
function openFds(): number {
  let n = 0;
  try {
    for (const fd of fs.readdirSync('/proc/self/fd')) {
      try {
        if (/onestep-fuzz-|\/test\/fixtures\//.test(fs.readlinkSync(`/proc/self/fd/${fd}`))) n++;
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    // no /proc
  }
  return n;
}

export interface FuzzFigures {
  cases: number;
  accepted: number;
  refused: number;
  crashes: string[];
  hangs: string[];
  leftovers: string[];
  slowestMs: number;
}

/**
 * Runs `count` cases of `kind`. `run(r, i)` does one case; an error is fine when `expected(e)` says so (the clear
 * refusal), a crash otherwise. `leftovers()` lists what should not be there after all cases (files left behind).
 */
export async function fuzz(
  kind: string,
  count: number,
  run: (r: Rand, i: number) => Promise<void>,
  expected: (e: unknown) => boolean,
  leftovers: () => string[] = () => [],
): Promise<FuzzFigures> {
  const fig: FuzzFigures = { cases: count, accepted: 0, refused: 0, crashes: [], hangs: [], leftovers: [], slowestMs: 0 };
  const fdsBefore = openFds();
  const started = performance.now();
  for (let i = 0; i < count; i++) {

    const seed = (0x9e3779b9 * (i + 1)) >>> 0;
    const t0 = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const hang = new Promise<'hang'>((res) => (timer = setTimeout(() => res('hang'), HANG_MS)));
    try {
      const outcome = await Promise.race([run(new Rand(seed), i).then(() => 'ok' as const), hang]);
      if (outcome === 'hang') fig.hangs.push(`case ${i} (seed ${seed})`);
      else fig.accepted++;
    } catch (e) {
      if (expected(e)) fig.refused++;
      else fig.crashes.push(`case ${i} (seed ${seed}): ${((e as Error)?.stack?.split('\n').slice(0, 3).join(' | ') ?? String(e)).slice(0, 400)}`);
    } finally {
      clearTimeout(timer);
    }
    fig.slowestMs = Math.max(fig.slowestMs, performance.now() - t0);
  }
  // File handles are closed asynchronously after the case: give them a moment before counting.
  await new Promise((r) => setTimeout(r, 50));
  const fdsAfter = openFds();
  if (fdsAfter > fdsBefore) fig.leftovers.push(`${fdsAfter - fdsBefore} open file descriptor(s) on the fuzzed files`);
  fig.leftovers.push(...leftovers());
  const seconds = (performance.now() - started) / 1000;
  if (process.env.ONESTEP_FUZZ_CASES) {
    console.log(
      `fuzz ${kind}: ${count} cases in ${seconds.toFixed(1)} s (${fig.accepted} accepted, ${fig.refused} refused), ` +
        `${fig.crashes.length} crashes, ${fig.hangs.length} hangs over ${HANG_MS / 1000} s, ${fig.leftovers.length} leftovers, slowest case ${fig.slowestMs.toFixed(0)} ms`,
    );
  }
  return fig;
}

export function assertClean(fig: FuzzFigures): void {
  assert.deepEqual(fig.crashes.slice(0, 5), [], `${fig.crashes.length} crashes`);
  assert.deepEqual(fig.hangs.slice(0, 5), [], `${fig.hangs.length} hangs`);
  assert.deepEqual(fig.leftovers, []);
  // The cases exercise both sides: some inputs are accepted, some refused.
  assert.ok(fig.accepted > 0 && fig.refused > 0, `${fig.accepted} accepted, ${fig.refused} refused`);
}
