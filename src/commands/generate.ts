import { Args } from '@oclif/core';
import { OnestepCommand } from '../cli/base-command.js';
import { OnestepError } from '../errors.js';

export default class Generate extends OnestepCommand {
  static description = 'Stream prompts through a one-step model and write images.';
  static args = { prompts: Args.string({ description: 'prompt file (.txt or .jsonl) or - for stdin', required: true }) };

  async run(): Promise<void> {
    await this.parse(Generate);
    throw new OnestepError('generate is not built yet.');
  }
}
