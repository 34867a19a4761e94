import assert from 'node:assert/strict';
import { OnestepError } from '../../src/errors.js';
import { inShard, parseShard, resolveShard } from '../../src/io/shard.js';

describe('io/shard', () => {
  it('parses i/N and rejects bad values with an OnestepError', () => {
    assert.deepEqual(parseShard('0/4'), { index: 0, count: 4 });
    assert.deepEqual(parseShard(' 3/4 '), { index: 3, count: 4 });
    for (const bad of ['4/4', '1/0', '-1/4', 'a/4', '1.5/4', '1/4/2', '2', '']) {
      assert.throws(() => parseShard(bad), OnestepError, bad);
    }
  });

  it('takes the indices with index % N == i, and the shards partition the indices', () => {
    const picked = [0, 1, 2].map((i) => Array.from({ length: 10 }, (_, k) => k).filter((k) => inShard(k, { index: i, count: 3 })));
    assert.deepEqual(picked, [
      [0, 3, 6, 9],
      [1, 4, 7],
      [2, 5, 8],
    ]);
    assert.equal(inShard(5, undefined), true);
  });

  it('prefers the flag, and checks --shard-count agrees with it', () => {
    assert.deepEqual(resolveShard('1/2', { SLURM_ARRAY_TASK_ID: '5', SLURM_ARRAY_TASK_COUNT: '8' }), { index: 1, count: 2 });
    assert.deepEqual(resolveShard('1/2', {}, 2), { index: 1, count: 2 });
    assert.throws(() => resolveShard('1/2', {}, 3), /--shard-count/);
    assert.equal(resolveShard(undefined, {}), undefined);
  });

  it('reads a Slurm job array, including arrays that do not start at 0 or step by more than 1', () => {
    assert.deepEqual(resolveShard(undefined, { SLURM_ARRAY_TASK_ID: '3', SLURM_ARRAY_TASK_COUNT: '8' }), { index: 3, count: 8 });
    // --array=1-8
    assert.deepEqual(
      resolveShard(undefined, { SLURM_ARRAY_TASK_ID: '8', SLURM_ARRAY_TASK_COUNT: '8', SLURM_ARRAY_TASK_MIN: '1' }),
      { index: 7, count: 8 },
    );
    // --array=0-14:2 -> 8 tasks
    assert.deepEqual(
      resolveShard(undefined, { SLURM_ARRAY_TASK_ID: '6', SLURM_ARRAY_TASK_COUNT: '8', SLURM_ARRAY_TASK_MIN: '0', SLURM_ARRAY_TASK_STEP: '2' }),
      { index: 3, count: 8 },
    );
    assert.throws(() => resolveShard(undefined, { SLURM_ARRAY_TASK_ID: '3' }), /SLURM_ARRAY_TASK_COUNT/);
    assert.deepEqual(resolveShard(undefined, { SLURM_ARRAY_TASK_ID: '3' }, 4), { index: 3, count: 4 });
    assert.throws(() => resolveShard(undefined, { SLURM_ARRAY_TASK_ID: '9', SLURM_ARRAY_TASK_COUNT: '8' }), OnestepError);
    assert.throws(() => resolveShard(undefined, { SLURM_ARRAY_TASK_ID: 'x', SLURM_ARRAY_TASK_COUNT: '8' }), /whole number/);
  });

  it('reads a Kubernetes Indexed Job with the count from the flag or ONESTEP_SHARD_COUNT', () => {
    assert.deepEqual(resolveShard(undefined, { JOB_COMPLETION_INDEX: '2', ONESTEP_SHARD_COUNT: '5' }), { index: 2, count: 5 });
    assert.deepEqual(resolveShard(undefined, { JOB_COMPLETION_INDEX: '2', ONESTEP_SHARD_COUNT: '5' }, 3), { index: 2, count: 3 });
    assert.throws(() => resolveShard(undefined, { JOB_COMPLETION_INDEX: '2' }), /shard count is unknown/);
    assert.throws(() => resolveShard(undefined, { JOB_COMPLETION_INDEX: '5', ONESTEP_SHARD_COUNT: '5' }), /not below/);
    assert.throws(() => resolveShard(undefined, { JOB_COMPLETION_INDEX: '0' }, 0), /--shard-count/);
  });
});
