/**
 * The L4 TCP proxy's core: listeners, backend choice with retry and passive health, `relay()`
 * per connection, hot reconfiguration, stats and graceful drain. The CLI (`proxy.ts`), the
 * config file and the metrics endpoint build on this.
 *
 * @module
 */

import { relay, type RelayMode, type RelayResult } from "../relay.ts";
import { Balancer, type LoadBalancing } from "./balancer.ts";

/** A listening address. */
export interface ListenerSpec {
  /** `host:port` as configured; the key that frontends refer to. */
  address: string;
  hostname: string;
  /** 0 picks a free port (see {@linkcode TcpProxy.listenerPorts}). */
  port: number;
  /** Connections beyond this are closed at once. */
  maxConnections: number;
}

/** A backend server. */
export interface BackendSpec {
  address: string;
  hostname: string;
  port: number;
  weight: number;
}

/** A cluster: the backends that serve some frontends. */
export interface ClusterSpec {
  name: string;
  loadBalancing: LoadBalancing;
  /** Listener addresses whose connections go to this cluster. */
  frontends: string[];
  backends: BackendSpec[];
}

/** Everything the proxy runs on; reloadable as a whole. */
export interface ProxySpec {
  listeners: ListenerSpec[];
  clusters: ClusterSpec[];
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  drainTimeoutMs: number;
  spliceMode: RelayMode;
}

/** One finished connection, for the access log. */
export interface ConnectionRecord {
  client: string;
  listener: string;
  cluster: string;
  backend: string | null;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
  mode: RelayResult["mode"] | "none";
  end: RelayResult["end"] | "no-backend" | "over-limit";
  error?: string;
}

/** Proxy events for logs. */
export type ProxyEvent =
  | { type: "connection"; record: ConnectionRecord }
  | { type: "backend-ejected"; cluster: string; backend: string }
  | { type: "listening"; address: string; port: number }
  | { type: "listener-closed"; address: string }
  | { type: "listen-failed"; address: string; error: string };

/** Counters, as served on the metrics endpoint. */
export interface ProxyStats {
  connectionsOpen: number;
  connectionsTotal: number;
  connectionsRejected: number;
  bytesIn: number;
  bytesOut: number;
  splicedConnections: number;
  copiedConnections: number;
  connectFailures: number;
  reloads: number;
  backends: Record<string, {
    cluster: string;
    active: number;
    ejected: boolean;
    connections: number;
    failures: number;
    bytesIn: number;
    bytesOut: number;
  }>;
}

interface RunningListener {
  spec: ListenerSpec;
  listener: Deno.TcpListener;
  open: number;
  done: Promise<void>;
}

interface ClusterRuntime {
  spec: ClusterSpec;
  balancer: Balancer;
}

/**
 * A running TCP proxy. Start it with {@linkcode TcpProxy.start}; {@linkcode TcpProxy.reload}
 * applies a new spec without touching established connections; {@linkcode TcpProxy.shutdown}
 * stops accepting and drains.
 */
export class TcpProxy {
  #spec: ProxySpec;
  #listeners = new Map<string, RunningListener>();
  #clusters = new Map<string, ClusterRuntime>();
  #byFrontend = new Map<string, ClusterRuntime>();
  #relays = new Set<AbortController>();
  #settled = new Set<Promise<void>>();
  #onEvent: (event: ProxyEvent) => void;
  #stopping = false;
  #stats: ProxyStats = {
    connectionsOpen: 0,
    connectionsTotal: 0,
    connectionsRejected: 0,
    bytesIn: 0,
    bytesOut: 0,
    splicedConnections: 0,
    copiedConnections: 0,
    connectFailures: 0,
    reloads: 0,
    backends: {},
  };

  private constructor(spec: ProxySpec, onEvent: (event: ProxyEvent) => void) {
    this.#spec = spec;
    this.#onEvent = onEvent;
  }

  /** Starts listening on every listener of `spec`; throws if one cannot listen. */
  static start(spec: ProxySpec, options?: { onEvent?: (event: ProxyEvent) => void }): TcpProxy {
    const proxy = new TcpProxy(spec, options?.onEvent ?? (() => {}));
    proxy.#applyClusters(spec);
    try {
      for (const listener of spec.listeners) proxy.#listen(listener);
    } catch (error) {
      for (const running of proxy.#listeners.values()) running.listener.close();
      throw error;
    }
    return proxy;
  }

  /** The port each listener got, by configured address (useful with port 0). */
  get listenerPorts(): Record<string, number> {
    return Object.fromEntries(
      [...this.#listeners].map(([address, l]) => [address, l.listener.addr.port]),
    );
  }

  /** A copy of the counters, with per-backend health. */
  stats(): ProxyStats {
    const now = performance.now();
    const backends = structuredClone(this.#stats.backends);
    for (const runtime of this.#clusters.values()) {
      for (const entry of runtime.balancer.snapshot(now)) {
        const key = backendKey(runtime.spec.name, entry.address);
        backends[key] ??= emptyBackend(runtime.spec.name);
        backends[key].active = entry.active;
        backends[key].ejected = entry.ejected;
      }
    }
    return { ...this.#stats, backends };
  }

  /**
   * Applies a new spec: new listeners start, removed ones stop accepting, clusters apply to
   * new connections. Established connections are not touched. A listener that cannot start
   * is reported (event) and the others still apply.
   *
   * @returns what changed, for the reload log line
   */
  reload(spec: ProxySpec): { added: string[]; removed: string[]; clusters: string[] } {
    const added: string[] = [];
    const removed: string[] = [];
    const wanted = new Set(spec.listeners.map((l) => l.address));
    for (const [address, running] of this.#listeners) {
      if (!wanted.has(address)) {
        this.#stopListener(running);
        removed.push(address);
      }
    }
    this.#spec = spec;
    const changed = this.#applyClusters(spec);
    for (const listener of spec.listeners) {
      const running = this.#listeners.get(listener.address);
      if (running) {
        running.spec = listener;
        continue;
      }
      try {
        this.#listen(listener);
        added.push(listener.address);
      } catch (error) {
        this.#onEvent({ type: "listen-failed", address: listener.address, error: String(error) });
      }
    }
    this.#stats.reloads++;
    return { added, removed, clusters: changed };
  }

  /**
   * Stops accepting, lets relays finish for up to the drain timeout, then ends the rest.
   * Resolves when every connection is closed.
   */
  async shutdown(): Promise<void> {
    this.#stopping = true;
    for (const running of [...this.#listeners.values()]) this.#stopListener(running);
    const drained = Promise.all([...this.#settled]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, this.#spec.drainTimeoutMs);
    });
    await Promise.race([drained, deadline]);
    clearTimeout(timer);
    for (const controller of this.#relays) controller.abort();
    await Promise.all([...this.#settled]);
  }

  #applyClusters(spec: ProxySpec): string[] {
    const changed: string[] = [];
    const next = new Map<string, ClusterRuntime>();
    for (const cluster of spec.clusters) {
      const old = this.#clusters.get(cluster.name);
      if (old && JSON.stringify(old.spec) === JSON.stringify(cluster)) {
        next.set(cluster.name, old);
        continue;
      }
      changed.push(cluster.name);
      next.set(cluster.name, {
        spec: cluster,
        balancer: new Balancer(cluster.backends, cluster.loadBalancing),
      });
    }
    for (const name of this.#clusters.keys()) if (!next.has(name)) changed.push(name);
    this.#clusters = next;
    this.#byFrontend = new Map();
    for (const runtime of next.values()) {
      for (const frontend of runtime.spec.frontends) this.#byFrontend.set(frontend, runtime);
    }
    return changed;
  }

  #listen(spec: ListenerSpec): void {
    const listener = Deno.listen({ hostname: spec.hostname, port: spec.port });
    const running: RunningListener = { spec, listener, open: 0, done: Promise.resolve() };
    this.#listeners.set(spec.address, running);
    running.done = this.#acceptLoop(running);
    this.#onEvent({ type: "listening", address: spec.address, port: listener.addr.port });
  }

  #stopListener(running: RunningListener): void {
    if (this.#listeners.get(running.spec.address) === running) {
      this.#listeners.delete(running.spec.address);
    }
    try {
      running.listener.close();
    } catch {
      // already closed
    }
    this.#onEvent({ type: "listener-closed", address: running.spec.address });
  }

  async #acceptLoop(running: RunningListener): Promise<void> {
    for (;;) {
      let client: Deno.TcpConn;
      try {
        client = await running.listener.accept();
      } catch {
        return; // closed by reload or shutdown
      }
      if (this.#stopping) {
        client.close();
        continue;
      }
      if (running.open >= running.spec.maxConnections) {
        this.#stats.connectionsRejected++;
        client.close();
        continue;
      }
      const settled = this.#serve(running, client);
      this.#settled.add(settled);
      settled.finally(() => this.#settled.delete(settled));
    }
  }

  async #serve(running: RunningListener, client: Deno.TcpConn): Promise<void> {
    const started = performance.now();
    const runtime = this.#byFrontend.get(running.spec.address);
    const record: ConnectionRecord = {
      client: `${client.remoteAddr.hostname}:${client.remoteAddr.port}`,
      listener: running.spec.address,
      cluster: runtime?.spec.name ?? "",
      backend: null,
      bytesIn: 0,
      bytesOut: 0,
      durationMs: 0,
      mode: "none",
      end: "no-backend",
    };
    running.open++;
    this.#stats.connectionsOpen++;
    this.#stats.connectionsTotal++;
    try {
      const chosen = runtime ? await this.#connect(runtime) : null;
      if (!chosen) {
        client.close();
        return;
      }
      const [backend, spec] = chosen;
      record.backend = spec.address;
      const controller = new AbortController();
      this.#relays.add(controller);
      try {
        const result = await relay(client, backend, {
          signal: controller.signal,
          idleTimeout: this.#spec.idleTimeoutMs,
          mode: this.#spec.spliceMode,
        });
        record.bytesIn = result.aToB;
        record.bytesOut = result.bToA;
        record.mode = result.mode;
        record.end = result.end;
        if (result.error) record.error = result.error.message;
        this.#count(runtime!.spec.name, spec.address, result);
      } finally {
        this.#relays.delete(controller);
        runtime!.balancer.released(spec.address);
      }
    } finally {
      running.open--;
      this.#stats.connectionsOpen--;
      record.durationMs = Math.round(performance.now() - started);
      this.#onEvent({ type: "connection", record });
    }
  }

  /** Tries backends in policy order until one accepts within the connect timeout. */
  async #connect(runtime: ClusterRuntime): Promise<[Deno.TcpConn, BackendSpec] | null> {
    const tried = new Set<string>();
    for (;;) {
      const picked = runtime.balancer.pick(performance.now(), tried);
      if (!picked) return null;
      tried.add(picked.address);
      const spec = runtime.spec.backends.find((b) => b.address === picked.address)!;
      const key = backendKey(runtime.spec.name, spec.address);
      this.#stats.backends[key] ??= emptyBackend(runtime.spec.name);
      try {
        const conn = await connectWithin(spec, this.#spec.connectTimeoutMs);
        runtime.balancer.connected(spec.address);
        this.#stats.backends[key].connections++;
        return [conn, spec];
      } catch {
        this.#stats.connectFailures++;
        this.#stats.backends[key].failures++;
        if (runtime.balancer.failed(spec.address, performance.now())) {
          this.#onEvent({
            type: "backend-ejected",
            cluster: runtime.spec.name,
            backend: spec.address,
          });
        }
      }
    }
  }

  #count(cluster: string, backend: string, result: RelayResult): void {
    this.#stats.bytesIn += result.aToB;
    this.#stats.bytesOut += result.bToA;
    if (result.mode === "splice") this.#stats.splicedConnections++;
    else this.#stats.copiedConnections++;
    const entry = this.#stats.backends[backendKey(cluster, backend)];
    entry.bytesIn += result.aToB;
    entry.bytesOut += result.bToA;
  }
}

function backendKey(cluster: string, address: string): string {
  return `${cluster}/${address}`;
}

function emptyBackend(cluster: string): ProxyStats["backends"][string] {
  return {
    cluster,
    active: 0,
    ejected: false,
    connections: 0,
    failures: 0,
    bytesIn: 0,
    bytesOut: 0,
  };
}

/**
 * `Deno.connect` bounded in time. Deno cannot cancel a pending connect, so a late success is
 * closed when it arrives instead of leaking.
 */
function connectWithin(backend: BackendSpec, timeoutMs: number): Promise<Deno.TcpConn> {
  return new Promise((resolve, reject) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      reject(new Deno.errors.TimedOut(`connect to ${backend.address} timed out`));
    }, timeoutMs);
    Deno.connect({ hostname: backend.hostname, port: backend.port }).then((conn) => {
      clearTimeout(timer);
      if (timedOut) conn.close();
      else resolve(conn);
    }, (error) => {
      clearTimeout(timer);
      if (!timedOut) reject(error);
    });
  });
}
