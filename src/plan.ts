/**
 * What a generate run makes of its prompts, before any model is involved: the images of each prompt
 * (`--images-per-prompt`), their seeds, and their place in the output (webdataset shard).
 *
 * With n images per prompt, image j of prompt i has index i·n + j and seed base + i·n + j (a JSONL line's own seed s
 * gives s + j), so seeds never overlap between prompts and do not depend on the batch size; n = 1 is the plain
 * rule, index = prompt index, seed = base + i.
 */
import type { PromptRecord } from './io/prompts.js';
import type { Shard } from './io/shard.js';

/** One image to make: a prompt record whose `index` is the image's index. */
export interface ImageRecord extends PromptRecord {
  /** The prompt's index in the file. */
  promptIndex: number;
}

export function imagesOf(record: PromptRecord, perPrompt: number): ImageRecord[] {
  const out: ImageRecord[] = [];
  for (let j = 0; j < perPrompt; j++) {
    out.push({
      ...record,
      index: record.index * perPrompt + j,
      promptIndex: record.index,
      ...(record.seed !== undefined ? { seed: BigInt.asUintN(64, record.seed + BigInt(j)) } : {}),
    });
  }
  return out;
}

/**
 * An image index's place among the images this process makes (0, 1, 2, ...): with `--shard s/N` a process makes the
 * prompts s, s+N, s+2N, ..., so prompt i is its (i - s) / N-th.
 */
export function imageOrdinal(index: number, perPrompt: number, shard: Shard | undefined): number {
  const prompt = Math.floor(index / perPrompt);
  const j = index - prompt * perPrompt;
  const promptOrdinal = shard ? (prompt - shard.index) / shard.count : prompt;
  return promptOrdinal * perPrompt + j;
}
