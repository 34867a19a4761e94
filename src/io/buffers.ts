/**
 * Reusable buffers for streaming weights. A conversion reads, moves and writes GBs one tensor at a time; a fresh
 * ArrayBuffer per tensor costs page faults, zeroing in the kernel and a full garbage collection every few hundred MB
 * ("external memory pressure"), more than the copying itself.
 */

/** Returns a buffer of at least `bytes` bytes, contents unspecified; the caller uses [0, bytes). */
export type Allocator = (bytes: number) => ArrayBuffer;

/** Fresh, uninitialized memory: for callers that fill every byte. */
export const freshBuffer: Allocator = (bytes) => Buffer.allocUnsafeSlow(bytes).buffer as ArrayBuffer;

/**
 * Buffers handed out per slot and taken back all at once when the slot is recycled: whoever holds a slot's buffers
 * must be done with them by then. Sizes round up to MiB so that tensors of similar sizes share buffers.
 */
export class BufferPool {
  private readonly free: ArrayBuffer[] = [];
  private readonly used: ArrayBuffer[][];

  constructor(slots: number) {
    this.used = Array.from({ length: slots }, () => []);
  }

  /** Takes back every buffer of `slot` and returns an allocator whose buffers belong to it. */
  recycle(slot: number): Allocator {
    const mine = this.used[slot];
    this.free.push(...mine.splice(0));
    // Keep at most KEEP bytes spare, the largest buffers (they fit any tensor a smaller one would).
    this.free.sort((a, b) => b.byteLength - a.byteLength);
    let kept = 0;
    const n = this.free.findIndex((b) => (kept += b.byteLength) > KEEP);
    if (n >= 0) this.free.length = n;
    return (bytes) => {
      const i = this.bestFit(bytes);
      const buffer = i >= 0 ? this.free.splice(i, 1)[0] : freshBuffer(Math.ceil(bytes / MIB) * MIB);
      mine.push(buffer);
      return buffer;
    };
  }

  private bestFit(bytes: number): number {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const size = this.free[i].byteLength;
      if (size >= bytes && (best < 0 || size < this.free[best].byteLength)) best = i;
    }
    return best;
  }
}

const MIB = 1 << 20;
const KEEP = 512 * MIB;
