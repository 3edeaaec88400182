/**
 * The libc binding: one typed symbol table, opened lazily on first use.
 *
 * Nothing here runs at import time: importing this file needs no permission. The table is opened
 * only by {@linkcode libc}, which callers reach after {@linkcode ffiAvailable} said yes.
 *
 * @module
 */

/**
 * Every libc symbol the module calls. 64-bit integers (`size_t`, `ssize_t`) are `usize`/`isize`
 * and therefore `bigint` in JS: passing a `number` there would drop the call off V8's fast path.
 */
const SYMBOLS = {
  splice: {
    parameters: [
      "i32", // int fd_in
      "pointer", // loff_t *off_in (always NULL: sockets and pipes have no offset)
      "i32", // int fd_out
      "pointer", // loff_t *off_out (always NULL)
      "usize", // size_t len
      "u32", // unsigned int flags
    ],
    result: "isize", // ssize_t
  },
  pipe2: {
    parameters: [
      "buffer", // int pipefd[2]
      "i32", // int flags
    ],
    result: "i32", // int
  },
  fcntl: {
    // fcntl is variadic; every command used here takes one int, which the Linux x86_64 and
    // aarch64 calling conventions pass exactly like a fixed int parameter.
    parameters: [
      "i32", // int fd
      "i32", // int cmd
      "i32", // int arg
    ],
    result: "i32", // int
  },
  close: {
    parameters: [
      "i32", // int fd
    ],
    result: "i32", // int
  },
  read: {
    parameters: [
      "i32", // int fd
      "buffer", // void *buf
      "usize", // size_t count
    ],
    result: "isize", // ssize_t
  },
  recv: {
    parameters: [
      "i32", // int sockfd
      "buffer", // void *buf
      "usize", // size_t len
      "i32", // int flags
    ],
    result: "isize", // ssize_t
  },
  write: {
    parameters: [
      "i32", // int fd
      "buffer", // const void *buf
      "usize", // size_t count
    ],
    result: "isize", // ssize_t
  },
  shutdown: {
    parameters: [
      "i32", // int sockfd
      "i32", // int how
    ],
    result: "i32", // int
  },
  getsockname: {
    parameters: [
      "i32", // int sockfd
      "buffer", // struct sockaddr *addr
      "buffer", // socklen_t *addrlen
    ],
    result: "i32", // int
  },
  getpeername: {
    parameters: [
      "i32", // int sockfd
      "buffer", // struct sockaddr *addr
      "buffer", // socklen_t *addrlen
    ],
    result: "i32", // int
  },
  connect: {
    // Non-blocking connects to backends, and connects with an AF_UNSPEC address, which dissolve
    // a TCP connection: the kernel sends a reset (RST) at once and the fd stays open.
    parameters: [
      "i32", // int sockfd
      "buffer", // const struct sockaddr *addr
      "u32", // socklen_t addrlen
    ],
    result: "i32", // int
  },
  getsockopt: {
    parameters: [
      "i32", // int sockfd
      "i32", // int level
      "i32", // int optname
      "buffer", // void *optval
      "buffer", // socklen_t *optlen
    ],
    result: "i32", // int
  },
  socket: {
    parameters: [
      "i32", // int domain
      "i32", // int type (with SOCK_NONBLOCK | SOCK_CLOEXEC)
      "i32", // int protocol
    ],
    result: "i32", // int
  },
  bind: {
    parameters: [
      "i32", // int sockfd
      "buffer", // const struct sockaddr *addr
      "u32", // socklen_t addrlen
    ],
    result: "i32", // int
  },
  listen: {
    parameters: [
      "i32", // int sockfd
      "i32", // int backlog
    ],
    result: "i32", // int
  },
  accept4: {
    parameters: [
      "i32", // int sockfd
      "buffer", // struct sockaddr *addr
      "buffer", // socklen_t *addrlen
      "i32", // int flags
    ],
    result: "i32", // int
  },
  setsockopt: {
    parameters: [
      "i32", // int sockfd
      "i32", // int level
      "i32", // int optname
      "buffer", // const void *optval
      "u32", // socklen_t optlen
    ],
    result: "i32", // int
  },
  getaddrinfo: {
    // Blocking (it may ask a DNS server): called only when a config is applied, never per
    // connection.
    parameters: [
      "buffer", // const char *node (NUL-terminated)
      "pointer", // const char *service (always NULL)
      "buffer", // const struct addrinfo *hints
      "buffer", // struct addrinfo **res
    ],
    result: "i32", // int (0 or an EAI_* code, not errno)
  },
  getaddrinfoAsync: {
    // The same call on Deno's blocking thread pool, returning a Promise: relay() resolves a
    // target's host name this way, as Deno.connect does, without stalling the event loop.
    name: "getaddrinfo",
    parameters: [
      "buffer", // const char *node (NUL-terminated)
      "pointer", // const char *service (always NULL)
      "buffer", // const struct addrinfo *hints
      "buffer", // struct addrinfo **res
    ],
    result: "i32", // int (0 or an EAI_* code, not errno)
    nonblocking: true,
  },
  freeaddrinfo: {
    parameters: [
      "pointer", // struct addrinfo *res
    ],
    result: "void",
  },
  sched_getaffinity: {
    parameters: [
      "i32", // pid_t pid (0: this thread)
      "usize", // size_t cpusetsize
      "buffer", // cpu_set_t *mask
    ],
    result: "i32", // int
  },
  epoll_create1: {
    parameters: [
      "i32", // int flags
    ],
    result: "i32", // int
  },
  epoll_ctl: {
    parameters: [
      "i32", // int epfd
      "i32", // int op
      "i32", // int fd
      "buffer", // struct epoll_event *event
    ],
    result: "i32", // int
  },
  epoll_wait: {
    // Synchronous on purpose: only the relay engine's Worker calls it, and blocking that thread
    // is the point (no event-loop hop between readiness and the splice).
    parameters: [
      "i32", // int epfd
      "buffer", // struct epoll_event *events
      "i32", // int maxevents
      "i32", // int timeout (ms, -1: forever)
    ],
    result: "i32", // int
  },
  getrlimit: {
    parameters: [
      "i32", // int resource
      "buffer", // struct rlimit *rlim ({ rlim_t rlim_cur, rlim_max }: two u64)
    ],
    result: "i32", // int
  },
  ioctl: {
    // Variadic; the requests used here take an int *, passed like a fixed pointer argument.
    parameters: [
      "i32", // int fd
      "u64", // unsigned long request
      "buffer", // int *argp
    ],
    result: "i32", // int
  },
  readlink: {
    parameters: [
      "buffer", // const char *pathname (NUL-terminated)
      "buffer", // char *buf
      "usize", // size_t bufsiz
    ],
    result: "isize", // ssize_t
  },
  eventfd: {
    parameters: [
      "u32", // unsigned int initval
      "i32", // int flags
    ],
    result: "i32", // int
  },
  sendmsg: {
    // Hands listening sockets to another process (SCM_RIGHTS) in a takeover; never per
    // connection.
    parameters: [
      "i32", // int sockfd
      "buffer", // const struct msghdr *msg
      "i32", // int flags
    ],
    result: "isize", // ssize_t
  },
  recvmsg: {
    parameters: [
      "i32", // int sockfd
      "buffer", // struct msghdr *msg
      "i32", // int flags
    ],
    result: "isize", // ssize_t
  },
  geteuid: {
    parameters: [],
    result: "u32", // uid_t
  },
  __errno_location: {
    parameters: [],
    result: "pointer", // int *
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The callable libc symbols. */
export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** Where glibc and musl keep their C library, most common first. */
const LIBC_NAMES = ["libc.so.6", "libc.musl-x86_64.so.1", "libc.musl-aarch64.so.1", "libc.so"];

let library: Deno.DynamicLibrary<typeof SYMBOLS> | null = null;
let probed: boolean | null = null;

/**
 * This thread's `errno` as a one-element array over glibc's (or musl's) own thread-local
 * variable, set when the library is opened (each Worker opens its own). Reading `cell[0]` is an
 * element load: no function is entered between the failing call and the read, so nothing V8
 * does at a function's entry (installing code compiled in the background, a GC) can run in
 * between and leave its own errno. CI saw a cold main thread read ENOENT for the EPERM that
 * F_SETPIPE_SZ had set, when a function call sat in between. Everything in ffi/ reads the cell
 * so, at the call site; `errno()` reads the same cell after one function entry, for the
 * engines' loops, which are hot (and inlined) by the time anything fails.
 */
export const ERRNO: { cell: Int32Array } = { cell: new Int32Array(1) };

/**
 * Whether the splice fast path can be used in this process: Linux, `--allow-ffi` granted, and
 * libc opened. Never prompts and never throws; the first answer is remembered.
 */
export function ffiAvailable(): boolean {
  if (probed !== null) return probed;
  probed = false;
  if (Deno.build.os !== "linux") return false;
  try {
    // querySync never prompts: "prompt" means not granted up front, which counts as no.
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return false;
    openLibrary();
    probed = true;
  } catch {
    probed = false;
  }
  return probed;
}

function openLibrary(): Deno.DynamicLibrary<typeof SYMBOLS> {
  if (library) return library;
  let lastError: unknown;
  for (const name of LIBC_NAMES) {
    try {
      const opened = Deno.dlopen(name, SYMBOLS);
      // Resolved here, once: looked up lazily at the first failure, the lookup's own FFI call
      // sat between the failing call and the read, and clobbered errno (1 run in 30).
      const pointer = opened.symbols.__errno_location();
      if (pointer !== null) {
        ERRNO.cell = new Int32Array(Deno.UnsafePointerView.getArrayBuffer(pointer, 4));
      }
      library = opened;
      return library;
    } catch (error) {
      lastError = error;
    }
  }
  throw lastError;
}

/**
 * The libc symbols. Opens the library on first call; throws where {@linkcode ffiAvailable}
 * would say no, so call that first.
 */
export function libc(): Libc {
  return (library ?? openLibrary()).symbols;
}

/**
 * The calling thread's `errno`. Read it immediately after the failing synchronous call, before
 * anything else can run a syscall on this thread. The pointer is thread-local; it is cached per
 * module instance, and each Worker has its own instance.
 */
export function errno(): number {
  // Opening the library resolves the location; a failing call implies it was opened.
  return ERRNO.cell[0];
}
