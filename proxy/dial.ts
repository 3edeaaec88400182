/**
 * Dialing and listening for the Deno-conn data plane (proxy/server.ts): a connect bounded in
 * time, and errors that name the address.
 *
 * @module
 */

import type { BackendSpec } from "./types.ts";

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
