/**
 * The accept loop shared by the proxy's listeners and its HTTP server: it ends only when its
 * owner closes the listener. A transient error (a client that reset or aborted before it was
 * accepted) is skipped. Out of fds or memory (or on anything unexpected), accepting again at once
 * would fail again: the loop pauses, 5 ms doubling to 1 s (Go's net/http and HAProxy bound it
 * alike), and is woken early when one of the owner's connections closes and frees an fd. The
 * connections that arrive meanwhile wait in the kernel's queue and are accepted after: the
 * listener is never closed or replaced.
 *
 * @module
 */

import { acceptErrorKind, errorCode, nextBackoff } from "./faults.ts";

/** What an accept loop tells its owner. */
export interface AcceptHooks {
  /** Whether the owner closed the listener: the only reason the loop ends. */
  closed(): boolean;
  /** A new connection; the owner takes it over. */
  accepted(conn: Deno.TcpConn): void;
  /**
   * An error of `accept()`, by errno name; `pauseMs` is 0 for a transient one (skipped), else
   * how long the loop waits before accepting again.
   */
  failed(code: string, error: unknown, pauseMs: number): void;
}

/**
 * Loops paused for want of fds, to wake when fds are freed. One set serves all the loops of an
 * owner: any connection that closes frees fds for every listener.
 */
export class AcceptPauses {
  #waiting = new Set<() => void>();

  /** Waits `ms`, or less if {@linkcode AcceptPauses.wake} is called. */
  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#waiting.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#waiting.add(done);
    });
  }

  /** Ends every pause now: fds were freed, or the listeners are closing. */
  wake(): void {
    if (this.#waiting.size === 0) return;
    for (const done of [...this.#waiting]) done();
  }
}

/** Accepts on `listener` until `hooks.closed()`; never rejects for an error of `accept()`. */
export async function acceptLoop(
  listener: Deno.TcpListener,
  hooks: AcceptHooks,
  pauses: AcceptPauses,
): Promise<void> {
  let pause = 0;
  while (!hooks.closed()) {
    let conn: Deno.TcpConn;
    try {
      conn = await listener.accept();
      pause = 0;
    } catch (error) {
      if (hooks.closed()) return;
      const code = errorCode(error);
      if (acceptErrorKind(code) === "transient") {
        hooks.failed(code, error, 0);
        continue;
      }
      pause = nextBackoff(pause);
      hooks.failed(code, error, pause);
      await pauses.wait(pause);
      continue;
    }
    hooks.accepted(conn);
  }
}
