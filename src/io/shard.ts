import { OnestepError } from '../errors.js';

/** This process takes the prompts whose index % count === index. */
export interface Shard {
  index: number;
  count: number;
}

export function inShard(promptIndex: number, shard: Shard | undefined): boolean {
  return shard === undefined || promptIndex % shard.count === shard.index;
}

const SHARD_HINT = 'Use --shard i/N with 0 <= i < N, e.g. --shard 0/4 for the first of four processes.';

function parseWhole(text: string, what: string): number {
  const trimmed = text.trim();
  if (!/^\d+$/.test(trimmed)) throw new OnestepError(`${what} must be a whole number, got "${text}".`, SHARD_HINT);
  const value = Number(trimmed);
  if (!Number.isSafeInteger(value)) throw new OnestepError(`${what} is too large: ${text}.`, SHARD_HINT);
  return value;
}

function checkShard(index: number, count: number, source: string): Shard {
  if (count < 1) throw new OnestepError(`${source}: the shard count must be at least 1, got ${count}.`, SHARD_HINT);
  if (index >= count) {
    throw new OnestepError(`${source}: shard index ${index} is not below the shard count ${count}.`, SHARD_HINT);
  }
  return { index, count };
}

/** Parses `i/N` (as given to `--shard`). */
export function parseShard(text: string): Shard {
  const match = /^\s*([^/]+)\/([^/]+)\s*$/.exec(text);
  if (!match) throw new OnestepError(`--shard must look like i/N, got "${text}".`, SHARD_HINT);
  return checkShard(parseWhole(match[1], 'The shard index'), parseWhole(match[2], 'The shard count'), '--shard');
}

/**
 * Which shard this process runs, from (in order of precedence):
 * 1. `--shard i/N` (`countFlag`, when also given, must agree with N);
 * 2. a Slurm job array: SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT (or `countFlag`), with SLURM_ARRAY_TASK_MIN and
 *    SLURM_ARRAY_TASK_STEP so `--array=1-8` and `--array=0-14:2` also map onto 0..N-1;
 * 3. a Kubernetes Indexed Job: JOB_COMPLETION_INDEX with the count from `countFlag` or ONESTEP_SHARD_COUNT.
 * Undefined when none applies (the whole prompt file).
 */
export function resolveShard(flag: string | undefined, env: NodeJS.ProcessEnv, countFlag?: number): Shard | undefined {
  if (countFlag !== undefined && (!Number.isSafeInteger(countFlag) || countFlag < 1)) {
    throw new OnestepError(`--shard-count must be a whole number of at least 1, got ${countFlag}.`, SHARD_HINT);
  }
  if (flag !== undefined && flag !== '') {
    const shard = parseShard(flag);
    if (countFlag !== undefined && countFlag !== shard.count) {
      throw new OnestepError(`--shard ${flag} says ${shard.count} shards but --shard-count says ${countFlag}.`, SHARD_HINT);
    }
    return shard;
  }

  const slurmId = env.SLURM_ARRAY_TASK_ID;
  if (slurmId !== undefined && slurmId !== '') {
    const id = parseWhole(slurmId, 'SLURM_ARRAY_TASK_ID');
    const min = env.SLURM_ARRAY_TASK_MIN ? parseWhole(env.SLURM_ARRAY_TASK_MIN, 'SLURM_ARRAY_TASK_MIN') : 0;
    const step = env.SLURM_ARRAY_TASK_STEP ? parseWhole(env.SLURM_ARRAY_TASK_STEP, 'SLURM_ARRAY_TASK_STEP') : 1;
    const countText = env.SLURM_ARRAY_TASK_COUNT;
    let count = countFlag;
    if (count === undefined) {
      if (countText === undefined || countText === '') {
        throw new OnestepError('SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not.', 'Pass --shard-count N.');
      }
      count = parseWhole(countText, 'SLURM_ARRAY_TASK_COUNT');
    }
    if (step < 1) throw new OnestepError(`SLURM_ARRAY_TASK_STEP must be at least 1, got ${step}.`);
    if (id < min || (id - min) % step !== 0) {
      throw new OnestepError(`SLURM_ARRAY_TASK_ID ${id} is not in the array ${min}, ${min + step}, ...`);
    }
    return checkShard((id - min) / step, count, 'Slurm job array');
  }

  const k8sIndex = env.JOB_COMPLETION_INDEX;
  if (k8sIndex !== undefined && k8sIndex !== '') {
    const index = parseWhole(k8sIndex, 'JOB_COMPLETION_INDEX');
    let count = countFlag;
    if (count === undefined) {
      const countText = env.ONESTEP_SHARD_COUNT;
      if (countText === undefined || countText === '') {
        throw new OnestepError(
          'JOB_COMPLETION_INDEX is set but the shard count is unknown.',
          'Pass --shard-count N or set ONESTEP_SHARD_COUNT to the Job\'s completions.',
        );
      }
      count = parseWhole(countText, 'ONESTEP_SHARD_COUNT');
    }
    return checkShard(index, count, 'Kubernetes Indexed Job');
  }
  return undefined;
}
