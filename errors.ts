/**
 * Errors raised at the module's boundaries. Hot paths return a status instead of throwing.
 *
 * @module
 */

import { errnoDescription, errnoName } from "./ffi/errno.ts";

/**
 * A failed system call: carries the errno number, its symbolic name and the syscall, like
 * Node's `SystemError` and the `code` Deno puts on its own errors.
 *
 * @example Tell a resource limit apart from other failures
 * ```ts
 * import { SyscallError } from "@zerocopy/splice";
 *
 * const error: unknown = new SyscallError("pipe2", 24);
 * if (error instanceof SyscallError && error.code === "EMFILE") {
 *   console.log(error.message); // "pipe2 failed: EMFILE (errno 24): Too many open files"
 * }
 * ```
 */
export class SyscallError extends Error {
  /**
   * The errno value, e.g. `9`.
   *
   * @example
   * ```ts
   * import { SyscallError } from "@zerocopy/splice";
   *
   * console.log(new SyscallError("splice", 9).errno); // 9
   * ```
   */
  readonly errno: number;
  /**
   * The errno name, e.g. `"EBADF"`.
   *
   * @example
   * ```ts
   * import { SyscallError } from "@zerocopy/splice";
   *
   * console.log(new SyscallError("splice", 9).code); // "EBADF"
   * ```
   */
  readonly code: string;
  /**
   * The failing system call, e.g. `"splice"`.
   *
   * @example
   * ```ts
   * import { SyscallError } from "@zerocopy/splice";
   *
   * console.log(new SyscallError("splice", 9).syscall); // "splice"
   * ```
   */
  readonly syscall: string;

  /**
   * Builds the error and its message from the syscall and errno.
   *
   * @param syscall the failing system call
   * @param errno the errno value it left
   * @param options `cause` and a `detail` appended to the message
   *
   * @example
   * ```ts
   * import { SyscallError } from "@zerocopy/splice";
   *
   * const error = new SyscallError("fcntl", 1, { detail: "F_SETPIPE_SZ" });
   * console.log(error.message);
   * // "fcntl failed: EPERM (errno 1): Operation not permitted (F_SETPIPE_SZ)"
   * ```
   */
  constructor(syscall: string, errno: number, options?: { detail?: string; cause?: unknown }) {
    const code = errnoName(errno);
    const detail = options?.detail ? ` (${options.detail})` : "";
    super(`${syscall} failed: ${code} (errno ${errno}): ${errnoDescription(errno)}${detail}`, {
      cause: options?.cause,
    });
    this.name = "SyscallError";
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
  }
}
