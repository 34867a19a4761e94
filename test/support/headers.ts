/**
 * Test-side reading and writing of safetensors headers for the inspect tests, and the counts a report should give,
 * computed independently of src/.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readSync, readdirSync, statSync, writeFileSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import type { InspectReport } from '../../src/inspect.js';

// An independent reading of safetensors headers (8-byte length + JSON), sharing no code with src/.

export interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

export interface Header {
  metadata: Record<string, string>;
  tensors: Map<string, HeaderEntry>;
}

export function readHeader(file: string): Header {
  const fd = openSync(file, 'r');
  try {
    const lenBuf = Buffer.alloc(8);
    readSync(fd, lenBuf, 0, 8, 0);
    const n = Number(lenBuf.readBigUInt64LE(0));
    const buf = Buffer.alloc(n);
    readSync(fd, buf, 0, n, 8);
    const json = JSON.parse(buf.toString('utf8')) as Record<string, unknown>;
    const metadata = (json.__metadata__ ?? {}) as Record<string, string>;
    delete json.__metadata__;
    return { metadata, tensors: new Map(Object.entries(json as Record<string, HeaderEntry>)) };
  } finally {
    closeSync(fd);
  }
}

export const SIZES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U8: 1 };

/** Writes a valid safetensors file from header entries alone; the data section is a sparse run of zeros. */
export function writeHeaderOnly(file: string, entries: { name: string; dtype: string; shape: number[] }[], metadata?: Record<string, string>): void {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const e of entries) {
    const bytes = e.shape.reduce((a, b) => a * b, SIZES[e.dtype]);
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([prefix, json]));
  const fd = openSync(file, 'r+');
  try {
    ftruncateSync(fd, 8 + json.length + offset);
  } finally {
    closeSync(fd);
  }
}

export function entriesOf(file: string): { name: string; dtype: string; shape: number[] }[] {
  return [...readHeader(file).tensors].map(([name, e]) => ({ name, dtype: e.dtype, shape: e.shape }));
}

export const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

export interface Expected {
  parameters: number;
  tensors: number;
  dtypes: Record<string, number>;
}

export function tallyBy(tensors: Iterable<[string, HeaderEntry]>, componentOf: (key: string) => string | undefined): Record<string, Expected> {
  const out: Record<string, Expected> = {};
  for (const [key, e] of tensors) {
    const c = componentOf(key);
    if (!c) continue;
    const x = (out[c] ??= { parameters: 0, tensors: 0, dtypes: {} });
    x.parameters += numel(e.shape);
    x.tensors += 1;
    x.dtypes[e.dtype] = (x.dtypes[e.dtype] ?? 0) + numel(e.shape);
  }
  return out;
}

export function allParameters(files: string[]): number {
  let n = 0;
  for (const f of files) for (const e of readHeader(f).tensors.values()) n += numel(e.shape);
  return n;
}

/** Each weight folder of a diffusers pipeline, as a component. */
export function expectedFolder(dir: string): { components: Record<string, Expected>; files: string[] } {
  const components: Record<string, Expected> = {};
  const files: string[] = [];
  for (const sub of readdirSync(dir).sort()) {
    if (!statSync(join(dir, sub)).isDirectory()) continue;
    for (const f of readdirSync(join(dir, sub)).filter((n) => n.endsWith('.safetensors'))) {
      files.push(join(dir, sub, f));
      Object.assign(components, tallyBy(readHeader(join(dir, sub, f)).tensors, () => sub));
    }
  }
  return { components, files };
}

/** LDM single-file prefixes; `skip` drops tensors onestep has no use for. */
export function expectedSingle(file: string, skip: (key: string) => boolean): Record<string, Expected> {
  const prefixes: [string, string][] = [
    ['model.diffusion_model.', 'unet'],
    ['first_stage_model.', 'vae'],
    ['cond_stage_model.', 'text_encoder'],
  ];
  return tallyBy(readHeader(file).tensors, (key) => (skip(key) ? undefined : prefixes.find(([p]) => key.startsWith(p))?.[1]));
}

/** DDPM schedule buffers are top-level names without a dot; position_ids is an integer buffer. */
export const isBuffer = (key: string) => !key.includes('.') || key.endsWith('.position_ids');

export function assertComponents(report: InspectReport, expected: Record<string, Expected>): void {
  assert.deepEqual(Object.keys(report.components).sort(), Object.keys(expected).sort());
  for (const [name, e] of Object.entries(expected)) {
    assert.deepEqual(report.components[name], e, name);
  }
  const total = Object.values(expected).reduce((a, c) => a + c.parameters, 0);
  assert.equal(report.totalParameters, total);
}

export function assertNothingLost(report: InspectReport, files: string[]): void {
  assert.equal(report.totalParameters + report.unused.parameters, allParameters(files), 'components + unused = every stored parameter');
}

