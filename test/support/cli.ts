/** Runs the CLI as a user does, in a child process from the repository root. */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './fixtures.js';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** `node bin/<script> ...args`; resolves with the exit code and output instead of throwing on a non-zero exit. */
export function runCli(script: 'run.js' | 'dev.js', args: string[]): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(ROOT, 'bin', script), ...args], { cwd: ROOT }, (err, stdout, stderr) => {
      const code = (err as { code?: unknown } | null)?.code;
      resolve({ code: err ? (typeof code === 'number' ? code : 1) : 0, stdout, stderr });
    });
  });
}

/** The built CLI (`node bin/run.js`, from dist/). */
export function onestep(...args: string[]): Promise<CliRun> {
  return runCli('run.js', args);
}
