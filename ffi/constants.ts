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

/** `fcntl` command: read file status flags. */
export const F_GETFL = 3;
/** `fcntl` command: set file status flags. */
export const F_SETFL = 4;
/** `fcntl` command: resize a pipe (Linux 2.6.35+). */
export const F_SETPIPE_SZ = 1031;
/** `fcntl` command: read a pipe's capacity. */
export const F_GETPIPE_SZ = 1032;
/** A new pipe's capacity: 16 pages of 4 KiB (`PIPE_DEF_BUFFERS`). */
export const PIPE_DEFAULT_CAPACITY = 65_536;

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
/** `shutdown` how: stop receiving; on a listening socket, stop listening (new SYNs are refused). */
export const SHUT_RD = 0;

/** `getsockopt` level and options. */
export const SOL_SOCKET = 1;
/** `getsockopt`: the socket type (`SOCK_STREAM`, ...). */
export const SO_TYPE = 3;
/** `getsockopt`: 1 for a listening socket. */
export const SO_ACCEPTCONN = 30;
/** `getsockopt`: the pending socket error, cleared by reading it. */
export const SO_ERROR = 4;
/** A byte-stream socket. */
export const SOCK_STREAM = 1;
/** `socket` / `accept4` flag: the new fd is non-blocking (same value as `O_NONBLOCK`). */
export const SOCK_NONBLOCK = O_NONBLOCK;
/** `socket` / `accept4` flag: the new fd is close-on-exec (same value as `O_CLOEXEC`). */
export const SOCK_CLOEXEC = O_CLOEXEC;
/** `setsockopt`: rebind a port whose old connections linger in TIME_WAIT. */
export const SO_REUSEADDR = 2;
/** `setsockopt`: several sockets share one port; the kernel spreads connections over them. */
export const SO_REUSEPORT = 15;
/** `setsockopt` level of TCP's options. */
export const IPPROTO_TCP = 6;
/** `setsockopt` level of IPv6's options. */
export const IPPROTO_IPV6 = 41;
/** TCP option: send small segments at once (no Nagle delay). */
export const TCP_NODELAY = 1;
/** TCP option: `struct tcp_info`; for a listening socket it holds the accept queue's length. */
export const TCP_INFO = 11;
/** IPv6 option: an IPv6 socket takes IPv6 only (not IPv4-mapped), as Deno's listeners do. */
export const IPV6_V6ONLY = 26;

/** Address families in `struct sockaddr`. */
export const AF_UNSPEC = 0;
/** Unix domain sockets. */
export const AF_UNIX = 1;
/** IPv4. */
export const AF_INET = 2;
/** IPv6. */
export const AF_INET6 = 10;

/** `epoll_create1` / `eventfd` flag: close-on-exec. */
export const EPOLL_CLOEXEC = O_CLOEXEC;
/** `eventfd` flag: non-blocking reads and writes. */
export const EFD_NONBLOCK = O_NONBLOCK;
/** `eventfd` flag: close-on-exec. */
export const EFD_CLOEXEC = O_CLOEXEC;
/** `epoll_ctl` operations: add an fd to the interest list. */
export const EPOLL_CTL_ADD = 1;
/** Remove an fd from the interest list. */
export const EPOLL_CTL_DEL = 2;
/** Readable (or end of input, or error). */
export const EPOLLIN = 0x001;
/** Writable. */
export const EPOLLOUT = 0x004;
/** Error pending on the socket; always reported. */
export const EPOLLERR = 0x008;
/** Both directions hung up; always reported. */
export const EPOLLHUP = 0x010;
/** The peer shut down its sending side. */
export const EPOLLRDHUP = 0x2000;
/** Edge-triggered: one report per change, so an fd is drained until EAGAIN. */
export const EPOLLET = 1 << 31;
/** Wake one of the epoll instances waiting on this fd, not all (Linux 4.5+). */
export const EPOLLEXCLUSIVE = 1 << 28;

/**
 * `struct epoll_event` layout: `{ uint32_t events; epoll_data_t data; }`. x86_64 declares it
 * packed (12 bytes, data at offset 4); aarch64 uses natural alignment (16 bytes, data at 8).
 */
export const EPOLL_EVENT_SIZE = Deno.build.arch === "x86_64" ? 12 : 16;
/** Offset of `data` inside `struct epoll_event`. */
export const EPOLL_DATA_OFFSET = Deno.build.arch === "x86_64" ? 4 : 8;

/** `ioctl` request: bytes in a socket's send queue not yet acknowledged by the peer. */
export const SIOCOUTQ = 0x5411n;

/** `getrlimit` resource: the number of fds (the highest fd number plus one). */
export const RLIMIT_NOFILE = 7;

/** recv(2): return queued bytes without taking them from the socket. */
export const MSG_PEEK = 0x2;

/** sendmsg(2): no SIGPIPE when the peer is gone (EPIPE is returned instead). */
export const MSG_NOSIGNAL = 0x4000;
/** recvmsg(2): the control data was cut short (more fds were sent than room was made for). */
export const MSG_CTRUNC = 0x8;
/** recvmsg(2): fds received with SCM_RIGHTS are close-on-exec from the start. */
export const MSG_CMSG_CLOEXEC = 0x40000000;
/** The control message type that carries fds. */
export const SCM_RIGHTS = 1;
/** getsockopt(2): the pid, uid and gid of a Unix socket's peer (`struct ucred`). */
export const SO_PEERCRED = 17;
