/**
 * Unix stream sockets in the abstract namespace, and fds passed over them with `SCM_RIGHTS`:
 * what a takeover (proxy/takeover.ts) hands its listening sockets over with. Everything here
 * runs once per takeover, never per connection.
 *
 * Abstract names (a `sun_path` starting with a NUL byte) leave nothing in the file system to
 * clean up and need no write permission; anyone in the network namespace may connect to one,
 * so each side checks the credentials of the other ({@linkcode peerCredentials}).
 *
 * @module
 */

import {
  AF_UNIX,
  MSG_CMSG_CLOEXEC,
  MSG_CTRUNC,
  MSG_NOSIGNAL,
  SCM_RIGHTS,
  SO_PEERCRED,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
} from "./constants.ts";
import { ERRNO, libc } from "./libc.ts";

/** A step that failed: its errno and the syscall's name. */
export interface UnixFailure {
  errno: number;
  syscall: string;
}

/**
 * `struct msghdr`, `struct iovec` and `struct cmsghdr` on the 64-bit Linux targets Deno ships
 * (x86_64 and aarch64 alike, glibc and musl: musl's `int` + padding pairs read the same as
 * glibc's `size_t` in little-endian). Other targets have no layout here and are refused.
 */
const LAYOUT = {
  msghdr: 56,
  msgName: 0,
  msgNameLength: 8,
  msgIov: 16,
  msgIovLength: 24,
  msgControl: 32,
  msgControlLength: 40,
  msgFlags: 48,
  iovec: 16,
  /** `cmsg_len` (size_t), `cmsg_level`, `cmsg_type`: the data starts 8-byte aligned after. */
  cmsghdr: 16,
} as const;

/** The most fds one message carries (the kernel's SCM_MAX_FD is 253). */
export const MAX_FDS = 253;

/**
 * Connections an abstract listener queues: a stranger who connects first must not be able to
 * fill the queue and keep the expected peer out.
 */
const LISTEN_BACKLOG = 64;

/** `struct sockaddr_un`: `sun_family` then 108 bytes of `sun_path`. */
const SUN_PATH_MAX = 108;

function checkArch(): void {
  if (Deno.build.arch !== "x86_64" && Deno.build.arch !== "aarch64") {
    throw new Error(`Cannot pass fds on ${Deno.build.arch}: no struct msghdr layout for it`);
  }
}

/** The `struct sockaddr_un` of abstract `name` (without the leading NUL), and its length. */
function abstractAddress(name: string): [Uint8Array, number] {
  const path = new TextEncoder().encode(name);
  if (path.length === 0 || path.length > SUN_PATH_MAX - 1) {
    throw new RangeError(`Cannot use "${name}" as a Unix socket name: 1 to 107 bytes`);
  }
  const bytes = new Uint8Array(2 + SUN_PATH_MAX);
  new DataView(bytes.buffer).setUint16(0, AF_UNIX, true);
  bytes.set(path, 3);
  // An abstract name's length is the address length: no terminating NUL counts.
  return [bytes, 3 + path.length];
}

function unixSocket(): number | UnixFailure {
  const fd = libc().socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  return fd < 0 ? { errno: ERRNO.cell[0], syscall: "socket" } : fd;
}

/**
 * A non-blocking, close-on-exec Unix stream socket listening on abstract `name`. `EADDRINUSE`
 * when the name is taken: nobody can slip in under a name once it is bound.
 */
export function listenAbstract(name: string): number | UnixFailure {
  const [address, length] = abstractAddress(name);
  const fd = unixSocket();
  if (typeof fd !== "number") return fd;
  const symbols = libc();
  if (symbols.bind(fd, address, length) !== 0) return failAndClose(fd, "bind", ERRNO.cell[0]);
  if (symbols.listen(fd, LISTEN_BACKLOG) !== 0) return failAndClose(fd, "listen", ERRNO.cell[0]);
  return fd;
}

/**
 * A non-blocking, close-on-exec Unix stream socket connected to abstract `name`. A listener
 * with room in its backlog completes the connect at once; a full one gives `EAGAIN`, which is
 * a failure here (this never waits).
 */
export function connectAbstract(name: string): number | UnixFailure {
  const [address, length] = abstractAddress(name);
  const fd = unixSocket();
  if (typeof fd !== "number") return fd;
  if (libc().connect(fd, address, length) !== 0) return failAndClose(fd, "connect", ERRNO.cell[0]);
  return fd;
}

/**
 * Accepts one connection on Unix listener `fd`: the new fd is non-blocking and close-on-exec.
 * `EAGAIN` when nobody has connected yet.
 */
export function acceptUnix(fd: number): number | UnixFailure {
  const address = new Uint8Array(2 + SUN_PATH_MAX);
  const length = new Uint32Array([address.length]);
  const accepted = libc().accept4(fd, address, length, SOCK_NONBLOCK | SOCK_CLOEXEC);
  return accepted < 0 ? { errno: ERRNO.cell[0], syscall: "accept4" } : accepted;
}

/** Closes `fd` after a failed step; `code` was read at the call site, before this was entered. */
function failAndClose(fd: number, syscall: string, code: number): UnixFailure {
  libc().close(fd);
  return { errno: code, syscall };
}

/** The effective uid of this process. */
export function effectiveUid(): number {
  return libc().geteuid();
}

/**
 * The pid and uid of the process at the other end of Unix socket `fd`, as the kernel recorded
 * them when that end connected or listened (`SO_PEERCRED`): the peer cannot lie about them.
 */
export function peerCredentials(fd: number): { pid: number; uid: number } | UnixFailure {
  // struct ucred { pid_t pid; uid_t uid; gid_t gid; }: three 32-bit fields on every target.
  const credentials = new Uint32Array(3);
  const length = new Uint32Array([12]);
  if (libc().getsockopt(fd, SOL_SOCKET, SO_PEERCRED, credentials, length) !== 0) {
    return { errno: ERRNO.cell[0], syscall: "getsockopt" };
  }
  return { pid: credentials[0], uid: credentials[1] };
}

function pointerValue(buffer: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)));
}

/** Bytes of a control buffer with room for `count` fds (`CMSG_SPACE(count * 4)`). */
function controlSpace(count: number): number {
  return LAYOUT.cmsghdr + Math.ceil((count * 4) / 8) * 8;
}

/**
 * Sends `data` with `fds` attached (`SCM_RIGHTS`) in one `sendmsg`. The receiver gets its own
 * fds for the same open sockets; the sender's stay open and stay the sender's to close. Returns
 * the bytes sent (a short send leaves the rest for the caller), or the failure.
 */
export function sendWithFds(
  fd: number,
  data: Uint8Array,
  fds: readonly number[],
): number | UnixFailure {
  checkArch();
  if (fds.length > MAX_FDS) throw new RangeError(`Cannot send ${fds.length} fds at once`);
  const iov = new Uint8Array(LAYOUT.iovec);
  const iovView = new DataView(iov.buffer);
  iovView.setBigUint64(0, pointerValue(data), true);
  iovView.setBigUint64(8, BigInt(data.length), true);
  const control = new Uint8Array(fds.length > 0 ? controlSpace(fds.length) : 8);
  if (fds.length > 0) {
    const view = new DataView(control.buffer);
    view.setBigUint64(0, BigInt(LAYOUT.cmsghdr + fds.length * 4), true); // CMSG_LEN
    view.setInt32(8, SOL_SOCKET, true);
    view.setInt32(12, SCM_RIGHTS, true);
    fds.forEach((passed, i) => view.setInt32(LAYOUT.cmsghdr + i * 4, passed, true));
  }
  const header = new Uint8Array(LAYOUT.msghdr);
  const view = new DataView(header.buffer);
  view.setBigUint64(LAYOUT.msgIov, pointerValue(iov), true);
  view.setBigUint64(LAYOUT.msgIovLength, 1n, true);
  if (fds.length > 0) {
    view.setBigUint64(LAYOUT.msgControl, pointerValue(control), true);
    view.setBigUint64(LAYOUT.msgControlLength, BigInt(control.length), true);
  }
  const sent = libc().sendmsg(fd, header, MSG_NOSIGNAL);
  if (sent < 0n) return { errno: ERRNO.cell[0], syscall: "sendmsg" };
  return Number(sent);
}

/** What one {@linkcode receiveWithFds} got. */
export interface Received {
  /** Bytes read into the buffer; 0 at the end of the stream. */
  bytes: number;
  /** The fds that came with them, close-on-exec, now the caller's to close. */
  fds: number[];
  /** More fds were sent than `maxFds`: the kernel closed the rest. */
  truncated: boolean;
}

/**
 * Reads into `buffer` with `recvmsg`, taking up to `maxFds` fds sent with the bytes. Fds always
 * arrive with the first byte of the `sendmsg` that carried them, and a read never spans two
 * messages' fds, so a reader that calls this until its message is whole gets each fd once.
 */
export function receiveWithFds(
  fd: number,
  buffer: Uint8Array,
  maxFds: number,
): Received | UnixFailure {
  checkArch();
  const iov = new Uint8Array(LAYOUT.iovec);
  const iovView = new DataView(iov.buffer);
  iovView.setBigUint64(0, pointerValue(buffer), true);
  iovView.setBigUint64(8, BigInt(buffer.length), true);
  const control = new Uint8Array(controlSpace(Math.max(1, Math.min(maxFds, MAX_FDS))));
  const header = new Uint8Array(LAYOUT.msghdr);
  const view = new DataView(header.buffer);
  view.setBigUint64(LAYOUT.msgIov, pointerValue(iov), true);
  view.setBigUint64(LAYOUT.msgIovLength, 1n, true);
  view.setBigUint64(LAYOUT.msgControl, pointerValue(control), true);
  view.setBigUint64(LAYOUT.msgControlLength, BigInt(control.length), true);
  const got = libc().recvmsg(fd, header, MSG_CMSG_CLOEXEC);
  if (got < 0n) return { errno: ERRNO.cell[0], syscall: "recvmsg" };
  const fds: number[] = [];
  const controlLength = Number(view.getBigUint64(LAYOUT.msgControlLength, true));
  const controlView = new DataView(control.buffer);
  // Walk every control message: each is padded to 8 bytes (CMSG_NXTHDR).
  for (let at = 0; at + LAYOUT.cmsghdr <= controlLength;) {
    const length = Number(controlView.getBigUint64(at, true));
    if (length < LAYOUT.cmsghdr || at + length > controlLength) break;
    const level = controlView.getInt32(at + 8, true);
    const type = controlView.getInt32(at + 12, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let i = at + LAYOUT.cmsghdr; i + 4 <= at + length; i += 4) {
        fds.push(controlView.getInt32(i, true));
      }
    }
    at += Math.ceil(length / 8) * 8;
  }
  const flags = view.getInt32(LAYOUT.msgFlags, true);
  return { bytes: Number(got), fds, truncated: (flags & MSG_CTRUNC) !== 0 };
}
