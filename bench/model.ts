/**
 * `onestep bench` from `npm run bench model [-- --model <dir>]`: the same figures (src/bench.ts) for the bundled demo
 * model at 64x64 (converted into a temp cache) and, when given, a model directory at its own size.
 * Env: BENCH_DEVICE (default cpu), BENCH_BATCHES (default 1,4,8), BENCH_WORKERS (default 1; a list compares),
 * BENCH_SIZE. Prints figures only.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { formatBenchReport, runBench, type BenchReport } from '../src/bench.js';
import { resolveModel } from '../src/models.js';

const list = (s: string | undefined, dflt: number[]) => (s ? s.split(',').map(Number) : dflt);

export async function benchModel(opts: { modelDir?: string } = {}): Promise<BenchReport[]> {
  const env = process.env;
  const common = {
    device: env.BENCH_DEVICE ?? 'cpu',
    batchSizes: list(env.BENCH_BATCHES, [1, 4, 8]),
    workers: list(env.BENCH_WORKERS, [1]),
    onProgress: (line: string) => console.error(line),
  };
  const reports: BenchReport[] = [];
  const work = await mkdtemp(join(tmpdir(), 'onestep-bench-model-'));
  try {
    const demo = await resolveModel({ env: { ONESTEP_CACHE: join(work, 'cache') } });
    reports.push(await runBench({ ...common, modelDir: demo.dir, size: 64 }));
    console.log(formatBenchReport(reports[0]));
    if (opts.modelDir) {
      const r = await runBench({ ...common, modelDir: resolve(opts.modelDir), size: env.BENCH_SIZE ? Number(env.BENCH_SIZE) : undefined });
      reports.push(r);
      console.log(`\n${formatBenchReport(r)}`);
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return reports;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) await benchModel({ modelDir: process.argv[2] });
