/**
 * Error bounds that come from the case, not from one CPU. A float32 graph run on another machine (other kernels, other
 * summation order) differs from the golden by rounding noise that the network itself amplifies; how much it amplifies
 * is measured by feeding the same graph its input perturbed by one ulp per element. The bound is the fixed tolerance or
 * AMPLIFICATION times that measured sensitivity, whichever is larger: a graph that is wrong differs by far more than
 * any rounding noise, a well-conditioned case keeps the tight fixed bound.
 */
import { unitRandom } from './random.js';
import { relErr } from './fixtures.js';

/** Rounding noise between two float32 evaluations, relative to one input ulp: measured up to ~2x (tiny-sd21 at t=999: 2.8e-4 against a 1.45e-4 sensitivity). */
export const AMPLIFICATION = 16;

/** x with every element moved one float32 ulp up or down (seeded signs). */
export function ulpPerturbed(x: Float32Array, seed = 1): Float32Array {
  const rand = unitRandom(seed);
  const bits = new Uint32Array(x.buffer.slice(x.byteOffset, x.byteOffset + x.byteLength));
  const f = new Float32Array(bits.buffer);
  for (let i = 0; i < bits.length; i++) {
    if (!Number.isFinite(f[i]) || f[i] === 0) continue;
    const away = rand() < 0.5; // away from zero or towards it
    bits[i] += away ? 1 : -1;
  }
  return f;
}

/** relErr between the graph's outputs on x and on x perturbed by one ulp. */
export async function ulpSensitivity(run: (x: Float32Array) => Promise<ArrayLike<number>>, x: Float32Array, seed = 1): Promise<number> {
  const [a, b] = [await run(x), await run(ulpPerturbed(x, seed))];
  return relErr(b, a);
}

/** max(tolerance, AMPLIFICATION x sensitivity) */
export function caseBound(tolerance: number, sensitivity: number): number {
  return Math.max(tolerance, AMPLIFICATION * sensitivity);
}
