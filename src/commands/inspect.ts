import { Args, Flags } from '@oclif/core';
import { OnestepCommand } from '../cli/base-command.js';
import { formatInspectReport, inspectPath } from '../inspect.js';

export default class Inspect extends OnestepCommand {
  static description = 'Say what a checkpoint or LoRA is: layout, family, components, parameters, dtypes, metadata.';
  static args = { path: Args.string({ description: 'a .safetensors file or a diffusers folder', required: true }) };
  static flags = { json: Flags.boolean({ description: 'print JSON for machines (shape documented in src/inspect.ts)' }) };
  static examples = ['<%= config.bin %> inspect model.safetensors', '<%= config.bin %> inspect ./my-diffusers-folder --json'];

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Inspect);
    const report = await inspectPath(args.path);
    this.log(flags.json ? JSON.stringify(report, null, 2) : formatInspectReport(report));
  }
}
