import assert from 'node:assert/strict';
import { OnestepError } from '../../src/errors.js';
import { parseLoraArg } from '../../src/lora/args.js';

describe('lora/args parseLoraArg', () => {
  const cases: [string, string, number][] = [
    ['style.safetensors', 'style.safetensors', 1],
    ['style.safetensors:0.7', 'style.safetensors', 0.7],
    ['style.safetensors:-0.5', 'style.safetensors', -0.5],
    ['style.safetensors:.25', 'style.safetensors', 0.25],
    ['style.safetensors:1e-1', 'style.safetensors', 0.1],
    ['C:\\loras\\x.safetensors:2', 'C:\\loras\\x.safetensors', 2],
    ['C:\\loras\\x.safetensors', 'C:\\loras\\x.safetensors', 1],
    ['dir:with:colons/x.safetensors', 'dir:with:colons/x.safetensors', 1],
    ['weird:1/x.safetensors', 'weird:1/x.safetensors', 1],
    ['x.safetensors:abc', 'x.safetensors:abc', 1],
    ['123:0.5', '123', 0.5],
  ];
  for (const [arg, path, scale] of cases) {
    it(`${arg} -> ${path} @ ${scale}`, () => assert.deepEqual(parseLoraArg(arg), { path, scale }));
  }
  it('refuses an empty path', () => {
    assert.throws(() => parseLoraArg(''), OnestepError);
    assert.throws(() => parseLoraArg(':0.5'), OnestepError);
  });
  it('refuses a scale that is not a finite number (it would merge NaN/Inf weights)', () => {
    for (const arg of ['x.safetensors:1e999', 'x.safetensors:-1e400', 'x.safetensors:NaN', 'x.safetensors:nan', 'x.safetensors:Infinity', 'x.safetensors:-inf']) {
      assert.throws(() => parseLoraArg(arg), (e: unknown) => e instanceof OnestepError && /finite/.test(e.message), arg);
    }
  });
});
