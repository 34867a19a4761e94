import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { PickleError, PyCall, PyDict, PyFunction, PyGlobal, PySet, PyTuple, unpickle, type PyValue } from '../../src/pytorch/pickle.js';
import { torchGlobals } from '../../src/pytorch/torch.js';
import { HOSTILE, Ops } from './helpers.js';

const globals = torchGlobals();
const load = (bytes: Uint8Array, limits = {}) => unpickle(bytes, 0, { label: 'test.pkl', globals, limits });
const refused = (bytes: Uint8Array, rule: string, limits = {}) =>
  assert.throws(() => load(bytes, limits), (e: unknown) => e instanceof PickleError && e.rule === rule && /test\.pkl/.test(e.message));

/** Marker files a payload would create if anything ran it; each must still be absent after the test. */
const marker = (name: string) => `/tmp/onestep-pwned-test-${process.pid}-${name}`;

describe('pytorch/pickle', () => {
  it('builds plain data: dicts, lists, tuples, numbers, strings, bytes, sets, memo references', () => {
    const p = new Ops().proto(4).emptyDict().memoize().mark()
      .shortStr('ints').mark().int(7).int(300).int(-5).raw(0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1).raw(0x8a, 2, 0xff, 0xff).tuple().memoize()
      .shortStr('float').raw(0x47, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0)
      .shortStr('flags').raw(0x88, 0x89).none().tuple3()
      .shortStr('bytes').raw(0x43, 3, 1, 2, 3)
      .shortStr('set').raw(0x8f).mark().int(1).int(2).raw(0x90)
      .shortStr('same').raw(0x68, 1)
      .shortStr('list').emptyList().mark().str('a').str('é').appends()
      .raw(0x75).stop().done();
    const v = load(p).value as PyDict;
    assert.ok(v instanceof PyDict);
    const ints = v.map.get('ints') as PyTuple;
    assert.deepEqual(ints.items, [7, 300, -5, 1n << 64n, -1]);
    assert.equal(v.map.get('same'), ints, 'a memo GET is the same object, not a copy');
    assert.equal(v.map.get('float'), 1.5);
    assert.deepEqual((v.map.get('flags') as PyTuple).items, [true, false, null]);
    assert.deepEqual(v.map.get('bytes'), Uint8Array.of(1, 2, 3));
    assert.deepEqual((v.map.get('set') as PySet).items, [1, 2]);
    assert.deepEqual(v.map.get('list'), ['a', 'é']);
  });

  it('reads protocol 0 text opcodes and protocol 5 framing', () => {
    const p0 = Uint8Array.from(Buffer.from("(lp0\nI42\naF2.5\naS'x\\ny'\naVcaf\\u00e9\naI01\naL123456789012345678901L\na.", 'latin1'));
    assert.deepEqual(load(p0).value, [42, 2.5, 'x\ny', 'café', true, 123456789012345678901n]);
    const framed = new Ops().proto(5).raw(0x95, 4, 0, 0, 0, 0, 0, 0, 0).int(9).stop().done();
    assert.deepEqual(load(framed), { value: 9, protocol: 5, end: framed.length, placeholders: [] });
  });

  it('OrderedDict, torch.device, torch.Size and _codecs.encode are our own functions; OrderedDict keeps BUILD state', () => {
    const p = new Ops().proto(2).global('collections', 'OrderedDict').emptyTuple().reduce()
      .str('d').global('torch', 'device').str('cuda').int(1).tuple2().reduce().setitem()
      .str('s').global('torch', 'Size').int(2).int(3).tuple2().tuple1().reduce().setitem()
      .str('b').global('_codecs', 'encode').str('\u00ff\u0001').str('latin1').tuple2().reduce().setitem()
      .emptyDict().str('_metadata').emptyDict().setitem().build().stop().done();
    const { value, placeholders } = load(p);
    const d = value as PyDict;
    assert.equal(d.cls, 'collections.OrderedDict');
    assert.equal(d.map.get('d'), 'cuda:1');
    assert.deepEqual((d.map.get('s') as PyTuple).items, [2, 3]);
    assert.deepEqual(d.map.get('b'), Uint8Array.of(255, 1));
    assert.ok(d.state instanceof PyDict);
    assert.deepEqual(placeholders, []);
  });

  describe('malicious pickles written opcode by opcode: nothing is called', () => {
    const cases: [string, (m: string) => Uint8Array, string[]][] = [
      ['GLOBAL os.system + REDUCE', (m) => new Ops().proto(2).global('os', 'system').str(`touch ${m}`).tuple1().reduce().stop().done(), ['os.system']],
      ['GLOBAL posix.system + REDUCE', (m) => new Ops().proto(2).global('posix', 'system').str(`touch ${m}`).tuple1().reduce().stop().done(), ['posix.system']],
      ['GLOBAL builtins.eval + REDUCE', (m) => new Ops().proto(2).global('builtins', 'eval').str(`open('${m}', 'w')`).tuple1().reduce().stop().done(), ['builtins.eval']],
      ['GLOBAL builtins.exec + REDUCE (protocol 2 spelling)', (m) => new Ops().proto(2).global('__builtin__', 'exec').str(`open('${m}', 'w')`).tuple1().reduce().stop().done(), ['__builtin__.exec']],
      ['STACK_GLOBAL subprocess.Popen + REDUCE', (m) => new Ops().proto(4).shortStr('subprocess').shortStr('Popen').stackGlobal().emptyList().str('touch').append().str(m).append().tuple1().reduce().stop().done(), ['subprocess.Popen']],
      ['NEWOBJ of os.system', (m) => new Ops().proto(2).global('os', 'system').str(`touch ${m}`).tuple1().newobj().stop().done(), ['os.system']],
      ['NEWOBJ_EX of subprocess.run', (m) => new Ops().proto(4).global('subprocess', 'run').str(m).tuple1().emptyDict().newobjEx().stop().done(), ['subprocess.run']],
      ['INST os.system', (m) => new Ops().mark().str(`touch ${m}`).inst('os', 'system').stop().done(), ['os.system']],
      ['OBJ of builtins.eval', (m) => new Ops().proto(2).mark().global('builtins', 'eval').str(`open('${m}','w')`).obj().stop().done(), ['builtins.eval']],
      [
        'nested REDUCE: getattr(__import__("os"), "system")("touch ...")',
        (m) => new Ops().proto(2).global('builtins', 'getattr').global('builtins', '__import__').str('os').tuple1().reduce().str('system').tuple2().reduce().str(`touch ${m}`).tuple1().reduce().stop().done(),
        ['builtins.getattr', 'builtins.__import__'],
      ],
      [
        'BUILD with a __setstate__ payload on a placeholder object',
        (m) => new Ops().proto(2).global('os', '_wrap_close').emptyTuple().newobj().global('os', 'system').str(`touch ${m}`).tuple2().build().stop().done(),
        ['os._wrap_close', 'os.system'],
      ],
      [
        'torch._utils._rebuild_from_type_v2(posix.system, ...): a torch helper that calls its argument',
        (m) => new Ops().proto(2).global('torch._utils', '_rebuild_from_type_v2').mark().global('posix', 'system').global('builtins', 'object').str(`touch ${m}`).tuple1().emptyDict().tuple().reduce().stop().done(),
        ['torch._utils._rebuild_from_type_v2', 'posix.system', 'builtins.object'],
      ],
      [
        'a payload hidden as a state-dict value, the callable memoized and fetched again',
        (m) => new Ops().proto(2).emptyDict().str('weight').global('os', 'system').binput(0).str(`touch ${m}`).tuple1().reduce().setitem().str('bias').binget(0).str(`touch ${m}`).tuple1().reduce().setitem().stop().done(),
        ['os.system'],
      ],
    ];
    for (const [title, build, names] of cases) {
      it(title, () => {
        const m = marker(title.replace(/\W+/g, '-').slice(0, 40));
        const { value, placeholders } = load(build(m));
        assert.deepEqual(placeholders, names);
        // The result holds the attempted call as a record: a PyCall whose callee is a PyGlobal (or another PyCall).
        const calls: PyCall[] = [];
        const walk = (v: PyValue) => {
          if (v instanceof PyCall) calls.push(v);
          else if (v instanceof PyDict) for (const x of v.map.values()) walk(x);
        };
        walk(value);
        assert.ok(calls.length > 0 || value instanceof PyCall || value instanceof PyGlobal, 'the attempted call is kept as data');
        for (const c of calls) assert.ok(c.callee instanceof PyGlobal || c.callee instanceof PyCall, 'never a callable of ours');
        assert.equal(existsSync(m), false, `${m} must not exist`);
      });
    }

    it('names that mean something to JavaScript objects stay data (no prototype pollution)', () => {
      const p = new Ops().proto(2).emptyDict()
        .str('__proto__').emptyDict().str('polluted').str('yes').setitem().setitem()
        .str('constructor').global('collections', '__proto__').setitem()
        .str('toString').global('Object', 'constructor').str('return process').tuple1().reduce().setitem()
        .stop().done();
      const { value, placeholders } = load(p);
      assert.ok(value instanceof PyDict && value.map.get('__proto__') instanceof PyDict);
      assert.deepEqual(placeholders, ['collections.__proto__', 'Object.constructor']);
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
      assert.ok(!(globals.get('collections.__proto__') instanceof PyFunction));
    });
  });

  it('limits: stack, memo, MARK depth and integer size are checked before allocating', () => {
    refused(new Ops().proto(2).emptyList().dup().dup().dup().stop().done(), 'stack-limit', { maxStack: 3 });
    refused(new Ops().proto(4).emptyList().memoize().memoize().memoize().stop().done(), 'memo-limit', { maxMemo: 2 });
    refused(new Ops().proto(2).mark().mark().mark().stop().done(), 'mark-depth', { maxMarkDepth: 2 });
    refused(new Ops().proto(2).raw(0x8b, 0, 0, 0, 1).stop().done(), 'long-limit');
    // BINUNICODE8 / BINBYTES8 declaring 2^62 bytes in a tiny file, BINUNICODE declaring 4 GiB.
    refused(new Ops().proto(4).raw(0x8d, 0, 0, 0, 0, 0, 0, 0, 0x40).stop().done(), 'length');
    refused(new Ops().proto(4).raw(0x8e, 0, 0, 0, 0, 0, 0, 0, 0x40).stop().done(), 'length');
    refused(new Ops().proto(2).raw(0x58, 0xff, 0xff, 0xff, 0xff).stop().done(), 'length');
    // A memo index of 2^32 - 2 is a map entry, not an array of that length.
    assert.equal(load(new Ops().proto(2).str('x').longBinput(0xfffffffe).longBinget(0xfffffffe).tuple2().stop().done()).value instanceof PyTuple, true);
  });

  it('malformed streams are refused with one PickleError naming the rule', () => {
    refused(new Ops().proto(2).int(1).done(), 'truncated');
    refused(new Ops().proto(2).pop().stop().done(), 'stack-underflow');
    refused(new Ops().proto(2).tuple().stop().done(), 'no-mark');
    refused(new Ops().proto(2).binget(3).stop().done(), 'memo-missing');
    refused(new Ops().proto(2).raw(0xff).stop().done(), 'opcode');
    refused(new Ops().proto(2).raw(0x82, 1).stop().done(), 'extension');
    refused(new Ops().proto(5).raw(0x97).stop().done(), 'out-of-band');
    refused(new Ops().proto(6).stop().done(), 'protocol');
    refused(new Ops().proto(2).int(0).int(1).int(2).setitem().stop().done(), 'setitems');
    refused(new Ops().proto(2).binpersid().stop().done(), 'stack-underflow');
    refused(new Ops().proto(2).str('x').binpersid().stop().done(), 'persistent-id');
    refused(new Ops().proto(2).raw(0x58, 2, 0, 0, 0, 0xc3, 0x28).stop().done(), 'utf8');
    refused(new Ops().proto(2).global('collections', 'OrderedDict').int(1).tuple1().reduce().stop().done(), 'call-args');
  });

  describe('hostile fixtures (pytorch/hostile/*.pkl)', () => {
    const expected: Record<string, { placeholders?: string[]; rule?: string }> = {
      'os-system.pkl': { placeholders: ['os.system'] },
      'posix-system.pkl': { placeholders: ['posix.system'] },
      'builtins-eval.pkl': { placeholders: ['builtins.eval'] },
      'subprocess-popen.pkl': { placeholders: ['subprocess.Popen'] },
      'nested-reduce.pkl': { placeholders: ['builtins.getattr', 'builtins.__import__'] },
      'rebuild-from-type.pkl': { placeholders: ['torch._utils._rebuild_from_type_v2', 'posix.system', 'builtins.object'] },
      'memo-dup.pkl': { placeholders: [] },
      'memo-laughs.pkl': { placeholders: [] },
      'memo-sparse-index.pkl': { placeholders: [] },
      'deep-nesting.pkl': { placeholders: [] },
      'cycle.pkl': { placeholders: [] },
      'deep-marks.pkl': { rule: 'mark-depth' },
      'huge-string.pkl': { rule: 'length' },
    };
    it('covers every .pkl fixture', () => {
      assert.deepEqual(readdirSync(HOSTILE).filter((f) => f.endsWith('.pkl')).sort(), Object.keys(expected).sort());
    });
    for (const [file, want] of Object.entries(expected)) {
      it(`${file}: ${want.rule ? `refused (${want.rule})` : 'data, calling nothing'}, well under 5 s`, () => {
        const bytes = readFileSync(join(HOSTILE, file));
        const t0 = performance.now();
        if (want.rule) {
          assert.throws(() => unpickle(bytes, 0, { label: file, globals }), (e: unknown) => e instanceof PickleError && e.rule === want.rule);
        } else {
          const r = unpickle(bytes, 0, { label: file, globals });
          assert.deepEqual(r.placeholders, want.placeholders);
          assert.equal(r.end, bytes.length);
        }
        assert.ok(performance.now() - t0 < 5000);
        assert.equal(existsSync(`/tmp/onestep-pwned-${file.replace(/\.pkl$/, '')}`), false);
      });
    }

    it('shared references stay shared: the billion-laughs dict is 61 objects, the cycle refers to itself', () => {
      const laughs = unpickle(readFileSync(join(HOSTILE, 'memo-laughs.pkl')), 0, { label: 'memo-laughs.pkl', globals }).value as PyDict;
      let d = laughs.map.get('state_dict') as PyDict;
      let depth = 0;
      while (d instanceof PyDict && d.map.has('a')) {
        assert.equal(d.map.get('a'), d.map.get('b'));
        d = d.map.get('a') as PyDict;
        depth++;
      }
      assert.equal(depth, 60);
      const cycle = unpickle(readFileSync(join(HOSTILE, 'cycle.pkl')), 0, { label: 'cycle.pkl', globals }).value as PyDict;
      assert.equal(cycle.map.get('self'), cycle);
      const list = cycle.map.get('list') as PyValue[];
      assert.equal(list[0], list);
    });
  });
});
