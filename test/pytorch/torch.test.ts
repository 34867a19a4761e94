import assert from 'node:assert/strict';
import { PickleError, PyDict, PyFunction, PyGlobal, PyTuple, unpickle } from '../../src/pytorch/pickle.js';
import { StorageRef, StorageType, TensorRef, torchGlobals } from '../../src/pytorch/torch.js';
import { Ops } from './helpers.js';

const globals = torchGlobals();
const storage = new StorageRef('0', new StorageType('FloatStorage', 'F32'), 16);
const rebuild = (globals.get('torch._utils._rebuild_tensor_v2') as PyFunction).call;
const args = (offset: number, size: number[], stride: number[]) => [storage, offset, new PyTuple(size), new PyTuple(stride), false, new PyDict()];

describe('pytorch/torch', () => {
  it('allow-lists only data constructors: the rebuilders, OrderedDict, storages, device, Size, dtypes, set, _codecs.encode', () => {
    for (const name of ['torch._utils._rebuild_from_type_v2', 'torch._utils._rebuild_device_tensor_from_numpy', 'torch.load', 'torch.jit.load', 'numpy.core.multiarray._reconstruct', 'builtins.getattr', 'builtins.eval', 'os.system', '__builtin__.eval', 'torch.storage._load_from_bytes']) {
      assert.equal(globals.has(name), false, name);
    }
    assert.ok(globals.get('torch.HalfStorage') instanceof StorageType);
    assert.equal((globals.get('torch.BFloat16Storage') as StorageType).dtype, 'BF16');
    // A non-allow-listed name is a placeholder, also in torch's own namespace.
    const r = unpickle(new Ops().proto(2).global('torch._utils', '_rebuild_from_type_v2').stop().done(), 0, { label: 'x', globals });
    assert.ok(r.value instanceof PyGlobal);
  });

  it('_rebuild_tensor_v2 checks the view against its storage: offset + sum((size-1)*stride) < numel, no negative values', () => {
    const ok = rebuild(args(8, [2, 4], [4, 1])) as TensorRef;
    assert.deepEqual([ok.offset, ok.shape, ok.stride], [8, [2, 4], [4, 1]]);
    assert.ok(rebuild(args(15, [0, 100], [100, 1])) instanceof TensorRef, 'an empty view needs no element');
    assert.ok(rebuild(args(0, [4, 4], [0, 1])) instanceof TensorRef, 'stride 0 (expanded) views are fine');
    for (const [offset, size, stride, message] of [
      [8, [4, 4], [4, 1], /view needs 24 elements of storage '0', it has 16/],
      [-1, [1], [1], /negative/],
      [0, [2], [-1], /negative/],
      [0, [2, 2], [1], /size has 2 dimensions, stride 1/],
    ] as [number, number[], number[], RegExp][]) {
      assert.throws(() => rebuild(args(offset, size, stride)), message);
    }
  });

  it('_rebuild_tensor_v3 (torch >= 2.1): an untyped byte storage read as the given dtype', () => {
    const v3 = (globals.get('torch._utils._rebuild_tensor_v3') as PyFunction).call;
    const bytes = new StorageRef('3', globals.get('torch.UntypedStorage') as StorageType, 8);
    const t = v3([bytes, 1, new PyTuple([3]), new PyTuple([1]), false, new PyDict(), globals.get('torch.float16')]) as TensorRef;
    assert.deepEqual([t.storage.type.dtype, t.storage.numel, t.offset, t.shape], ['F16', 4, 1, [3]]);
    assert.throws(() => v3([bytes, 0, new PyTuple([2]), new PyTuple([1]), false, new PyDict(), globals.get('torch.complex64')]), /not one safetensors can hold/);
    assert.throws(() => v3([bytes, 2, new PyTuple([3]), new PyTuple([1]), false, new PyDict(), globals.get('torch.float16')]), /view needs 5 elements/);
  });

  it('a failing allow-listed call is one PickleError naming the function', () => {
    const p = new Ops().proto(2).global('torch._utils', '_rebuild_tensor_v2').mark().str('not a storage').int(0).emptyTuple().emptyTuple().tuple().reduce().stop().done();
    assert.throws(() => unpickle(p, 0, { label: 'x.pt', globals }), (e: unknown) => e instanceof PickleError && /torch\._utils\._rebuild_tensor_v2: the storage argument is "not a storage"/.test(e.message));
  });
});
