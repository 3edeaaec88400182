/**
 * The two kinds of relay endpoint, Deno conns and raw socket fds: finding the fd the engine
 * needs, and closing either kind.
 *
 * @module
 */

import {
  F_GETFL,
  F_SETFL,
  IPPROTO_TCP,
  O_NONBLOCK,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  TCP_NODELAY,
} from "../ffi/constants.ts";
import { EINPROGRESS, errnoName } from "../ffi/errno.ts";
import { resolveSockaddrsAsync, sockaddrFamily } from "../ffi/net.ts";
import { SyscallError } from "../errors.ts";
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

/** A host and port for relay() to connect to itself. */
export interface Target {
  hostname: string;
  port: number;
}

const ONE = new Int32Array([1]);

/**
 * Starts a non-blocking connect to `target` (resolved as Deno.connect would, on the blocking
 * pool): the engine finishes it. Returns the socket and whether the connect is still under way,
 * or the error that ended it at once (nothing left open).
 */
export async function dial(
  target: Target,
): Promise<{ fd: number; inProgress: boolean } | { error: Error }> {
  let address: Uint8Array;
  try {
    address = (await resolveSockaddrsAsync(target.hostname, target.port))[0];
  } catch (error) {
    return { error: error instanceof Error ? error : new Error(String(error)) };
  }
  const symbols = libc();
  const fd = symbols.socket(sockaddrFamily(address), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return { error: new SyscallError("socket", errno()) };
  symbols.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, ONE, 4);
  if (symbols.connect(fd, address, address.byteLength) === 0) return { fd, inProgress: false };
  const code = errno();
  if (code === EINPROGRESS) return { fd, inProgress: true };
  closeFd(fd);
  return { error: new SyscallError("connect", code, { detail: "side b" }) };
}

/**
 * Why Deno's sandbox would refuse `target` (worded as Deno.connect and Deno.listen word it), or
 * null when --allow-net grants it. Sockets made through FFI are outside the sandbox, so relay()
 * and the proxy's engines keep to --allow-net themselves.
 */
export function netRefusal(target: Target): string | null {
  const host = target.hostname.includes(":")
    ? `[${target.hostname}]:${target.port}`
    : `${target.hostname}:${target.port}`;
  if (Deno.permissions.querySync({ name: "net", host }).state === "granted") return null;
  return `Requires net access to "${host}", run again with the --allow-net flag`;
}
