/** Seeded pseudo-random numbers for tests (mulberry32): the same seed gives the same sequence on every run. */

/** A uint32 per call. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** Uniform numbers in [0, 1). */
export function unitRandom(seed: number): () => number {
  const next = mulberry32(seed);
  return () => next() / 2 ** 32;
}

/** Uniform numbers in [-1, 1). */
export function signedRandom(seed: number): () => number {
  const next = unitRandom(seed);
  return () => next() * 2 - 1;
}
