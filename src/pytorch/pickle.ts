/**
 * A pickle interpreter that executes nothing. It reads the opcodes of protocols 0 to 5 and builds plain data: null,
 * booleans, numbers (bigint past 2^53), strings, bytes, lists, tuples, dicts, sets. GLOBAL / STACK_GLOBAL resolve
 * only against the allow-list given by the caller (our own functions, e.g. the tensor rebuilders in ./torch.ts);
 * any other name becomes an inert `PyGlobal`, and calling one (REDUCE, NEWOBJ, INST, OBJ) gives an inert `PyCall`
 * that records what would have been called and is never run. Every length, memo index and stack size is checked
 * against the bytes left and fixed limits before anything is allocated.
 */
import { BadInputError } from '../errors.js';

export type PyValue = unknown;

/** A tuple (lists are plain arrays). */
export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

/** A dict; `cls` names the allow-listed class that built it (collections.OrderedDict) when not a plain dict. */
export class PyDict {
  readonly map = new Map<PyValue, PyValue>();
  /** BUILD state (OrderedDict's `_metadata` of a state dict): kept, never interpreted. */
  state?: PyValue;
  constructor(readonly cls?: string) {}
}

export class PySet {
  constructor(
    readonly items: PyValue[],
    readonly frozen = false,
  ) {}
}

/** A name a GLOBAL / STACK_GLOBAL / INST asked for that is not allow-listed. Never resolved, never called. */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  toString(): string {
    return `${this.module}.${this.name}`;
  }
}

/** What calling a non-allow-listed callable would have done; it is recorded, not done. */
export class PyCall {
  /** SETITEM(S) / APPEND(S) / BUILD applied to the result (e.g. a dict subclass filled after NEWOBJ). */
  readonly items: [PyValue, PyValue][] = [];
  readonly appended: PyValue[] = [];
  state?: PyValue;
  constructor(
    readonly opcode: 'REDUCE' | 'NEWOBJ' | 'NEWOBJ_EX' | 'INST' | 'OBJ',
    readonly callee: PyValue,
    readonly args: PyValue,
  ) {}
}

/** An allow-listed function's refusal of its arguments (the message continues its qualified name). */
export class CallArgumentError extends Error {}

/** An allow-listed callable: one of our own functions, standing for the named Python one. */
export class PyFunction {
  constructor(
    readonly qualname: string,
    readonly call: (args: PyValue[]) => PyValue,
  ) {}
}

export class PickleError extends BadInputError {
  constructor(
    file: string,
    readonly rule: string,
    detail: string,
    hint = 'The file is damaged or not a PyTorch checkpoint: re-download it (a .safetensors release, where there is one, is better). onestep reads pickles as data and never runs them.',
  ) {
    super(file, `${detail} [pickle rule: ${rule}]`, hint);
  }
}

export interface PickleLimits {
  /** Most items on the stack (all MARK-separated frames together). */
  maxStack: number;
  /** Most memo entries. */
  maxMemo: number;
  /** Most nested MARKs open at once. */
  maxMarkDepth: number;
  /** Longest LONG1 / LONG4 integer, in bytes. */
  maxLongBytes: number;
}

export const DEFAULT_LIMITS: PickleLimits = { maxStack: 4_000_000, maxMemo: 4_000_000, maxMarkDepth: 10_000, maxLongBytes: 1024 };

export interface UnpickleOptions {
  /** File name for error messages. */
  label: string;
  /** Allow-listed callables and constants by `module.name`. Looked up in a Map: no prototype walk. */
  globals: ReadonlyMap<string, PyValue>;
  /** BINPERSID / PERSID: the container's storage reference. Absent: persistent ids are refused. */
  persistentLoad?: (pid: PyValue) => PyValue;
  limits?: Partial<PickleLimits>;
}

export interface Unpickled {
  value: PyValue;
  protocol: number;
  /** Bytes read up to and including STOP (the legacy format puts several pickles back to back). */
  end: number;
  /** Each non-allow-listed global, in first-use order. */
  placeholders: string[];
}

/** torch.save's pickles start with a PROTO opcode; older ones may not. */
export function unpickle(bytes: Uint8Array, start: number, opts: UnpickleOptions): Unpickled {
  return new Machine(bytes, start, opts).run();
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const latin1 = new TextDecoder('latin1');

class Machine {
  private pos: number;
  private stack: PyValue[] = [];
  private marks: number[] = [];
  private readonly memo = new Map<number, PyValue>();
  private readonly placeholders = new Map<string, PyGlobal>();
  private readonly limits: PickleLimits;
  private readonly view: DataView;
  private protocol = 0;

  constructor(
    private readonly bytes: Uint8Array,
    start: number,
    private readonly opts: UnpickleOptions,
  ) {
    this.pos = start;
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private fail(rule: string, detail: string): PickleError {
    return new PickleError(this.opts.label, rule, detail);
  }

  private need(n: number, what: string): void {
    if (n > this.bytes.length - this.pos) {
      throw this.fail('truncated', `${what} needs ${n} bytes at offset ${this.pos}, ${this.bytes.length - this.pos} left`);
    }
  }

  private u8(): number {
    this.need(1, 'an argument');
    return this.bytes[this.pos++];
  }
  private u16(): number {
    this.need(2, 'an argument');
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  private i32(): number {
    this.need(4, 'an argument');
    const v = this.view.getInt32(this.pos, true);
    this.pos += 4;
    return v;
  }
  private u32(): number {
    this.need(4, 'an argument');
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  private u64(): number {
    this.need(8, 'an argument');
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    // Any length past what is left fails in take(); clamp so the comparison stays exact.
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  }

  /** `n` bytes as a view (no copy); the length was checked against what is left first. */
  private take(n: number, what: string): Uint8Array {
    if (n > this.bytes.length - this.pos) {
      throw this.fail('length', `${what} of ${n} bytes at offset ${this.pos} runs past the end (${this.bytes.length - this.pos} bytes left)`);
    }
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** A protocol 0 text argument, up to (not including) the newline. */
  private line(what: string): string {
    const end = this.bytes.indexOf(0x0a, this.pos);
    if (end < 0) throw this.fail('truncated', `${what} at offset ${this.pos} has no terminating newline`);
    const s = latin1.decode(this.bytes.subarray(this.pos, end));
    this.pos = end + 1;
    return s;
  }

  private push(v: PyValue): void {
    if (this.stack.length >= this.limits.maxStack) throw this.fail('stack-limit', `stack holds more than ${this.limits.maxStack} items`);
    this.stack.push(v);
  }

  private pop(): PyValue {
    const floor = this.marks.length ? this.marks[this.marks.length - 1] : 0;
    if (this.stack.length <= floor) throw this.fail('stack-underflow', `opcode at offset ${this.pos - 1} pops from an empty stack`);
    return this.stack.pop();
  }

  private top(): PyValue {
    const floor = this.marks.length ? this.marks[this.marks.length - 1] : 0;
    if (this.stack.length <= floor) throw this.fail('stack-underflow', `opcode at offset ${this.pos - 1} reads an empty stack`);
    return this.stack[this.stack.length - 1];
  }

  /** Everything pushed since the last MARK, which is removed. */
  private popMark(): PyValue[] {
    const mark = this.marks.pop();
    if (mark === undefined) throw this.fail('no-mark', `opcode at offset ${this.pos - 1} needs a MARK and none is open`);
    return this.stack.splice(mark);
  }

  private memoPut(index: number): void {
    if (!this.memo.has(index) && this.memo.size >= this.limits.maxMemo) throw this.fail('memo-limit', `memo holds more than ${this.limits.maxMemo} entries`);
    this.memo.set(index, this.top());
  }

  private memoGet(index: number): void {
    if (!this.memo.has(index)) throw this.fail('memo-missing', `memo entry ${index} read before it was written`);
    this.push(this.memo.get(index));
  }

  private decimal(s: string, what: string): number {
    if (!/^-?\d{1,15}$/.test(s.trim())) throw this.fail('text', `${what} "${s.slice(0, 40)}" is not a small decimal integer`);
    return Number(s.trim());
  }

  private global(module: string, name: string): PyValue {
    const key = `${module}.${name}`;
    const allowed = this.opts.globals.get(key);
    if (allowed !== undefined) return allowed;
    let g = this.placeholders.get(key);
    if (!g) this.placeholders.set(key, (g = new PyGlobal(module, name)));
    return g;
  }

  private call(opcode: PyCall['opcode'], callee: PyValue, args: PyValue): PyValue {
    if (callee instanceof PyFunction) {
      if (!(args instanceof PyTuple)) throw this.fail('call-args', `${callee.qualname} is called with ${describe(args)} instead of an argument tuple`);
      try {
        return callee.call(args.items);
      } catch (e) {
        if (!(e instanceof CallArgumentError)) throw e;
        throw this.fail('call-args', `${callee.qualname}${(e as Error).message}`);
      }
    }
    return new PyCall(opcode, callee, args);
  }

  private setItems(target: PyValue, pairs: PyValue[]): void {
    if (pairs.length % 2) throw this.fail('setitems', 'SETITEMS with an odd number of items');
    if (target instanceof PyDict) {
      for (let i = 0; i < pairs.length; i += 2) target.map.set(dictKey(pairs[i]), pairs[i + 1]);
    } else if (target instanceof PyCall) {
      for (let i = 0; i < pairs.length; i += 2) target.items.push([pairs[i], pairs[i + 1]]);
    } else {
      throw this.fail('setitems', `SETITEM(S) on ${describe(target)}, not a dict`);
    }
  }

  private append(target: PyValue, items: PyValue[]): void {
    if (Array.isArray(target)) {
      for (const it of items) target.push(it);
    } else if (target instanceof PyCall) {
      for (const it of items) target.appended.push(it);
    } else {
      throw this.fail('append', `APPEND(S) on ${describe(target)}, not a list`);
    }
  }

  private long(bytes: Uint8Array): number | bigint {
    if (bytes.length === 0) return 0;
    let v = 0n;
    for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]);
    if (bytes[bytes.length - 1] & 0x80) v -= 1n << BigInt(8 * bytes.length);
    return narrow(v);
  }

  run(): Unpickled {
    const b = this.bytes;
    for (;;) {
      if (this.pos >= b.length) throw this.fail('truncated', `pickle ends at offset ${this.pos} without a STOP opcode`);
      const at = this.pos;
      const op = b[this.pos++];
      switch (op) {
        case 0x80: {
          // PROTO
          const p = this.u8();
          if (p > 5) throw this.fail('protocol', `pickle protocol ${p} (this reader knows 0 to 5)`);
          this.protocol = p;
          break;
        }
        case 0x95: // FRAME: a length hint only; the frame's opcodes follow inline
          this.u64();
          break;
        case 0x2e: {
          // STOP
          const value = this.pop();
          return { value, protocol: this.protocol, end: this.pos, placeholders: [...this.placeholders.keys()] };
        }
        // -- stack and memo
        case 0x28: // MARK
          if (this.marks.length >= this.limits.maxMarkDepth) throw this.fail('mark-depth', `more than ${this.limits.maxMarkDepth} nested MARKs`);
          this.marks.push(this.stack.length);
          break;
        case 0x30: // POP
          this.pop();
          break;
        case 0x31: // POP_MARK
          this.popMark();
          break;
        case 0x32: // DUP
          this.push(this.top());
          break;
        case 0x70: // PUT
          this.memoPut(this.decimal(this.line('PUT index'), 'PUT index'));
          break;
        case 0x71: // BINPUT
          this.memoPut(this.u8());
          break;
        case 0x72: // LONG_BINPUT
          this.memoPut(this.u32());
          break;
        case 0x94: // MEMOIZE
          this.memoPut(this.memo.size);
          break;
        case 0x67: // GET
          this.memoGet(this.decimal(this.line('GET index'), 'GET index'));
          break;
        case 0x68: // BINGET
          this.memoGet(this.u8());
          break;
        case 0x6a: // LONG_BINGET
          this.memoGet(this.u32());
          break;
        // -- scalars
        case 0x4e: // NONE
          this.push(null);
          break;
        case 0x88: // NEWTRUE
          this.push(true);
          break;
        case 0x89: // NEWFALSE
          this.push(false);
          break;
        case 0x4a: // BININT
          this.push(this.i32());
          break;
        case 0x4b: // BININT1
          this.push(this.u8());
          break;
        case 0x4d: // BININT2
          this.push(this.u16());
          break;
        case 0x8a: {
          // LONG1
          const n = this.u8();
          this.push(this.long(this.take(n, 'LONG1')));
          break;
        }
        case 0x8b: {
          // LONG4
          const n = this.i32();
          if (n < 0 || n > this.limits.maxLongBytes) throw this.fail('long-limit', `LONG4 of ${n} bytes (limit ${this.limits.maxLongBytes})`);
          this.push(this.long(this.take(n, 'LONG4')));
          break;
        }
        case 0x49: {
          // INT (protocol 0; "00" / "01" are False / True)
          const s = this.line('INT').trim();
          if (s === '00') this.push(false);
          else if (s === '01') this.push(true);
          else this.push(this.textInt(s, 'INT'));
          break;
        }
        case 0x4c: // LONG (protocol 0)
          this.push(this.textInt(this.line('LONG').trim().replace(/L$/, ''), 'LONG'));
          break;
        case 0x46: {
          // FLOAT (protocol 0)
          const s = this.line('FLOAT').trim();
          const v = Number(s);
          if (s === '' || (Number.isNaN(v) && !/^[-+]?nan$/i.test(s))) throw this.fail('text', `FLOAT "${s.slice(0, 40)}" is not a number`);
          this.push(v);
          break;
        }
        case 0x47: {
          // BINFLOAT (big-endian float64)
          this.need(8, 'BINFLOAT');
          this.push(this.view.getFloat64(this.pos, false));
          this.pos += 8;
          break;
        }
        // -- strings and bytes
        case 0x58: // BINUNICODE
          this.push(this.text(this.take(this.u32(), 'BINUNICODE string')));
          break;
        case 0x8c: // SHORT_BINUNICODE
          this.push(this.text(this.take(this.u8(), 'SHORT_BINUNICODE string')));
          break;
        case 0x8d: // BINUNICODE8
          this.push(this.text(this.take(this.u64(), 'BINUNICODE8 string')));
          break;
        case 0x56: // UNICODE (protocol 0, raw-unicode-escape)
          this.push(rawUnicodeEscape(this.line('UNICODE')));
          break;
        case 0x54: {
          // BINSTRING (Python 2 str: bytes, read as latin-1 text as Python 3 does by default)
          const n = this.i32();
          if (n < 0) throw this.fail('length', `BINSTRING of negative length ${n}`);
          this.push(latin1.decode(this.take(n, 'BINSTRING')));
          break;
        }
        case 0x55: // SHORT_BINSTRING
          this.push(latin1.decode(this.take(this.u8(), 'SHORT_BINSTRING')));
          break;
        case 0x53: // STRING (protocol 0, a quoted repr)
          this.push(this.quoted(this.line('STRING')));
          break;
        case 0x42: // BINBYTES
          this.push(this.take(this.u32(), 'BINBYTES').slice());
          break;
        case 0x43: // SHORT_BINBYTES
          this.push(this.take(this.u8(), 'SHORT_BINBYTES').slice());
          break;
        case 0x8e: // BINBYTES8
          this.push(this.take(this.u64(), 'BINBYTES8').slice());
          break;
        case 0x96: // BYTEARRAY8
          this.push(this.take(this.u64(), 'BYTEARRAY8').slice());
          break;
        case 0x97: // NEXT_BUFFER
          throw this.fail('out-of-band', 'NEXT_BUFFER asks for an out-of-band buffer; checkpoints carry none');
        case 0x98: // READONLY_BUFFER
          this.top();
          break;
        // -- containers
        case 0x29: // EMPTY_TUPLE
          this.push(new PyTuple([]));
          break;
        case 0x85: // TUPLE1
          this.push(new PyTuple([this.pop()]));
          break;
        case 0x86: {
          // TUPLE2
          const y = this.pop();
          this.push(new PyTuple([this.pop(), y]));
          break;
        }
        case 0x87: {
          // TUPLE3
          const z = this.pop();
          const y = this.pop();
          this.push(new PyTuple([this.pop(), y, z]));
          break;
        }
        case 0x74: // TUPLE
          this.push(new PyTuple(this.popMark()));
          break;
        case 0x5d: // EMPTY_LIST
          this.push([]);
          break;
        case 0x6c: // LIST
          this.push(this.popMark());
          break;
        case 0x61: {
          // APPEND
          const v = this.pop();
          this.append(this.top(), [v]);
          break;
        }
        case 0x65: {
          // APPENDS
          const items = this.popMark();
          this.append(this.top(), items);
          break;
        }
        case 0x7d: // EMPTY_DICT
          this.push(new PyDict());
          break;
        case 0x64: {
          // DICT
          const d = new PyDict();
          this.setItems(d, this.popMark());
          this.push(d);
          break;
        }
        case 0x73: {
          // SETITEM
          const v = this.pop();
          const k = this.pop();
          this.setItems(this.top(), [k, v]);
          break;
        }
        case 0x75: {
          // SETITEMS
          const pairs = this.popMark();
          this.setItems(this.top(), pairs);
          break;
        }
        case 0x8f: // EMPTY_SET
          this.push(new PySet([]));
          break;
        case 0x90: {
          // ADDITEMS
          const items = this.popMark();
          const s = this.top();
          if (!(s instanceof PySet) || s.frozen) throw this.fail('additems', `ADDITEMS on ${describe(s)}, not a set`);
          s.items.push(...items);
          break;
        }
        case 0x91: // FROZENSET
          this.push(new PySet(this.popMark(), true));
          break;
        // -- globals and calls: only allow-listed names resolve, everything else stays an inert placeholder
        case 0x63: {
          // GLOBAL
          const module = this.line('GLOBAL module');
          const name = this.line('GLOBAL name');
          this.push(this.global(module, name));
          break;
        }
        case 0x93: {
          // STACK_GLOBAL
          const name = this.pop();
          const module = this.pop();
          if (typeof module !== 'string' || typeof name !== 'string') throw this.fail('stack-global', 'STACK_GLOBAL needs two strings');
          this.push(this.global(module, name));
          break;
        }
        case 0x52: {
          // REDUCE
          const args = this.pop();
          const callee = this.pop();
          this.push(this.call('REDUCE', callee, args));
          break;
        }
        case 0x81: {
          // NEWOBJ
          const args = this.pop();
          const cls = this.pop();
          this.push(this.call('NEWOBJ', cls, args));
          break;
        }
        case 0x92: {
          // NEWOBJ_EX
          const kwargs = this.pop();
          const args = this.pop();
          const cls = this.pop();
          this.push(new PyCall('NEWOBJ_EX', cls, new PyTuple([args, kwargs])));
          break;
        }
        case 0x69: {
          // INST
          const module = this.line('INST module');
          const name = this.line('INST name');
          const args = this.popMark();
          this.push(this.call('INST', this.global(module, name), new PyTuple(args)));
          break;
        }
        case 0x6f: {
          // OBJ
          const items = this.popMark();
          if (items.length === 0) throw this.fail('stack-underflow', 'OBJ without a class');
          this.push(this.call('OBJ', items[0], new PyTuple(items.slice(1))));
          break;
        }
        case 0x62: {
          // BUILD: state is recorded on dicts and placeholders; nothing's __setstate__ runs
          const state = this.pop();
          const obj = this.top();
          if (obj instanceof PyDict || obj instanceof PyCall) obj.state = state;
          break;
        }
        case 0x51: {
          // BINPERSID
          const pid = this.pop();
          this.push(this.persistent(pid));
          break;
        }
        case 0x50: // PERSID
          this.push(this.persistent(this.line('PERSID')));
          break;
        case 0x82:
        case 0x83:
        case 0x84:
          throw this.fail('extension', `EXT opcode at offset ${at}: the copyreg extension registry is not used by checkpoints`);
        default:
          throw this.fail('opcode', `unknown opcode 0x${op.toString(16).padStart(2, '0')} at offset ${at}`);
      }
    }
  }

  private persistent(pid: PyValue): PyValue {
    if (!this.opts.persistentLoad) throw this.fail('persistent-id', 'a persistent id in a pickle that has no storages');
    return this.opts.persistentLoad(pid);
  }

  private text(bytes: Uint8Array): string {
    try {
      return utf8.decode(bytes);
    } catch {
      throw this.fail('utf8', `string at offset ${this.pos - bytes.length} is not valid UTF-8`);
    }
  }

  private textInt(s: string, what: string): number | bigint {
    if (!/^[-+]?\d{1,400}$/.test(s)) throw this.fail('text', `${what} "${s.slice(0, 40)}" is not an integer`);
    return narrow(BigInt(s));
  }

  private quoted(s: string): string {
    const t = s.trim();
    const q = t[0];
    if (t.length < 2 || (q !== "'" && q !== '"') || t[t.length - 1] !== q) throw this.fail('text', 'STRING argument is not quoted');
    return t.slice(1, -1).replace(/\\(x[0-9a-fA-F]{2}|[\\'"nrt0])/g, (_, e: string) =>
      e[0] === 'x' ? String.fromCharCode(parseInt(e.slice(1), 16)) : ({ n: '\n', r: '\r', t: '\t', '0': '\0' } as Record<string, string>)[e] ?? e,
    );
  }
}

function rawUnicodeEscape(s: string): string {
  return s.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (m, u4: string, u8: string) => {
    const cp = parseInt(u4 ?? u8, 16);
    return cp <= 0x10ffff ? String.fromCodePoint(cp) : m;
  });
}

function narrow(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** Python treats True == 1 and 1 == 1.0 as one key; bools become numbers so that a Map keyed by value agrees. */
function dictKey(k: PyValue): PyValue {
  return typeof k === 'boolean' ? Number(k) : k;
}

/** A short description of a value for error messages (never expands containers). */
export function describe(v: PyValue, depth = 0): string {
  if (v === null) return 'None';
  if (typeof v === 'string') return v.length > 60 ? `a string ("${v.slice(0, 60)}...")` : `"${v}"`;
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `a list of ${v.length}`;
  if (v instanceof Uint8Array) return `${v.length} bytes`;
  if (v instanceof PyTuple) return `a tuple of ${v.items.length}`;
  if (v instanceof PyDict) return `a dict of ${v.map.size}`;
  if (v instanceof PySet) return `a set of ${v.items.length}`;
  if (v instanceof PyGlobal) return `<global ${v}>`;
  if (v instanceof PyCall) return depth > 2 ? `<${v.opcode}>` : `<${v.opcode} of ${describe(v.callee, depth + 1)}>`;
  if (v instanceof PyFunction) return `<${v.qualname}>`;
  return (v as object).constructor?.name ?? typeof v;
}
