/**
 * {@link UserError}, from its home in the root errors.ts; kept so that imports of
 * pipeline/errors.ts still resolve.
 *
 * @module
 */
export { UserError } from "../errors.ts";
