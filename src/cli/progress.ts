import ora, { type Ora } from 'ora';

/**
 * Progress on stderr: an ora spinner on a TTY, plain periodic lines otherwise (logs, CI), nothing with quiet.
 */
export class Progress {
  private spinner?: Ora;
  private lastLine = 0;

  constructor(
    private readonly quiet = false,
    private readonly intervalMs = 5000,
  ) {}

  update(text: string): void {
    if (this.quiet) return;
    if (process.stderr.isTTY) {
      // discardStdin: false, else ora puts the terminal in raw mode and a typed Ctrl-C never becomes SIGINT.
      if (!this.spinner) this.spinner = ora({ text, stream: process.stderr, discardStdin: false }).start();
      else this.spinner.text = text;
      return;
    }
    const now = Date.now();
    if (now - this.lastLine >= this.intervalMs) {
      this.lastLine = now;
      process.stderr.write(`${text}\n`);
    }
  }

  succeed(text: string): void {
    if (this.quiet) return;
    if (this.spinner) this.spinner.succeed(text);
    else process.stderr.write(`${text}\n`);
    this.spinner = undefined;
  }

  fail(text?: string): void {
    if (this.spinner) this.spinner.fail(text);
    this.spinner = undefined;
  }

  /** A line that must not be mixed into the spinner's. */
  note(text: string): void {
    if (this.spinner) this.spinner.clear();
    process.stderr.write(`${text}\n`);
    if (this.spinner) this.spinner.render();
  }
}

export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}
