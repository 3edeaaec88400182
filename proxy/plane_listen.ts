/**
 * The engines' listening sockets, made by the control plane: bound here with FFI (outside
 * Deno's sandbox, so `--allow-net` is checked here), or taken over from another process.
 *
 * @module
 */

import { closeFd } from "../ffi/pipe.ts";
import { errnoDescription } from "../ffi/errno.ts";
import {
  formatSockaddr,
  listeningProblem,
  listenSocket,
  localAddress,
  localPort,
  resolveSockaddrs,
  setNoDelay,
} from "../ffi/net.ts";
import { SyscallError } from "../errors.ts";
import { netRefusal } from "../engine/endpoint.ts";
import type { ListenerSpec } from "./types.ts";

/** Pending connections a listener queues (as Deno.listen and HAProxy use by default). */
const BACKLOG = 511;

/**
 * The sockets of listener `spec` and the port they got: `count` of them (more than one only in
 * SO_REUSEPORT mode, one per engine), or `inherited` when a socket was taken over for it, which
 * must be a listening TCP socket bound to the listener's address (and port, unless port 0).
 * Throws, with nothing left open that it made, as Deno.listen would.
 */
export function listenerSockets(
  spec: ListenerSpec,
  count: number,
  inherited?: number,
): { fds: number[]; port: number } {
  const refused = netRefusal(spec);
  if (refused !== null) {
    throw new Deno.errors.NotCapable(`Cannot listen on ${spec.address}: ${refused}`);
  }
  let address: Uint8Array;
  try {
    address = resolveSockaddrs(spec.hostname, spec.port)[0];
  } catch (error) {
    throw new Error(`Cannot listen on ${spec.address}: ${(error as Error).message}`);
  }
  if (inherited !== undefined) {
    const port = localPort(inherited);
    const bound = localAddress(inherited);
    const problem = listeningProblem(inherited) ??
      (sameHost(bound, formatSockaddr(address)) && (spec.port === 0 || port === spec.port)
        ? null
        : `bound to ${bound}`);
    if (problem !== null) {
      throw new Error(`Cannot take over ${spec.address}: the socket handed over is ${problem}`);
    }
    // Set here too, whatever the process before did: the engines rely on it (setNoDelay).
    const noDelay = setNoDelay(inherited);
    if (noDelay !== 0) {
      throw new Error(
        `Cannot take over ${spec.address}: cannot set TCP_NODELAY: ${errnoDescription(noDelay)}`,
        { cause: new SyscallError("setsockopt", noDelay) },
      );
    }
    return { fds: [inherited], port };
  }
  const fds: number[] = [];
  let port = spec.port;
  for (let i = 0; i < count; i++) {
    // Port 0 picks a port for the first socket; the others of the group join it.
    if (i === 1) new DataView(address.buffer).setUint16(2, port, false);
    const made = listenSocket(address, { reusePort: count > 1, backlog: BACKLOG });
    if ("errno" in made) {
      fds.forEach(closeFd);
      throw listenFailure(spec.address, made.errno, made.syscall);
    }
    fds.push(made.fd);
    if (i === 0) port = localPort(made.fd);
  }
  return { fds, port };
}

/** The error of a listener that cannot listen, of the class Deno.listen would throw. */
function listenFailure(address: string, errno: number, syscall: string): Error {
  const message = `Cannot listen on ${address}: ${errnoDescription(errno)} (os error ${errno})`;
  const cause = new SyscallError(syscall, errno);
  if (errno === 98) return new Deno.errors.AddrInUse(message, { cause });
  if (errno === 99) return new Deno.errors.AddrNotAvailable(message, { cause });
  if (errno === 13 || errno === 1) return new Deno.errors.PermissionDenied(message, { cause });
  return new Error(message, { cause });
}

/**
 * One socket per listener shared with EPOLLEXCLUSIVE, unless `SPLICE_LISTEN_MODE=reuseport` is
 * set and readable (README, "Engines", says why and what was measured).
 */
export function listenMode(): "reuseport" | "exclusive" {
  const variable = "SPLICE_LISTEN_MODE";
  if (Deno.permissions.querySync({ name: "env", variable }).state !== "granted") {
    return "exclusive";
  }
  return Deno.env.get(variable) === "reuseport" ? "reuseport" : "exclusive";
}

/** Whether two `host:port` texts (formatSockaddr's) name the same host. */
function sameHost(a: string, b: string): boolean {
  return a.slice(0, a.lastIndexOf(":")) === b.slice(0, b.lastIndexOf(":"));
}
