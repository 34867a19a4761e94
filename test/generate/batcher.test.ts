import assert from 'node:assert/strict';
import { Batcher } from '../../src/generate/batcher.js';

/** A batcher whose batches finish when the test says so; `started` lists them in start order. */
function gated(size: number, slots: number, stopped = () => false) {
  const started: string[][] = [];
  const finish: (() => void)[] = [];
  const batcher = new Batcher<string>({
    size,
    slots,
    key: (item) => item.split(':')[0],
    stopped,
    run: async (batch) => {
      started.push(batch);
      await new Promise<void>((r) => finish.push(r));
    },
  });
  return { batcher, started, finish };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('generate/batcher', () => {
  it('groups items by key; a full batch starts at once, partial ones on flush in the order they were opened', async () => {
    const { batcher, started, finish } = gated(2, 8);
    for (const item of ['a:0', 'b:1', 'a:2', 'c:3', 'b:4', 'c:5', 'a:6', 'b:7']) await batcher.add(item);
    assert.deepEqual(started, [['a:0', 'a:2'], ['b:1', 'b:4'], ['c:3', 'c:5']]);
    assert.equal(batcher.filling, true);
    await batcher.flush();
    assert.deepEqual(started.slice(3), [['a:6'], ['b:7']]);
    assert.equal(batcher.filling, false);
    finish.forEach((f) => f());
    await batcher.drain();
  });

  it('keeps at most `slots` batches in flight: the next one waits for a slot, and the caller with it', async () => {
    const { batcher, started, finish } = gated(1, 2);
    await batcher.add('a:0');
    await batcher.add('a:1');
    let third = false;
    const adding = batcher.add('a:2').then(() => (third = true));
    await tick();
    assert.equal(started.length, 2);
    assert.equal(third, false, 'the caller waits');
    finish[0]();
    await adding;
    await tick();
    assert.deepEqual(started, [['a:0'], ['a:1'], ['a:2']]);
    finish[1]();
    finish[2]();
    await batcher.drain();
  });

  it('a batch waiting for a slot when the run stops never starts', async () => {
    let stop = false;
    const { batcher, started, finish } = gated(1, 1, () => stop);
    await batcher.add('a:0');
    const waiting = batcher.add('a:1');
    stop = true;
    finish[0]();
    await waiting;
    await batcher.drain();
    assert.deepEqual(started, [['a:0']]);
  });
});
