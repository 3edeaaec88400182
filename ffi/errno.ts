/**
 * Linux errno numbers (x86_64 and aarch64 share the generic table) and their names.
 *
 * @module
 */

/** errno values the module branches on. */
export const EPERM = 1;
/** Interrupted system call. */
export const EINTR = 4;
/** Bad file descriptor. */
export const EBADF = 9;
/** Resource temporarily unavailable (also EWOULDBLOCK). */
export const EAGAIN = 11;
/** Too many open files in the system. */
export const ENFILE = 23;
/** Too many open files in this process. */
export const EMFILE = 24;
/** Broken pipe: the peer will not read any more. */
export const EPIPE = 32;
/** The socket is not connected (its peer is gone). */
export const ENOTCONN = 107;
/** Connection reset by peer. */
export const ECONNRESET = 104;
/** A non-blocking connect has started; writability says when it ends. */
export const EINPROGRESS = 115;

const NAMES: Readonly<Record<number, readonly [name: string, description: string]>> = {
  1: ["EPERM", "Operation not permitted"],
  2: ["ENOENT", "No such file or directory"],
  4: ["EINTR", "Interrupted system call"],
  5: ["EIO", "Input/output error"],
  9: ["EBADF", "Bad file descriptor"],
  11: ["EAGAIN", "Resource temporarily unavailable"],
  12: ["ENOMEM", "Cannot allocate memory"],
  13: ["EACCES", "Permission denied"],
  14: ["EFAULT", "Bad address"],
  16: ["EBUSY", "Device or resource busy"],
  22: ["EINVAL", "Invalid argument"],
  23: ["ENFILE", "Too many open files in system"],
  24: ["EMFILE", "Too many open files"],
  28: ["ENOSPC", "No space left on device"],
  29: ["ESPIPE", "Illegal seek"],
  32: ["EPIPE", "Broken pipe"],
  38: ["ENOSYS", "Function not implemented"],
  88: ["ENOTSOCK", "Socket operation on non-socket"],
  95: ["EOPNOTSUPP", "Operation not supported"],
  97: ["EAFNOSUPPORT", "Address family not supported by protocol"],
  98: ["EADDRINUSE", "Address already in use"],
  99: ["EADDRNOTAVAIL", "Cannot assign requested address"],
  100: ["ENETDOWN", "Network is down"],
  101: ["ENETUNREACH", "Network is unreachable"],
  103: ["ECONNABORTED", "Software caused connection abort"],
  104: ["ECONNRESET", "Connection reset by peer"],
  105: ["ENOBUFS", "No buffer space available"],
  107: ["ENOTCONN", "Transport endpoint is not connected"],
  110: ["ETIMEDOUT", "Connection timed out"],
  111: ["ECONNREFUSED", "Connection refused"],
  113: ["EHOSTUNREACH", "No route to host"],
  115: ["EINPROGRESS", "Operation now in progress"],
};

/** The symbolic name of an errno value, e.g. `EBADF`; `E<number>` when unknown. */
export function errnoName(errno: number): string {
  return NAMES[errno]?.[0] ?? `E${errno}`;
}

/** The C library's description of an errno value, e.g. "Bad file descriptor". */
export function errnoDescription(errno: number): string {
  return NAMES[errno]?.[1] ?? `Unknown error ${errno}`;
}
