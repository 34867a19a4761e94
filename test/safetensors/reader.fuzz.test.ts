/**
 * Fuzzed safetensors files (headers mutated as JSON and as bytes, lengths and data sections cut or padded): the
 * reader opens, reads every tensor and closes, or refuses with one OnestepError; never a crash, a hang or an open fd.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OnestepError } from '../../src/errors.js';
import { SafetensorsFile } from '../../src/safetensors/reader.js';
import { assertClean, damagedText, fuzz, FUZZ_CASES, mutateJson, type Rand } from '../support/fuzz.js';

const SIZES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, I64: 8, I32: 4, U16: 2, U32: 4, U64: 8, U8: 1, BOOL: 1 };

/** A valid header and data section: a few tensors of mixed dtypes, and metadata. */
function validFile(r: Rand): { header: Record<string, unknown>; data: Buffer } {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', note: 'fuzz' } };
  let offset = 0;
  const n = 1 + r.int(5);
  for (let i = 0; i < n; i++) {
    const dtype = r.pick(Object.keys(SIZES));
    const shape = Array.from({ length: r.int(4) }, () => r.int(4));
    const bytes = shape.reduce((a, b) => a * b, 1) * SIZES[dtype];
    header[`model.layer${i}.weight`] = { dtype, shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  return { header, data: r.bytes(offset) };
}

function caseBytes(r: Rand): Buffer {
  const { header, data } = validFile(r);
  const doc = r.int(5) === 0 ? header : mutateJson(header, r);
  let json = damagedText(JSON.stringify(doc) ?? 'null', r);
  if (r.int(10) === 0) json = Buffer.concat([json, Buffer.alloc(r.int(16), 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  if (r.int(8) === 0) prefix.writeBigUInt64LE(r.pick([0n, 1n, 2n ** 63n, 2n ** 64n - 1n, BigInt(json.length + 1 + r.int(100)), BigInt(Math.max(0, json.length - 1 - r.int(10)))]));
  let body = data;
  if (r.int(6) === 0) body = r.bool() ? data.subarray(0, r.int(data.length + 1)) : Buffer.concat([data, r.bytes(1 + r.int(16))]);
  const file = Buffer.concat([prefix, json, body]);
  return r.int(12) === 0 ? file.subarray(0, r.int(file.length + 1)) : file;
}

describe('safetensors/reader fuzz', function () {
  this.timeout(Math.max(120_000, FUZZ_CASES * 50));
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-fuzz-st-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it(`${FUZZ_CASES} fuzzed files: read or refused with one clear error; no crash, hang or leftover`, async () => {
    const file = path.join(dir, 'fuzz.safetensors');
    const fig = await fuzz(
      'safetensors headers',
      FUZZ_CASES,
      async (r) => {
        fs.writeFileSync(file, caseBytes(r));
        const st = await SafetensorsFile.open(file);
        try {
          for (const name of st.tensors.keys()) {
            await st.readRaw(name);
            await st.readF32(name);
          }
        } finally {
          await st.close();
        }
      },
      (e) => e instanceof OnestepError,
      () => fs.readdirSync(dir).filter((f) => f !== 'fuzz.safetensors'),
    );
    assertClean(fig);
  });
});
