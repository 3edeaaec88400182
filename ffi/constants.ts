/**
 * Linux constants used with the libc binding. The values below are the same on x86_64 and
 * aarch64 (both use the generic ABI for these); other architectures are not supported.
 *
 * @module
 */

/** `O_NONBLOCK` for `pipe2`: splice on a pipe end must never block the event loop. */
export const O_NONBLOCK = 0o4000;
/** `O_CLOEXEC` for `pipe2`: pipes must not leak into child processes. */
export const O_CLOEXEC = 0o2000000;

/** `fcntl` command: duplicate an fd with close-on-exec set. */
export const F_DUPFD_CLOEXEC = 1030;
/** `fcntl` command: read file status flags. */
export const F_GETFL = 3;
/** `fcntl` command: set file status flags. */
export const F_SETFL = 4;
/** `fcntl` command: resize a pipe (Linux 2.6.35+). */
export const F_SETPIPE_SZ = 1031;
/** `fcntl` command: read a pipe's capacity. */
export const F_GETPIPE_SZ = 1032;

/** `splice` flag: do not block on the pipe side. */
export const SPLICE_F_NONBLOCK = 2;
/**
 * `splice` flag: a hint the kernel has ignored since Linux 2.6.21; kept because it is harmless
 * and documents intent. `SPLICE_F_MORE` is deliberately never used: it corks the socket.
 */
export const SPLICE_F_MOVE = 1;
/** The flags every splice call of the module uses. */
export const SPLICE_FLAGS = SPLICE_F_NONBLOCK | SPLICE_F_MOVE;

/** `shutdown` how: stop sending, send FIN. */
export const SHUT_WR = 1;

/** `getsockopt` level and options. */
export const SOL_SOCKET = 1;
/** `getsockopt`: the socket type (`SOCK_STREAM`, ...). */
export const SO_TYPE = 3;
/** `getsockopt`: the pending socket error, cleared by reading it. */
export const SO_ERROR = 4;
/** A byte-stream socket. */
export const SOCK_STREAM = 1;

/** Address families in `struct sockaddr`. */
export const AF_UNIX = 1;
/** IPv4. */
export const AF_INET = 2;
/** IPv6. */
export const AF_INET6 = 10;
