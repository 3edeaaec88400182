/**
 * The types of a relay's outcome, shared by the engine, the userspace loop and `relay()`, which
 * re-exports them.
 *
 * @module
 */

/**
 * How bytes move:
 * - `"auto"` (default): per direction, small messages are copied through a reused buffer and
 *   bulk transfers are spliced, switching as the traffic changes (like HAProxy's splice-auto);
 * - `"splice"`: always splice (copy only when no pipe can be had);
 * - `"copy"`: never splice; bytes are copied by the engine's `read`/`write` loop.
 *
 * @example
 * ```ts
 * import type { RelayMode } from "@zerocopy/splice";
 *
 * const mode: RelayMode = "auto";
 * ```
 */
export type RelayMode = "auto" | "splice" | "copy";

/**
 * How a relay ended:
 * - `"done"`: both sides finished sending and every byte was delivered;
 * - `"reset"`: a peer reset the connection or went away while bytes were owed to it;
 * - `"idle-timeout"`, `"aborted"`: ended on the option of that name;
 * - `"error"`: another failure; `error` says which syscall and errno.
 *
 * @example
 * ```ts
 * import type { RelayEnd } from "@zerocopy/splice";
 *
 * const clean: RelayEnd = "done";
 * ```
 */
export type RelayEnd = "done" | "reset" | "idle-timeout" | "aborted" | "error";

/**
 * The outcome of {@linkcode relay}.
 *
 * @example
 * ```ts ignore
 * const result = await relay(client, backend);
 * console.log(`${result.aToB} up, ${result.bToA} down, ${result.end} via ${result.mode}`);
 * ```
 */
export interface RelayResult {
  /** Bytes delivered from `a` to `b` (not counting `initialData`). */
  aToB: number;
  /** Bytes delivered from `b` to `a`. */
  bToA: number;
  /** Of those, the bytes moved by splice (both directions). */
  splicedBytes: number;
  /**
   * The path used: `"splice"` when any byte was spliced, `"copy"` when the engine copied them
   * all, `"fallback"` for the userspace copy loop (without FFI, for a conn whose fd
   * cannot be found, or when the engine cannot start).
   */
  mode: "splice" | "copy" | "fallback";
  /** How it ended. */
  end: RelayEnd;
  /** Which side failed, for `"reset"` and `"error"`. */
  side?: "a" | "b";
  /** The failure, for `"reset"` and `"error"`: a {@linkcode SyscallError} where one is known. */
  error?: Error;
}
