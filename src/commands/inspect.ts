import { Args, Flags } from '@oclif/core';
import { OnestepCommand } from '../cli/base-command.js';
import { OnestepError } from '../errors.js';

export default class Inspect extends OnestepCommand {
  static description = 'Say what a checkpoint or LoRA is: layout, family, components, parameters, dtypes, metadata.';
  static args = { path: Args.string({ description: 'a .safetensors file or a diffusers folder', required: true }) };
  static flags = { json: Flags.boolean({ description: 'print JSON for machines' }) };

  async run(): Promise<void> {
    await this.parse(Inspect);
    throw new OnestepError('inspect is not built yet.');
  }
}
