/**
 * Sockets made and read through libc, for the engine's own listeners and backend connects:
 * `struct sockaddr` encoding, listening sockets, name resolution and the CPUs this process may
 * use. Everything here runs when a config is applied, never per connection; the per-connection
 * calls (`accept4`, `connect`) are made by the engine itself on buffers it owns.
 *
 * @module
 */

import {
  AF_INET,
  AF_INET6,
  F_GETFL,
  F_SETFL,
  IPPROTO_IPV6,
  IPPROTO_TCP,
  IPV6_V6ONLY,
  O_NONBLOCK,
  SHUT_RD,
  SO_ACCEPTCONN,
  SO_REUSEADDR,
  SO_REUSEPORT,
  SO_TYPE,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
  TCP_INFO,
  TCP_NODELAY,
} from "./constants.ts";
import { errnoName } from "./errno.ts";
import { ERRNO, libc } from "./libc.ts";

/** Bytes of `struct sockaddr_in6`, the larger of the two families; `sockaddr_in` takes 16. */
export const SOCKADDR_MAX = 28;

/**
 * The `struct sockaddr_in` or `sockaddr_in6` of an IP literal and port (ports are big-endian,
 * the family host-endian); `null` when `hostname` is no IP literal.
 */
export function encodeSockaddr(hostname: string, port: number): Uint8Array | null {
  const v4 = parseIpv4(hostname);
  if (v4 !== null) {
    const bytes = new Uint8Array(16);
    const view = new DataView(bytes.buffer);
    view.setUint16(0, AF_INET, true);
    view.setUint16(2, port, false);
    bytes.set(v4, 4);
    return bytes;
  }
  const v6 = parseIpv6(hostname);
  if (v6 === null) return null;
  const bytes = new Uint8Array(28);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, AF_INET6, true);
  view.setUint16(2, port, false);
  bytes.set(v6, 8);
  return bytes;
}

/** `"a.b.c.d:port"` or `"[v6]:port"` of a `struct sockaddr` of either family; "" otherwise. */
export function formatSockaddr(bytes: Uint8Array): string {
  const family = bytes[0] | (bytes[1] << 8);
  const port = (bytes[2] << 8) | bytes[3];
  // IPv4 allocates nothing but the string: this runs once per accepted connection.
  if (family === AF_INET) return `${bytes[4]}.${bytes[5]}.${bytes[6]}.${bytes[7]}:${port}`;
  if (family !== AF_INET6) return "";
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(view.getUint16(8 + i * 2, false).toString(16));
  // The canonical text (RFC 5952) is what URL gives for a bracketed literal.
  return `[${new URL(`http://[${groups.join(":")}]/`).hostname.slice(1, -1)}]:${port}`;
}

/** The IP of an encoded `struct sockaddr` (4 or 16 bytes), copied: the buffer is reused. */
export function sockaddrIp(bytes: Uint8Array): Uint8Array {
  return sockaddrFamily(bytes) === AF_INET ? bytes.slice(4, 8) : bytes.slice(8, 24);
}

/** The address family of an encoded `struct sockaddr`. */
export function sockaddrFamily(bytes: Uint8Array): number {
  return bytes[0] | (bytes[1] << 8);
}

function parseIpv4(text: string): Uint8Array | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    if (!/^[0-9]{1,3}$/.test(parts[i])) return null;
    const n = Number(parts[i]);
    if (n > 255) return null;
    out[i] = n;
  }
  return out;
}

function parseIpv6(text: string): Uint8Array | null {
  if (!text.includes(":") || !/^[0-9A-Fa-f:.]+$/.test(text)) return null;
  let hostname: string;
  try {
    hostname = new URL(`http://[${text}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
  // URL's canonical form has only hex groups and at most one "::".
  const [head, tail] = hostname.includes("::") ? hostname.split("::") : [hostname, null];
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === null || tail === "" ? [] : tail.split(":");
  const missing = 8 - headGroups.length - tailGroups.length;
  if (missing < 0 || (tail === null && missing !== 0)) return null;
  const groups = [...headGroups, ...new Array(missing).fill("0"), ...tailGroups];
  const out = new Uint8Array(16);
  const view = new DataView(out.buffer);
  groups.forEach((group, i) => view.setUint16(i * 2, parseInt(group, 16), false));
  return out;
}

const ONE = new Int32Array([1]);

/**
 * A non-blocking, close-on-exec socket listening on `address`; with `reusePort`, one of a group
 * that shares the port (each engine its own; the kernel spreads new connections by hash).
 * Returns the fd, or the errno of the step that failed (a negative number) with nothing left
 * open, and the name of that step.
 */
export function listenSocket(
  address: Uint8Array,
  options: { reusePort: boolean; backlog: number },
): { fd: number } | { errno: number; syscall: string } {
  const symbols = libc();
  const family = sockaddrFamily(address);
  const fd = symbols.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return { errno: ERRNO.cell[0], syscall: "socket" };
  // errno is read at each call site, as the argument, before fail() is entered (see ERRNO).
  const fail = (syscall: string, code: number): { errno: number; syscall: string } => {
    symbols.close(fd);
    return { errno: code, syscall };
  };
  // As Deno.listen: a restarted proxy rebinds a port whose old connections are in TIME_WAIT.
  if (symbols.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, ONE, 4) !== 0) {
    return fail("setsockopt", ERRNO.cell[0]);
  }
  if (options.reusePort && symbols.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, ONE, 4) !== 0) {
    return fail("setsockopt", ERRNO.cell[0]);
  }
  if (family === AF_INET6 && symbols.setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, ONE, 4) !== 0) {
    return fail("setsockopt", ERRNO.cell[0]);
  }
  const noDelay = setNoDelay(fd);
  if (noDelay !== 0) return fail("setsockopt", noDelay);
  if (symbols.bind(fd, address, address.byteLength) !== 0) return fail("bind", ERRNO.cell[0]);
  if (symbols.listen(fd, options.backlog) !== 0) return fail("listen", ERRNO.cell[0]);
  return { fd };
}

/**
 * Sets TCP_NODELAY on `fd`; 0, or the errno. On a listening socket this is set once for all its
 * connections: Linux makes an accepted socket as a copy of its listener's, TCP_NODELAY included,
 * so the engines set nothing per accepted connection.
 */
export function setNoDelay(fd: number): number {
  return libc().setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, ONE, 4) === 0 ? 0 : ERRNO.cell[0];
}

const TCP_INFO_SIZE = 232;
/** Offset of `tcpi_unacked` in `struct tcp_info`: after 8 bytes of u8 fields and four u32s. */
const TCPI_UNACKED = 24;

/**
 * Connections a listening socket has queued (completed, not yet accepted): the kernel reports
 * its accept queue's length as `tcpi_unacked` for a socket in LISTEN; 0 when unknown.
 */
export function acceptQueueLength(fd: number): number {
  const info = new Uint8Array(TCP_INFO_SIZE);
  const length = new Uint32Array([TCP_INFO_SIZE]);
  if (libc().getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, length) !== 0) return 0;
  return new DataView(info.buffer).getUint32(TCPI_UNACKED, true);
}

/**
 * Makes a listening socket refuse new connections now, while the fd stays open for the engines
 * still watching it (they see it fail with EINVAL); connections it had queued are reset.
 */
export function stopListening(fd: number): void {
  libc().shutdown(fd, SHUT_RD);
}

/**
 * Why `fd` cannot serve as an engine's listener (not a socket, not TCP over IPv4 or IPv6, not
 * listening), or `null` when it can; a socket that can is made non-blocking, which it already
 * is when it came from another engine (the flag belongs to the socket, not to the fd).
 */
export function listeningProblem(fd: number): string | null {
  const symbols = libc();
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  const option = (name: number): number | null => {
    length[0] = 4;
    return symbols.getsockopt(fd, SOL_SOCKET, name, value, length) === 0 ? value[0] : null;
  };
  const type = option(SO_TYPE);
  if (type === null) return `not a socket (${errnoName(ERRNO.cell[0])})`;
  if (type !== SOCK_STREAM) return "not a stream socket";
  const bytes = new Uint8Array(SOCKADDR_MAX);
  const size = new Uint32Array([SOCKADDR_MAX]);
  if (symbols.getsockname(fd, bytes, size) !== 0) return `unnamed (${errnoName(ERRNO.cell[0])})`;
  const family = sockaddrFamily(bytes);
  if (family !== AF_INET && family !== AF_INET6) return "not an IPv4 or IPv6 socket";
  if (option(SO_ACCEPTCONN) !== 1) return "not listening";
  const flags = symbols.fcntl(fd, F_GETFL, 0);
  if (flags < 0 || symbols.fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return `not made non-blocking (${errnoName(ERRNO.cell[0])})`;
  }
  return null;
}

/** The `host:port` a bound socket has (formatSockaddr's form); "" when it cannot be read. */
export function localAddress(fd: number): string {
  const bytes = new Uint8Array(SOCKADDR_MAX);
  const length = new Uint32Array([SOCKADDR_MAX]);
  if (libc().getsockname(fd, bytes, length) !== 0) return "";
  return formatSockaddr(bytes);
}

/** The port a bound socket got (what port 0 became); -1 when it cannot be read. */
export function localPort(fd: number): number {
  const bytes = new Uint8Array(SOCKADDR_MAX);
  const length = new Uint32Array([SOCKADDR_MAX]);
  if (libc().getsockname(fd, bytes, length) !== 0) return -1;
  return new DataView(bytes.buffer).getUint16(2, false);
}

/** `struct addrinfo` on LP64 Linux (x86_64 and aarch64 alike). */
const ADDRINFO_SIZE = 48;
const AI_FAMILY = 4;
const AI_SOCKTYPE = 8;
const AI_ADDRLEN = 16;
const AI_ADDR = 24;
const AI_NEXT = 40;

/**
 * The addresses `hostname` resolves to (IPv4 and IPv6, as `getaddrinfo` orders them, without
 * repeats), each a `struct sockaddr` with `port`. IP literals are encoded without a lookup.
 * Blocking: call it when a config is applied, not per connection. Throws a `TypeError` naming
 * the host when it resolves to nothing.
 */
export function resolveSockaddrs(hostname: string, port: number): Uint8Array[] {
  const literal = encodeSockaddr(hostname, port);
  if (literal !== null) return [literal];
  const query = addrinfoQuery(hostname);
  const code = libc().getaddrinfo(query.node, null, query.hints, query.result);
  return readAddrinfo(hostname, port, code, query.resultView);
}

/**
 * {@linkcode resolveSockaddrs} without blocking the caller: the lookup runs on Deno's blocking
 * thread pool, as Deno.connect's does.
 */
export async function resolveSockaddrsAsync(hostname: string, port: number): Promise<Uint8Array[]> {
  const literal = encodeSockaddr(hostname, port);
  if (literal !== null) return [literal];
  const query = addrinfoQuery(hostname);
  const code = await libc().getaddrinfoAsync(query.node, null, query.hints, query.result);
  return readAddrinfo(hostname, port, code, query.resultView);
}

function addrinfoQuery(hostname: string): {
  node: Uint8Array;
  hints: Uint8Array;
  result: Uint8Array;
  resultView: BigUint64Array;
} {
  const hints = new Uint8Array(ADDRINFO_SIZE);
  new DataView(hints.buffer).setInt32(AI_SOCKTYPE, SOCK_STREAM, true);
  const resultView = new BigUint64Array(1);
  return {
    node: new TextEncoder().encode(`${hostname}\0`),
    hints,
    result: new Uint8Array(resultView.buffer),
    resultView,
  };
}

function readAddrinfo(
  hostname: string,
  port: number,
  code: number,
  result: BigUint64Array,
): Uint8Array[] {
  const symbols = libc();
  if (code !== 0 || result[0] === 0n) {
    throw new TypeError(`Cannot resolve "${hostname}": getaddrinfo failed with code ${code}`);
  }
  const head = Deno.UnsafePointer.create(result[0]);
  const out: Uint8Array[] = [];
  const seen = new Set<string>();
  try {
    for (let node = head; node !== null;) {
      const view = new Deno.UnsafePointerView(node);
      const family = view.getInt32(AI_FAMILY);
      const length = view.getUint32(AI_ADDRLEN);
      const addr = view.getPointer(AI_ADDR);
      if ((family === AF_INET || family === AF_INET6) && addr !== null) {
        const bytes = new Uint8Array(length);
        Deno.UnsafePointerView.copyInto(addr, bytes);
        new DataView(bytes.buffer).setUint16(2, port, false);
        const key = bytes.join(",");
        if (!seen.has(key)) {
          seen.add(key);
          out.push(bytes);
        }
      }
      node = view.getPointer(AI_NEXT);
    }
  } finally {
    symbols.freeaddrinfo(head);
  }
  if (out.length === 0) throw new TypeError(`Cannot resolve "${hostname}": no IP address`);
  return out;
}

/**
 * How many CPUs this process may run on (its affinity mask), as `nproc` counts them; 1 when
 * the mask cannot be read.
 */
export function usableCpus(): number {
  const mask = new Uint8Array(128); // cpu_set_t: 1024 CPUs
  if (libc().sched_getaffinity(0, BigInt(mask.byteLength), mask) !== 0) return 1;
  let count = 0;
  for (const byte of mask) {
    for (let bit = byte; bit !== 0; bit &= bit - 1) count++;
  }
  return Math.max(1, count);
}
