/**
 * Fuzzed prompt sources, text and JSONL (valid lines mutated as JSON and as bytes, invalid UTF-8, BOMs, CR/LF mixes,
 * comments, blank and very long lines): readPrompts yields well-formed records and reports the rest, or (strict, or a
 * broken source) refuses with one OnestepError; never a crash or a hang. The records keep their invariants: indices
 * increase, seeds fit 64 bits, sizes are multiples of 8 within 8..16384, guidance is finite and >= 0.
 */
import { Readable } from 'node:stream';
import { OnestepError } from '../../src/errors.js';
import { MAX_SEED, MAX_SIDE, readPrompts, type PromptRecord } from '../../src/io/prompts.js';
import { assertClean, damagedText, fuzz, FUZZ_CASES, mutateJson, type Rand } from '../support/fuzz.js';

function jsonlLine(r: Rand): Buffer {
  const valid: Record<string, unknown> = { prompt: 'a photo of a cat', negative_prompt: 'blurry', seed: 42, width: 512, height: 768, guidance: 1.5, name: 'cat' };
  for (const k of Object.keys(valid)) if (k !== 'prompt' && r.bool(0.4)) delete valid[k];
  const doc = r.int(3) === 0 ? valid : mutateJson(valid, r);
  return damagedText(JSON.stringify(doc) ?? 'null', r);
}

function textLine(r: Rand): Buffer {
  switch (r.int(8)) {
    case 0: return Buffer.from('# a comment');
    case 1: return Buffer.from(r.pick(['', '   ', '\t']));
    case 2: return r.bytes(1 + r.int(40)); // arbitrary bytes: invalid UTF-8, NULs, control characters
    case 3: return Buffer.from(String.fromCodePoint(...Array.from({ length: 1 + r.int(20) }, () => r.int(0x10ffff + 1)).filter((c) => c < 0xd800 || c > 0xdfff)));
    case 4: return Buffer.from('x'.repeat(r.int(200) === 0 ? 5 << 20 : r.int(3000)));
    default: return Buffer.from(`a prompt number ${r.int(1000)}, ${r.pick(['cinematic', '猫', '🐱', 'ümlaut', '"quoted"', '{not json'])}`);
  }
}

function source(r: Rand): Buffer {
  const jsonl = r.bool();
  const lines = Array.from({ length: r.int(12) }, () => (jsonl && r.int(8) !== 0 ? jsonlLine(r) : textLine(r)));
  const parts: Buffer[] = [];
  if (r.int(10) === 0) parts.push(Buffer.from([0xef, 0xbb, 0xbf]));
  for (const l of lines) parts.push(l, Buffer.from(r.pick(['\n', '\n', '\r\n', '\r'])));
  const all = Buffer.concat(parts);
  return r.int(6) === 0 ? all.subarray(0, r.int(all.length + 1)) : all;
}

function check(rec: PromptRecord, lastIndex: number): void {
  const fail = (what: string) => {
    throw new Error(`record ${JSON.stringify(rec, (_, v) => (typeof v === 'bigint' ? String(v) : v)).slice(0, 200)}: ${what}`);
  };
  if (!Number.isSafeInteger(rec.index) || rec.index <= lastIndex) fail('index does not increase');
  if (!Number.isSafeInteger(rec.line) || rec.line < 1) fail('bad line number');
  if (typeof rec.prompt !== 'string') fail('prompt is not a string');
  if (rec.seed !== undefined && (typeof rec.seed !== 'bigint' || rec.seed < 0n || rec.seed > MAX_SEED)) fail('seed out of range');
  for (const side of [rec.width, rec.height]) if (side !== undefined && !(Number.isInteger(side) && side >= 8 && side <= MAX_SIDE && side % 8 === 0)) fail('bad size');
  if (rec.guidance !== undefined && !(Number.isFinite(rec.guidance) && rec.guidance >= 0)) fail('bad guidance');
}

describe('io/prompts fuzz', function () {
  this.timeout(Math.max(120_000, FUZZ_CASES * 50));

  it(`${FUZZ_CASES} fuzzed prompt sources (text and JSONL), lenient and strict: no crash or hang, records well-formed`, async () => {
    const fig = await fuzz(
      'prompt files',
      FUZZ_CASES,
      async (r) => {
        const bytes = source(r);
        const strict = r.int(4) === 0;
        // Chunks of any size: a line may be split anywhere, even inside a UTF-8 sequence.
        const chunks: Buffer[] = [];
        for (let at = 0; at < bytes.length; ) {
          const n = 1 + r.int(r.bool() ? 7 : 70_000);
          chunks.push(bytes.subarray(at, at + n));
          at += n;
        }
        let last = -1;
        const it = readPrompts(Readable.from(chunks), { strict, onIssue: () => undefined, format: r.pick(['auto', 'auto', 'text', 'jsonl'] as const) });
        for (;;) {
          const next = await it.next();
          if (next.done) break;
          check(next.value, last);
          last = next.value.index;
        }
      },
      (e) => e instanceof OnestepError,
    );
    // A lenient read refuses nothing but a broken source, so refusals come from the strict cases.
    assertClean(fig);
  });
});
