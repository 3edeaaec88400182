/**
 * Zero-copy primitives: a pair of kernel pipes ({@linkcode SplicePipe}) and the two halves of a
 * socket-to-socket move through it ({@linkcode spliceIn}: socket to pipe, {@linkcode spliceOut}:
 * pipe to socket).
 *
 * @module
 */

import { PIPE_DEFAULT_CAPACITY, SPLICE_FLAGS } from "./ffi/constants.ts";
import { EAGAIN, EINTR } from "./ffi/errno.ts";
import { errno, ffiAvailable, libc } from "./ffi/libc.ts";
import { closeFd, openPipe, resizePipe } from "./ffi/pipe.ts";
import { socketFd, type SocketLike } from "./ffi/socket_fd.ts";

export type { SocketLike } from "./ffi/socket_fd.ts";

/**
 * The capacity requested for each pipe when nothing else is configured: 64 KiB, the Linux
 * default for a pipe on 4 KiB pages, and so a resize that costs no extra memory.
 *
 * @example
 * ```ts
 * import { DEFAULT_SPLICE_PIPE_CAPACITY } from "@zerocopy/splice";
 *
 * console.log(DEFAULT_SPLICE_PIPE_CAPACITY); // 65536
 * ```
 */
export const DEFAULT_SPLICE_PIPE_CAPACITY: number = PIPE_DEFAULT_CAPACITY;

/**
 * The largest capacity {@linkcode setPipeCapacity} accepts: 1 GiB. The kernel refuses anything
 * above 2 GiB outright, and an unprivileged process anything above `/proc/sys/fs/pipe-max-size`
 * (1 MiB by default); this bound only rejects values that are certainly a mistake.
 *
 * @example
 * ```ts
 * import { MAX_SPLICE_PIPE_CAPACITY } from "@zerocopy/splice";
 *
 * console.log(MAX_SPLICE_PIPE_CAPACITY); // 1073741824
 * ```
 */
export const MAX_SPLICE_PIPE_CAPACITY = 2 ** 30;

let capacityOverride: number | null = null;

/**
 * Sets the capacity requested for every pipe created from now on, process-wide. The first
 * call with a non-zero value wins; later calls are ignored and return `false`, because pipes
 * already in use keep their size and a capacity that changes under a running proxy would make
 * its memory use unpredictable. `0` means "keep the default" and does not lock the value.
 *
 * The kernel may still adjust the size: it rounds up to a power-of-two number of pages, and
 * refuses sizes above `/proc/sys/fs/pipe-max-size` to processes without `CAP_SYS_RESOURCE`
 * (then each pipe keeps the kernel's size and one warning is logged).
 * {@linkcode SplicePipe.capacity} tells what was granted.
 *
 * @param bytes the capacity in bytes, from 0 to {@linkcode MAX_SPLICE_PIPE_CAPACITY}
 * @returns whether this call set the capacity
 * @throws {RangeError} when `bytes` is negative, fractional, not finite or above the maximum
 *
 * @example Raise the capacity to 1 MiB once at start-up
 * ```ts
 * import { setPipeCapacity } from "@zerocopy/splice";
 *
 * setPipeCapacity(1 << 20); // true: took effect
 * setPipeCapacity(1 << 16); // false: the first call won
 * ```
 */
export function setPipeCapacity(bytes: number): boolean {
  validateCapacity(bytes, "bytes");
  if (bytes === 0 || capacityOverride !== null) return false;
  capacityOverride = bytes;
  return true;
}

/**
 * The capacity requested for new pipes: the one set by {@linkcode setPipeCapacity}, else
 * {@linkcode DEFAULT_SPLICE_PIPE_CAPACITY}.
 *
 * @example
 * ```ts
 * import { requestedPipeCapacity } from "@zerocopy/splice";
 *
 * console.log(requestedPipeCapacity()); // 65536 unless setPipeCapacity() ran
 * ```
 */
export function requestedPipeCapacity(): number {
  return capacityOverride ?? DEFAULT_SPLICE_PIPE_CAPACITY;
}

/** The capacity set by {@linkcode setPipeCapacity}, or `null` while none was set. */
export function pipeCapacityOverride(): number | null {
  return capacityOverride;
}

/** Throws a `RangeError` naming `value` unless it is a valid pipe capacity. */
export function validateCapacity(value: number, name: string): void {
  if (
    typeof value !== "number" || !Number.isInteger(value) || value < 0 ||
    value > MAX_SPLICE_PIPE_CAPACITY
  ) {
    throw new RangeError(
      `Cannot use ${String(value)} as a pipe capacity ("${name}"): expected a whole number of ` +
        `bytes from 0 to ${MAX_SPLICE_PIPE_CAPACITY}`,
    );
  }
}

/**
 * Options for {@linkcode SplicePipe.create}.
 *
 * @example
 * ```ts
 * import { SplicePipe, type SplicePipeOptions } from "@zerocopy/splice";
 *
 * const options: SplicePipeOptions = { capacity: 256 * 1024 };
 * using pipe = SplicePipe.create(options);
 * console.log(pipe?.capacity); // 262144 if granted; undefined where splice is unavailable
 * ```
 */
export interface SplicePipeOptions {
  /**
   * Capacity to request for these two pipes, overriding {@linkcode setPipeCapacity}; `0` or
   * absent uses the process-wide value.
   */
  capacity?: number;
}

/**
 * Two kernel pipes that carry bytes between a frontend and a backend socket without copying
 * them through user space. `inPipe` carries frontend -> backend, `outPipe` backend -> frontend;
 * each is `[readEnd, writeEnd]`, both ends non-blocking and close-on-exec.
 *
 * Ownership: the instance owns its four fds and closes them in {@linkcode SplicePipe.close}
 * (idempotent; `using` calls it). It never owns the sockets. A pipe closed with bytes still in
 * it discards them: keep the destination open until the matching `*Pending` count is 0.
 *
 * `inPipePending` and `outPipePending` are the caller's ledger of bytes spliced in and not yet
 * spliced out: add what {@linkcode spliceIn} moved, subtract what {@linkcode spliceOut} moved.
 * They may exceed `capacity`: on loopback the kernel moves whole GRO segments by reference, so
 * a pipe can hold more than its nominal size.
 *
 * @example Echo bytes back to their sender without copying them
 * ```ts
 * import { SplicePipe, spliceIn, spliceOut } from "@zerocopy/splice";
 *
 * // A loopback connection: what `client` writes arrives on `conn`.
 * using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * using conn = await listener.accept();
 * await client.write(new TextEncoder().encode("ping"));
 *
 * using pipe = SplicePipe.create();
 * if (pipe) {
 *   // socket -> pipe ("would-block" instead if the bytes have not arrived yet)
 *   const [moved, status] = spliceIn(conn, pipe.inPipe[1], pipe.capacity - pipe.inPipePending);
 *   if (status === "moved") pipe.inPipePending += moved;
 *   // pipe -> socket
 *   const [sent] = spliceOut(pipe.inPipe[0], conn, pipe.inPipePending);
 *   pipe.inPipePending -= sent;
 *   console.log(moved, sent, pipe.inPipePending); // 4 4 0
 * }
 * ```
 */
export class SplicePipe {
  /**
   * Frontend -> backend pipe: `[readEnd, writeEnd]`.
   *
   * @example
   * ```ts
   * import { SplicePipe } from "@zerocopy/splice";
   *
   * using pipe = SplicePipe.create();
   * if (pipe) {
   *   // spliceIn(frontend, writeEnd, ...), then spliceOut(readEnd, backend, ...)
   *   const [readEnd, writeEnd] = pipe.inPipe;
   *   console.log(readEnd, writeEnd); // two fd numbers
   * }
   * ```
   */
  readonly inPipe: readonly [readEnd: number, writeEnd: number];
  /**
   * Backend -> frontend pipe: `[readEnd, writeEnd]`.
   *
   * @example
   * ```ts
   * import { SplicePipe } from "@zerocopy/splice";
   *
   * using pipe = SplicePipe.create();
   * if (pipe) {
   *   // spliceIn(backend, writeEnd, ...), then spliceOut(readEnd, frontend, ...)
   *   const [readEnd, writeEnd] = pipe.outPipe;
   *   console.log(readEnd, writeEnd); // two fd numbers
   * }
   * ```
   */
  readonly outPipe: readonly [readEnd: number, writeEnd: number];
  /**
   * Bytes spliced into `inPipe` and not yet out of it (kept by the caller).
   *
   * @example The room left for spliceIn
   * ```ts
   * import { SplicePipe } from "@zerocopy/splice";
   *
   * using pipe = SplicePipe.create();
   * if (pipe) {
   *   const room = pipe.capacity - pipe.inPipePending;
   *   console.log(room === pipe.capacity); // true: a new pipe is empty
   * }
   * ```
   */
  inPipePending = 0;
  /**
   * Bytes spliced into `outPipe` and not yet out of it (kept by the caller).
   *
   * @example Close only when nothing would be discarded
   * ```ts
   * import { SplicePipe } from "@zerocopy/splice";
   *
   * const pipe = SplicePipe.create();
   * if (pipe && pipe.inPipePending === 0 && pipe.outPipePending === 0) pipe.close();
   * ```
   */
  outPipePending = 0;
  /**
   * The capacity the kernel granted, the smaller of the two pipes: pass it as `len` to
   * {@linkcode spliceIn}. It can differ from the request (rounded up to a power-of-two number
   * of pages, or the kernel's size kept when a resize was refused).
   *
   * @example
   * ```ts
   * import { SplicePipe } from "@zerocopy/splice";
   *
   * using pipe = SplicePipe.create({ capacity: 100_000 });
   * // 131072 on 4 KiB pages: 25 pages rounded up to a power of two (undefined without splice)
   * console.log(pipe?.capacity);
   * ```
   */
  readonly capacity: number;
  #closed = false;

  private constructor(
    inPipe: readonly [number, number],
    outPipe: readonly [number, number],
    capacity: number,
  ) {
    this.inPipe = inPipe;
    this.outPipe = outPipe;
    this.capacity = capacity;
  }

  /**
   * Allocates two `pipe2(O_NONBLOCK | O_CLOEXEC)` pairs and applies the requested capacity to
   * both with `F_SETPIPE_SZ`.
   *
   * @returns the pipes, or `null` when they cannot be had: splice is unavailable (not Linux,
   * no `--allow-ffi`) or the kernel refused a pipe (`EMFILE`, `ENFILE`, `ENOMEM`). Nothing is
   * leaked then; the caller falls back to copying.
   * @throws {RangeError} when `options.capacity` is invalid
   *
   * @example
   * ```ts
   * import { SplicePipe } from "@zerocopy/splice";
   *
   * const pipe = SplicePipe.create({ capacity: 1 << 20 });
   * console.log(pipe ? `pipes of ${pipe.capacity} bytes` : "splice unavailable: copy instead");
   * pipe?.close();
   * ```
   */
  static create(options?: SplicePipeOptions): SplicePipe | null {
    const requested = options?.capacity;
    if (requested !== undefined) validateCapacity(requested, "capacity");
    if (!ffiAvailable()) return null;
    const inPipe = openPipe();
    if (typeof inPipe === "number") return null;
    const outPipe = openPipe();
    if (typeof outPipe === "number") {
      closeFd(inPipe[0]);
      closeFd(inPipe[1]);
      return null;
    }
    const bytes = requested || requestedPipeCapacity();
    // Either end resizes the whole pipe; the read ends are used. A failed F_GETPIPE_SZ cannot
    // happen on a pipe we just made, but the default keeps `capacity` sane if it ever does.
    const inSize = resizePipe(inPipe[0], bytes);
    const outSize = resizePipe(outPipe[0], bytes);
    const capacity = Math.min(inSize, outSize);
    return new SplicePipe(inPipe, outPipe, capacity > 0 ? capacity : DEFAULT_SPLICE_PIPE_CAPACITY);
  }

  /**
   * Whether {@linkcode SplicePipe.close} ran.
   *
   * @example
   * ```ts
   * import { SplicePipe } from "@zerocopy/splice";
   *
   * const pipe = SplicePipe.create();
   * pipe?.close();
   * console.log(pipe?.closed); // true (or undefined where splice is unavailable)
   * ```
   */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Closes the four pipe fds; bytes still in the pipes are discarded. Idempotent. The sockets
   * are not touched.
   *
   * @example
   * ```ts
   * import { SplicePipe } from "@zerocopy/splice";
   *
   * const pipe = SplicePipe.create();
   * pipe?.close();
   * pipe?.close(); // no-op
   * ```
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.inPipe[0]);
    closeFd(this.inPipe[1]);
    closeFd(this.outPipe[0]);
    closeFd(this.outPipe[1]);
  }

  /**
   * Calls {@linkcode SplicePipe.close}, for `using`.
   *
   * @example
   * ```ts
   * import { SplicePipe } from "@zerocopy/splice";
   *
   * let kept: SplicePipe | null;
   * {
   *   using pipe = SplicePipe.create();
   *   kept = pipe;
   * } // pipe[Symbol.dispose]() runs here
   * console.log(kept?.closed); // true (undefined where splice is unavailable)
   * ```
   */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * What a splice call did:
 * - `"moved"`: bytes moved (possibly 0 when `len` was 0);
 * - `"would-block"`: nothing to move now; for {@linkcode spliceIn} either the socket has no
 *   data or the pipe is full, for {@linkcode spliceOut} the socket's send buffer is full or the
 *   pipe is empty. A pipe is full when its slots (16 by default, one per segment) are used up,
 *   whatever its byte count, so small segments fill it long before `capacity` bytes: only an
 *   empty pipe (pending 0) makes a would-block from {@linkcode spliceIn} mean "no data";
 * - `"end"`: end of input: the peer shut down its sending side ({@linkcode spliceIn}), or the
 *   pipe is empty and its write end closed ({@linkcode spliceOut});
 * - `"error"`: the call failed; the result's third element holds the errno.
 *
 * @example
 * ```ts
 * import type { SpliceStatus } from "@zerocopy/splice";
 *
 * const done: SpliceStatus[] = ["end", "error"];
 * console.log(done.includes("moved")); // false
 * ```
 */
export type SpliceStatus = "moved" | "would-block" | "end" | "error";

/**
 * The result of {@linkcode spliceIn} and {@linkcode spliceOut}: `[bytesMoved, status, errno]`.
 * `errno` is 0 unless `status` is `"error"`; a {@linkcode SyscallError} built from it gives its
 * name and description.
 *
 * @example
 * ```ts
 * import { type SpliceResult, SyscallError } from "@zerocopy/splice";
 *
 * function describe([moved, status, errno]: SpliceResult): string {
 *   return status === "error" ? new SyscallError("splice", errno).message : `${status} ${moved}`;
 * }
 * console.log(describe([4, "moved", 0])); // "moved 4"
 * console.log(describe([0, "error", 104]));
 * // "splice failed: ECONNRESET (errno 104): Connection reset by peer"
 * ```
 */
export type SpliceResult = readonly [bytesMoved: number, status: SpliceStatus, errno: number];

const ZERO_MOVED: SpliceResult = Object.freeze([0, "moved", 0] as const);
const WOULD_BLOCK: SpliceResult = Object.freeze([0, "would-block", 0] as const);
const END: SpliceResult = Object.freeze([0, "end", 0] as const);

/**
 * Moves up to `len` bytes from a socket into a pipe's write end, without blocking. Never throws
 * on the data path: failures come back as `"error"` with the errno.
 *
 * Pass {@linkcode SplicePipe.capacity} and add the bytes moved to the pending count. The
 * simplest sound loop reads only into an empty pipe (as Go and tokio-splice do); see
 * {@linkcode SpliceStatus} for why. A `len` of 0 or less moves nothing; a fractional one is
 * truncated.
 *
 * @param source the socket to read: a raw fd, or a `Deno.TcpConn`/`Deno.UnixConn` (its fd is
 * found once, then checked against the conn's addresses on each call, so a closed conn gives
 * `EBADF` rather than reaching whoever reused its fd number; nothing else may read it meanwhile;
 * pass the raw fd in hot loops to save that check)
 * @param pipeWriteEnd the write end of a pipe, e.g. `pipe.inPipe[1]`
 * @param len the most bytes to move; a `bigint` saves a conversion on hot loops
 * @returns `[bytesMoved, status, errno]`; `len` 0 returns `[0, "moved", 0]` without a syscall
 * @throws {TypeError} when splice is unavailable, or the fd of a conn cannot be found
 *
 * @example
 * ```ts
 * import { SplicePipe, spliceIn } from "@zerocopy/splice";
 *
 * using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * using conn = await listener.accept();
 * await client.write(new TextEncoder().encode("hello"));
 *
 * using pipe = SplicePipe.create();
 * if (pipe) {
 *   const [moved, status] = spliceIn(conn, pipe.inPipe[1], pipe.capacity - pipe.inPipePending);
 *   if (status === "moved") pipe.inPipePending += moved; // 5
 *   else if (status === "end") console.log("peer finished sending");
 * }
 * ```
 */
export function spliceIn(
  source: SocketLike,
  pipeWriteEnd: number,
  len: number | bigint,
): SpliceResult {
  return splice(socketFdChecked(source), pipeWriteEnd, len);
}

/**
 * Moves up to `len` bytes from a pipe's read end into a socket, without blocking. Never throws
 * on the data path: failures (`EPIPE`, `ECONNRESET`, ...) come back as `"error"` with the errno,
 * and the bytes not moved stay in the pipe.
 *
 * Pass the pending count as `len`, so the call never asks for more than the pipe holds, and
 * subtract the bytes moved from it.
 *
 * @param pipeReadEnd the read end of a pipe, e.g. `pipe.inPipe[0]`
 * @param destination the socket to write: a raw fd or a `Deno.TcpConn`/`Deno.UnixConn` (see
 * {@linkcode spliceIn})
 * @param len the most bytes to move; `0` makes no syscall
 * @returns `[bytesMoved, status, errno]`
 * @throws {TypeError} when splice is unavailable, or the fd of a conn cannot be found
 *
 * @example
 * ```ts
 * import { SplicePipe, spliceIn, spliceOut } from "@zerocopy/splice";
 *
 * using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * using conn = await listener.accept();
 * await client.write(new TextEncoder().encode("hello"));
 *
 * using pipe = SplicePipe.create();
 * if (pipe) {
 *   pipe.inPipePending += spliceIn(conn, pipe.inPipe[1], pipe.capacity)[0];
 *   // Send the bytes back: the client can read "hello" now.
 *   const [sent, status, errno] = spliceOut(pipe.inPipe[0], conn, pipe.inPipePending);
 *   pipe.inPipePending -= sent;
 *   if (status === "error") console.error(`write failed, errno ${errno}`);
 * }
 * ```
 */
export function spliceOut(
  pipeReadEnd: number,
  destination: SocketLike,
  len: number | bigint,
): SpliceResult {
  return splice(pipeReadEnd, socketFdChecked(destination), len);
}

function socketFdChecked(socket: SocketLike): number {
  if (!ffiAvailable()) {
    throw new TypeError(
      "Cannot splice without FFI: it needs Linux and --allow-ffi (use the copy loop instead)",
    );
  }
  return socketFd(socket);
}

function splice(from: number, to: number, len: number | bigint): SpliceResult {
  // Zero (or a negative room, when a pipe holds more than its nominal capacity) moves nothing;
  // a zero-length splice would return 0, which reads as end of input, so no syscall is made.
  let size: bigint;
  if (typeof len === "bigint") {
    if (len <= 0n) return ZERO_MOVED;
    size = len;
  } else {
    if (!(len >= 1)) return ZERO_MOVED;
    size = BigInt(Math.floor(len));
  }
  const symbols = libc();
  for (;;) {
    const moved = symbols.splice(from, null, to, null, size, SPLICE_FLAGS);
    if (moved > 0n) return [Number(moved), "moved", 0];
    if (moved === 0n) return END;
    const code = errno();
    if (code === EAGAIN) return WOULD_BLOCK;
    if (code !== EINTR) return [0, "error", code];
  }
}

/**
 * Whether splice can be used in this process: Linux, `--allow-ffi` granted up front, and libc
 * loaded. One cheap probe that never prompts and never throws; the answer is remembered, so a
 * permission granted later is not noticed.
 *
 * @returns `true` when {@linkcode SplicePipe.create} can succeed
 *
 * @example Choose the path once at start-up
 * ```ts
 * import { spliceAvailable } from "@zerocopy/splice";
 *
 * console.log(spliceAvailable() ? "zero-copy relay" : "copy loop (run with --allow-ffi)");
 * ```
 */
export function spliceAvailable(): boolean {
  return ffiAvailable();
}
