/**
 * The L4 TCP proxy's core: hot reconfiguration, health checks, DNS discovery, runtime backend
 * changes and graceful drain, around one of two data planes: the engines
 * (proxy/native_plane.ts), or without them Deno listeners with a relay() per connection
 * (proxy/deno_plane.ts). What happens is counted by proxy/stats.ts. The CLI (`proxy.ts`), the
 * config file and the admin endpoint build on this.
 *
 * @module
 */

import { Clusters } from "./clusters.ts";
import { Discovery } from "./discovery.ts";
import { type BackendChange, BackendControls } from "./control.ts";
import { Throttle } from "./faults.ts";
import { NativePlane, type PlaneHooks } from "./native_plane.ts";
import { BackendNames } from "./backend_names.ts";
import { ffiAvailable } from "../ffi/libc.ts";
import { usableCpus } from "../ffi/net.ts";
import { ProxyCounters } from "./stats.ts";
import { DenoPlane } from "./deno_plane.ts";
import type { BackendView, ProxyEvent, ProxySpec, ProxyStats, ProxyStatus } from "./types.ts";

/** How often a kind of failure may be reported as a {@linkcode ProxyEvent}. */
const REPORT_INTERVAL_MS = 1_000;
/** How long a start or reload waits for backend names to resolve (one lookup, as DNS discovery's). */
const NAME_WAIT_MS = 2_000;

/** Options of {@linkcode TcpProxy.start}. */
export interface TcpProxyOptions {
  /** Receives every {@linkcode ProxyEvent}; it must not throw. */
  onEvent?: (event: ProxyEvent) => void;
  /**
   * Listening sockets taken over from another process, by listener address: those listeners
   * serve them instead of binding (the native data plane only). Fds no listener uses stay the
   * caller's, as do all of them when start throws.
   */
  listeningSockets?: ReadonlyMap<string, number>;
}

/**
 * A running TCP proxy. Start it with {@linkcode TcpProxy.start} (or {@linkcode startProxy} from a
 * config); {@linkcode TcpProxy.reload} applies a new spec without touching established
 * connections; {@linkcode TcpProxy.stats} reads the counters; {@linkcode TcpProxy.shutdown}
 * stops accepting and drains.
 *
 * To reconfigure from a new config file, pass it through {@linkcode specFromConfig}:
 * `proxy.reload(specFromConfig(config))`.
 *
 * @example
 * ```ts
 * import { specFromConfig, TcpProxy } from "@zerocopy/splice/proxy";
 * import { applyConfig, parseConfig } from "@zerocopy/splice/config";
 *
 * const config = parseConfig(`
 * [[listeners]]
 * address = "127.0.0.1:0"
 *
 * [clusters.app]
 * frontends = [{ address = "127.0.0.1:0" }]
 * backends = [{ address = "127.0.0.1:9000" }]
 * `);
 * applyConfig(config);
 * const proxy = TcpProxy.start(specFromConfig(config), {
 *   onEvent: (event) => console.log(event.type),
 * });
 * console.log(proxy.listenerPorts["127.0.0.1:0"]); // the port the kernel picked
 * console.log(proxy.stats().connectionsTotal); // 0
 * await proxy.shutdown();
 * ```
 */
export class TcpProxy {
  #spec: ProxySpec;
  #clusters = new Clusters();
  #onEvent: (event: ProxyEvent) => void;
  #stopping = false;
  #throttle = new Throttle(REPORT_INTERVAL_MS);
  #counters = new ProxyCounters();
  /** The spec as the file (or the embedder) gave it, before DNS and runtime changes. */
  #file: ProxySpec;
  /** Backends found through DNS, applied as they change. */
  #discovery = new Discovery(() => this.#rediscovered(), (event) => this.#emit(event));
  /** Health checks and runtime changes: each backend's out-of-service bits and weights. */
  #backends = new BackendControls(
    (cluster, backend, bits) => this.#setOut(cluster, backend, bits),
    (event) => this.#emit(event),
  );
  /** Backend host names as last resolved, for the engines (the Deno path resolves per connect). */
  #names = new BackendNames();
  /** The engines' data plane; null on the Deno-conn path (no FFI, or no engine could start). */
  #native: NativePlane | null = null;
  /** The Deno-conn path's data plane, when the engines do not run. */
  #deno: DenoPlane | null = null;

  private constructor(spec: ProxySpec, onEvent: (event: ProxyEvent) => void) {
    this.#spec = spec;
    this.#file = spec;
    this.#onEvent = onEvent;
  }

  /**
   * Starts listening on every listener of `spec`; throws if one cannot listen (and closes the
   * ones already started). `onEvent` receives every {@linkcode ProxyEvent}; it must not throw.
   *
   * @example
   * ```ts
   * import { specFromConfig, TcpProxy } from "@zerocopy/splice/proxy";
   * import { parseConfig } from "@zerocopy/splice/config";
   *
   * const spec = specFromConfig(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'));
   * const proxy = TcpProxy.start(spec, { onEvent: (event) => console.log(event) });
   * await proxy.shutdown();
   * ```
   */
  static start(file: ProxySpec, options?: TcpProxyOptions): TcpProxy {
    const proxy = new TcpProxy(file, options?.onEvent ?? (() => {}));
    proxy.#discovery.apply(file);
    return proxy.#begin(file, options);
  }

  /**
   * Like {@linkcode TcpProxy.start}, but listens only once the first DNS lookups of the
   * backends found through DNS (`srv`, `host`) have answered or failed (each is bounded to 2
   * s): a connection accepted earlier would find no backend in such a cluster. Backends given
   * by host name are looked up in the same wait, off the main thread (`start` looks them up in
   * line). proxy.ts starts this way, and so takes over sockets this way.
   *
   * @example
   * ```ts
   * import { specFromConfig, TcpProxy } from "@zerocopy/splice/proxy";
   * import { parseConfig } from "@zerocopy/splice/config";
   *
   * const spec = specFromConfig(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'));
   * const proxy = await TcpProxy.startResolved(spec);
   * await proxy.shutdown();
   * ```
   */
  static async startResolved(file: ProxySpec, options?: TcpProxyOptions): Promise<TcpProxy> {
    const proxy = new TcpProxy(file, options?.onEvent ?? (() => {}));
    proxy.#discovery.apply(file);
    await Promise.all([
      proxy.#discovery.settled(),
      ffiAvailable() ? proxy.#names.refresh(file, NAME_WAIT_MS) : undefined,
    ]);
    return proxy.#begin(file, options);
  }

  /** Starts the data plane on `file` with what DNS has found so far; see start(). */
  #begin(file: ProxySpec, options?: TcpProxyOptions): TcpProxy {
    // The spec as run: the file's, with DNS's backends and the runtime weights (none yet).
    this.#file = file;
    const spec = this.#backends.apply(this.#discovery.expand(file));
    this.#spec = spec;
    this.#applyClusters(spec);
    const inherited = options?.listeningSockets ?? new Map<string, number>();
    try {
      if (ffiAvailable()) {
        const engines = spec.engines || usableCpus();
        this.#native = NativePlane.start(
          spec,
          this.#planeHooks(),
          engines,
          this.#names,
          inherited,
        );
        if (this.#native !== null) {
          for (const [address, port] of Object.entries(this.#native.listenerPorts)) {
            this.#emit({ type: "listening", address, port });
          }
          return this;
        }
      }
      if (inherited.size > 0) {
        throw new Error(
          "Cannot take the listeners over: " +
            (ffiAvailable() ? "the engines could not start" : "it needs --allow-ffi"),
        );
      }
      this.#deno = new DenoPlane({
        spec: () => this.#spec,
        clusters: this.#clusters,
        counters: this.#counters,
        throttle: this.#throttle,
        stopping: () => this.#stopping,
        emit: (event) => this.#emit(event),
        internalError: (error) => this.#internalError(error),
      });
      this.#deno.start(spec.listeners);
    } catch (error) {
      // Nothing of a proxy that did not start keeps running: checks, lookups, their timers.
      void this.#backends.stop();
      void this.#discovery.stop();
      throw error;
    }
    return this;
  }

  /**
   * The port each listener got, by configured address (useful with port 0). Listeners removed by
   * a reload or closed by {@linkcode TcpProxy.shutdown} are absent.
   *
   * @example
   * ```ts
   * import { startProxy } from "@zerocopy/splice/proxy";
   * import { parseConfig } from "@zerocopy/splice/config";
   *
   * const proxy = startProxy(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'));
   * const port = proxy.listenerPorts["127.0.0.1:0"];
   * console.log(`connect to 127.0.0.1:${port}`);
   * await proxy.shutdown();
   * ```
   */
  get listenerPorts(): Record<string, number> {
    return (this.#native ?? this.#deno)?.listenerPorts ?? {};
  }

  /**
   * A copy of the counters, with per-backend health; later traffic does not change it.
   *
   * @example
   * ```ts
   * import { startProxy } from "@zerocopy/splice/proxy";
   * import { parseConfig } from "@zerocopy/splice/config";
   *
   * const proxy = startProxy(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'));
   * const { connectionsOpen, connectionsTotal, backends } = proxy.stats();
   * console.log(connectionsOpen, connectionsTotal, Object.keys(backends));
   * await proxy.shutdown();
   * ```
   */
  stats(): ProxyStats {
    if (this.#native !== null) return this.#native.stats(this.#counters.snapshot([], 0));
    return this.#counters.snapshot(this.#clusters.values(), performance.now());
  }

  /**
   * Changes a backend at run time, without a reload: `weight` (0 to 1000000) and/or `state`
   * (`"ready"`; `"drain"`: no new connections, open ones finish; `"maint"`: the same, and its
   * health checks paused). A later reload keeps the change only if the file left that backend
   * as it was. Returns the backend as {@linkcode TcpProxy.backend} shows it, or null when the
   * cluster has no such backend.
   *
   * @example
   * ```ts
   * import { startProxy } from "@zerocopy/splice/proxy";
   * import { parseConfig } from "@zerocopy/splice/config";
   *
   * const proxy = startProxy(parseConfig(`
   * [[listeners]]
   * address = "127.0.0.1:0"
   *
   * [clusters.app]
   * frontends = [{ address = "127.0.0.1:0" }]
   * backends = [{ address = "127.0.0.1:9000" }, { address = "127.0.0.1:9001" }]
   * `));
   * console.log(proxy.setBackend("app", "127.0.0.1:9000", { state: "drain" })?.state); // drain
   * console.log(proxy.backend("app", "127.0.0.1:9001")?.weight); // 100
   * await proxy.shutdown();
   * ```
   */
  setBackend(cluster: string, backend: string, change: BackendChange): BackendView | null {
    if (!this.#backends.change(cluster, backend, change)) return null;
    if (change.weight !== undefined) this.#run(this.#backends.effective());
    return this.backend(cluster, backend);
  }

  /**
   * A backend as the proxy runs it: its weight and runtime state, whether its health check
   * says it is up and when it last ran, and its counters; null when the cluster has no such
   * backend.
   *
   * @example
   * ```ts
   * import { startProxy } from "@zerocopy/splice/proxy";
   * import { parseConfig } from "@zerocopy/splice/config";
   *
   * const proxy = startProxy(parseConfig(`
   * [[listeners]]
   * address = "127.0.0.1:0"
   *
   * [clusters.app]
   * frontends = [{ address = "127.0.0.1:0" }]
   * backends = [{ address = "127.0.0.1:9000", weight = 5 }]
   * `));
   * const { weight, state, up } = proxy.backend("app", "127.0.0.1:9000")!;
   * console.log(weight, state, up); // 5 ready true
   * await proxy.shutdown();
   * ```
   */
  backend(cluster: string, backend: string): BackendView | null {
    return this.#backends.view(cluster, backend, this.stats().backends[`${cluster}/${backend}`]);
  }

  /**
   * What the admin endpoint's `/status` and status page show: the stats, the listeners with
   * their ports, and each backend as {@linkcode TcpProxy.backend} shows it (a backend a reload
   * removed stays listed with its totals, in state `"ready"` and weight 0).
   *
   * @example
   * ```ts
   * import { startProxy } from "@zerocopy/splice/proxy";
   * import { parseConfig } from "@zerocopy/splice/config";
   *
   * const proxy = startProxy(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'));
   * console.log(proxy.status().listeners[0].address); // 127.0.0.1:0
   * await proxy.shutdown();
   * ```
   */
  status(): ProxyStatus {
    return this.#backends.status(this.stats(), this.listenerPorts);
  }

  /**
   * Applies a new spec: new listeners start, removed ones stop accepting, clusters apply to
   * new connections. Established connections are not touched. A listener that cannot start
   * is reported (a `"listen-failed"` {@linkcode ProxyEvent}) and the others still apply.
   * Backends given by host name keep the address last found for them (a name never seen is
   * looked up in line, blocking); {@linkcode TcpProxy.reloadResolved} looks them all up again
   * first, off the main thread.
   *
   * From a config, reload with `proxy.reload(specFromConfig(config))`; the splice pipe capacity
   * that {@linkcode startProxy} applied is process-wide and cannot change after the first apply.
   *
   * @returns what changed, for the reload log line: listener addresses `added` and `removed`,
   * and the names of the `clusters` that were added, changed or removed
   *
   * @example
   * ```ts
   * import { specFromConfig, startProxy } from "@zerocopy/splice/proxy";
   * import { parseConfig } from "@zerocopy/splice/config";
   *
   * const proxy = startProxy(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'));
   * const next = parseConfig(`
   * [[listeners]]
   * address = "127.0.0.1:0"
   *
   * [clusters.app]
   * frontends = [{ address = "127.0.0.1:0" }]
   * backends = [{ address = "127.0.0.1:9000" }]
   * `);
   * const { added, removed, clusters } = proxy.reload(specFromConfig(next));
   * console.log(added, removed, clusters); // [] [] ["app"]
   * await proxy.shutdown();
   * ```
   */
  reload(file: ProxySpec): { added: string[]; removed: string[]; clusters: string[] } {
    this.#file = file;
    this.#discovery.apply(file);
    const spec = this.#backends.apply(this.#discovery.expand(file));
    this.#spec = spec;
    const changed = this.#applyClusters(spec);
    const native = this.#native;
    const { added, removed } = native === null
      ? this.#deno?.reload(spec) ?? { added: [], removed: [] }
      : this.#reloadNative(native, spec, changed);
    this.#counters.reloaded();
    return { added, removed, clusters: changed };
  }

  /**
   * {@linkcode TcpProxy.reload}, once the backends given by host name have been looked up
   * again off the main thread (at most 2 s; a name with no answer by then keeps its last
   * address, and takes its answer when it comes). `reload` itself looks up in line only names
   * it has never seen, which blocks for as long as the resolver waits. proxy.ts reloads this way.
   *
   * @example
   * ```ts
   * import { specFromConfig, startProxy } from "@zerocopy/splice/proxy";
   * import { parseConfig } from "@zerocopy/splice/config";
   *
   * const proxy = startProxy(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'));
   * const next = parseConfig(`
   * [[listeners]]
   * address = "127.0.0.1:0"
   *
   * [clusters.app]
   * frontends = [{ address = "127.0.0.1:0" }]
   * backends = [{ address = "localhost:9000" }]
   * `);
   * const { clusters } = await proxy.reloadResolved(specFromConfig(next));
   * console.log(clusters); // ["app"]
   * await proxy.shutdown();
   * ```
   */
  async reloadResolved(
    file: ProxySpec,
  ): Promise<{ added: string[]; removed: string[]; clusters: string[] }> {
    if (this.#native !== null) await this.#names.refresh(file, NAME_WAIT_MS);
    return this.reload(file);
  }

  /**
   * Hands the listening sockets to a new process (a takeover, see proxy/takeover.ts): `send`
   * passes them on (their listener addresses, ports and fds) and throws when it cannot. Once
   * it returned, this proxy releases its listeners rather than shutting them down, so that a
   * later {@linkcode TcpProxy.shutdown} drains without refusing a connection the new process
   * would have served; the fds stay this proxy's. Throws on the Deno-conn path, which has no
   * fds to give.
   *
   * @example
   * ```ts ignore
   * proxy.handOver((sockets) => console.log(sockets)); // [{ address, port, fd }]
   * ```
   */
  handOver(send: (sockets: { address: string; port: number; fd: number }[]) => void): void {
    if (this.#native === null) {
      throw new Error("Cannot hand the listeners over: they are Deno listeners (no --allow-ffi)");
    }
    this.#native.handOver(send);
  }

  /**
   * After a takeover (`listeningSockets` at start): waits, up to `timeoutMs`, until every
   * engine accepts from its listeners, and resolves with whether all do. Then tell the process
   * the sockets came from to let go of them, and call {@linkcode TcpProxy.ownListeners}.
   *
   * @example
   * ```ts ignore
   * if (await proxy.serving(5_000)) await finishTakeover(target);
   * ```
   */
  serving(timeoutMs: number): Promise<boolean> {
    return this.#native?.applied(timeoutMs) ?? Promise.resolve(this.#deno !== null);
  }

  /**
   * The sockets taken over at start are this process's alone now: until this is called, a
   * listener removed (or a shutdown) releases them instead of shutting them down, because the
   * process they came from may still serve them.
   *
   * @example
   * ```ts ignore
   * await finishTakeover(target);
   * proxy.ownListeners();
   * ```
   */
  ownListeners(): void {
    this.#native?.ownListeners();
  }

  /**
   * Stops accepting, lets relays finish for up to the drain timeout
   * ({@linkcode ProxySpec.drainTimeoutMs}), then ends the rest. Resolves when every connection
   * is closed. The proxy cannot be started again; start a new one.
   *
   * @example
   * ```ts
   * import { startProxy } from "@zerocopy/splice/proxy";
   * import { parseConfig } from "@zerocopy/splice/config";
   *
   * const proxy = startProxy(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'));
   * Deno.addSignalListener("SIGTERM", async () => {
   *   await proxy.shutdown();
   *   Deno.exit(0);
   * });
   * ```
   */
  async shutdown(): Promise<void> {
    this.#stopping = true;
    // Not awaited first: the listeners stop accepting now, in this same turn.
    const checksStopped = Promise.all([this.#backends.stop(), this.#discovery.stop()]);
    if (this.#native !== null) {
      const addresses = Object.keys(this.#native.listenerPorts);
      const stopped = this.#native.shutdown(this.#spec.drainTimeoutMs);
      for (const address of addresses) this.#emit({ type: "listener-closed", address });
      await Promise.all([stopped, checksStopped]);
      return;
    }
    await Promise.all([this.#deno?.shutdown(this.#spec.drainTimeoutMs), checksStopped]);
  }

  /** The engines' side of a reload: listeners, health of changed clusters, events. */
  #reloadNative(
    native: NativePlane,
    spec: ProxySpec,
    changed: string[],
  ): { added: string[]; removed: string[] } {
    const { added, removed, failed } = native.reload(spec);
    native.forgetHealth(changed);
    this.#refreshOut(spec);
    for (const address of removed) this.#emit({ type: "listener-closed", address });
    const ports = native.listenerPorts;
    for (const address of added) this.#emit({ type: "listening", address, port: ports[address] });
    for (const [address, error] of failed) {
      this.#emit({ type: "listen-failed", address, error: error.message });
    }
    return { added, removed };
  }

  /**
   * DNS changed a cluster's backends: the spec is run again, as a reload of the clusters only
   * (listeners untouched, not counted as a reload): backends that stay keep their state.
   */
  #rediscovered(): void {
    if (!this.#stopping) this.#run(this.#backends.apply(this.#discovery.expand(this.#file)));
  }

  /** Runs `spec` with the same listeners (new backends or weights): not counted as a reload. */
  #run(spec: ProxySpec): void {
    this.#spec = spec;
    if (this.#native !== null) this.#native.reload(spec);
    this.#applyClusters(spec);
    this.#refreshOut(spec);
  }

  /** Puts a backend's out-of-service bits into effect in the data plane that runs. */
  #setOut(cluster: string, backend: string, bits: number): void {
    if (this.#native !== null) this.#native.setBackendOut(cluster, backend, bits);
    else this.#clusters.get(cluster)?.balancer.setOut(backend, bits);
  }

  /** Every backend's bits again, after the set of backends or their runtime changes moved. */
  #refreshOut(spec: ProxySpec): void {
    for (const cluster of spec.clusters) {
      for (const { address } of cluster.backends) {
        this.#setOut(cluster.name, address, this.#backends.outBits(cluster.name, address));
      }
    }
  }

  /** How the engines' reports reach the proxy's events. */
  #planeHooks(): PlaneHooks {
    return {
      record: (record) => this.#emit({ type: "connection", record }),
      event: (event) => this.#emit(event),
      fatal: (message) => this.#internalError(new Error(message)),
    };
  }

  #applyClusters(spec: ProxySpec): string[] {
    return this.#clusters.apply(
      spec,
      (cluster, backend) => this.#backends.outBits(cluster, backend),
    );
  }

  /** Reports a bug (at most once a second) and counts it; never throws. */
  #internalError(error: unknown): void {
    this.#counters.internalError();
    const { report, suppressed } = this.#throttle.pass("internal", performance.now());
    if (!report) return;
    const message = error instanceof Error ? error.stack ?? error.message : String(error);
    this.#emit({ type: "internal-error", error: message, suppressed });
  }

  /** Passes an event to `onEvent`; an `onEvent` that throws is counted, never propagated. */
  #emit(event: ProxyEvent): void {
    try {
      this.#onEvent(event);
    } catch (error) {
      // Reporting an internal error failed too: it is counted already.
      if (event.type !== "internal-error") this.#internalError(error);
    }
  }
}
