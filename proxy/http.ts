/**
 * A small HTTP/1.1 server on `Deno.listen`, for the admin endpoint and the demo backend, built to
 * the proxy's own standard: nothing a peer does stops the listener or holds its fds for long.
 *
 * `Deno.serve` fell short of that twice: a connection that sent part of a request head stayed
 * open indefinitely (so a few slow clients could hold fds until the proxy's listeners ran out),
 * and one failed accept (EMFILE) ended the whole server. Here accepting never stops before the
 * signal aborts (errors are skipped or paused on, as in the proxy's accept loop), every phase of
 * a connection has a deadline, heads and connections are bounded, and every refusal is counted
 * (`refused`) and reported (`onEvent`, at most once a second per kind).
 *
 * Responses are buffered whole (their length is sent as Content-Length): the handlers served
 * answer small bodies. A handler is trusted to return; a peer is not.
 *
 * @module
 */

import { acceptLoop, AcceptPauses } from "./accept.ts";
import { ACCEPT_BACKOFF_MAX_MS, Throttle } from "./faults.ts";
import {
  closeQuietly,
  Connection,
  type ConnectionHost,
  type HttpHandler,
  type HttpLimits,
  type HttpRefusal,
  responseBytes,
  writeAll,
} from "./http_connection.ts";

// Part of this server's API; defined where each connection keeps to them.
export type { HttpHandler, HttpLimits, HttpRefusal } from "./http_connection.ts";

/**
 * The defaults. 10 s for a head or a body is far more than a local client or a scraper needs
 * (Prometheus' own scrape timeout is 10 s) and bounds how long a slow client holds an fd; 5 s
 * idle is Node's keep-alive default; 16 KiB of head is twice what curl or a browser sends; 64
 * connections is plenty for an admin port and caps the fds it can take from the proxy.
 */
export const DEFAULT_HTTP_LIMITS: Readonly<HttpLimits> = {
  headTimeoutMs: 10_000,
  idleTimeoutMs: 5_000,
  bodyTimeoutMs: 10_000,
  writeTimeoutMs: 10_000,
  maxHeadBytes: 16 * 1024,
  maxConnections: 64,
};

/**
 * What the server reports. Each kind (each reason, for refusals) at most once a second; the
 * next report of a kind carries how many were held back (`suppressed`).
 */
export type HttpServerEvent =
  | { type: "accept-error"; code: string; error: string; pauseMs: number; suppressed: number }
  | {
    type: "refused";
    reason: HttpRefusal;
    /** The status answered, or null when the connection was closed without an answer. */
    status: number | null;
    remote: string;
    message: string;
    suppressed: number;
  }
  | { type: "handler-error" | "internal-error"; error: string; suppressed: number };

/** Options of {@linkcode serveHttp}. */
export interface HttpServerOptions {
  /** The address to listen on, as for `Deno.listen`. */
  hostname: string;
  /** The port to listen on; 0 for any free one (see {@linkcode HttpServer.addr}). */
  port: number;
  /** Aborting it stops the server (see {@linkcode serveHttp}). */
  signal: AbortSignal;
  /** Overrides of {@linkcode DEFAULT_HTTP_LIMITS}. */
  limits?: Partial<HttpLimits>;
  /** Receives failures and refusals, throttled; an exception it throws is ignored. */
  onEvent?: (event: HttpServerEvent) => void;
}

/** A running server. */
export interface HttpServer {
  /** The address it listens on (with port 0 asked, the port it got). */
  readonly addr: Deno.NetAddr;
  /** Resolves once the signal aborted and every connection has ended; never rejects. */
  readonly finished: Promise<void>;
  /** Connections and requests refused so far, by reason. */
  readonly refused: Readonly<Record<HttpRefusal, number>>;
}

/**
 * Serves `handler` on `hostname:port` until `signal` aborts. Listening throws at once, like
 * `Deno.listen` (address in use, not permitted); after that nothing throws or rejects.
 *
 * Stopping closes the listener and the connections waiting for a request, lets responses in
 * flight be written (with `Connection: close`), then resolves `finished`.
 *
 * @example
 * ```ts
 * import { serveHttp } from "./http.ts";
 *
 * const stop = new AbortController();
 * const server = serveHttp(
 *   { hostname: "127.0.0.1", port: 0, signal: stop.signal, limits: { maxConnections: 8 } },
 *   (request) => new Response(`hello ${new URL(request.url).pathname}\n`),
 * );
 * console.log(await (await fetch(`http://127.0.0.1:${server.addr.port}/x`)).text()); // hello /x
 * stop.abort();
 * await server.finished;
 * ```
 */
export function serveHttp(options: HttpServerOptions, handler: HttpHandler): HttpServer {
  const listener = Deno.listen({ hostname: options.hostname, port: options.port });
  const server = new Server(listener, handler, { ...DEFAULT_HTTP_LIMITS, ...options.limits }, {
    onEvent: options.onEvent,
  });
  return {
    addr: listener.addr,
    finished: server.run(options.signal),
    refused: server.refused,
  };
}

/** One line for an event, without a prefix naming the server. */
export function describeHttpEvent(event: HttpServerEvent): string {
  const more = event.suppressed > 0 ? ` (${event.suppressed} more in the last second)` : "";
  switch (event.type) {
    case "accept-error":
      return `accepting failed (${event.code}): ${event.error}; accepting again in ` +
        `${event.pauseMs} ms or when a connection closes${more}`;
    case "refused": {
      const answer = event.status === null ? "closed" : String(event.status);
      return `refused a connection from ${event.remote} (${event.reason}, ${answer}): ` +
        `${event.message}${more}`;
    }
    case "handler-error":
      return `handler failed, answered 500: ${event.error}${more}`;
    case "internal-error":
      return `internal error (please report it): ${event.error}${more}`;
  }
}

/** The listener, its accept loop, the connections, the counters. */
class Server implements ConnectionHost {
  readonly refused: Record<HttpRefusal, number> = {
    slow: 0,
    "head-too-large": 0,
    malformed: 0,
    unsupported: 0,
    "too-many": 0,
  };
  readonly limits: HttpLimits;
  readonly handler: HttpHandler;
  readonly addr: Deno.NetAddr;
  #listener: Deno.TcpListener;
  #onEvent: ((event: HttpServerEvent) => void) | undefined;
  #throttle = new Throttle(1_000);
  #stopping = false;
  #connections = new Set<Connection>();
  /** Every connection's task, including refusals answered at once: `finished` waits for all. */
  #tasks = new Set<Promise<void>>();
  #pauses = new AcceptPauses();

  constructor(
    listener: Deno.TcpListener,
    handler: HttpHandler,
    limits: HttpLimits,
    hooks: { onEvent: ((event: HttpServerEvent) => void) | undefined },
  ) {
    this.#listener = listener;
    this.addr = listener.addr;
    this.handler = handler;
    this.limits = limits;
    this.#onEvent = hooks.onEvent;
  }

  async run(signal: AbortSignal): Promise<void> {
    const stop = (): void => this.#stop();
    if (signal.aborted) stop();
    else signal.addEventListener("abort", stop, { once: true });
    const hooks = {
      closed: () => this.#stopping,
      accepted: (conn: Deno.TcpConn) => this.#accepted(conn),
      failed: (code: string, error: unknown, pauseMs: number) => {
        if (pauseMs === 0) return; // transient: a client gone before it was accepted
        this.#emit("accept", (suppressed) => ({
          type: "accept-error",
          code,
          error: error instanceof Error ? error.message : String(error),
          pauseMs,
          suppressed,
        }));
      },
    };
    while (!this.#stopping) {
      // The loop takes every error of accept() (proxy/accept.ts); a rejection is a bug,
      // reported, and accepting goes on after a pause rather than stopping.
      await acceptLoop(this.#listener, hooks, this.#pauses).catch(async (error) => {
        this.report("internal-error", error);
        await this.#pauses.wait(ACCEPT_BACKOFF_MAX_MS);
      });
    }
    signal.removeEventListener("abort", stop);
    while (this.#tasks.size > 0) await Promise.all(this.#tasks);
  }

  #accepted(conn: Deno.TcpConn): void {
    if (this.#stopping) {
      closeQuietly(conn);
      return;
    }
    if (this.#connections.size >= this.limits.maxConnections) {
      this.#track(this.#refuseAtOnce(conn));
      return;
    }
    const connection = new Connection(this, conn);
    this.#connections.add(connection);
    this.#track(
      connection.serve().finally(() => {
        this.#connections.delete(connection);
        // Its fd is free: an accept loop paused for want of fds may go on.
        this.#pauses.wake();
      }),
    );
  }

  /**
   * 503 without reading: the answer fits in a fresh socket's buffer, so the write completes at
   * once, and the fd is freed at once too; that is the point of a bound under a flood.
   */
  async #refuseAtOnce(conn: Deno.TcpConn): Promise<void> {
    const message = `Too many connections (${this.limits.maxConnections} open); try again later`;
    this.count("too-many", conn, 503, message);
    const timer = setTimeout(() => closeQuietly(conn), 1_000);
    try {
      await writeAll(conn, responseBytes(503, message, { "retry-after": "1" }));
    } catch {
      // the peer is gone; nothing to say
    } finally {
      clearTimeout(timer);
      closeQuietly(conn);
    }
  }

  #track(task: Promise<void>): void {
    const tracked = task.catch((error) => this.report("internal-error", error));
    this.#tasks.add(tracked);
    tracked.finally(() => this.#tasks.delete(tracked));
  }

  #stop(): void {
    if (this.#stopping) return;
    this.#stopping = true;
    closeQuietly(this.#listener);
    this.#pauses.wake();
    for (const connection of this.#connections) connection.stop();
  }

  /** Counts a refusal and reports it. */
  count(reason: HttpRefusal, conn: Deno.TcpConn, status: number | null, message: string): void {
    this.refused[reason]++;
    this.#emit(`refused ${reason}`, (suppressed) => ({
      type: "refused",
      reason,
      status,
      remote: formatRemote(conn.remoteAddr),
      message,
      suppressed,
    }));
  }

  report(type: "handler-error" | "internal-error", error: unknown): void {
    const text = error instanceof Error ? error.stack ?? error.message : String(error);
    this.#emit(type, (suppressed) => ({ type, error: text, suppressed }));
  }

  #emit(key: string, event: (suppressed: number) => HttpServerEvent): void {
    const { report, suppressed } = this.#throttle.pass(key, performance.now());
    if (!report || !this.#onEvent) return;
    try {
      this.#onEvent(event(suppressed));
    } catch {
      // A logger that throws must not take the server with it.
    }
  }
}

function formatRemote(address: Deno.NetAddr): string {
  return address.hostname.includes(":")
    ? `[${address.hostname}]:${address.port}`
    : `${address.hostname}:${address.port}`;
}
