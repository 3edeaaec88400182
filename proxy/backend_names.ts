/**
 * Backend host names resolved for the engines' routes, looked up off the main thread.
 *
 * The engines connect to socket addresses, so a backend given by name (`app.internal:8080`) is
 * resolved when a spec is applied. `getaddrinfo` blocks for as long as the resolver waits, which
 * on a slow or dead DNS server is seconds; on the main thread that would stall the admin
 * endpoint, signals and the access log (the engines serve on regardless). The lookups therefore
 * run on Deno's blocking thread pool before a reload is applied ({@linkcode BackendNames.refresh}),
 * and applying reads what they found. Only a name applied without a refresh first (TcpProxy's
 * synchronous `start`, or a library caller's `reload` of a name never seen) is looked up in line.
 *
 * @module
 */

import { encodeSockaddr, resolveSockaddrs, resolveSockaddrsAsync } from "../ffi/net.ts";
import { netRefusal } from "../engine/endpoint.ts";
import type { ProxySpec } from "./types.ts";

/** What a name resolved to: its first address (port 0), or why it did not. */
type Found = Uint8Array | Error;

/** Backend host names and the address each resolved to when last looked up. */
export class BackendNames {
  #found = new Map<string, Found>();
  #changed: () => void = () => {};

  /** `changed` runs when an answer that came after its refresh's wait changed a name. */
  onChange(changed: () => void): void {
    this.#changed = changed;
  }

  /**
   * Looks up every backend name of `spec` again, in parallel and off the main thread, waiting at
   * most `timeoutMs`. A name with no answer by then keeps its last address, or fails as timed
   * out if it had none; its answer, when it comes, replaces that (and `onChange` runs).
   */
  async refresh(spec: ProxySpec, timeoutMs: number): Promise<void> {
    const names = namesOf(spec);
    const pending = new Set(names);
    const lookups = [...names].map(async (name) => {
      let found: Found;
      try {
        found = (await resolveSockaddrsAsync(name, 0))[0];
      } catch (error) {
        found = error instanceof Error ? error : new Error(String(error));
      }
      const late = !pending.has(name);
      pending.delete(name);
      const before = this.#found.get(name);
      this.#found.set(name, found);
      if (late && !same(before, found)) this.#changed();
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<void>((resolve) => timer = setTimeout(resolve, timeoutMs));
    try {
      await Promise.race([Promise.all(lookups), expired]);
    } finally {
      clearTimeout(timer);
    }
    for (const name of pending) {
      pending.delete(name); // its answer, when it comes, is a late one
      if (!this.#found.has(name)) {
        this.#found.set(
          name,
          new TypeError(`Cannot resolve "${name}": no answer within ${timeoutMs} ms`),
        );
      }
    }
  }

  /**
   * The socket address of backend `hostname:port`: an IP literal as it is, a name as last
   * found (looked up here, blocking, if it never was). Throws the lookup's error.
   */
  sockaddr(hostname: string, port: number): Uint8Array {
    const literal = encodeSockaddr(hostname, port);
    if (literal !== null) return literal;
    let found = this.#found.get(hostname);
    if (found === undefined) {
      try {
        found = resolveSockaddrs(hostname, 0)[0];
      } catch (error) {
        found = error instanceof Error ? error : new Error(String(error));
      }
      this.#found.set(hostname, found);
    }
    if (found instanceof Error) throw found;
    const out = found.slice();
    new DataView(out.buffer).setUint16(2, port, false);
    return out;
  }

  /** Forgets the names `spec` no longer has. */
  keepOnly(spec: ProxySpec): void {
    const names = namesOf(spec);
    for (const name of this.#found.keys()) if (!names.has(name)) this.#found.delete(name);
  }
}

/** The backend host names of `spec` that need a lookup (not IP literals, permitted). */
function namesOf(spec: ProxySpec): Set<string> {
  const names = new Set<string>();
  for (const cluster of spec.clusters) {
    for (const backend of cluster.backends) {
      if (encodeSockaddr(backend.hostname, 0) !== null) continue;
      if (netRefusal(backend) !== null) continue;
      names.add(backend.hostname);
    }
  }
  return names;
}

function same(a: Found | undefined, b: Found): boolean {
  if (a === undefined) return false;
  if (a instanceof Error || b instanceof Error) {
    return a instanceof Error && b instanceof Error && a.message === b.message;
  }
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}
