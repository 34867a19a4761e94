import assert from 'node:assert/strict';
import { BadInputError, OnestepError } from '../../src/errors.js';
import { F16OverflowError, SafetensorsError } from '../../src/safetensors/errors.js';

describe('safetensors/errors', () => {
  it('SafetensorsError is a BadInputError naming file, tensor and rule', () => {
    const e = new SafetensorsError('/m/model.safetensors', 'overlap', 'data overlaps tensor "a"', 'b');
    assert.ok(e instanceof BadInputError && e instanceof OnestepError);
    assert.equal(e.name, 'SafetensorsError');
    assert.equal(e.file, '/m/model.safetensors');
    assert.equal(e.rule, 'overlap');
    assert.equal(e.tensor, 'b');
    assert.equal(e.message, '/m/model.safetensors: tensor "b": data overlaps tensor "a" [safetensors rule: overlap]');
    assert.ok(e.hint);
    const noTensor = new SafetensorsError('x.safetensors', 'header-json', 'bad', undefined, 'custom hint');
    assert.equal(noTensor.message, 'x.safetensors: bad [safetensors rule: header-json]');
    assert.equal(noTensor.hint, 'custom hint');
  });

  it('F16OverflowError names the tensor, the count and the largest value', () => {
    const e = new F16OverflowError('m.safetensors', 'w', 3, 70000);
    assert.ok(e instanceof BadInputError);
    assert.equal(e.name, 'F16OverflowError');
    assert.deepEqual([e.tensor, e.overflowCount, e.maxAbs], ['w', 3, 70000]);
    assert.match(e.message, /^m\.safetensors: tensor "w": 3 finite value\(s\) exceed the float16 range \(largest \|value\| 70000/);
    assert.match(e.hint ?? '', /float32/);
  });
});
