/**
 * A small protobuf encoder for the ONNX ModelProto fields onestep emits. With weights in external data the proto
 * itself is small, so messages are encoded bottom-up into byte arrays (a child before its parent's length prefix).
 * Field numbers are those of onnx/onnx.proto.
 */

class ProtoWriter {
  private chunks: Uint8Array[] = [];
  private scratch: number[] = [];

  private flushScratch(): void {
    if (this.scratch.length) {
      this.chunks.push(Uint8Array.from(this.scratch));
      this.scratch = [];
    }
  }

  private varint(v: bigint | number): void {
    let x = BigInt.asUintN(64, BigInt(v));
    while (x >= 0x80n) {
      this.scratch.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.scratch.push(Number(x));
  }

  private tag(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  int(field: number, v: number | bigint): this {
    this.tag(field, 0);
    this.varint(v);
    return this;
  }

  float(field: number, v: number): this {
    this.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.scratch.push(...b);
    return this;
  }

  bytes(field: number, data: Uint8Array): this {
    this.tag(field, 2);
    this.varint(data.length);
    this.flushScratch();
    this.chunks.push(data);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  message(field: number, encoded: Uint8Array): this {
    return this.bytes(field, encoded);
  }

  finish(): Uint8Array {
    this.flushScratch();
    const total = this.chunks.reduce((n, c) => n + c.length, 0);
    const out = new Uint8Array(total);
    let off = 0;
    for (const c of this.chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }
}

export const ELEM_TYPES = { float32: 1, uint8: 2, int8: 3, int32: 6, int64: 7, bool: 9, float16: 10, float64: 11 } as const;
export type ElemType = keyof typeof ELEM_TYPES;

export type AttrValue =
  | { type: 'int'; value: number | bigint }
  | { type: 'float'; value: number }
  | { type: 'string'; value: string }
  | { type: 'ints'; value: (number | bigint)[] }
  | { type: 'floats'; value: number[] }
  | { type: 'tensor'; value: TensorProtoData };

export interface NodeProtoData {
  name: string;
  opType: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  attributes: [string, AttrValue][];
}

export interface TensorProtoData {
  name: string;
  type: ElemType;
  dims: number[];
  raw?: Uint8Array;
  external?: { location: string; offset: number; length: number };
}

export interface ValueInfoData {
  name: string;
  type: ElemType;
  /** null: shape unknown (no shape in the proto). */
  dims: (number | string)[] | null;
}

export interface ModelProtoData {
  irVersion: number;
  producerName: string;
  producerVersion: string;
  opsets: { domain: string; version: number }[];
  graph: {
    name: string;
    nodes: NodeProtoData[];
    initializers: TensorProtoData[];
    inputs: ValueInfoData[];
    outputs: ValueInfoData[];
  };
  metadata: [string, string][];
}

const ATTR_TYPE = { float: 1, int: 2, string: 3, tensor: 4, floats: 6, ints: 7 } as const;

function encodeTensor(t: TensorProtoData): Uint8Array {
  const w = new ProtoWriter();
  for (const d of t.dims) w.int(1, d);
  w.int(2, ELEM_TYPES[t.type]);
  w.string(8, t.name);
  if (t.raw) w.bytes(9, t.raw);
  if (t.external) {
    const entry = (k: string, v: string) => new ProtoWriter().string(1, k).string(2, v).finish();
    w.message(13, entry('location', t.external.location));
    w.message(13, entry('offset', String(t.external.offset)));
    w.message(13, entry('length', String(t.external.length)));
    w.int(14, 1); // data_location = EXTERNAL
  }
  return w.finish();
}

function encodeAttribute(name: string, a: AttrValue): Uint8Array {
  const w = new ProtoWriter().string(1, name);
  switch (a.type) {
    case 'float':
      w.float(2, a.value);
      break;
    case 'int':
      w.int(3, a.value);
      break;
    case 'string':
      w.string(4, a.value);
      break;
    case 'tensor':
      w.message(5, encodeTensor(a.value));
      break;
    case 'floats':
      for (const f of a.value) w.float(7, f);
      break;
    case 'ints':
      for (const i of a.value) w.int(8, i);
      break;
  }
  w.int(20, ATTR_TYPE[a.type]);
  return w.finish();
}

function encodeNode(n: NodeProtoData): Uint8Array {
  const w = new ProtoWriter();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  w.string(3, n.name);
  w.string(4, n.opType);
  for (const [k, v] of n.attributes) w.message(5, encodeAttribute(k, v));
  if (n.domain) w.string(7, n.domain);
  return w.finish();
}

function encodeValueInfo(v: ValueInfoData): Uint8Array {
  const tensorType = new ProtoWriter().int(1, ELEM_TYPES[v.type]);
  if (v.dims !== null) {
    const shape = new ProtoWriter();
    for (const d of v.dims) {
      const dim = new ProtoWriter();
      if (typeof d === 'number') dim.int(1, d);
      else dim.string(2, d);
      shape.message(1, dim.finish());
    }
    tensorType.message(2, shape.finish());
  }
  const typeProto = new ProtoWriter().message(1, tensorType.finish()).finish();
  return new ProtoWriter().string(1, v.name).message(2, typeProto).finish();
}

export function encodeModel(m: ModelProtoData): Uint8Array {
  const g = new ProtoWriter();
  for (const n of m.graph.nodes) g.message(1, encodeNode(n));
  g.string(2, m.graph.name);
  for (const t of m.graph.initializers) g.message(5, encodeTensor(t));
  for (const v of m.graph.inputs) g.message(11, encodeValueInfo(v));
  for (const v of m.graph.outputs) g.message(12, encodeValueInfo(v));
  const w = new ProtoWriter().int(1, m.irVersion).string(2, m.producerName).string(3, m.producerVersion);
  w.message(7, g.finish());
  for (const o of m.opsets) w.message(8, new ProtoWriter().string(1, o.domain).int(2, o.version).finish());
  for (const [k, v] of m.metadata) w.message(14, new ProtoWriter().string(1, k).string(2, v).finish());
  return w.finish();
}
