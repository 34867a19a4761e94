import assert from 'node:assert/strict';
import { ConfigFields, countDistinct } from '../../src/checkpoint/configs.js';
import { BadInputError } from '../../src/errors.js';

describe('checkpoint/configs', () => {
  const f = new ConfigFields({ a: 3, b: null, l: [1, 2], t: true, s: 'x', bad: 'y', short: [1] }, 'm/config.json');
  const fails = (fn: () => unknown, pattern: RegExp) => assert.throws(fn, (e: unknown) => e instanceof BadInputError && pattern.test(e.message));

  it('absent and null fields take the default; present ones are read', () => {
    assert.deepEqual([f.num('a', 1), f.num('b', 7), f.num('zz', 9), f.numOrNull('b', 5), f.numOrNull('zz', 5)], [3, 7, 9, null, 5]);
    assert.deepEqual([f.bool('t', false), f.str('s', ''), f.countList('l', [9]), f.perBlock('a', 2, 1), f.perBlock('l', 2, 1)], [true, 'x', [1, 2], [3, 3], [1, 2]]);
  });

  it('a field of the wrong type or length is one error naming the file and the field', () => {
    fails(() => f.num('bad', 0), /^m\/config.json: bad = "y" is not a number$/);
    fails(() => f.bool('a', false), /^m\/config.json: a = 3 is not true or false$/);
    fails(() => f.perBlock('short', 3, 1), /^m\/config.json: short = \[1\] has 1 entries for 3 blocks$/);
    fails(() => f.refuse({ s: (v) => v === 'z' }, 'zs', 'Use a z.'), /^m\/config.json: s = "x" is not supported \(onestep builds zs\)$/);
  });

  it('counts distinct block indices', () => {
    assert.equal(countDistinct(['u.b.0.x', 'u.b.0.y', 'u.b.1.x', 'v.b.7.x'], /^u\.b\.(\d+)\./), 2);
  });
});
