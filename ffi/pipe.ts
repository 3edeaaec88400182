/**
 * Kernel pipe primitives: allocate, resize, close. Shared by `SplicePipe` and the relay's pool.
 *
 * @module
 */

import { F_GETPIPE_SZ, F_SETPIPE_SZ, O_CLOEXEC, O_NONBLOCK } from "./constants.ts";
import { errnoName } from "./errno.ts";
import { ERRNO, libc } from "./libc.ts";

/** Reused output buffer for `pipe2`: the call is synchronous, so one buffer serves all calls. */
const PIPE_FDS = new Int32Array(2);

/**
 * Allocates one `pipe2(O_NONBLOCK | O_CLOEXEC)` pair: `O_NONBLOCK` so a splice never parks the
 * event loop, `O_CLOEXEC` so child processes never inherit relay pipes.
 *
 * @returns `[readEnd, writeEnd]`, or the errno (a number) when the kernel refused
 */
export function openPipe(): [readEnd: number, writeEnd: number] | number {
  if (libc().pipe2(PIPE_FDS, O_NONBLOCK | O_CLOEXEC) !== 0) return ERRNO.cell[0];
  return [PIPE_FDS[0], PIPE_FDS[1]];
}

/** Closes an fd the caller owns; `EINTR` on close is not retried (Linux frees the fd anyway). */
export function closeFd(fd: number): void {
  libc().close(fd);
}

const warned = new Set<string>();

/**
 * Asks the kernel for `requested` bytes of capacity and returns what it granted. A refused
 * resize keeps the kernel's size and logs one warning per requested value and errno, with the
 * remedy; it is never fatal, because a smaller pipe only costs more syscalls.
 *
 * The kernel rounds the request up to a power-of-two number of pages, so the result can exceed
 * the request; `EPERM` means the request is above `/proc/sys/fs/pipe-max-size` (without
 * `CAP_SYS_RESOURCE`) or the user's pipe memory (`pipe-user-pages-soft`) is used up.
 */
export function resizePipe(fd: number, requested: number): number {
  const symbols = libc();
  if (symbols.fcntl(fd, F_SETPIPE_SZ, requested) < 0) {
    // Read inline (see ERRNO): this runs on the main thread, often before V8 is warm.
    const code = errnoName(ERRNO.cell[0]);
    const key = `${requested}:${code}`;
    if (!warned.has(key)) {
      warned.add(key);
      // deno-lint-ignore no-console
      console.warn(
        `splice: Cannot resize pipes to ${requested} bytes (F_SETPIPE_SZ failed with ${code}); ` +
          "keeping the kernel's size. Lower splice_pipe_capacity_bytes to at most " +
          "/proc/sys/fs/pipe-max-size, raise that limit, or (for unprivileged users) raise " +
          "/proc/sys/fs/pipe-user-pages-soft.",
      );
    }
  }
  return symbols.fcntl(fd, F_GETPIPE_SZ, 0);
}
