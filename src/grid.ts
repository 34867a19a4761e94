/**
 * `generate --grid`: one grid image per batch, laid out as A1111 does by default: rows = floor(sqrt(n)), lowered
 * until it divides n, columns = ceil(n / rows), images left to right then top to bottom on black. The grid carries
 * the first image's `parameters` text, as A1111's grids do. Grids go in `<out>/.grids/` (hidden, so the output
 * folder stays a Hugging Face imagefolder whose every image has a metadata.jsonl row).
 */
import path from 'node:path';
import { mkdir } from 'node:fs/promises';
import { writeFileAtomic } from './io/atomic.js';
import { encodeImage } from './io/images.js';

export const GRIDS_DIR = '.grids';

export function gridLayout(count: number): { rows: number; cols: number } {
  let rows = Math.max(1, Math.floor(Math.sqrt(count)));
  while (count % rows !== 0) rows--;
  return { rows, cols: Math.ceil(count / rows) };
}

export interface GridImage {
  rgb: Uint8Array;
  width: number;
  height: number;
}

/** The grid's RGB pixels; every image must have the first one's size (a batch has one size). */
export function composeGrid(images: GridImage[]): GridImage {
  const { width, height } = images[0];
  const { rows, cols } = gridLayout(images.length);
  const gw = cols * width;
  const rgb = new Uint8Array(gw * rows * height * 3);
  images.forEach((img, i) => {
    if (img.width !== width || img.height !== height) throw new Error(`grid image ${i} is ${img.width}x${img.height}, not ${width}x${height}`);
    const x = (i % cols) * width;
    const y = Math.floor(i / cols) * height;
    for (let row = 0; row < height; row++) {
      rgb.set(img.rgb.subarray(row * width * 3, (row + 1) * width * 3), ((y + row) * gw + x) * 3);
    }
  });
  return { rgb, width: gw, height: rows * height };
}

/** Writes `<out>/.grids/grid-<first index>.png` (atomically); returns its path relative to `out`. */
export async function writeGrid(out: string, firstIndex: number, images: GridImage[], parameters: string): Promise<string> {
  const grid = composeGrid(images);
  const rel = path.join(GRIDS_DIR, `grid-${String(firstIndex).padStart(6, '0')}.png`);
  await mkdir(path.join(out, GRIDS_DIR), { recursive: true });
  await writeFileAtomic(path.join(out, rel), await encodeImage(grid.rgb, grid.width, grid.height, { format: 'png', parameters }));
  return rel;
}
