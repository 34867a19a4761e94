/**
 * Reads the structure of an ONNX ModelProto: nodes, inputs, outputs, initializer shapes, and the values of small
 * initializers (shape constants). The counterpart of proto.ts for the fields a graph walker needs (field numbers of
 * onnx/onnx.proto); weights in external data are never read, so a 4 GB model's structure reads in milliseconds.
 */
import { readFile } from 'node:fs/promises';
import { BadInputError } from '../errors.js';
import type { Graph } from './graph.js';
import { ELEM_TYPES, type AttrValue, type ElemType, type NodeProtoData, type ValueInfoData } from './proto.js';

const ELEM_NAMES = new Map<number, ElemType>(Object.entries(ELEM_TYPES).map(([k, v]) => [v, k as ElemType]));
/** Initializers up to this many bytes keep their values (Reshape shapes, Slice bounds, scalars). */
const SMALL_BYTES = 4096;

export interface InitializerInfo {
  name: string;
  /** undefined for element types onestep never emits (e.g. bfloat16), whose values are not read. */
  type: ElemType | undefined;
  dims: number[];
  /** Values of small numeric initializers stored inline (raw_data or typed fields). */
  values?: number[];
  /** Where an externally stored initializer's bytes are (relative location, byte offset and length). */
  external?: { location: string; offset: number; length: number };
}

export interface ModelStructure {
  irVersion: number;
  producer: string;
  opsets: { domain: string; version: number }[];
  graphName: string;
  nodes: NodeProtoData[];
  inputs: ValueInfoData[];
  outputs: ValueInfoData[];
  initializers: Map<string, InitializerInfo>;
}

class Reader {
  pos = 0;
  constructor(readonly buf: Uint8Array, readonly end = buf.length) {}

  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const b = this.buf[this.pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return result;
      shift += 7n;
    }
  }

  /** A varint that fits a JS number (tags, lengths, dims). */
  num(): number {
    let result = 0;
    let mul = 1;
    for (;;) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const b = this.buf[this.pos++];
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
  }

  bytes(): Uint8Array {
    const n = this.num();
    if (this.pos + n > this.end) throw new Error('truncated field');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  string(): string {
    return new TextDecoder().decode(this.bytes());
  }

  fixed32(): number {
    const v = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 4).getFloat32(0, true);
    this.pos += 4;
    return v;
  }

  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) {
      const n = this.num();
      this.pos += n;
    }
    else if (wire === 5) this.pos += 4;
    else throw new Error(`unsupported wire type ${wire}`);
  }

  /** Calls `field` for each (number, wire type) until the end of this message. */
  each(field: (no: number, wire: number) => void): void {
    while (this.pos < this.end) {
      const tag = this.num();
      const before = this.pos;
      field(Math.floor(tag / 8), tag & 7);
      if (this.pos === before && (tag & 7) !== 0) throw new Error(`field ${tag >> 3} not consumed`);
    }
  }

  sub(): Reader {
    const n = this.num();
    const r = new Reader(this.buf, this.pos + n);
    r.pos = this.pos;
    this.pos += n;
    return r;
  }

  /** A repeated varint field, packed (wire 2) or not (wire 0). */
  ints(wire: number, into: bigint[]): void {
    if (wire === 0) into.push(BigInt.asIntN(64, this.varint()));
    else {
      const r = this.sub();
      while (r.pos < r.end) into.push(BigInt.asIntN(64, r.varint()));
    }
  }

  floats(wire: number, into: number[]): void {
    if (wire === 5) into.push(this.fixed32());
    else {
      const r = this.sub();
      while (r.pos < r.end) into.push(r.fixed32());
    }
  }
}

function readTensor(r: Reader): InitializerInfo & { raw?: Uint8Array } {
  const dims: bigint[] = [];
  let type: number | undefined;
  let name = '';
  let raw: Uint8Array | undefined;
  const int64s: bigint[] = [];
  const int32s: bigint[] = [];
  const floats: number[] = [];
  const external: Record<string, string> = {};
  r.each((no, wire) => {
    if (no === 13) {
      const e = r.sub();
      let k = '';
      let v = '';
      e.each((eno, ewire) => {
        if (eno === 1) k = e.string();
        else if (eno === 2) v = e.string();
        else e.skip(ewire);
      });
      external[k] = v;
    } else if (no === 1) r.ints(wire, dims);
    else if (no === 2) type = r.num();
    else if (no === 4) r.floats(wire, floats);
    else if (no === 5) r.ints(wire, int32s);
    else if (no === 7) r.ints(wire, int64s);
    else if (no === 8) name = r.string();
    else if (no === 9) raw = r.bytes();
    else r.skip(wire);
  });
  const elem = type === undefined ? undefined : ELEM_NAMES.get(type);
  const info: InitializerInfo & { raw?: Uint8Array } = { name, type: elem, dims: dims.map(Number) };
  if (external.location) info.external = { location: external.location, offset: Number(external.offset ?? 0), length: Number(external.length ?? 0) };
  if (raw && raw.length <= SMALL_BYTES) {
    info.raw = raw.slice();
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const read: Partial<Record<ElemType, [number, (o: number) => number]>> = {
      int64: [8, (o) => Number(view.getBigInt64(o, true))],
      int32: [4, (o) => view.getInt32(o, true)],
      float32: [4, (o) => view.getFloat32(o, true)],
      float64: [8, (o) => view.getFloat64(o, true)],
      uint8: [1, (o) => view.getUint8(o)],
      int8: [1, (o) => view.getInt8(o)],
      bool: [1, (o) => view.getUint8(o)],
    };
    const how = elem && read[elem];
    if (how) info.values = Array.from({ length: raw.length / how[0] }, (_, i) => how[1](i * how[0]));
  } else if (int64s.length) info.values = int64s.map(Number);
  else if (int32s.length) info.values = int32s.map(Number);
  else if (floats.length) info.values = floats;
  return info;
}

function readAttribute(r: Reader): [string, AttrValue] {
  let name = '';
  let type = 0;
  let f = 0;
  let i = 0n;
  let s: Uint8Array | undefined;
  let t: (InitializerInfo & { raw?: Uint8Array }) | undefined;
  const floats: number[] = [];
  const ints: bigint[] = [];
  r.each((no, wire) => {
    if (no === 1) name = r.string();
    else if (no === 2) f = r.fixed32();
    else if (no === 3) i = BigInt.asIntN(64, r.varint());
    else if (no === 4) s = r.bytes();
    else if (no === 5) t = readTensor(r.sub());
    else if (no === 7) r.floats(wire, floats);
    else if (no === 8) r.ints(wire, ints);
    else if (no === 20) type = r.num();
    else r.skip(wire);
  });
  const small = (v: bigint) => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
  switch (type) {
    case 1:
      return [name, { type: 'float', value: f }];
    case 2:
      return [name, { type: 'int', value: small(i) }];
    case 3:
      return [name, { type: 'string', value: new TextDecoder().decode(s ?? new Uint8Array()) }];
    case 4: {
      const v = t!;
      return [name, { type: 'tensor', value: { name: v.name, type: v.type ?? 'float32', dims: v.dims, raw: v.raw } }];
    }
    case 6:
      return [name, { type: 'floats', value: floats }];
    case 7:
      return [name, { type: 'ints', value: ints.map(small) }];
    default:
      // Graph-valued and other attributes onestep does not emit: kept as their name only.
      return [name, { type: 'string', value: '' }];
  }
}

function readNode(r: Reader): NodeProtoData {
  const node: NodeProtoData = { name: '', opType: '', domain: '', inputs: [], outputs: [], attributes: [] };
  r.each((no, wire) => {
    if (no === 1) node.inputs.push(r.string());
    else if (no === 2) node.outputs.push(r.string());
    else if (no === 3) node.name = r.string();
    else if (no === 4) node.opType = r.string();
    else if (no === 5) node.attributes.push(readAttribute(r.sub()));
    else if (no === 7) node.domain = r.string();
    else r.skip(wire);
  });
  return node;
}

function readValueInfo(r: Reader): ValueInfoData {
  const v: ValueInfoData = { name: '', type: 'float32', dims: null };
  const dims: (number | string)[] = [];
  r.each((no, wire) => {
    if (no === 1) v.name = r.string();
    else if (no === 2) {
      const tp = r.sub();
      tp.each((tno, twire) => {
        if (tno !== 1) return tp.skip(twire);
        const tt = tp.sub();
        tt.each((eno, ewire) => {
          if (eno === 1) v.type = ELEM_NAMES.get(tt.num()) ?? v.type;
          else if (eno === 2) {
            v.dims = dims;
            const shape = tt.sub();
            shape.each((sno, swire) => {
              if (sno !== 1) return shape.skip(swire);
              const dim = shape.sub();
              let d: number | string = '?';
              dim.each((dno, dwire) => {
                if (dno === 1) d = dim.num();
                else if (dno === 2) d = dim.string();
                else dim.skip(dwire);
              });
              dims.push(d);
            });
          } else tt.skip(ewire);
        });
      });
    } else r.skip(wire);
  });
  return v;
}

/** Decodes a ModelProto's structure from its bytes. */
export function decodeModelStructure(bytes: Uint8Array): ModelStructure {
  const m: ModelStructure = {
    irVersion: 0,
    producer: '',
    opsets: [],
    graphName: '',
    nodes: [],
    inputs: [],
    outputs: [],
    initializers: new Map(),
  };
  const r = new Reader(bytes);
  r.each((no, wire) => {
    if (no === 1) m.irVersion = r.num();
    else if (no === 2) m.producer = r.string();
    else if (no === 7) {
      const g = r.sub();
      g.each((gno, gwire) => {
        if (gno === 1) m.nodes.push(readNode(g.sub()));
        else if (gno === 2) m.graphName = g.string();
        else if (gno === 5) {
          const { raw: _raw, ...t } = readTensor(g.sub());
          m.initializers.set(t.name, t);
        } else if (gno === 11) m.inputs.push(readValueInfo(g.sub()));
        else if (gno === 12) m.outputs.push(readValueInfo(g.sub()));
        else g.skip(gwire);
      });
    } else if (no === 8) {
      const o = r.sub();
      const set = { domain: '', version: 0 };
      o.each((ono, owire) => {
        if (ono === 1) set.domain = o.string();
        else if (ono === 2) set.version = o.num();
        else o.skip(owire);
      });
      m.opsets.push(set);
    } else r.skip(wire);
  });
  // Graph inputs may list initializers too (IR < 4); those are not inputs a caller feeds.
  m.inputs = m.inputs.filter((v) => !m.initializers.has(v.name));
  return m;
}

/** Reads `file` (the .onnx; external data is not opened). */
export async function readModelStructure(file: string): Promise<ModelStructure> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(file);
  } catch (e) {
    throw new BadInputError(file, `cannot read the graph (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, 'Check the model directory.');
  }
  try {
    return decodeModelStructure(bytes);
  } catch (e) {
    throw new BadInputError(file, `not a readable ONNX model (${(e as Error).message})`, 'Convert the checkpoint again.');
  }
}

/** The structure of a graph being built, as readModelStructure would read it once written (small constants' values). */
export function graphStructure(g: Graph): ModelStructure {
  const initializers = new Map<string, InitializerInfo>();
  for (const i of g.initializers.values()) {
    let values: number[] | undefined;
    if (i.raw && i.raw.length <= SMALL_BYTES) {
      const buf = i.raw.slice().buffer;
      if (i.type === 'int64') values = Array.from(new BigInt64Array(buf), Number);
      else if (i.type === 'float32') values = Array.from(new Float32Array(buf));
      else if (i.type === 'int32') values = Array.from(new Int32Array(buf));
    }
    initializers.set(i.name, { name: i.name, type: i.type, dims: i.dims, values });
  }
  return { irVersion: 0, producer: 'onestep', opsets: [], graphName: g.name, nodes: g.nodes, inputs: g.inputs, outputs: g.outputs, initializers };
}
