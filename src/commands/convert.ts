import { Args, Flags } from '@oclif/core';
import { OnestepCommand } from '../cli/base-command.js';
import { OnestepError } from '../errors.js';

export default class Convert extends OnestepCommand {
  static description = 'Build ONNX graphs from a Stable Diffusion checkpoint (single file or diffusers folder) into a model directory.';
  static args = { checkpoint: Args.string({ description: 'a .safetensors checkpoint or a diffusers folder', required: true }) };
  static flags = { out: Flags.string({ char: 'o', description: 'model directory to write', required: true }) };

  async run(): Promise<void> {
    await this.parse(Convert);
    throw new OnestepError('convert is not built yet.');
  }
}
