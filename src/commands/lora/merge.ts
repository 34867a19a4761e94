import { Args, Flags } from '@oclif/core';
import { OnestepCommand } from '../../cli/base-command.js';
import { OnestepError } from '../../errors.js';

export default class LoraMerge extends OnestepCommand {
  static description = 'Merge LoRA weights into a checkpoint, writing a new checkpoint in the same layout.';
  static strict = false;
  static args = { base: Args.string({ description: 'base checkpoint (file or diffusers folder)', required: true }) };
  static flags = { out: Flags.string({ char: 'o', description: 'output path', required: true }) };

  async run(): Promise<void> {
    await this.parse(LoraMerge);
    throw new OnestepError('lora merge is not built yet.');
  }
}
