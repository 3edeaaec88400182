/**
 * The userspace fallback: copies bytes between Deno connections through a reused buffer, with
 * TCP half-close carried across. Used where splice is unavailable (no `--allow-ffi`, not Linux)
 * and wherever a pipe cannot be had.
 *
 * Deno's `readable.pipeTo(writable)` is not a substitute: at end of input it closes the whole
 * destination socket, so a reply that the other side still sends after a half-close is lost.
 *
 * @module
 */

/**
 * The read half a copy needs: `Deno.Conn` and any `Deno.Reader`-like object fit.
 *
 * @example A source of one chunk, written to standard output
 * ```ts
 * import { copy, type CopySource } from "@zerocopy/splice";
 *
 * const chunks = [new TextEncoder().encode("hello\n")];
 * const source: CopySource = {
 *   read(buffer) {
 *     const chunk = chunks.shift();
 *     if (chunk === undefined) return Promise.resolve(null); // end of input
 *     buffer.set(chunk); // fits: the default buffer holds 64 KiB
 *     return Promise.resolve(chunk.byteLength);
 *   },
 * };
 * await copy(source, Deno.stdout); // prints "hello"
 * ```
 */
export interface CopySource {
  /** Reads into `buffer`; resolves to the byte count, or `null` at end of input. */
  read(buffer: Uint8Array): Promise<number | null>;
}

/**
 * The write half a copy needs: `Deno.Conn` fits.
 *
 * @example Collect standard input in memory
 * ```ts
 * import { copy, type CopyDestination } from "@zerocopy/splice";
 *
 * const chunks: Uint8Array[] = [];
 * const destination: CopyDestination = {
 *   write(buffer) {
 *     chunks.push(buffer.slice()); // copy it: the buffer is reused for the next read
 *     return Promise.resolve(buffer.byteLength);
 *   },
 * };
 * const { bytes } = await copy(Deno.stdin, destination);
 * console.log(`${bytes} bytes in ${chunks.length} chunks`);
 * ```
 */
export interface CopyDestination {
  /** Writes part of `buffer`; resolves to the byte count written. */
  write(buffer: Uint8Array): Promise<number>;
  /** Shuts down the sending side (TCP FIN) while reads continue. */
  closeWrite?(): Promise<void>;
}

/**
 * Options for {@linkcode copy}.
 *
 * @example `cat` with a 16 KiB buffer
 * ```ts
 * import { copy, type CopyOptions } from "@zerocopy/splice";
 *
 * const options: CopyOptions = { buffer: new Uint8Array(16 * 1024), closeWrite: false };
 * await copy(Deno.stdin, Deno.stdout, options);
 * ```
 */
export interface CopyOptions {
  /**
   * The buffer to copy through, reused for every chunk; default a new 64 KiB buffer. Never
   * share one buffer between two copies that run at the same time.
   */
  buffer?: Uint8Array;
  /** Whether to call `destination.closeWrite()` at end of input. Default `true`. */
  closeWrite?: boolean;
}

/**
 * How one direction of a copy ended.
 *
 * @example
 * ```ts
 * import { copy, type CopyResult } from "@zerocopy/splice";
 *
 * const result: CopyResult = await copy(Deno.stdin, Deno.stdout);
 * if (result.status === "error") {
 *   console.error(`copy failed after ${result.bytes} bytes:`, result.error);
 * }
 * ```
 */
export interface CopyResult {
  /** Bytes read from the source and fully written to the destination. */
  bytes: number;
  /**
   * `"end"` when the source reached end of input and the destination got its FIN; `"error"`
   * when a read, write or shutdown failed (the cause is in `error`).
   */
  status: "end" | "error";
  /** The failure, when `status` is `"error"`. */
  error?: unknown;
  /**
   * Which side failed, when `status` is `"error"`: `"read"` (the source), `"write"` (the
   * destination takes no more bytes) or `"closeWrite"` (the shutdown at end of input).
   */
  failedOn?: "read" | "write" | "closeWrite";
}

/**
 * Default copy buffer size: large enough that a bulk stream costs few reads, as in Go.
 *
 * @example
 * ```ts
 * import { copy, COPY_BUFFER_SIZE } from "@zerocopy/splice";
 *
 * console.log(COPY_BUFFER_SIZE); // 65536
 * // One buffer reused by copies that run one after the other, never at the same time.
 * const buffer = new Uint8Array(COPY_BUFFER_SIZE);
 * await copy(Deno.stdin, Deno.stdout, { buffer });
 * ```
 */
export const COPY_BUFFER_SIZE = 64 * 1024;

/**
 * Copies `source` to `destination` until end of input, then shuts down the destination's
 * sending side only, so the other direction of the connection keeps flowing. Rejects only on
 * misuse (an empty buffer); a connection failure is reported in the result, with the bytes
 * delivered before it.
 *
 * @param source where bytes come from, e.g. a `Deno.Conn`
 * @param destination where they go, e.g. a `Deno.Conn`
 * @param options the buffer to reuse, and whether to half-close
 * @returns the bytes copied and how the copy ended
 *
 * @example Forward a request and keep reading the reply
 * ```ts
 * import { copy } from "@zerocopy/splice";
 *
 * using listener = Deno.listen({ hostname: "127.0.0.1", port: 8080 });
 * using client = await listener.accept();
 * using backend = await Deno.connect({ hostname: "127.0.0.1", port: 9000 });
 * const [up, down] = await Promise.all([copy(client, backend), copy(backend, client)]);
 * console.log(`${up.bytes} bytes up, ${down.bytes} bytes down`);
 * ```
 */
export async function copy(
  source: CopySource,
  destination: CopyDestination,
  options?: CopyOptions,
): Promise<CopyResult> {
  const buffer = options?.buffer ?? new Uint8Array(COPY_BUFFER_SIZE);
  if (!(buffer instanceof Uint8Array) || buffer.byteLength === 0) {
    throw new TypeError("Cannot copy through an empty buffer: pass a non-empty Uint8Array");
  }
  let bytes = 0;
  let stage: "read" | "write" | "closeWrite" = "read";
  try {
    for (;;) {
      stage = "read";
      const read = await source.read(buffer);
      if (read === null) break;
      stage = "write";
      let written = 0;
      while (written < read) {
        written += await destination.write(buffer.subarray(written, read));
      }
      bytes += read;
    }
    stage = "closeWrite";
    if (options?.closeWrite !== false) await destination.closeWrite?.();
    return { bytes, status: "end" };
  } catch (error) {
    return { bytes, status: "error", error, failedOn: stage };
  }
}

/**
 * Options for {@linkcode copyBidirectional}.
 *
 * @example Give up on a connection after a minute
 * ```ts
 * import { copyBidirectional, type CopyBidirectionalOptions } from "@zerocopy/splice";
 *
 * using listener = Deno.listen({ hostname: "127.0.0.1", port: 8080 });
 * const client = await listener.accept();
 * const backend = await Deno.connect({ hostname: "127.0.0.1", port: 9000 });
 * const options: CopyBidirectionalOptions = {
 *   signal: AbortSignal.timeout(60_000),
 *   bufferSize: 16 * 1024,
 * };
 * const { aborted } = await copyBidirectional(client, backend, options);
 * console.log(aborted ? "timed out" : "both sides finished");
 * ```
 */
export interface CopyBidirectionalOptions {
  /** Ends both directions and closes both connections. */
  signal?: AbortSignal;
  /** Buffer size per direction; default {@linkcode COPY_BUFFER_SIZE}. */
  bufferSize?: number;
}

/**
 * The outcome of {@linkcode copyBidirectional}.
 *
 * @example
 * ```ts
 * import { copyBidirectional, type CopyBidirectionalResult } from "@zerocopy/splice";
 *
 * using listener = Deno.listen({ hostname: "127.0.0.1", port: 8080 });
 * const client = await listener.accept();
 * const backend = await Deno.connect({ hostname: "127.0.0.1", port: 9000 });
 * const result: CopyBidirectionalResult = await copyBidirectional(client, backend);
 * console.log(`up ${result.aToB.bytes} (${result.aToB.status})`);
 * console.log(`down ${result.bToA.bytes} (${result.bToA.status})`);
 * ```
 */
export interface CopyBidirectionalResult {
  /** `a` -> `b`. */
  aToB: CopyResult;
  /** `b` -> `a`. */
  bToA: CopyResult;
  /** Whether `signal` ended the copy. */
  aborted: boolean;
}

/**
 * A connection both ends of which {@linkcode copyBidirectional} drives and closes.
 *
 * @example `Deno.TcpConn` and `Deno.UnixConn` fit
 * ```ts
 * import type { DuplexConn } from "@zerocopy/splice";
 *
 * const conn: DuplexConn = await Deno.connect({ hostname: "127.0.0.1", port: 9000 });
 * conn.close();
 * ```
 */
export interface DuplexConn extends CopySource, CopyDestination {
  /** Closes the connection. */
  close(): void;
  /**
   * Ends the connection with a reset (TCP RST) instead of a FIN, after its peer has
   * acknowledged what was written to it; optional. {@linkcode copyBidirectional} calls it to
   * pass a failure of the other side on, so that a stream cut short never looks complete.
   * Without it, that side is closed normally. Must not throw.
   */
  reset?(): Promise<void>;
}

/**
 * Copies both ways between `a` and `b` until each direction has ended, then closes both. A
 * half-close travels across (end of input on one side shuts down the other side's sending
 * half) while the other direction keeps flowing. When one side fails (a reset, a broken pipe),
 * what it sent before is still delivered, and then its failure is passed on: the other side is
 * ended with {@linkcode DuplexConn.reset} where the conn has it (a reset, as if the relay were
 * not there), and closed otherwise. Meanwhile a source whose bytes can no longer be written is
 * read and the bytes dropped, so that its peer, blocked sending, gets to read what is
 * delivered; both are closed at the latest {@linkcode COPY_LINGER_MS} after the failure, so
 * nothing hangs.
 *
 * Takes ownership of `a` and `b`: both are closed when the promise settles, also when it
 * rejects on misuse (a bad `bufferSize`); it never rejects for a connection failure.
 *
 * @param a one connection, e.g. the accepted client
 * @param b the other, e.g. the backend
 * @param options an abort signal and the buffer size
 * @returns the bytes each way and how each direction ended
 *
 * @example A userspace TCP proxy
 * ```ts
 * import { copyBidirectional } from "@zerocopy/splice";
 *
 * for await (const client of Deno.listen({ hostname: "127.0.0.1", port: 8080 })) {
 *   const backend = await Deno.connect({ hostname: "127.0.0.1", port: 9000 });
 *   copyBidirectional(client, backend).then((r) => console.log(r.aToB.bytes, r.bToA.bytes));
 * }
 * ```
 */
export async function copyBidirectional(
  a: DuplexConn,
  b: DuplexConn,
  options?: CopyBidirectionalOptions,
): Promise<CopyBidirectionalResult> {
  const size = options?.bufferSize ?? COPY_BUFFER_SIZE;
  if (!Number.isInteger(size) || size <= 0) {
    closeAll(a, b);
    throw new RangeError(`Cannot copy with bufferSize ${size}: expected a positive whole number`);
  }
  let closed = false;
  let aborted = false;
  const closeBoth = (): void => {
    if (closed) return;
    closed = true;
    closeAll(a, b);
  };
  const signal = options?.signal;
  const onAbort = (): void => {
    aborted = true;
    closeBoth();
  };
  if (signal?.aborted) onAbort();
  signal?.addEventListener("abort", onAbort, { once: true });

  let linger: ReturnType<typeof setTimeout> | undefined;
  /** Sides that failed: a read of them broke, or a write or shutdown toward them did. */
  const failed = new Set<DuplexConn>();
  /** Directions that ended, by source. */
  const ended = new Set<DuplexConn>();
  // The survivor of a failure is reset once, then both are closed. A conn that cannot be reset
  // is left to the usual course instead: closing it now, with its peer's bytes unread, would
  // reset it anyway and could destroy what was just delivered; the drain and the linger end it.
  // After an abort or the linger closed both, there is nothing left to pass on.
  let passing: Promise<void> | undefined;
  const passOn = (survivor: DuplexConn): Promise<void> => {
    if (survivor.reset === undefined || closed) return Promise.resolve();
    return passing ??= survivor.reset().then(closeBoth);
  };

  const direction = async (from: DuplexConn, to: DuplexConn): Promise<CopyResult> => {
    const buffer = new Uint8Array(size);
    let result = await copy(from, to, { buffer, closeWrite: false });
    // A source whose write side failed reads to the end of what it sent, then finds the
    // connection gone: that end of input is the tail of a failure, not a clean end.
    if (result.status === "end" && !failed.has(from)) {
      try {
        await to.closeWrite?.();
      } catch (error) {
        result = { bytes: result.bytes, status: "error", error, failedOn: "closeWrite" };
      }
    }
    ended.add(from);
    if (result.status === "error") {
      // Bound what follows a failure: the other direction may wait on a peer that is silent.
      linger ??= setTimeout(closeBoth, COPY_LINGER_MS);
      failed.add(result.failedOn === "read" ? from : to);
    }
    if (failed.has(from) && !failed.has(to)) {
      // Everything `from` sent has been written to `to`: pass its failure on.
      await passOn(to);
    } else if (failed.has(to) && !failed.has(from)) {
      // `to` takes no more bytes. Its own bytes may still be on their way to `from`; once that
      // direction has ended, `from` is the survivor to reset. Until then, or when `from` cannot
      // be reset, its bytes are read and dropped.
      if (ended.has(to) && from.reset !== undefined) await passOn(from);
      else await discard(from, buffer);
    }
    return result;
  };
  try {
    const [aToB, bToA] = await Promise.all([direction(a, b), direction(b, a)]);
    return { aToB, bToA, aborted };
  } finally {
    clearTimeout(linger);
    signal?.removeEventListener("abort", onAbort);
    closeBoth();
  }
}

/**
 * How long {@linkcode copyBidirectional} keeps going after a failure: the other direction
 * delivers what its peer already sent, and a stranded source is drained, for at most this long.
 *
 * @example
 * ```ts
 * import { COPY_LINGER_MS } from "@zerocopy/splice";
 *
 * console.log(COPY_LINGER_MS); // 2000
 * ```
 */
export const COPY_LINGER_MS = 2_000;

/** Closes each conn; one already closed by its owner has nothing left to release. */
function closeAll(...conns: DuplexConn[]): void {
  for (const conn of conns) {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

/** Reads `source` to its end (or a failure, or its close) and drops the bytes. */
async function discard(source: CopySource, buffer: Uint8Array): Promise<void> {
  try {
    while ((await source.read(buffer)) !== null) {
      // dropped: the destination takes no more bytes
    }
  } catch {
    // Closed by the linger or failed: either way there is nothing left to read.
  }
}
