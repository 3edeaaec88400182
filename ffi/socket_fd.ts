/**
 * Finds the OS file descriptor behind a Deno connection. Deno exposes none publicly:
 *
 * 1. Conns from `Listener.accept()` carry it under an internal symbol described as
 *    `"Deno.internal.fd"` (added for Node compatibility). It is an unsupported hook, so it is
 *    feature-detected and checked against the conn's addresses before it is trusted.
 * 2. Otherwise the fd numbers are probed with `getsockname`/`getpeername` until one matches the
 *    conn's `localAddr` and `remoteAddr`. The search starts next to the last fd found, because
 *    the kernel hands out the lowest free number and connections made in a row sit side by side;
 *    it needs no read permission on `/proc`, and costs one syscall per closed or foreign fd.
 *
 * A TCP connection is unique by its address pair. Unix stream sockets cannot be told apart when
 * several share both addresses (many clients of one path, from `accept` or `Deno.connect`:
 * Deno 2.9 carries no internal fd on Unix conns); such a conn is refused with a `TypeError`
 * rather than guessed, and the raw fd is the supported route.
 *
 * @module
 */

import {
  AF_INET,
  AF_INET6,
  AF_UNIX,
  RLIMIT_NOFILE,
  SO_ACCEPTCONN,
  SO_TYPE,
  SOCK_STREAM,
  SOL_SOCKET,
} from "./constants.ts";
import { ENOTCONN } from "./errno.ts";
import { ERRNO, libc } from "./libc.ts";

/**
 * A socket the module can splice: a raw fd or a Deno stream connection.
 *
 * @example
 * ```ts
 * import type { SocketLike } from "@zerocopy/splice";
 *
 * const fd: SocketLike = 3;
 * ```
 */
export type SocketLike = number | Deno.TcpConn | Deno.UnixConn | Deno.Conn;

const FD_SYMBOL_DESCRIPTION = "Deno.internal.fd";
/** The search bound when the fd limit cannot be read. */
const FALLBACK_MAX_FD = 65_536;

const resolved = new WeakMap<object, number>();
let fdSymbol: symbol | null | undefined;
let lastFound = 3;

const SOCKADDR = new Uint8Array(128);
const SOCKADDR_VIEW = new DataView(SOCKADDR.buffer);
const SOCKLEN = new Uint32Array(1);
const INT_OPT = new Int32Array(1);
const INT_LEN = new Uint32Array(1);

/**
 * The fd of `socket`. Numbers pass through unchecked (the syscall reports a bad one). A conn is
 * resolved once, and its remembered fd is checked against the conn's addresses on every later
 * call: after `close()` the number is reused at once by the next socket or pipe, and bytes must
 * never reach that stranger. A conn that no longer owns its fd yields -1, which the syscall
 * reports as `EBADF`. The check costs two syscalls; hot loops pass the raw fd instead.
 *
 * @throws {TypeError} when the conn's fd cannot be found, or cannot be told apart from another
 */
export function socketFd(socket: SocketLike): number {
  if (typeof socket === "number") return socket;
  const known = resolved.get(socket);
  if (known !== undefined) {
    const found = check(known, socket.localAddr as StreamAddr, socket.remoteAddr as StreamAddr);
    return found === NO_MATCH ? -1 : known;
  }
  const fd = findFd(socket);
  resolved.set(socket, fd);
  return fd;
}

type StreamAddr = Deno.NetAddr | Deno.UnixAddr;

function findFd(conn: Deno.Conn): number {
  const local = conn.localAddr;
  const remote = conn.remoteAddr;
  if (!isStreamAddr(local) || !isStreamAddr(remote)) {
    throw new TypeError(
      `Cannot splice a connection of transport "${local.transport}": expected "tcp" or "unix"`,
    );
  }
  // A peer that already reset leaves the socket without a peer address: the internal fd is
  // trusted on its local address alone then, rather than scanning for what cannot match.
  const internal = internalFd(conn);
  // Once the internal fd proved to be the conn's own, it is trusted without the two lookups:
  // it is Deno's, for a conn that is open (the caller holds it).
  if (internal !== undefined && internalTrusted) return internal;
  if (internal !== undefined && check(internal, local, remote) !== NO_MATCH) {
    internalTrusted = true;
    return internal;
  }

  if (isUnixAddr(local) && isUnixAddr(remote)) return findUnixFd(local, remote);

  // Outward from the last hit: hint, hint+1, hint-1, hint+2, ... A socket whose peer is gone
  // (reset between connect and this search) matches on its local address only; it is taken
  // when no socket matches both addresses, since connects to different peers may share a
  // local port and the connected one is the better witness.
  const limit = maxFd(false);
  let orphan = -1;
  const visit = (fd: number): boolean => {
    const found = check(fd, local, remote);
    if (found === PEER_GONE && orphan === -1) orphan = fd;
    return found === MATCH;
  };
  for (let step = 0; step <= limit; step++) {
    const above = lastFound + step;
    const below = lastFound - step;
    if (above > limit && below < 0) break;
    if (above <= limit && visit(above)) return (lastFound = above);
    if (step > 0 && below >= 0 && visit(below)) return (lastFound = below);
  }
  if (orphan !== -1) return orphan;
  // The limit was read once; one that was raised since hides the fd above it.
  if (limit !== maxFd(true)) return findFd(conn);
  throw new TypeError(
    `Cannot find the file descriptor of the connection ${formatAddr(local)} -> ` +
      `${formatAddr(remote)}: pass a raw fd, or a conn from Listener.accept()`,
  );
}

function findUnixFd(local: Deno.UnixAddr, remote: Deno.UnixAddr): number {
  let found = -1;
  for (let fd = 0, limit = maxFd(false); fd <= limit; fd++) {
    if (check(fd, local, remote) !== MATCH) continue;
    if (found !== -1) {
      throw new TypeError(
        `Cannot tell apart the Unix connections to "${remote.path || local.path}": ` +
          "several sockets share its addresses and Deno exposes no fd for Unix conns; pass the " +
          "raw fd",
      );
    }
    found = fd;
  }
  if (found === -1) {
    throw new TypeError(
      `Cannot find the file descriptor of the Unix connection to "${remote.path || local.path}"`,
    );
  }
  return found;
}

const RLIMIT = new BigUint64Array(2);

/** The highest fd number this process can hold: the soft `RLIMIT_NOFILE`, minus one. */
function maxFd(fresh: boolean): number {
  if (cachedMaxFd !== -1 && !fresh) return cachedMaxFd;
  if (libc().getrlimit(RLIMIT_NOFILE, new Uint8Array(RLIMIT.buffer)) !== 0) {
    return (cachedMaxFd = FALLBACK_MAX_FD);
  }
  // RLIM_INFINITY or absurd values: the kernel caps fds at fs.nr_open (1,048,576 by default).
  return (cachedMaxFd = Number(RLIMIT[0] > 1_048_576n ? 1_048_576n : RLIMIT[0]) - 1);
}

/**
 * The most fds this process could ever hold: the hard `RLIMIT_NOFILE`, capped as the kernel
 * caps it (fs.nr_open, 1,048,576 by default); the fallback when it cannot be read.
 */
export function fdHardLimit(): number {
  if (libc().getrlimit(RLIMIT_NOFILE, new Uint8Array(RLIMIT.buffer)) !== 0) {
    return FALLBACK_MAX_FD + 1;
  }
  return Number(RLIMIT[1] > 1_048_576n ? 1_048_576n : RLIMIT[1]);
}

/** The limit as last read: one `prlimit64` per process, not one per search. */
let cachedMaxFd = -1;
/** Whether an internal fd has been seen to be its conn's own (see {@linkcode findFd}). */
let internalTrusted = false;

function internalFd(conn: object): number | undefined {
  if (fdSymbol === undefined) {
    fdSymbol = Object.getOwnPropertySymbols(conn).find((s) =>
      s.description === FD_SYMBOL_DESCRIPTION
    ) ?? null;
    // Seen on a conn without the symbol: look again on the next conn.
    if (fdSymbol === null) fdSymbol = undefined;
  }
  if (!fdSymbol) return undefined;
  const value = (conn as Record<symbol, unknown>)[fdSymbol];
  return typeof value === "number" && Number.isInteger(value) && value >= 0 ? value : undefined;
}

function isStreamAddr(addr: Deno.Addr): addr is Deno.NetAddr | Deno.UnixAddr {
  return addr.transport === "tcp" || addr.transport === "unix";
}

function isUnixAddr(addr: Deno.NetAddr | Deno.UnixAddr): addr is Deno.UnixAddr {
  return addr.transport === "unix" || addr.transport === "unixpacket";
}

/** `fd` is a stream socket with both addresses. */
const MATCH = 0;
/** `fd` is a connected stream socket with this local address whose peer is gone. */
const PEER_GONE = 1;
/** Anything else. */
const NO_MATCH = 2;

/**
 * How `fd` compares with a conn's addresses. A socket whose peer is gone (`ENOTCONN` from
 * getpeername) still has its local address; splicing it fails cleanly, and a stranger that
 * reused the number has a peer of its own or a different local address. A listening socket
 * also has no peer: it never stands in for a connection.
 */
function check(
  fd: number,
  local: Deno.NetAddr | Deno.UnixAddr,
  remote: Deno.NetAddr | Deno.UnixAddr,
): typeof MATCH | typeof PEER_GONE | typeof NO_MATCH {
  if (fd < 0) return NO_MATCH;
  const symbols = libc();
  SOCKLEN[0] = SOCKADDR.byteLength;
  if (symbols.getsockname(fd, SOCKADDR, SOCKLEN) !== 0) return NO_MATCH;
  if (!addrEquals(local, SOCKLEN[0])) return NO_MATCH;
  let result: typeof MATCH | typeof PEER_GONE = MATCH;
  SOCKLEN[0] = SOCKADDR.byteLength;
  if (symbols.getpeername(fd, SOCKADDR, SOCKLEN) !== 0) {
    if (ERRNO.cell[0] !== ENOTCONN || intOption(fd, SO_ACCEPTCONN) !== 0) return NO_MATCH;
    result = PEER_GONE;
  } else if (!addrEquals(remote, SOCKLEN[0])) {
    return NO_MATCH;
  }
  return intOption(fd, SO_TYPE) === SOCK_STREAM ? result : NO_MATCH;
}

/** An int socket option at `SOL_SOCKET`; -1 when it cannot be read. */
function intOption(fd: number, option: number): number {
  INT_LEN[0] = 4;
  return libc().getsockopt(fd, SOL_SOCKET, option, INT_OPT, INT_LEN) === 0 ? INT_OPT[0] : -1;
}

/** Compares the `struct sockaddr` in `SOCKADDR` (of `length` bytes) with a Deno address. */
function addrEquals(addr: Deno.NetAddr | Deno.UnixAddr, length: number): boolean {
  const family = SOCKADDR_VIEW.getUint16(0, true);
  if (isUnixAddr(addr)) {
    if (family !== AF_UNIX) return false;
    // sun_path starts at offset 2; unnamed sockets have no path at all.
    const end = SOCKADDR.indexOf(0, 2);
    const path = new TextDecoder().decode(
      SOCKADDR.subarray(2, end === -1 || end > length ? length : end),
    );
    return path === (addr.path ?? "");
  }
  if (family !== AF_INET && family !== AF_INET6) return false;
  if (SOCKADDR_VIEW.getUint16(2, false) !== addr.port) return false;
  const expected = parseIp(addr.hostname);
  if (expected === null) return false;
  const actual = family === AF_INET ? SOCKADDR.subarray(4, 8) : SOCKADDR.subarray(8, 24);
  return bytesEqual(actual, expected) ||
    (family === AF_INET6 && expected.length === 4 && isMappedV4(actual, expected));
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** `::ffff:a.b.c.d` against `a.b.c.d`: Deno may print a mapped address in the IPv4 form. */
function isMappedV4(v6: Uint8Array, v4: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (v6[i] !== 0) return false;
  return v6[10] === 0xff && v6[11] === 0xff && bytesEqual(v6.subarray(12), v4);
}

/** Parses an IPv4 or IPv6 literal (zone and brackets allowed) into network-order bytes. */
export function parseIp(text: string): Uint8Array | null {
  const host = text.replace(/^\[|\]$/g, "").replace(/%.*$/, "");
  if (!host.includes(":")) return parseV4(host);
  let head = host;
  let tail4: Uint8Array | null = null;
  const lastColon = host.lastIndexOf(":");
  if (host.slice(lastColon + 1).includes(".")) {
    tail4 = parseV4(host.slice(lastColon + 1));
    if (tail4 === null) return null;
    head = host.slice(0, lastColon + 1) + "0:0";
  }
  const halves = head.split("::");
  if (halves.length > 2) return null;
  const left = halves[0] ? halves[0].split(":") : [];
  const right = halves.length === 2 && halves[1] ? halves[1].split(":") : [];
  const missing = 8 - left.length - right.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const groups = [...left, ...Array(halves.length === 2 ? missing : 0).fill("0"), ...right];
  const out = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(groups[i])) return null;
    const value = parseInt(groups[i], 16);
    out[i * 2] = value >> 8;
    out[i * 2 + 1] = value & 0xff;
  }
  if (tail4) out.set(tail4, 12);
  return out;
}

function parseV4(host: string): Uint8Array | null {
  const parts = host.split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    if (!/^\d{1,3}$/.test(parts[i])) return null;
    const value = Number(parts[i]);
    if (value > 255) return null;
    out[i] = value;
  }
  return out;
}

function formatAddr(addr: Deno.NetAddr | Deno.UnixAddr): string {
  return isUnixAddr(addr) ? `unix:${addr.path}` : `${addr.hostname}:${addr.port}`;
}
