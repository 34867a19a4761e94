/**
 * A failure the user can act on. Commands print `message` (and `hint` when present) as one clear message,
 * without a stack trace, and exit non-zero. Everything that reaches the user for bad input is one of these.
 */
export class OnestepError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Input that names a file, and what is wrong with it. */
export class BadInputError extends OnestepError {
  constructor(
    readonly file: string,
    detail: string,
    hint?: string,
  ) {
    super(`${file}: ${detail}`, hint);
  }
}
