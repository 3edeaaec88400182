/**
 * Dialing and listening for the Deno-conn data plane (proxy/server.ts): a connect bounded in
 * time, the backend attempts of one connection and its relay, and errors that name the address.
 *
 * @module
 */

import type { Balancer } from "./balancer.ts";
import { hashText } from "./balancer.ts";
import { errorCode, failsEveryBackend, localConnectFailure } from "./faults.ts";
import type { ProxyCounters } from "./stats.ts";
import type { BackendSpec, ClusterSpec, ConnectionRecord, ProxySpec } from "./types.ts";
import { relay } from "../relay.ts";
import { type DenoPass, firstBytes } from "./deno_stages.ts";

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

/** What {@linkcode relayToCluster} needs of the proxy. */
export interface RelayContext extends Omit<DialReport, "counters"> {
  spec: ProxySpec;
  counters: ProxyCounters;
  /** The relays running, each aborted when the drain timeout passes. */
  relays: Set<AbortController>;
}

/**
 * Connects `client` to a backend of `runtime` and relays until both sides are done, the
 * PROXY header of `send_proxy` and the bytes `preface` read first going to the backend before
 * anything else; fills `record` with the backend, the bytes and the end. Closes `client` when
 * no backend takes it.
 */
export async function relayToCluster(
  runtime: { spec: ClusterSpec; balancer: Balancer },
  client: Deno.TcpConn,
  record: ConnectionRecord,
  preface: DenoPass | null,
  context: RelayContext,
): Promise<void> {
  const chosen = await dialBackend(runtime, record.client, context.spec.connectTimeoutMs, context);
  if ("end" in chosen) {
    record.end = chosen.end;
    if (chosen.error !== undefined) record.error = chosen.error;
    client.close();
    return;
  }
  const { conn: backend, spec } = chosen;
  record.backend = spec.address;
  const controller = new AbortController();
  context.relays.add(controller);
  try {
    const toB = firstBytes(runtime.spec.sendProxy, preface, client);
    const result = await relay(client, backend, {
      signal: controller.signal,
      idleTimeout: context.spec.idleTimeoutMs,
      mode: context.spec.spliceMode,
      ...(toB === null ? {} : { initialData: { toB } }),
    });
    // The client's bytes read before the relay (past its PROXY header, its ClientHello) went as
    // initialData, which relay() does not count: counted here, as the engines count them.
    const read = preface?.rest.length ?? 0;
    const relayed = read === 0 ? result : { ...result, aToB: result.aToB + read };
    record.bytesIn = relayed.aToB;
    record.bytesOut = result.bToA;
    record.mode = result.mode;
    record.end = result.end;
    if (result.error) record.error = result.error.message;
    context.counters.relayed(runtime.spec.name, spec.address, relayed);
  } finally {
    context.relays.delete(controller);
    runtime.balancer.released(spec.address);
  }
}
