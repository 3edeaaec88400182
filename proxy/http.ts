/**
 * `Deno.serve` that outlives a failed accept. Deno 2.9's HTTP server ends when its accept fails
 * (EMFILE, when the proxy's connections have used up the fds): its listener is closed and its
 * `finished` promise rejects, which, unhandled, ends the whole process. A peer can cause that,
 * so the rejection is taken here and the server listens again, after a pause that grows like the
 * proxy's own accept back-off, until the signal aborts.
 *
 * @module
 */

import { ACCEPT_BACKOFF_MAX_MS, nextBackoff } from "./faults.ts";

/** A server that listens again after an accept failure. */
export interface ResilientServer {
  /** The address it listens on (with port 0 asked, the port it got; kept across restarts). */
  readonly addr: Deno.NetAddr;
  /** Settles once the signal aborted and the server stopped. */
  readonly finished: Promise<void>;
}

/**
 * Serves `handler` on `hostname:port` until `signal` aborts; when the server fails, says so
 * through `onFailure` (with the pause before the next try) and listens again on the same port.
 * The first listen throws like `Deno.serve` (address in use, not permitted).
 */
export function serveResilient(
  options: { hostname: string; port: number; signal: AbortSignal },
  handler: Deno.ServeHandler<Deno.NetAddr>,
  onFailure: (error: unknown, pauseMs: number) => void,
): ResilientServer {
  const listen = (port: number): Deno.HttpServer<Deno.NetAddr> =>
    Deno.serve({
      hostname: options.hostname,
      port,
      signal: options.signal,
      onListen: () => {},
    }, handler);
  const first = listen(options.port);
  const addr = first.addr;
  const finished = (async () => {
    let server: Deno.HttpServer<Deno.NetAddr> | null = first;
    let pause = 0;
    while (!options.signal.aborted) {
      const since = performance.now();
      let failure: unknown = new Error("The HTTP server stopped by itself");
      try {
        server ??= listen(addr.port);
        await server.finished;
      } catch (error) {
        failure = error;
      }
      server = null;
      if (options.signal.aborted) return;
      // A server that ran a while before failing starts the back-off over.
      pause = nextBackoff(performance.now() - since > ACCEPT_BACKOFF_MAX_MS ? 0 : pause);
      onFailure(failure, pause);
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          options.signal.removeEventListener("abort", done);
          resolve();
        };
        const timer = setTimeout(done, pause);
        options.signal.addEventListener("abort", done, { once: true });
      });
    }
  })();
  return { addr, finished };
}
