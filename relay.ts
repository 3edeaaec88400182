/**
 * `relay()`: hand over two connections and the bytes flow both ways inside the kernel until
 * both sides are done, with half-close, backpressure, idle timeout and abort handled.
 *
 * This module checks the caller's input and chooses the path; the engine (engine/) moves the
 * bytes, and the userspace loop (engine/fallback.ts) does where the engine cannot.
 *
 * @module
 */

import { ffiAvailable } from "./ffi/libc.ts";
import { pipeCapacityOverride, validateCapacity } from "./splice_pipe.ts";
import { lastFatal, relayInEngine, stopEngine } from "./engine/engine.ts";
import { type Conn, fallbackRelay, isResetError } from "./engine/fallback.ts";
import { closeEndpoint, connFd, dial, netRefusal, rawFd } from "./engine/endpoint.ts";
import { closeFd } from "./ffi/pipe.ts";
import { SyscallError } from "./errors.ts";

/** Connection timed out: how a target's connect timeout is reported on either path. */
const ETIMEDOUT = 110;
import type { RelayMode, RelayResult } from "./engine/types.ts";

export type { RelayEnd, RelayMode, RelayResult } from "./engine/types.ts";

/** One end of a relay: a Deno TCP or Unix connection, or a raw connected socket fd. */
export type RelayEndpoint = Deno.TcpConn | Deno.UnixConn | number;

/**
 * A host and port for {@linkcode relay} to connect to itself, in place of side `b`: with FFI
 * the engine makes the connection, so it never becomes a Deno conn and needs no fd search.
 *
 * @example
 * ```ts
 * import type { RelayTarget } from "@zerocopy/splice";
 *
 * const backend: RelayTarget = { hostname: "127.0.0.1", port: 9000 };
 * ```
 */
export interface RelayTarget {
  /** A host name, an IPv4 address or an IPv6 address (without brackets). */
  hostname: string;
  /** 1 to 65535. */
  port: number;
}

/** Options for {@linkcode relay}. */
export interface RelayOptions {
  /**
   * For a {@linkcode RelayTarget}: how long its connect may take, in ms; 0 or absent: as long
   * as the kernel tries (about two minutes). A connect that fails or times out ends the relay
   * with `end: "error"` and `side: "b"`, and closes `a`.
   */
  connectTimeout?: number;
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
 * @param b the other: a conn or fd (e.g. the backend from `Deno.connect`), or a
 * {@linkcode RelayTarget} `{ hostname, port }` that the relay connects to itself (with FFI, in
 * the engine: no Deno conn, no fd search, a cheaper connection)
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
  b: RelayEndpoint | RelayTarget,
  options?: RelayOptions,
): Promise<RelayResult> {
  if (a === b) throw new TypeError("Cannot relay a connection to itself");
  const mode = options?.mode ?? "auto";
  if (mode !== "auto" && mode !== "splice" && mode !== "copy") {
    throw new TypeError(`Cannot relay in mode "${mode}": expected "auto", "splice" or "copy"`);
  }
  const idleTimeout = options?.idleTimeout ?? 0;
  if (!Number.isInteger(idleTimeout) || idleTimeout < 0 || idleTimeout > 2 ** 31 - 1) {
    throw new RangeError(
      `Cannot relay with idleTimeout ${idleTimeout}: expected whole ms from 0 to ${2 ** 31 - 1}`,
    );
  }
  const capacity = options?.pipeCapacity ?? 0;
  validateCapacity(capacity, "pipeCapacity");
  // Not awaited: relay()'s frame is not kept for as long as the relay runs.
  if (isTarget(b)) return relayToTarget(a, b, options);

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
  const denoFds = [a, b].flatMap((end, i) => typeof end === "number" ? [] : [i === 0 ? fdA : fdB]);
  // Not awaited: what waits for the end is this closure, not relay()'s frame (see
  // relayToTarget).
  return relayInEngine({
    fdA,
    fdB,
    denoFds,
    mode,
    idleMs: idleTimeout,
    capacity: capacity || (pipeCapacityOverride() ?? RELAY_PIPE_CAPACITY),
    signal,
  }).then((result) => {
    // No engine (it could not start, or died before it took the relay): the conns are still
    // in Deno's hands, and Deno conns get the userspace loop, which needs no fd of its own.
    if (result === "unavailable") return withoutEngine(a, b, signal, idleTimeout);
    closeEndpoint(a);
    closeEndpoint(b);
    return result;
  });
}

function isTarget(b: RelayEndpoint | RelayTarget): b is RelayTarget {
  return typeof b === "object" && b !== null && !("close" in b) && "hostname" in b;
}

/** The longest timeout a timer takes, and so "as long as the kernel tries". */
const NO_TIMEOUT = 2 ** 31 - 1;

/**
 * relay() to a host and port: with the engine, side b is a socket whose connect the engine
 * finishes; otherwise (no FFI, `initialData.toB` to write first, an fd that cannot be found, no
 * engine) it is a Deno conn from Deno.connect, relayed as any other.
 */
async function relayToTarget(
  a: RelayEndpoint,
  target: RelayTarget,
  options: RelayOptions | undefined,
): Promise<RelayResult> {
  const { hostname, port } = target;
  if (typeof hostname !== "string" || hostname === "") {
    closeEndpoint(a);
    throw new TypeError(`Cannot relay to host ${JSON.stringify(hostname)}: expected a host name`);
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    closeEndpoint(a);
    throw new RangeError(`Cannot relay to port ${port}: expected 1 to 65535`);
  }
  const connectTimeout = options?.connectTimeout ?? 0;
  if (!Number.isInteger(connectTimeout) || connectTimeout < 0 || connectTimeout > NO_TIMEOUT) {
    closeEndpoint(a);
    throw new RangeError(
      `Cannot relay with connectTimeout ${connectTimeout}: expected whole ms from 0 to ${NO_TIMEOUT}`,
    );
  }
  if (!ffiAvailable() || options?.initialData?.toB?.byteLength) {
    return await viaDeno(a, target, options, connectTimeout, false);
  }
  // Looked up once: a second lookup of a known conn re-checks it (two syscalls).
  const connFdA = typeof a === "number" ? -1 : connFd(a);
  if (typeof a !== "number" && connFdA === -1) {
    return await viaDeno(a, target, options, connectTimeout, false);
  }
  // The engine's sockets are outside Deno's sandbox: --allow-net is kept here, as Deno.connect
  // would keep it.
  const refused = netRefusal(target);
  if (refused !== null) {
    closeEndpoint(a);
    throw new Deno.errors.NotCapable(refused);
  }
  const signal = options?.signal;
  const early = await writeInitialData(a, options?.initialData?.toA, "a", "copy");
  if (early !== null || signal?.aborted) {
    closeEndpoint(a);
    return early ?? { aToB: 0, bToA: 0, splicedBytes: 0, mode: "copy", end: "aborted" };
  }
  const fdA = typeof a === "number" ? rawFd(a, -1) : connFdA;
  const dialed = await dial(target);
  if ("error" in dialed) {
    closeEndpoint(a);
    return failedBeforeStart(dialed.error, "b", "copy");
  }
  // Aborted while the name was resolved: an abort signal that already fired raises no event,
  // so the engine would never hear of it.
  if (signal?.aborted) {
    closeFd(dialed.fd);
    closeEndpoint(a);
    return { aToB: 0, bToA: 0, splicedBytes: 0, mode: "copy", end: "aborted" };
  }
  const capacity = options?.pipeCapacity ?? 0;
  const fdB = dialed.fd;
  // Not awaited: a relay may idle for hours, and what waits for its end is this closure, not
  // this function's frame with every local in it.
  return relayInEngine({
    fdA,
    fdB,
    denoFds: typeof a === "number" ? [] : [fdA],
    mode: options?.mode ?? "auto",
    idleMs: options?.idleTimeout ?? 0,
    capacity: capacity || (pipeCapacityOverride() ?? RELAY_PIPE_CAPACITY),
    connectMs: dialed.inProgress ? (connectTimeout || NO_TIMEOUT) : 0,
    signal,
  }).then((result) => {
    closeFd(fdB);
    if (result !== "unavailable") {
      closeEndpoint(a);
      return result;
    }
    if (typeof a === "number") {
      closeEndpoint(a);
      return failedBeforeStart(
        new Error(`Cannot start the relay engine (${lastFatal() || "too few free fds"})`),
        undefined,
        "copy",
      );
    }
    return viaDeno(a, target, options, connectTimeout, true);
  });
}

/**
 * relay() to a target through a Deno conn from Deno.connect; `toASent` says that
 * initialData.toA was written already, so that it is not sent twice.
 */
async function viaDeno(
  a: RelayEndpoint,
  target: RelayTarget,
  options: RelayOptions | undefined,
  connectTimeout: number,
  toASent: boolean,
): Promise<RelayResult> {
  const signals = [
    options?.signal,
    connectTimeout > 0 ? AbortSignal.timeout(connectTimeout) : undefined,
  ]
    .filter((signal): signal is AbortSignal => signal !== undefined);
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({
      hostname: target.hostname,
      port: target.port,
      signal: signals.length > 0 ? AbortSignal.any(signals) : undefined,
    });
  } catch (error) {
    closeEndpoint(a);
    if (error instanceof Deno.errors.NotCapable) throw error;
    const mode = ffiAvailable() ? "copy" : "fallback";
    if (options?.signal?.aborted) {
      return { aToB: 0, bToA: 0, splicedBytes: 0, mode, end: "aborted" };
    }
    // The timeout's signal fired: said as the engine says it.
    const timedOut = error instanceof DOMException && error.name === "TimeoutError";
    const reason = timedOut ? new SyscallError("connect", ETIMEDOUT, { detail: "side b" }) : error;
    return failedBeforeStart(reason, "b", mode);
  }
  const rest: RelayOptions = toASent
    ? { ...options, initialData: { toB: options?.initialData?.toB } }
    : { ...options };
  return await relay(a, conn, rest);
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
      new Error(`Cannot start the relay engine (${lastFatal() || "too few free fds"})`),
      undefined,
      "copy",
    );
  }
  return await fallbackRelay(a, b, signal, idleTimeout, true);
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
