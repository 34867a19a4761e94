/**
 * What torch.save's pickles may call, as our own functions: the tensor and parameter rebuilders, OrderedDict, the
 * typed storage classes (only ever named, as the type in a storage's persistent id), torch.device, torch.Size, the
 * dtypes, and the two builtins protocol 2 uses for plain data (set, _codecs.encode for bytes). Nothing else is
 * allow-listed: torch._utils._rebuild_from_type_v2, for one, calls its first argument and stays an inert placeholder.
 */
import { DTYPE_SIZES, type SafetensorsDType } from '../safetensors/dtypes.js';
import { CallArgumentError, PyDict, PyFunction, PySet, PyTuple, describe, type PyValue } from './pickle.js';

/** A torch storage class, e.g. torch.HalfStorage: element type of a storage. */
export class StorageType {
  constructor(
    readonly name: string,
    readonly dtype: SafetensorsDType,
  ) {}
  get itemsize(): number {
    return DTYPE_SIZES[this.dtype];
  }
}

/** A storage as a persistent id names it; the container (zip record, legacy data section) says where its bytes are. */
export class StorageRef {
  constructor(
    readonly key: string,
    readonly type: StorageType,
    /** Elements (not bytes) the storage holds. */
    readonly numel: number,
    /** Legacy storage views: elements from the start of the root storage `key`. */
    readonly viewOffset = 0,
  ) {}
}

/** `_rebuild_tensor_v2(storage, offset, size, stride, ...)`: a strided view of a storage, counted in elements. */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
    readonly parameter = false,
  ) {}
}

export class DTypeValue {
  constructor(
    readonly name: string,
    readonly dtype: SafetensorsDType | undefined,
  ) {}
}

const STORAGE_DTYPES: [string, SafetensorsDType][] = [
  ['DoubleStorage', 'F64'],
  ['FloatStorage', 'F32'],
  ['HalfStorage', 'F16'],
  ['BFloat16Storage', 'BF16'],
  ['LongStorage', 'I64'],
  ['IntStorage', 'I32'],
  ['ShortStorage', 'I16'],
  ['CharStorage', 'I8'],
  ['ByteStorage', 'U8'],
  ['BoolStorage', 'BOOL'],
  ['Float8_e4m3fnStorage', 'F8_E4M3'],
  ['Float8_e5m2Storage', 'F8_E5M2'],
  // Untyped storages count bytes; torch reads them as uint8.
  ['UntypedStorage', 'U8'],
];

/** torch dtype names -> our dtypes (undefined: a dtype safetensors cannot hold, e.g. complex). */
const DTYPES: [string, SafetensorsDType | undefined][] = [
  ['float64', 'F64'], ['double', 'F64'], ['float32', 'F32'], ['float', 'F32'], ['float16', 'F16'], ['half', 'F16'],
  ['bfloat16', 'BF16'], ['int64', 'I64'], ['long', 'I64'], ['int32', 'I32'], ['int', 'I32'], ['int16', 'I16'],
  ['short', 'I16'], ['int8', 'I8'], ['uint8', 'U8'], ['bool', 'BOOL'], ['float8_e4m3fn', 'F8_E4M3'], ['float8_e5m2', 'F8_E5M2'],
  ['complex64', undefined], ['complex128', undefined], ['uint16', undefined], ['uint32', undefined], ['uint64', undefined],
];

function fail(detail: string): never {
  throw new CallArgumentError(detail);
}

function int(v: PyValue, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) fail(`: ${what} is ${describe(v)}, not an integer`);
  return v;
}

function intList(v: PyValue, what: string): number[] {
  const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : undefined;
  if (!items) fail(`: ${what} is ${describe(v)}, not a tuple of integers`);
  if (items.length > 64) fail(`: ${what} has ${items.length} dimensions`);
  return items.map((x, i) => int(x, `${what}[${i}]`));
}

/** Checks the view against its storage before anything is read: no negative sizes or strides, no element outside. */
function rebuildTensor(args: PyValue[], parameter = false): TensorRef {
  if (args.length < 4) fail(` takes (storage, storage_offset, size, stride, ...), got ${args.length} arguments`);
  const [storage, offsetV, sizeV, strideV] = args;
  if (!(storage instanceof StorageRef)) fail(`: the storage argument is ${describe(storage)}, not a storage`);
  const offset = int(offsetV, 'storage_offset');
  const shape = intList(sizeV, 'size');
  const stride = intList(strideV, 'stride');
  if (shape.length !== stride.length) fail(`: size has ${shape.length} dimensions, stride ${stride.length}`);
  if (offset < 0 || shape.some((d) => d < 0) || stride.some((s) => s < 0)) fail(': negative offset, size or stride');
  let numel = 1;
  let last = offset;
  for (let i = 0; i < shape.length; i++) {
    numel *= shape[i];
    if (shape[i] > 0) last += (shape[i] - 1) * stride[i];
  }
  if (!Number.isSafeInteger(numel * storage.type.itemsize) || !Number.isSafeInteger(last)) fail(`: size ${JSON.stringify(shape)} is too large`);
  if (numel > 0 && last >= storage.numel) {
    fail(`: view needs ${last + 1} elements of storage '${storage.key}', it has ${storage.numel}`);
  }
  return new TensorRef(storage, offset, shape, stride, parameter);
}

function orderedDict(args: PyValue[]): PyDict {
  const d = new PyDict('collections.OrderedDict');
  const init = args[0];
  if (args.length > 1) fail(' takes at most one argument');
  if (init === undefined || init === null) return d;
  const pairs = Array.isArray(init) ? init : init instanceof PyTuple ? init.items : fail(`: ${describe(init)} is not a list of pairs`);
  for (const p of pairs) {
    if (!(p instanceof PyTuple) || p.items.length !== 2) fail(': an item is not a (key, value) pair');
    d.map.set(p.items[0], p.items[1]);
  }
  return d;
}

/** The allow-list, by the names pickles use (protocol 2 writes Python 2 spellings such as `__builtin__`). */
export function torchGlobals(): Map<string, PyValue> {
  const g = new Map<string, PyValue>();
  const fn = (name: string, call: (args: PyValue[]) => PyValue) => g.set(name, new PyFunction(name, call));
  fn('collections.OrderedDict', orderedDict);
  fn('torch._utils._rebuild_tensor_v2', (a) => rebuildTensor(a));
  fn('torch._utils._rebuild_tensor', (a) => rebuildTensor(a));
  const param = (a: PyValue[]) => {
    const t = a[0];
    if (!(t instanceof TensorRef)) fail(`: data is ${describe(t)}, not a tensor`);
    return new TensorRef(t.storage, t.offset, t.shape, t.stride, true);
  };
  fn('torch._utils._rebuild_parameter', param);
  fn('torch._utils._rebuild_parameter_with_state', param);
  for (const [name, dtype] of STORAGE_DTYPES) {
    g.set(`torch.${name}`, new StorageType(name, dtype));
    g.set(`torch.storage.${name}`, new StorageType(name, dtype));
  }
  for (const [name, dtype] of DTYPES) g.set(`torch.${name}`, new DTypeValue(name, dtype));
  // torch >= 2.1 for dtypes without a typed storage class: an untyped (byte) storage read as `dtype`.
  fn('torch._utils._rebuild_tensor_v3', (a) => {
    const [storage, , , , , , dtype] = a;
    if (!(storage instanceof StorageRef)) fail(`: the storage argument is ${describe(storage)}, not a storage`);
    if (!(dtype instanceof DTypeValue) || !dtype.dtype) fail(`: dtype ${describe(dtype)} is not one safetensors can hold`);
    const type = new StorageType(`${dtype.name} view of ${storage.type.name}`, dtype.dtype);
    const bytes = storage.numel * storage.type.itemsize;
    if (bytes % type.itemsize) fail(`: storage '${storage.key}' of ${bytes} bytes is not a whole number of ${dtype.name}`);
    return rebuildTensor([new StorageRef(storage.key, type, bytes / type.itemsize, (storage.viewOffset * storage.type.itemsize) / type.itemsize), ...a.slice(1)]);
  });
  fn('torch.device', (a) => {
    if (typeof a[0] !== 'string') fail(`: ${describe(a[0])} is not a device name`);
    return a.length > 1 && a[1] !== null ? `${a[0]}:${int(a[1], 'index')}` : a[0];
  });
  fn('torch.Size', (a) => new PyTuple(intList(a[0] ?? new PyTuple([]), 'size')));
  for (const m of ['__builtin__', 'builtins']) {
    fn(`${m}.set`, (a) => new PySet(a[0] === undefined ? [] : Array.isArray(a[0]) ? [...a[0]] : a[0] instanceof PyTuple ? [...a[0].items] : fail(': not a list')));
    fn(`${m}.frozenset`, (a) => new PySet(a[0] === undefined ? [] : Array.isArray(a[0]) ? [...a[0]] : a[0] instanceof PyTuple ? [...a[0].items] : fail(': not a list'), true));
  }
  // Protocol 2 pickles bytes as _codecs.encode(<latin-1 text>, 'latin1').
  fn('_codecs.encode', (a) => {
    if (typeof a[0] !== 'string' || (a[1] !== 'latin1' && a[1] !== 'latin-1')) fail(': only encode(str, "latin1") is data');
    const s = a[0];
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c > 255) fail(': character outside latin-1');
      out[i] = c;
    }
    return out;
  });
  return g;
}

export function isStorageType(v: PyValue): v is StorageType {
  return v instanceof StorageType;
}
