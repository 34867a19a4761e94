/** Small dense math of LoRA deltas, float32 out, float64 accumulation where it is free (up @ down: matmul.ts). */
import { numel } from '../checkpoint/weight-source.js';

/** Elements per output row of a conv kernel's spatial part (1 for linears). */
export function spatial(s: number[]): number {
  return numel(s.slice(2));
}

/** Kronecker product of a [ra, ca] and b [rb, cb] -> [ra*rb, ca*cb]. */
export function kron(a: Float32Array, ra: number, ca: number, b: Float32Array, rb: number, cb: number): Float32Array {
  const cols = ca * cb;
  const out = new Float32Array(ra * rb * cols);
  for (let i = 0; i < ra; i++) {
    for (let j = 0; j < ca; j++) {
      const av = a[i * ca + j];
      for (let k = 0; k < rb; k++) {
        const o = (i * rb + k) * cols + j * cb;
        const bo = k * cb;
        for (let l = 0; l < cb; l++) out[o + l] = av * b[bo + l];
      }
    }
  }
  return out;
}

/**
 * LyCORIS Tucker: result[p, q, s] = sum_{i,j} t[i, j, s] * a[i, p] * b[j, q]
 * (t [r1, r2, kh, kw], a [r1, rows], b [r2, cols]) -> [rows, cols * kh * kw].
 */
export function tuckerRebuild(t: Float32Array, tShape: number[], a: Float32Array, rows: number, b: Float32Array, cols: number): Float32Array {
  const [r1, r2] = tShape;
  const S = spatial(tShape);
  // tmp[i, q, s] = sum_j t[i, j, s] * b[j, q]
  const tmp = new Float64Array(r1 * cols * S);
  for (let i = 0; i < r1; i++)
    for (let j = 0; j < r2; j++)
      for (let q = 0; q < cols; q++) {
        const bv = b[j * cols + q];
        for (let s = 0; s < S; s++) tmp[(i * cols + q) * S + s] += t[(i * r2 + j) * S + s] * bv;
      }
  const width = cols * S;
  const result = new Float32Array(rows * width);
  for (let p = 0; p < rows; p++) {
    const row = new Float64Array(width);
    for (let i = 0; i < r1; i++) {
      const av = a[i * rows + p];
      for (let c = 0; c < width; c++) row[c] += av * tmp[i * width + c];
    }
    result.set(row, p * width);
  }
  return result;
}
