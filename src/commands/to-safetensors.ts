import { Args, Flags } from '@oclif/core';
import { OnestepCommand } from '../cli/base-command.js';
import { Progress, formatBytes } from '../cli/progress.js';
import { toSafetensors } from '../to-safetensors.js';

export default class ToSafetensors extends OnestepCommand {
  static description =
    'Rewrite a PyTorch checkpoint (.bin, .ckpt, .pt, .pth; read as data, never executed) as a .safetensors file.';
  static examples = [
    '<%= config.bin %> to-safetensors model.ckpt -o model.safetensors',
    '<%= config.bin %> to-safetensors unet/diffusion_pytorch_model.bin -o unet/diffusion_pytorch_model.safetensors',
  ];
  static args = { input: Args.string({ description: 'a PyTorch checkpoint file (or a .bin index / folder holding one)', required: true }) };
  static flags = {
    out: Flags.string({ char: 'o', description: 'output .safetensors file', required: true }),
    force: Flags.boolean({ description: 'replace an existing output' }),
    quiet: Flags.boolean({ char: 'q', description: 'no progress output' }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(ToSafetensors);
    const progress = new Progress(flags.quiet);
    const result = await toSafetensors(args.input, flags.out, {
      force: flags.force,
      onProgress: (done, total) => progress.update(`writing: ${done}/${total} tensors`),
    }).catch((err) => {
      progress.fail();
      throw err;
    });
    progress.succeed(`${args.input} -> ${result.out}: ${result.tensors} tensors, ${formatBytes(result.bytes)}`);
    for (const note of result.notes) this.logToStderr(`note: ${note}`);
  }
}
