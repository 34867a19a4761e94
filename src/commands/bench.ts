import { Args, Flags } from '@oclif/core';
import { formatBenchReport, runBench } from '../bench.js';
import { OnestepCommand } from '../cli/base-command.js';
import { OnestepError } from '../errors.js';
import { parseDevice } from '../runtime/device.js';

function intList(flag: string, text: string): number[] {
  const values = text.split(',').map((s) => s.trim());
  if (values.some((v) => !/^\d+$/.test(v) || Number(v) < 1)) throw new OnestepError(`--${flag} must be a comma-separated list of positive integers, got "${text}"`);
  return values.map(Number);
}

export default class Bench extends OnestepCommand {
  static description = `Measure a model directory here: load time per session, ms per image per stage, images/s, peak RSS and \
achieved GFLOP/s (FLOPs counted from the graphs), naming the CPU and its ISA (or the GPU).`;
  static examples = [
    '<%= config.bin %> bench models/sd-turbo',
    '<%= config.bin %> bench models/sd-turbo --batch-sizes 1,4 --size 512 --workers 1,2 --json',
  ];
  static args = { model: Args.string({ description: 'model directory (written by onestep convert)', required: true }) };
  static flags = {
    device: Flags.string({ description: 'auto | cpu | cuda | cuda:N', default: 'auto' }),
    'batch-sizes': Flags.string({ description: 'batch sizes to time, comma-separated', default: '1,4,8' }),
    size: Flags.integer({ description: 'square image side (default: the model\'s default size)', min: 8 }),
    workers: Flags.string({ description: 'inference workers; a list (1,2) compares configurations', default: '1' }),
    threads: Flags.integer({ description: 'intra-op threads per worker (default: cores / workers)', min: 1 }),
    iterations: Flags.integer({ description: 'timed batches per batch size and worker', default: 1, min: 1 }),
    json: Flags.boolean({ description: 'print the report as JSON (shape: BenchReport in src/bench.ts)' }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Bench);
    parseDevice(flags.device);
    const report = await runBench({
      modelDir: args.model,
      device: flags.device,
      batchSizes: intList('batch-sizes', flags['batch-sizes']),
      size: flags.size,
      workers: intList('workers', flags.workers),
      threads: flags.threads,
      iterations: flags.iterations,
      onProgress: flags.json ? undefined : (line) => this.logToStderr(line),
    });
    this.log(flags.json ? JSON.stringify(report, null, 2) : formatBenchReport(report));
  }
}
