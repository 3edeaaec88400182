/**
 * `relay()`: hand over two connections and the bytes flow both ways inside the kernel until
 * both sides are done, with half-close, backpressure, idle timeout and abort handled.
 *
 * @module
 */

import { F_GETFL, F_SETFL, O_NONBLOCK } from "./ffi/constants.ts";
import { errnoName } from "./ffi/errno.ts";
import { errno, ffiAvailable, libc } from "./ffi/libc.ts";
import { closeFd } from "./ffi/pipe.ts";
import { socketFd } from "./ffi/socket_fd.ts";
import { resetConnection, unackedBytes } from "./ffi/tcp.ts";
import { SyscallError } from "./errors.ts";
import { COPY_LINGER_MS, copyBidirectional, type DuplexConn } from "./copy.ts";
import { pipeCapacityOverride, validateCapacity } from "./splice_pipe.ts";
import { engine, lastFatal, stopEngine } from "./engine/engine.ts";
import { findDenoReactors, returnToDenoReactor } from "./engine/deno_reactor.ts";
import {
  END_ABORTED,
  END_DONE,
  END_IDLE,
  END_NOT_STARTED,
  END_RESET,
  type EngineResult,
  MODE_AUTO,
  MODE_COPY,
  MODE_SPLICE,
  SYSCALLS,
} from "./engine/wire.ts";

/** One end of a relay: a Deno TCP or Unix connection, or a raw connected socket fd. */
export type RelayEndpoint = Deno.TcpConn | Deno.UnixConn | number;

/**
 * How bytes move:
 * - `"auto"` (default): per direction, small messages are copied through a reused buffer and
 *   bulk transfers are spliced, switching as the traffic changes (like HAProxy's splice-auto);
 * - `"splice"`: always splice (copy only when no pipe can be had);
 * - `"copy"`: never splice; bytes are copied by the engine's `read`/`write` loop.
 *
 * @example
 * ```ts
 * import type { RelayMode } from "@zerocopy/splice";
 *
 * const mode: RelayMode = "auto";
 * ```
 */
export type RelayMode = "auto" | "splice" | "copy";

/** Options for {@linkcode relay}. */
export interface RelayOptions {
  /** Ends the relay and closes both ends; the result's `end` is `"aborted"`. */
  signal?: AbortSignal;
  /** Ends the relay after this many ms without a byte moving either way; 0 or absent: never. */
  idleTimeout?: number;
  /** Splice, copy, or choose per direction; default `"auto"`. */
  mode?: RelayMode;
  /**
   * Pipe capacity for this relay; default the process-wide `setPipeCapacity()` value, or
   * {@linkcode RELAY_PIPE_CAPACITY} when none was set. Pipes come from a shared pool and are
   * held only while bytes are in flight.
   */
  pipeCapacity?: number;
  /**
   * Bytes the application already read and that must reach the other side before anything
   * else: `toB` was read from `a` (e.g. a parsed request head), `toA` from `b`.
   */
  initialData?: { toA?: Uint8Array; toB?: Uint8Array };
}

/**
 * How a relay ended:
 * - `"done"`: both sides finished sending and every byte was delivered;
 * - `"reset"`: a peer reset the connection or went away while bytes were owed to it;
 * - `"idle-timeout"`, `"aborted"`: ended on the option of that name;
 * - `"error"`: another failure; `error` says which syscall and errno.
 *
 * @example
 * ```ts
 * import type { RelayEnd } from "@zerocopy/splice";
 *
 * const clean: RelayEnd = "done";
 * ```
 */
export type RelayEnd = "done" | "reset" | "idle-timeout" | "aborted" | "error";

/**
 * The outcome of {@linkcode relay}.
 *
 * @example
 * ```ts ignore
 * const result = await relay(client, backend);
 * console.log(`${result.aToB} up, ${result.bToA} down, ${result.end} via ${result.mode}`);
 * ```
 */
export interface RelayResult {
  /** Bytes delivered from `a` to `b` (not counting `initialData`). */
  aToB: number;
  /** Bytes delivered from `b` to `a`. */
  bToA: number;
  /** Of those, the bytes moved by splice (both directions). */
  splicedBytes: number;
  /**
   * The path used: `"splice"` when any byte was spliced, `"copy"` when the engine copied them
   * all, `"fallback"` for the userspace copy loop used without FFI.
   */
  mode: "splice" | "copy" | "fallback";
  /** How it ended. */
  end: RelayEnd;
  /** Which side failed, for `"reset"` and `"error"`. */
  side?: "a" | "b";
  /** The failure, for `"reset"` and `"error"`: a {@linkcode SyscallError} where one is known. */
  error?: Error;
}

/**
 * The pipe capacity relays use unless told otherwise: 1 MiB, as Go's `io.Copy` does. Measured
 * on loopback (BENCHMARKS.md), 64 KiB pipes cost about 1.8x the CPU per GiB of 1 MiB pipes,
 * because each splice moves at most a pipe's worth. An empty pooled pipe holds no pages; the
 * size counts against `/proc/sys/fs/pipe-user-pages-soft` for unprivileged users, and past it
 * the kernel refuses the resize (one warning, smaller pipes, same bytes).
 *
 * @example
 * ```ts
 * import { RELAY_PIPE_CAPACITY } from "@zerocopy/splice";
 *
 * console.log(RELAY_PIPE_CAPACITY); // 1048576
 * ```
 */
export const RELAY_PIPE_CAPACITY = 1 << 20;

const MODES: Record<RelayMode, number> = {
  auto: MODE_AUTO,
  splice: MODE_SPLICE,
  copy: MODE_COPY,
};
const ENDS: Record<number, RelayEnd> = {
  [END_DONE]: "done",
  [END_RESET]: "reset",
  [END_IDLE]: "idle-timeout",
  [END_ABORTED]: "aborted",
};

/**
 * Relays bytes both ways between `a` and `b` until both have finished, then closes both.
 *
 * With `--allow-ffi` on Linux, a single engine Worker moves the bytes with `splice(2)` (or a
 * libc copy for small messages), so neither the bytes nor the readiness events touch the main
 * thread. End of input on one side is forwarded as a shutdown of the other side's sending half
 * once every byte in flight has been delivered, and the other direction keeps flowing. A
 * slow reader stops the reads on the other side (backpressure, no spinning). Without FFI the
 * userspace copy loop does the same job, more slowly.
 *
 * A side that fails (its peer reset, or another error) is passed on as a reset: what it sent
 * before is delivered, and once the other side's peer has acknowledged it (bounded to 5 s), the
 * other connection is reset too (TCP RST), so a stream cut short never looks complete. Without
 * `--allow-ffi` Deno offers no way to send a reset, and that side is closed normally.
 *
 * Nothing a peer does makes it throw: a peer that is already gone when the relay starts (reset
 * right after connect or accept), or gone before `initialData` is written, ends the relay with
 * `end: "reset"`, both sides closed. A conn whose fd cannot be found is relayed by the
 * userspace loop.
 *
 * Ownership: the relay takes `a` and `b` and closes both when it ends, whatever the end. Do not
 * read, write or close them meanwhile. Deno conns are closed with `close()`, raw fds with
 * `close(2)`.
 *
 * @param a one side, e.g. the accepted client
 * @param b the other, e.g. the backend from `Deno.connect`
 * @param options abort signal, idle timeout, mode, pipe capacity, bytes already read
 * @returns bytes moved each way, the path used and how it ended; it rejects only on misuse
 * @throws {TypeError} on misuse: `a` and `b` the same, a raw fd without FFI, a raw fd that is not
 * open, `initialData` for a raw fd
 * @throws {RangeError} when an option is out of range
 *
 * @example A TCP proxy
 * ```ts ignore
 * import { relay } from "@zerocopy/splice";
 *
 * for await (const client of Deno.listen({ hostname: "127.0.0.1", port: 8080 })) {
 *   Deno.connect({ hostname: "127.0.0.1", port: 9000 })
 *     .then((backend) => relay(client, backend, { idleTimeout: 60_000 }))
 *     .then((r) => console.log(`${r.aToB} up, ${r.bToA} down: ${r.end}`))
 *     .catch(() => client.close());
 * }
 * ```
 */
export async function relay(
  a: RelayEndpoint,
  b: RelayEndpoint,
  options?: RelayOptions,
): Promise<RelayResult> {
  if (a === b) throw new TypeError("Cannot relay a connection to itself");
  const mode = options?.mode ?? "auto";
  if (typeof mode !== "string" || !Object.hasOwn(MODES, mode)) {
    throw new TypeError(`Invalid relay mode "${mode}": expected "auto", "splice" or "copy"`);
  }
  const idleTimeout = options?.idleTimeout ?? 0;
  if (!Number.isInteger(idleTimeout) || idleTimeout < 0 || idleTimeout > 2 ** 31 - 1) {
    throw new RangeError(`Invalid idleTimeout: ${idleTimeout} (expected whole ms >= 0)`);
  }
  const capacity = options?.pipeCapacity ?? 0;
  validateCapacity(capacity, "pipeCapacity");

  const kernel = ffiAvailable();
  const rawFds = typeof a === "number" || typeof b === "number";
  if (rawFds && !kernel) {
    closeEndpoint(a);
    closeEndpoint(b);
    throw new TypeError("Cannot relay raw fds without FFI: run with --allow-ffi on Linux");
  }
  const toA = options?.initialData?.toA;
  const toB = options?.initialData?.toB;
  if (rawFds && (toA?.byteLength || toB?.byteLength)) {
    closeEndpoint(a);
    closeEndpoint(b);
    throw new TypeError("Cannot write initialData to a raw fd: write it yourself first");
  }
  const path = kernel ? "copy" : "fallback";
  // Bytes already read go first; a peer gone by then ends the relay here, as a result.
  const early = await writeInitialData(a, toA, "a", path) ??
    await writeInitialData(b, toB, "b", path);
  if (early !== null) {
    closeEndpoint(a);
    closeEndpoint(b);
    return early;
  }
  if (!kernel) {
    return await fallbackRelay(a as Conn, b as Conn, options?.signal, idleTimeout, false);
  }
  const fdA = typeof a === "number" ? rawFd(a, b) : connFd(a);
  const fdB = typeof b === "number" ? rawFd(b, a) : connFd(b);
  if (fdA === -1 || fdB === -1) {
    // A conn whose fd cannot be found (a Unix conn that cannot be told apart from another, a
    // socket Deno no longer holds) still relays through the userspace loop, which needs no fd;
    // beside a raw fd it cannot, and the relay ends before it starts.
    if (!rawFds) {
      return await fallbackRelay(a as Conn, b as Conn, options?.signal, idleTimeout, true);
    }
    closeEndpoint(a);
    closeEndpoint(b);
    const side = fdA === -1 ? "a" : "b";
    return failedBeforeStart(
      new Error(`Cannot find the file descriptor of side ${side}`),
      side,
      "copy",
    );
  }

  const signal = options?.signal;
  if (signal?.aborted) {
    closeEndpoint(a);
    closeEndpoint(b);
    return { aToB: 0, bToA: 0, splicedBytes: 0, mode: "copy", end: "aborted" };
  }
  findDenoReactors();
  const running = engine();
  // No engine (it could not start: too few fds for a Worker): Deno conns still get the
  // userspace loop, which needs no fd of its own.
  if (running === null) return await withoutEngine(a, b, signal, idleTimeout);
  const denoFds = [a, b].flatMap((end, i) => typeof end === "number" ? [] : [i === 0 ? fdA : fdB]);
  let onAbort: (() => void) | undefined;
  const result = await new Promise<EngineResult>((resolve) => {
    const id = running.add(
      {
        fdA,
        fdB,
        mode: MODES[mode as RelayMode],
        idleMs: idleTimeout,
        capacity: capacity || (pipeCapacityOverride() ?? RELAY_PIPE_CAPACITY),
      },
      resolve,
      denoFds,
    );
    onAbort = () => running.abort(id);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
  if (onAbort) signal?.removeEventListener("abort", onAbort);
  // The engine died before it started (e.g. its Worker could not load): the relay never
  // reached it and the conns are still in Deno's hands, so the userspace loop can take them.
  if (result[5] === END_NOT_STARTED) {
    return await withoutEngine(a, b, signal, idleTimeout);
  }
  // The engine deregistered both fds before reporting: closing them now is safe, once they are
  // back in Deno's reactor (see _deno_reactor.ts).
  for (const fd of denoFds) returnToDenoReactor(fd);
  closeEndpoint(a);
  closeEndpoint(b);
  return toRelayResult(result);
}

async function withoutEngine(
  a: RelayEndpoint,
  b: RelayEndpoint,
  signal: AbortSignal | undefined,
  idleTimeout: number,
): Promise<RelayResult> {
  if (typeof a === "number" || typeof b === "number") {
    closeEndpoint(a);
    closeEndpoint(b);
    return failedBeforeStart(
      new Error(`The relay engine could not start (${lastFatal() || "too few free fds"})`),
      undefined,
      "copy",
    );
  }
  return await fallbackRelay(a, b, signal, idleTimeout, true);
}

function toRelayResult(result: EngineResult): RelayResult {
  const [, aToB, bToA, splicedAToB, splicedBToA, endCode, code, syscall, side] = result;
  const splicedBytes = splicedAToB + splicedBToA;
  const out: RelayResult = {
    aToB,
    bToA,
    splicedBytes,
    mode: splicedBytes > 0 ? "splice" : "copy",
    end: ENDS[endCode] ?? "error",
  };
  if (out.end === "reset" || out.end === "error") {
    if (side !== -1) out.side = side === 0 ? "a" : "b";
    out.error = code !== 0
      ? new SyscallError(SYSCALLS[syscall] || "relay", code, {
        detail: `side ${out.side ?? "?"}`,
      })
      : new Error(
        `The relay engine stopped unexpectedly (${lastFatal()}); the byte counts are unknown`,
      );
  }
  return out;
}

/** A relay that ended before any byte moved: `side` failed, with `error`. */
function failedBeforeStart(
  error: unknown,
  side: "a" | "b" | undefined,
  mode: RelayResult["mode"],
): RelayResult {
  const out: RelayResult = {
    aToB: 0,
    bToA: 0,
    splicedBytes: 0,
    mode,
    end: isResetError(error) ? "reset" : "error",
    error: error instanceof Error ? error : new Error(String(error)),
  };
  if (side !== undefined) out.side = side;
  return out;
}

/**
 * A raw fd, made non-blocking: the engine must never block in a syscall. One that is no open fd
 * is the caller's mistake: both endpoints are closed (the relay owns them) and it throws.
 */
function rawFd(fd: number, other: RelayEndpoint): number {
  const symbols = libc();
  const flags = Number.isInteger(fd) && fd >= 0 ? symbols.fcntl(fd, F_GETFL, 0) : -1;
  if (flags < 0 || symbols.fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    const reason = Number.isInteger(fd) && fd >= 0
      ? errnoName(errno())
      : "expected a non-negative integer";
    closeEndpoint(fd);
    closeEndpoint(other);
    throw new TypeError(`Invalid fd ${fd}: ${reason}`);
  }
  return fd;
}

/** The fd of a Deno conn (Deno sockets are non-blocking already); -1 when it cannot be found. */
function connFd(conn: Conn): number {
  try {
    return socketFd(conn);
  } catch {
    return -1;
  }
}

/** Writes bytes read earlier to `endpoint`; a failure (the peer is gone) becomes the result. */
async function writeInitialData(
  endpoint: RelayEndpoint,
  bytes: Uint8Array | undefined,
  side: "a" | "b",
  mode: RelayResult["mode"],
): Promise<RelayResult | null> {
  if (!bytes || bytes.byteLength === 0 || typeof endpoint === "number") return null;
  try {
    for (let written = 0; written < bytes.byteLength;) {
      written += await endpoint.write(bytes.subarray(written));
    }
    return null;
  } catch (error) {
    return failedBeforeStart(error, side, mode);
  }
}

function closeEndpoint(endpoint: RelayEndpoint): void {
  if (typeof endpoint === "number") {
    if (ffiAvailable()) closeFd(endpoint);
    return;
  }
  try {
    endpoint.close();
  } catch {
    // Already closed: nothing more to release.
  }
}

type Conn = Deno.TcpConn | Deno.UnixConn;

/**
 * The userspace path: Deno reads and writes, same result shape and half-close semantics. With
 * FFI (`resets`), a failure of one side is passed on to the other as a reset, as the engine
 * does; without it Deno has no way to send one, and that side is closed normally.
 */
async function fallbackRelay(
  a: Conn,
  b: Conn,
  outer: AbortSignal | undefined,
  idleTimeout: number,
  resets: boolean,
): Promise<RelayResult> {
  const controller = new AbortController();
  const onAbort = (): void => controller.abort();
  // An already aborted signal fires no event: abort the copy up front.
  if (outer?.aborted) controller.abort();
  else outer?.addEventListener("abort", onAbort, { once: true });
  let idled = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let lastActivity = Date.now();
  // The first failure is the one reported: what follows it (the survivor's reads ended by its
  // reset or close) is a consequence.
  let first: { side: "a" | "b"; error: unknown } | undefined;
  const failing = <T>(side: "a" | "b", call: () => Promise<T>): Promise<T> =>
    call().catch((error) => {
      first ??= { side, error };
      throw error;
    });
  const watched = (conn: Conn, side: "a" | "b"): DuplexConn => ({
    read: (buffer) =>
      failing(side, () => conn.read(buffer)).then((n) => {
        lastActivity = Date.now();
        return n;
      }),
    write: (buffer) => failing(side, () => conn.write(buffer)),
    closeWrite: () => failing(side, () => conn.closeWrite()),
    close: () => conn.close(),
    reset: resets ? () => resetWhenAcknowledged(conn) : undefined,
  });
  if (idleTimeout > 0) {
    const check = (): void => {
      const left = lastActivity + idleTimeout - Date.now();
      if (left > 0) {
        timer = setTimeout(check, left);
        return;
      }
      idled = true;
      controller.abort();
    };
    timer = setTimeout(check, idleTimeout);
  }
  try {
    const result = await copyBidirectional(watched(a, "a"), watched(b, "b"), {
      signal: controller.signal,
    });
    const failed = result.aToB.status === "error" || result.bToA.status === "error";
    const out: RelayResult = {
      aToB: result.aToB.bytes,
      bToA: result.bToA.bytes,
      splicedBytes: 0,
      mode: "fallback",
      end: idled ? "idle-timeout" : result.aborted ? "aborted" : failed ? "reset" : "done",
    };
    if (out.end === "reset" && first !== undefined) {
      out.side = first.side;
      out.error = first.error instanceof Error ? first.error : new Error(String(first.error));
      if (!isResetError(first.error)) out.end = "error";
    }
    return out;
  } finally {
    clearTimeout(timer);
    outer?.removeEventListener("abort", onAbort);
  }
}

/**
 * Resets `conn` once its peer has acknowledged what was written to it (a reset destroys the
 * rest), or after {@linkcode COPY_LINGER_MS}. The fd is looked up again before the reset: the
 * conn may have been closed meanwhile, and its number reused.
 */
async function resetWhenAcknowledged(conn: Conn): Promise<void> {
  let fd: number;
  try {
    fd = socketFd(conn);
  } catch {
    return; // not found: it is closed normally instead
  }
  const deadline = Date.now() + COPY_LINGER_MS;
  while (fd >= 0 && unackedBytes(fd) > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, ACK_POLL_MS));
    fd = socketFd(conn);
  }
  if (fd >= 0) resetConnection(fd);
}

/** How often a reset that waits for acknowledgements looks again. */
const ACK_POLL_MS = 20;

function isResetError(error: unknown): boolean {
  return error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.ConnectionAborted;
}

/**
 * Stops the relay engine's Worker once no relay runs, and resolves when it has released its
 * pipes and epoll instance. The engine restarts on the next {@linkcode relay}. Call it at the
 * end of tests (Deno's sanitizers see the Worker) or before exit; otherwise the Worker stops by
 * itself a second after the last relay ends.
 *
 * @example
 * ```ts
 * import { shutdownRelayEngine } from "@zerocopy/splice";
 *
 * await shutdownRelayEngine();
 * ```
 */
export function shutdownRelayEngine(): Promise<void> {
  return stopEngine();
}
