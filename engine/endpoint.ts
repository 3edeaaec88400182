/**
 * The two kinds of relay endpoint, Deno conns and raw socket fds: finding the fd the engine
 * needs, and closing either kind.
 *
 * @module
 */

import { F_GETFL, F_SETFL, O_NONBLOCK } from "../ffi/constants.ts";
import { errnoName } from "../ffi/errno.ts";
import { errno, ffiAvailable, libc } from "../ffi/libc.ts";
import { closeFd } from "../ffi/pipe.ts";
import { socketFd } from "../ffi/socket_fd.ts";
import type { Conn } from "./fallback.ts";

/** One end of a relay: a Deno TCP or Unix connection, or a raw connected socket fd. */
export type Endpoint = Conn | number;

/**
 * A raw fd, made non-blocking: the engine must never block in a syscall. One that is no open fd
 * is the caller's mistake: both endpoints are closed (the relay owns them) and it throws.
 */
export function rawFd(fd: number, other: Endpoint): number {
  const symbols = libc();
  const valid = Number.isInteger(fd) && fd >= 0;
  const flags = valid ? symbols.fcntl(fd, F_GETFL, 0) : -1;
  if (flags < 0 || symbols.fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    const reason = valid
      ? `fcntl failed with ${errnoName(errno())}`
      : "expected a non-negative integer";
    closeEndpoint(fd);
    closeEndpoint(other);
    throw new TypeError(`Cannot relay fd ${fd}: ${reason}`);
  }
  return fd;
}

/** The fd of a Deno conn (Deno sockets are non-blocking already); -1 when it cannot be found. */
export function connFd(conn: Conn): number {
  try {
    return socketFd(conn);
  } catch {
    return -1;
  }
}

/** Closes either kind; one already closed has nothing left to release. */
export function closeEndpoint(endpoint: Endpoint): void {
  if (typeof endpoint === "number") {
    if (ffiAvailable()) closeFd(endpoint);
    return;
  }
  try {
    endpoint.close();
  } catch {
    // Already closed: nothing more to release.
  }
}
