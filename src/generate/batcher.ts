/**
 * The batcher of `onestep generate`: requests are grouped into engine batches (one image size per batch), and a
 * bounded number of batches is in flight at a time, so memory stays flat for any prompt file length.
 */

class Semaphore {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }
  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

export interface BatcherOptions<T> {
  /** Items per batch. */
  size: number;
  /** Batches in flight at most: a batch holds its slot until `run` is done with it. */
  slots: number;
  /** Items of one key share a batch. */
  key: (item: T) => string;
  /** Runs a batch; handles its own errors (it must not reject). */
  run: (batch: T[]) => Promise<void>;
  /** True once the run is stopped: a batch still waiting for a slot then never starts. */
  stopped: () => boolean;
}

export class Batcher<T> {
  private readonly open = new Map<string, T[]>();
  private readonly running = new Set<Promise<void>>();
  private readonly slots: Semaphore;

  constructor(private readonly o: BatcherOptions<T>) {
    this.slots = new Semaphore(o.slots);
  }

  /** Whether some batch is still filling up. */
  get filling(): boolean {
    return this.open.size > 0;
  }

  /** Adds an item to its key's batch; a full batch starts (once a slot is free). */
  async add(item: T): Promise<void> {
    const key = this.o.key(item);
    const batch = this.open.get(key) ?? [];
    batch.push(item);
    this.open.set(key, batch);
    if (batch.length >= this.o.size) {
      this.open.delete(key);
      await this.dispatch(batch);
    }
  }

  /** Starts every batch still filling up, in the order they were opened. */
  async flush(): Promise<void> {
    for (const [key, batch] of this.open) {
      this.open.delete(key);
      await this.dispatch(batch);
    }
  }

  /** Waits until every started batch is done. */
  async drain(): Promise<void> {
    while (this.running.size) await Promise.all([...this.running]);
  }

  /** drain(), for a finally block: waits for every started batch whatever it does. */
  async settle(): Promise<void> {
    while (this.running.size) await Promise.allSettled([...this.running]);
  }

  private async dispatch(batch: T[]): Promise<void> {
    await this.slots.acquire();
    if (this.o.stopped()) {
      // Stopped while this batch waited for a slot: it never starts (a later --resume makes its images).
      this.slots.release();
      return;
    }
    const job = (async () => {
      try {
        await this.o.run(batch);
      } finally {
        this.slots.release();
      }
    })();
    this.running.add(job);
    job.finally(() => this.running.delete(job));
  }
}
