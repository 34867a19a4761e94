/** Test-side pickle writing, opcode by opcode (never by a pickler), and raw access to safetensors goldens. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../support/fixtures.js';

export const PT = join(FIXTURES, 'pytorch');
export const HOSTILE = join(PT, 'hostile');

/** Builds a pickle byte by byte. Method names are the opcode names of pickletools. */
export class Ops {
  private bytes: number[] = [];
  private op(...b: number[]): this {
    this.bytes.push(...b);
    return this;
  }
  private text(s: string): number[] {
    return [...Buffer.from(s, 'utf8')];
  }
  private u32(n: number): number[] {
    return [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, (n >>> 24) & 255];
  }
  proto(p = 2) { return this.op(0x80, p); }
  stop() { return this.op(0x2e); }
  mark() { return this.op(0x28); }
  none() { return this.op(0x4e); }
  int(n: number) { return n >= 0 && n < 256 ? this.op(0x4b, n) : this.op(0x4a, ...this.u32(n)); }
  str(s: string) { const t = this.text(s); return this.op(0x58, ...this.u32(t.length), ...t); }
  shortStr(s: string) { const t = this.text(s); return this.op(0x8c, t.length, ...t); }
  global(module: string, name: string) { return this.op(0x63, ...this.text(`${module}\n${name}\n`)); }
  stackGlobal() { return this.op(0x93); }
  reduce() { return this.op(0x52); }
  build() { return this.op(0x62); }
  newobj() { return this.op(0x81); }
  newobjEx() { return this.op(0x92); }
  inst(module: string, name: string) { return this.op(0x69, ...this.text(`${module}\n${name}\n`)); }
  obj() { return this.op(0x6f); }
  tuple() { return this.op(0x74); }
  tuple1() { return this.op(0x85); }
  tuple2() { return this.op(0x86); }
  tuple3() { return this.op(0x87); }
  emptyTuple() { return this.op(0x29); }
  emptyList() { return this.op(0x5d); }
  emptyDict() { return this.op(0x7d); }
  append() { return this.op(0x61); }
  appends() { return this.op(0x65); }
  setitem() { return this.op(0x73); }
  setitems() { return this.op(0x75); }
  binput(i: number) { return this.op(0x71, i); }
  binget(i: number) { return this.op(0x68, i); }
  longBinput(i: number) { return this.op(0x72, ...this.u32(i)); }
  longBinget(i: number) { return this.op(0x6a, ...this.u32(i)); }
  memoize() { return this.op(0x94); }
  dup() { return this.op(0x32); }
  pop() { return this.op(0x30); }
  binpersid() { return this.op(0x51); }
  raw(...b: number[]) { return this.op(...b); }
  /** `_rebuild_tensor_v2(('storage', torch.FloatStorage, key, 'cpu', numel[, None]), 0, shape, stride, False, OrderedDict())`. */
  floatTensor(key: string, numel: number, shape: number[], stride: number[], legacy = true) {
    this.global('torch._utils', '_rebuild_tensor_v2').mark();
    this.mark().str('storage').global('torch', 'FloatStorage').str(key).str('cpu').int(numel);
    if (legacy) this.none();
    this.tuple().binpersid().int(0);
    this.mark();
    for (const d of shape) this.int(d);
    this.tuple().mark();
    for (const d of stride) this.int(d);
    this.tuple().raw(0x89).global('collections', 'OrderedDict').emptyTuple().reduce();
    return this.tuple().reduce();
  }
  done(): Uint8Array { return Uint8Array.from(this.bytes); }
}

/** A safetensors file's tensors as raw bytes, parsed here without src/ (header JSON + offsets). */
export function goldenRaw(file: string): { order: string[]; metadata: Record<string, string>; tensors: Map<string, { dtype: string; shape: number[]; bytes: Uint8Array }> } {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const tensors = new Map<string, { dtype: string; shape: number[]; bytes: Uint8Array }>();
  let metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') {
      metadata = v as unknown as Record<string, string>;
      continue;
    }
    tensors.set(k, { dtype: v.dtype, shape: v.shape, bytes: buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]) });
  }
  const order = [...tensors.keys()].sort((a, b) => Number(header[a].data_offsets[0]) - Number(header[b].data_offsets[0]));
  return { order, metadata, tensors };
}

/**
 * A legacy-format torch.save file around an object pickle (protocol 2, ending in STOP) whose storages are float32
 * `storages[key]`: the magic number, protocol 1001, sys info, the object, the sorted keys, then count + bytes each.
 */
export function legacyCheckpoint(object: Uint8Array, storages: Record<string, number[]>): Uint8Array {
  const magic = new Ops().proto(2).raw(0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19).stop().done();
  const protocol = new Ops().proto(2).raw(0x4d, 0xe9, 0x03).stop().done();
  const sys = new Ops().proto(2).emptyDict().mark().str('protocol_version').raw(0x4d, 0xe9, 0x03).str('little_endian').raw(0x88)
    .str('type_sizes').emptyDict().mark().str('short').int(2).str('int').int(4).str('long').int(4).setitems().setitems().stop().done();
  const keys = Object.keys(storages).sort();
  const list = new Ops().proto(2).emptyList().mark();
  for (const k of keys) list.str(k);
  const parts = [magic, protocol, sys, object, list.appends().stop().done()];
  for (const k of keys) {
    const count = Buffer.alloc(8);
    count.writeBigInt64LE(BigInt(storages[k].length));
    parts.push(count, new Uint8Array(Float32Array.from(storages[k]).buffer));
  }
  return Buffer.concat(parts);
}
