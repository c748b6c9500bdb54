/**
 * User-facing errors. A {@link UserError} is bad input (a file, a flag, a config): the CLI prints
 * its one-line message and exits with code 2, with no stack trace.
 *
 * It lives at the root, below every folder, so that kernels/, model/ and tokenizers/ raise it
 * without importing upward into pipeline/.
 *
 * @module
 */

/** Bad input from the user. The message is one line: the file, the place, the fault, the fix. */
export class UserError extends Error {
  /** "UserError", for messages and `instanceof`-free checks. */
  override name = "UserError";
}
