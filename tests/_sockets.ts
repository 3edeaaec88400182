/**
 * Raw sockets and socket faults for tests, made through the test's own libc binding (not the
 * module's): a raw connected fd, a peer that resets its connection, a wait until a reset has
 * arrived, and a backend that never answers a connect.
 *
 * @module
 */

import assert from "node:assert/strict";

const LIBC_NAMES = ["libc.so.6", "libc.musl-x86_64.so.1", "libc.musl-aarch64.so.1", "libc.so"];
const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
} as const;

let library: Deno.DynamicLibrary<typeof SYMBOLS> | null = null;

function libc(): Deno.DynamicLibrary<typeof SYMBOLS>["symbols"] {
  if (library === null) {
    for (const name of LIBC_NAMES) {
      try {
        library = Deno.dlopen(name, SYMBOLS);
        break;
      } catch {
        // try the next name
      }
    }
    if (library === null) throw new Error("Cannot open libc for the test's socket faults");
  }
  return library.symbols;
}

const address = new Uint8Array(128);
const view = new DataView(address.buffer);
const length = new Uint32Array(1);

/** The port in `address` (IPv4 or IPv6: both keep it at offset 2), or -1 if the call failed. */
function portOf(call: (fd: number, a: Uint8Array, l: Uint32Array) => number, fd: number): number {
  length[0] = address.byteLength;
  return call(fd, address, length) === 0 ? view.getUint16(2, false) : -1;
}

/** Where `fdOf` looks: tests hold far fewer fds than this. */
const MAX_FD = 4096;

/**
 * The fd of a connected TCP conn, found by its two ports among this process's fds (probed by
 * number, so no read permission on /proc is needed). Tests only: on loopback the port pair is
 * unique among this process's sockets.
 */
export function fdOf(conn: Deno.TcpConn): number {
  const symbols = libc();
  for (let fd = 0; fd < MAX_FD; fd++) {
    if (portOf(symbols.getsockname, fd) !== conn.localAddr.port) continue;
    if (portOf(symbols.getpeername, fd) === conn.remoteAddr.port) return fd;
  }
  throw new Error(`Cannot find the fd of the test conn on port ${conn.localAddr.port}`);
}

const UNSPEC = new Uint8Array(16);

/**
 * Resets `conn`'s connection now (an RST, as a peer that crashed with unread data or closed with
 * SO_LINGER 0 sends), then closes it. `connect(AF_UNSPEC)` rather than SO_LINGER: Deno's close
 * shuts the sending side down first, and that FIN would precede the reset.
 */
export function resetAndClose(conn: Deno.TcpConn): void {
  const fd = fdOf(conn);
  if (libc().connect(fd, UNSPEC, UNSPEC.byteLength) !== 0) {
    throw new Error("Cannot reset the test conn: connect(AF_UNSPEC) failed");
  }
  conn.close();
}

/** Whether `fd`'s peer is gone (getpeername fails): a reset from the other end has arrived. */
export function peerGone(fd: number): boolean {
  return portOf(libc().getpeername, fd) === -1;
}

const AF_INET = 2;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;

function loopback(port: number): Uint8Array {
  const sockaddr = new Uint8Array(16);
  const v = new DataView(sockaddr.buffer);
  v.setUint16(0, AF_INET, true);
  v.setUint16(2, port, false);
  sockaddr.set([127, 0, 0, 1], 4);
  return sockaddr;
}

/**
 * A raw fd: `socket()` + blocking `connect()` to 127.0.0.1:`port`, for the relay's raw-fd
 * endpoints. The kernel completes a loopback connect to a listening socket at once. The caller
 * owns the fd.
 */
export function connectRawFd(port: number): number {
  const symbols = libc();
  const fd = symbols.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert.ok(fd >= 0, "socket()");
  const to = loopback(port);
  if (symbols.connect(fd, to, to.byteLength) !== 0) {
    symbols.close(fd);
    throw new Error("connect() failed");
  }
  return fd;
}

/**
 * Connects to 127.0.0.1:`port` and resets the connection, synchronously: the handshake completes
 * in the kernel, so the connection sits in the listener's queue already reset when its owner
 * gets to accept it (this thread gives its event loop no turn in between).
 */
export function connectAndReset(port: number): void {
  const symbols = libc();
  const fd = symbols.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new Error("Cannot create the test socket");
  try {
    const to = loopback(port);
    if (symbols.connect(fd, to, to.byteLength) !== 0) throw new Error("Cannot connect");
    if (symbols.connect(fd, UNSPEC, UNSPEC.byteLength) !== 0) throw new Error("Cannot reset");
  } finally {
    symbols.close(fd);
  }
}

/**
 * A backend that never answers a connect: a listener with an accept queue of one, filled by a
 * connection of its own, so that the kernel drops every further SYN (a blackholed host, on
 * loopback). Close it with `close()`.
 */
export function blackhole(): { port: number; close(): void } {
  const symbols = libc();
  const listener = symbols.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const any = loopback(0);
  if (listener < 0 || symbols.bind(listener, any, any.byteLength) !== 0) {
    throw new Error("Cannot bind the blackhole");
  }
  if (symbols.listen(listener, 0) !== 0) throw new Error("Cannot listen on the blackhole");
  const port = portOf(symbols.getsockname, listener);
  // A backlog of 0 still queues one connection; two fill it whatever the kernel rounds to.
  const fillers: number[] = [];
  for (let i = 0; i < 2; i++) {
    const fd = symbols.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const to = loopback(port);
    symbols.connect(fd, to, to.byteLength); // EINPROGRESS: the handshake completes or hangs
    fillers.push(fd);
  }
  return {
    port,
    close(): void {
      for (const fd of [...fillers, listener]) symbols.close(fd);
    },
  };
}
