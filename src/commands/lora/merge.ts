import { Args, Flags } from '@oclif/core';
import { OnestepCommand } from '../../cli/base-command.js';
import { sharedFlags } from '../../cli/flags.js';
import { Progress } from '../../cli/progress.js';
import { OnestepError } from '../../errors.js';
import { parseLoraArg } from '../../lora/args.js';
import { formatMergeReport } from '../../lora/merge.js';
import { mergeLorasIntoCheckpoint, type OutputDType } from '../../lora/merge-checkpoint.js';

const DTYPES: Record<string, OutputDType> = { fp32: 'F32', fp16: 'F16', bf16: 'BF16' };

export default class LoraMerge extends OnestepCommand {
  static description =
    'Merge LoRA weights into a checkpoint, writing a new checkpoint in the same layout (single file or diffusers folder).';
  static examples = [
    '<%= config.bin %> lora merge sd15.safetensors style.safetensors:0.7 -o sd15-style.safetensors',
    '<%= config.bin %> lora merge ./sd15-diffusers a.safetensors:0.5 b.safetensors -o ./sd15-ab --dtype fp16',
  ];
  static strict = false;
  static args = {
    base: Args.string({ description: 'base checkpoint (a .safetensors file or a diffusers folder)', required: true }),
    lora: Args.string({ description: 'LoRA file, optionally with :scale (default 1); several may follow', required: true }),
  };
  static flags = {
    out: Flags.string({ char: 'o', description: 'output path (file or folder, as the base)', required: true }),
    dtype: Flags.string({ description: 'store float tensors in this dtype (default: as in the base)', options: Object.keys(DTYPES) }),
    'allow-unmatched': Flags.boolean({ description: 'skip LoRA keys that match no weight of the base instead of failing' }),
    force: Flags.boolean({ description: 'replace an existing output' }),
    quiet: sharedFlags.quiet,
  };

  async run(): Promise<void> {
    const { args, argv, flags } = await this.parse(LoraMerge);
    const loraArgs = (argv as string[]).slice(1);
    if (loraArgs.length === 0) throw new OnestepError('no LoRA given', 'Usage: onestep lora merge <base> <lora>[:scale] ... -o <out>');
    const progress = new Progress(flags.quiet);
    const result = await mergeLorasIntoCheckpoint({
      base: args.base,
      loras: loraArgs.map(parseLoraArg),
      out: flags.out,
      dtype: flags.dtype ? DTYPES[flags.dtype] : undefined,
      allowUnmatched: flags['allow-unmatched'],
      force: flags.force,
      onProgress: (done, total) => progress.update(`writing: ${done}/${total} tensors`),
    }).catch((err) => {
      progress.fail();
      throw err;
    });
    progress.succeed(`merged ${loraArgs.length} LoRA(s) into ${args.base} -> ${result.out} (${result.layout}, ${result.family})`);
    for (const note of result.notes) this.logToStderr(`note: ${note}`);
    this.log(formatMergeReport(result.report));
  }
}
