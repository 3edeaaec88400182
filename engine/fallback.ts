/**
 * relay()'s userspace path: Deno reads and writes through {@linkcode copyBidirectional}, with the
 * result shape, half-close and reset semantics of the engine. Used without FFI, for a conn whose
 * fd cannot be found, and when the engine cannot start.
 *
 * @module
 */

import { ACK_POLL_MS, resetConnection, unackedBytes } from "../ffi/tcp.ts";
import { socketFd } from "../ffi/socket_fd.ts";
import { COPY_LINGER_MS, copyBidirectional, type DuplexConn } from "../copy.ts";
import type { RelayResult } from "./types.ts";

/** A Deno conn: the userspace path needs no fd of its own. */
export type Conn = Deno.TcpConn | Deno.UnixConn;

/**
 * The userspace path: Deno reads and writes, same result shape and half-close semantics. With
 * FFI (`resets`), a failure of one side is passed on to the other as a reset, as the engine
 * does; without it Deno has no way to send one, and that side is closed normally.
 */
export async function fallbackRelay(
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

/** Whether a Deno error means the peer reset the connection or is gone. */
export function isResetError(error: unknown): boolean {
  return error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.ConnectionAborted;
}
