/**
 * Dialing and listening for the Deno-conn data plane (proxy/server.ts): a connect bounded in
 * time, the backend attempts of one connection, and errors that name the address.
 *
 * @module
 */

import type { Balancer } from "./balancer.ts";
import { hashText } from "./balancer.ts";
import { errorCode, failsEveryBackend, localConnectFailure } from "./faults.ts";
import type { ProxyCounters } from "./stats.ts";
import type { BackendSpec, ClusterSpec } from "./types.ts";

/**
 * `Deno.connect` bounded in time. A connect that times out is aborted through its signal, which
 * closes its socket at once: without it the socket would live on through the kernel's SYN
 * retries (about two minutes) and pile up toward the fd limit under a blackholed backend.
 */
export async function connectWithin(
  backend: BackendSpec,
  timeoutMs: number,
): Promise<Deno.TcpConn> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    return await Deno.connect({
      hostname: backend.hostname,
      port: backend.port,
      signal: controller.signal,
    });
  } catch (error) {
    if (!controller.signal.aborted) throw error;
    // Named by the caller, which prefixes the address as it does for Deno's own errors.
    throw new Deno.errors.TimedOut(`Timed out after ${timeoutMs} ms`);
  } finally {
    // Never aborted after success: the signal stays attached to the conn, and aborting it
    // would close the connection.
    clearTimeout(timer);
  }
}

/** The error of a listener that cannot listen, naming its address; same class, cause kept. */
export function listenError(address: string, error: unknown): Error {
  const reason = error instanceof Error ? error.message : String(error);
  const message = `Cannot listen on ${address}: ${reason}`;
  if (!(error instanceof Error)) return new Error(message);
  const Kind = error.constructor as new (message: string, options?: ErrorOptions) => Error;
  try {
    return new Kind(message, { cause: error });
  } catch {
    return new Error(message, { cause: error });
  }
}

/** Closes `conn`; one already closed has nothing left to release. */
export function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/** Where {@linkcode dialBackend} reports what happened. */
export interface DialReport {
  counters: ProxyCounters;
  /** A connect failed for the proxy's own reason `code` (no backend blamed). */
  localError(cluster: string, backend: string, code: string, error: string): void;
  /** This failure ejected the backend. */
  ejected(cluster: string, backend: string): void;
}

/**
 * Tries `runtime`'s backends in policy order until one accepts within `timeoutMs`, for a
 * client at `client` (`host:port`, hashed by source_hash). Only what a backend caused
 * (refused, timed out, reset, unreachable) counts toward its ejection; the proxy's own failures
 * (out of fds or local ports, not permitted) are counted apart, and end the attempt when every
 * backend would fail the same way.
 */
export async function dialBackend(
  runtime: { spec: ClusterSpec; balancer: Balancer },
  client: string,
  timeoutMs: number,
  report: DialReport,
): Promise<
  { conn: Deno.TcpConn; spec: BackendSpec } | { end: "no-backend" | "local-error"; error?: string }
> {
  const tried = new Set<string>();
  let lastError: string | undefined;
  const host = client.slice(0, client.lastIndexOf(":")).replace(/^\[(.*)\]$/, "$1");
  const clientHash = runtime.balancer.policy === "source_hash" ? hashText(host) : 0;
  const cluster = runtime.spec.name;
  for (;;) {
    const picked = runtime.balancer.pick(performance.now(), tried, clientHash);
    if (!picked) return { end: "no-backend", error: lastError };
    tried.add(picked.address);
    const spec = runtime.spec.backends.find((b) => b.address === picked.address)!;
    report.counters.connecting(cluster, spec.address);
    try {
      const conn = await connectWithin(spec, timeoutMs);
      runtime.balancer.connected(spec.address);
      report.counters.connected(cluster, spec.address);
      return { conn, spec };
    } catch (error) {
      const code = errorCode(error);
      lastError = `Cannot connect to ${spec.address}: ${
        error instanceof Error ? error.message : String(error)
      }`;
      const local = localConnectFailure(code);
      if (local !== null) {
        // Not the backend's fault: neither counted against it nor toward its ejection.
        report.localError(cluster, spec.address, local, lastError);
        if (failsEveryBackend(local)) return { end: "local-error", error: lastError };
        continue;
      }
      report.counters.connectFailed(cluster, spec.address);
      if (runtime.balancer.failed(spec.address, performance.now())) {
        report.ejected(cluster, spec.address);
      }
    }
  }
}
