import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { Mt19937, seededRandomSeed, torchRandn } from '../../src/runtime/noise.js';
import { SafetensorsFile } from '../../src/safetensors/reader.js';

const GOLDEN = fileURLToPath(new URL('../fixtures/goldens/torch-randn.safetensors', import.meta.url));

interface Case {
  name: string;
  seed: number;
  shape: number[];
}

describe('runtime/noise', () => {
  it('mt19937 matches the C++ standard check value (10000th output for seed 5489)', () => {
    const rng = new Mt19937(5489);
    let v = 0;
    for (let i = 0; i < 10000; i++) v = rng.nextU32();
    assert.equal(v, 4123659995);
  });

  it('reproduces every torch.randn golden within 1e-6 (in fact bit for bit)', async () => {
    const file = await SafetensorsFile.open(GOLDEN);
    try {
      const cases = JSON.parse(file.metadata.cases) as Case[];
      assert.ok(cases.length >= 10);
      for (const c of cases) {
        const expected = await file.readF32(c.name);
        const actual = torchRandn(BigInt(c.seed), c.shape);
        assert.equal(actual.length, expected.length, c.name);
        let maxErr = 0;
        let differing = 0;
        for (let i = 0; i < actual.length; i++) {
          const err = Math.abs(actual[i] - expected[i]);
          maxErr = Math.max(maxErr, err);
          if (err !== 0) differing++;
        }
        assert.ok(maxErr <= 1e-6, `${c.name}: max |err| ${maxErr}`);
        assert.equal(differing, 0, `${c.name}: ${differing} values not bit-identical (max |err| ${maxErr})`);
      }
    } finally {
      await file.close();
    }
  });

  it('matches the README example (seed 42, shape [2, 3]) and accepts number seeds', () => {
    const expected = [0.3367, 0.1288, 0.2345, 0.2303, -1.1229, -0.1863];
    const actual = torchRandn(42, [2, 3]);
    expected.forEach((e, i) => assert.ok(Math.abs(actual[i] - e) < 5e-5, `${i}: ${actual[i]} vs ${e}`));
  });

  it('uses only the low 32 bits of the seed for mt19937', () => {
    assert.deepEqual(torchRandn(2n ** 32n + 5n, [33]), torchRandn(5, [33]));
    assert.deepEqual(torchRandn(-1, [20]), torchRandn(4294967295, [20]));
  });

  it('is deterministic; logs the time for latent-sized noise (best of 20)', () => {
    for (const shape of [[1, 4, 64, 64], [1, 4, 128, 128]]) {
      torchRandn(7, shape);
      let best = Infinity;
      for (let i = 0; i < 20; i++) {
        const t0 = performance.now();
        torchRandn(7 + i, shape);
        best = Math.min(best, performance.now() - t0);
      }
      console.log(`      torchRandn ${shape.join('x')}: ${best.toFixed(2)} ms`);
      assert.deepEqual(torchRandn(7, shape), torchRandn(7, shape));
    }
  });

  it('seededRandomSeed gives distinct non-negative 63-bit seeds', () => {
    const a = seededRandomSeed();
    const b = seededRandomSeed();
    assert.ok(a >= 0n && a < 2n ** 63n && b >= 0n && b < 2n ** 63n);
    assert.notEqual(a, b);
  });
});
