/**
 * The proxy's counters: what `TcpProxy.stats()` returns and the metrics endpoint serves.
 * The server says what happened (a connection opened, a connect failed, a relay ended); this
 * module is the one place that knows how each event moves the counters of
 * {@linkcode ProxyStats}, and how per-backend health is read into a snapshot.
 *
 * @module
 */

import type { RelayResult } from "../relay.ts";
import type { Balancer } from "./balancer.ts";
import type { ProxyStats } from "./types.ts";

/** One backend's entry of {@linkcode ProxyStats.backends}. */
type BackendStats = ProxyStats["backends"][string];

/**
 * Counters since the proxy started; reloads keep them. Backends are keyed `cluster/host:port`
 * and, once counted, stay listed after a reload removes them: their totals still happened.
 */
export class ProxyCounters {
  #stats: ProxyStats = {
    connectionsOpen: 0,
    connectionsTotal: 0,
    connectionsRejected: 0,
    connectionsRefused: {},
    bytesIn: 0,
    bytesOut: 0,
    splicedConnections: 0,
    copiedConnections: 0,
    connectFailures: 0,
    acceptErrors: {},
    localErrors: {},
    internalErrors: 0,
    reloads: 0,
    // Per engine: empty on the Deno-conn path, which has none.
    engines: [],
    backends: {},
  };

  /** A connection was accepted and is being served. */
  opened(): void {
    this.#stats.connectionsOpen++;
    this.#stats.connectionsTotal++;
  }

  /** A connection counted by {@linkcode ProxyCounters.opened} has ended. */
  closed(): void {
    this.#stats.connectionsOpen--;
  }

  /** A connection was closed at once: its listener was at `maxConnections`. */
  rejected(): void {
    this.#stats.connectionsRejected++;
  }

  /** A connection was closed by its listener's stages before any backend, for `reason`. */
  refused(reason: string): void {
    const refused = this.#stats.connectionsRefused;
    refused[reason] = (refused[reason] ?? 0) + 1;
  }

  /** `accept()` failed with errno `code`. */
  acceptFailed(code: string): void {
    this.#stats.acceptErrors[code] = (this.#stats.acceptErrors[code] ?? 0) + 1;
  }

  /** A connect failed for the proxy's own reason `code`; no backend is blamed. */
  localError(code: string): void {
    this.#stats.localErrors[code] = (this.#stats.localErrors[code] ?? 0) + 1;
  }

  /** A bug (in the proxy or its `onEvent`) was caught. */
  internalError(): void {
    this.#stats.internalErrors++;
  }

  /** A new spec was applied. */
  reloaded(): void {
    this.#stats.reloads++;
  }

  /** A connect to `address` of `cluster` starts: the backend is listed from now on. */
  connecting(cluster: string, address: string): void {
    this.#stats.backends[backendKey(cluster, address)] ??= emptyBackend(cluster);
  }

  /** A connect announced by {@linkcode ProxyCounters.connecting} succeeded. */
  connected(cluster: string, address: string): void {
    this.#stats.backends[backendKey(cluster, address)].connections++;
  }

  /** A connect announced by {@linkcode ProxyCounters.connecting} failed by the backend's fault. */
  connectFailed(cluster: string, address: string): void {
    this.#stats.connectFailures++;
    this.#stats.backends[backendKey(cluster, address)].failures++;
  }

  /** A relay to `address` of `cluster`, which had connected, ended with `result`. */
  relayed(cluster: string, address: string, result: RelayResult): void {
    this.#stats.bytesIn += result.aToB;
    this.#stats.bytesOut += result.bToA;
    if (result.mode === "splice") this.#stats.splicedConnections++;
    else this.#stats.copiedConnections++;
    const entry = this.#stats.backends[backendKey(cluster, address)];
    entry.bytesIn += result.aToB;
    entry.bytesOut += result.bToA;
  }

  /**
   * A copy of the counters that later events do not change, with each backend's connections
   * and health as its cluster's balancer sees them at `now`. Every backend of `clusters` is
   * listed, tried or not.
   */
  snapshot(
    clusters: Iterable<{ readonly spec: { readonly name: string }; readonly balancer: Balancer }>,
    now: number,
  ): ProxyStats {
    const backends = structuredClone(this.#stats.backends);
    for (const { spec: { name }, balancer } of clusters) {
      for (const entry of balancer.snapshot(now)) {
        const key = backendKey(name, entry.address);
        backends[key] ??= emptyBackend(name);
        backends[key].active = entry.active;
        backends[key].ejected = entry.ejected;
        backends[key].up = entry.up;
      }
    }
    return {
      ...this.#stats,
      acceptErrors: { ...this.#stats.acceptErrors },
      localErrors: { ...this.#stats.localErrors },
      connectionsRefused: { ...this.#stats.connectionsRefused },
      engines: [...this.#stats.engines],
      backends,
    };
  }
}

function backendKey(cluster: string, address: string): string {
  return `${cluster}/${address}`;
}

function emptyBackend(cluster: string): BackendStats {
  return {
    cluster,
    active: 0,
    ejected: false,
    up: true,
    connections: 0,
    failures: 0,
    bytesIn: 0,
    bytesOut: 0,
  };
}
