/**
 * Whether the zero-copy path can be used here.
 *
 * @module
 */

import { ffiAvailable } from "./ffi/libc.ts";

/**
 * Whether splice can be used in this process: Linux, `--allow-ffi` granted up front, and libc
 * loaded. One cheap probe that never prompts and never throws; the answer is remembered, so a
 * permission granted later is not noticed.
 *
 * @returns `true` when {@linkcode SplicePipe.create} can succeed
 *
 * @example Choose the path once at start-up
 * ```ts
 * import { spliceAvailable } from "@zerocopy/splice";
 *
 * console.log(spliceAvailable() ? "zero-copy relay" : "copy loop (run with --allow-ffi)");
 * ```
 */
export function spliceAvailable(): boolean {
  return ffiAvailable();
}
