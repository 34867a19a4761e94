import { Command } from '@oclif/core';
import { OnestepError } from '../errors.js';

/**
 * Every command extends this: an OnestepError (bad input, a refused action) becomes one clear message and a
 * non-zero exit code, never a stack trace. Anything else is a bug and keeps its stack for the report.
 */
export abstract class OnestepCommand extends Command {
  protected async catch(err: Error & { exitCode?: number; oclif?: { exit?: number } }): Promise<unknown> {
    if (err instanceof OnestepError) {
      this.logToStderr(`Error: ${err.message}`);
      if (err.hint) this.logToStderr(`Hint: ${err.hint}`);
      this.exit(err.exitCode);
    }
    return super.catch(err);
  }
}
