/**
 * The proxy's native data plane, seen from the main thread (the control plane): it makes the
 * listening sockets, starts one engine per core, hands each engine the routes (listeners,
 * clusters, backends resolved to socket addresses), reads the counters the engines keep in
 * shared memory, and turns their batched records into {@linkcode ConnectionRecord}s. No
 * connection of this plane ever becomes a Deno conn or costs the main thread anything.
 *
 * Listeners: one socket per listener address, in every engine's epoll with EPOLLEXCLUSIVE, so
 * that a new connection wakes one idle engine; `SPLICE_LISTEN_MODE=reuseport` (read when
 * --allow-env grants it) gives each engine its own socket, bound with SO_REUSEPORT, over which
 * the kernel spreads connections by hash. README says what was measured and why.
 *
 * @module
 */

import { closeFd } from "../ffi/pipe.ts";
import { acceptQueueLength, stopListening } from "../ffi/net.ts";
import { RELAY_PIPE_CAPACITY } from "../relay.ts";
import { pipeCapacityOverride } from "../splice_pipe.ts";
import { type Engine, startPlaneEngine } from "../engine/engine.ts";
import { netRefusal } from "../engine/endpoint.ts";
import {
  ACCEPTING,
  BACKEND_ACTIVE,
  BACKEND_FIELDS,
  BACKEND_STATE,
  type BackendRoute,
  CLUSTER_PICKS,
  type ClusterRoute,
  ENGINE_BACKENDS,
  ENGINE_OPEN,
  ENGINE_STRIDE,
  MAX_BACKENDS,
  MAX_CLUSTERS,
  MAX_ENGINES,
  MAX_LISTENERS,
  planeBytes,
  type PlaneReport,
  type PlaneViews,
  planeViews,
  PUBLISHED,
  RELOADING,
  type Routes,
  ticketIndex,
} from "../engine/plane_layout.ts";
import { MODE_AUTO, MODE_COPY, MODE_SPLICE } from "../engine/wire.ts";
import { roundRobinOrder } from "../engine/plane_pick.ts";
import { newIpTable } from "../engine/ip_table.ts";
import { fdHardLimit } from "../ffi/socket_fd.ts";
import { DEFAULT_EJECT_MS, DEFAULT_FAILURES_TO_EJECT, hashText, tierOf } from "./balancer.ts";
import { engineRestartDelay, REFUSAL_REPORT_KEYS, REFUSAL_REPORT_MS, Throttle } from "./faults.ts";
import { planeStats, reportable, toConnectionRecord } from "./plane_reports.ts";

import { listenerRoutes, policyOf } from "./plane_routes.ts";
import { listenerSockets, listenMode } from "./plane_listen.ts";
import type { BackendNames } from "./backend_names.ts";
import type { ConnectionRecord, ListenerSpec, ProxyEvent, ProxySpec, ProxyStats } from "./types.ts";

/** How long a reload waits for an engine to finish the accept it is in (a dead one never does). */
const RELOAD_WAIT_MS = 50;
/** How long a shutdown waits for aborted relays to end. */
const ABORT_WAIT_MS = 5_000;
/** How often a drain looks at the open count. */
const DRAIN_POLL_MS = 10;

/** What the plane tells the proxy around it. */
export interface PlaneHooks {
  record(record: ConnectionRecord): void;
  /** Ejections, and accept and local errors at most once a second each (as on the Deno path). */
  event(event: ProxyEvent): void;
  fatal(message: string): void;
}

/** How often a kind of failure may be reported (as proxy/server.ts does for the Deno path). */
const REPORT_INTERVAL_MS = 1_000;

interface Listener {
  spec: ListenerSpec;
  slot: number;
  /** One per engine (SO_REUSEPORT), or one shared by all (EPOLLEXCLUSIVE). */
  fds: number[];
  port: number;
}

/** The data plane of one proxy, its engines and their shared memory. */
export class NativePlane {
  #engines: Engine[] = [];
  #views: PlaneViews;
  #hooks: PlaneHooks;
  #exclusive: boolean;
  /** The per-address counts of `max_connections_per_ip`, shared by the engines; made on need. */
  #ipTable: SharedArrayBuffer | null = null;
  #listeners = new Map<string, Listener>();
  #backendSlots = new Map<string, number>();
  #clusterSlots = new Map<string, number>();
  #generation = 0;
  /** Per generation, the engines that have not applied it yet, and the fds to close after. */
  #closing = new Map<number, { waiting: Set<number>; fds: number[] }>();
  #spec: ProxySpec;
  #stopped = false;
  /**
   * The listening sockets were handed to another process (a takeover): from then on a
   * listener this plane lets go of is released, never shut down, because shutting down a
   * socket shuts it down for every process that holds it.
   */
  #shared = false;
  /** Per engine, the last generation of routes it said it applied. */
  #appliedBy: number[] = [];
  /** Per engine, when it (re)started, and the wait before its last restart (ms). */
  #startedAt: number[] = [];
  #restartWait: number[] = [];
  #restartTimers = new Set<ReturnType<typeof setTimeout>>();
  #throttle = new Throttle(REPORT_INTERVAL_MS);
  /** Refusals have their own: a flood of them must not hold back the reports of errors. */
  #refusals = new Throttle(REFUSAL_REPORT_MS, REFUSAL_REPORT_KEYS);
  #buffer: SharedArrayBuffer;
  /** Backend names and what they resolved to: applying a spec looks up nothing itself. */
  #names: BackendNames;

  private constructor(spec: ProxySpec, hooks: PlaneHooks, engines: number, names: BackendNames) {
    this.#spec = spec;
    this.#hooks = hooks;
    this.#names = names;
    this.#exclusive = listenMode() === "exclusive";
    const buffer = new SharedArrayBuffer(planeBytes(engines));
    this.#views = planeViews(buffer);
    this.#buffer = buffer;
    for (let i = 0; i < engines; i++) {
      const engine = this.#startEngine(i);
      this.#startedAt[i] = performance.now();
      if (engine === null) {
        for (const started of this.#engines) started.stop();
        this.#engines = [];
        return;
      }
      this.#engines.push(engine);
    }
  }

  /**
   * Starts the plane: its engines, then its listeners. Returns `null` when no engine can start
   * (the caller serves through Deno conns); throws, with nothing left running, when a listener
   * cannot listen. `inherited` are listening sockets taken over from another process, by
   * listener address: such a listener serves that socket instead of making one (it must be a
   * listening TCP socket bound to the listener's address), and this plane owns it from then on; the
   * caller keeps, and closes, the inherited fds no listener used and all of them on a throw.
   * Backend names are taken from `names`, which the caller refreshes before a reload.
   */
  static start(
    spec: ProxySpec,
    hooks: PlaneHooks,
    engines: number,
    names: BackendNames,
    inherited: ReadonlyMap<string, number> = new Map(),
  ): NativePlane | null {
    const plane = new NativePlane(spec, hooks, Math.min(MAX_ENGINES, Math.max(1, engines)), names);
    if (plane.#engines.length === 0) return null;
    if (inherited.size > 0 && !plane.#exclusive) {
      for (const engine of plane.#engines) engine.stop();
      throw new Error(
        "Cannot take the listeners over: SPLICE_LISTEN_MODE=reuseport is set in this process",
      );
    }
    // Until ownListeners(), the process the sockets came from may still serve them.
    plane.#shared = inherited.size > 0;
    try {
      for (const listener of spec.listeners) {
        plane.#listen(listener, inherited.get(listener.address));
      }
    } catch (error) {
      // Inherited sockets stay the caller's on a throw.
      const theirs = new Set(inherited.values());
      for (const listener of plane.#listeners.values()) {
        listener.fds.filter((fd) => !theirs.has(fd)).forEach(closeFd);
      }
      plane.#listeners.clear();
      for (const engine of plane.#engines) engine.stop();
      throw error;
    }
    plane.#publish();
    // A name whose answer came after its reload was applied: the routes take it now.
    names.onChange(() => {
      if (!plane.#stopped) plane.#publish();
    });
    return plane;
  }

  #startEngine(index: number): Engine | null {
    return startPlaneEngine({
      plane: { buffer: this.#buffer, engine: index },
      onReport: (report) => this.#receive(index, report),
      onFatal: (message) => this.#engineDied(index, message),
    });
  }

  /**
   * An engine died (a bug): it closed its sockets and gave back its shares of the limits on
   * the way out. Its listening sockets would queue connections nobody accepts, so another
   * engine takes its place with the same routes: at once, or after a back-off when it died
   * soon after its own start (see engineRestartDelay).
   */
  #engineDied(index: number, message: string): void {
    // It may have died inside an accept: a reload must not wait for that flag.
    Atomics.store(this.#views.ints, ACCEPTING + index, 0);
    if (this.#stopped) {
      this.#hooks.fatal(`engine ${index}: ${message}`);
      return;
    }
    for (const entry of this.#closing.values()) entry.waiting.delete(index);
    const lived = performance.now() - (this.#startedAt[index] ?? 0);
    const wait = engineRestartDelay(this.#restartWait[index] ?? 0, lived);
    this.#restartWait[index] = wait;
    if (wait === 0) {
      this.#hooks.fatal(`engine ${index}: ${message}`);
      this.#restart(index);
      return;
    }
    this.#hooks.fatal(
      `engine ${index}: ${message}; it died ${Math.round(lived)} ms after its start, so it is ` +
        `restarted in ${wait} ms`,
    );
    const timer = setTimeout(() => {
      this.#restartTimers.delete(timer);
      this.#restart(index);
    }, wait);
    this.#restartTimers.add(timer);
  }

  #restart(index: number): void {
    if (this.#stopped) return;
    const engine = this.#startEngine(index);
    if (engine === null) {
      this.#hooks.fatal(`engine ${index} could not be restarted: its listening sockets wait`);
      return;
    }
    this.#engines[index] = engine;
    this.#startedAt[index] = performance.now();
    this.#publish();
  }

  /** How many engines run. */
  get engines(): number {
    return this.#engines.length;
  }

  /** The port each listener got, by configured address. */
  get listenerPorts(): Record<string, number> {
    return Object.fromEntries([...this.#listeners].map(([address, l]) => [address, l.port]));
  }

  /**
   * Applies a new spec: listeners are added and removed (a removed one's sockets are closed
   * once every engine stopped watching them), routes replaced for new connections. Returns the
   * listener addresses added and removed; a listener that cannot start is thrown for, by
   * address, after the others applied.
   */
  reload(spec: ProxySpec): { added: string[]; removed: string[]; failed: [string, Error][] } {
    this.#spec = spec;
    const added: string[] = [];
    const removed: string[] = [];
    const failed: [string, Error][] = [];
    const wanted = new Set(spec.listeners.map((l) => l.address));
    const closing: number[] = [];
    const released: number[] = [];
    for (const [address, listener] of this.#listeners) {
      if (wanted.has(address)) continue;
      this.#listeners.delete(address);
      // Refused from now on, not from when every engine has let go of it.
      if (this.#shared) released.push(listener.slot);
      else listener.fds.forEach(stopListening);
      closing.push(...listener.fds);
      removed.push(address);
    }
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
        failed.push([listener.address, error instanceof Error ? error : new Error(String(error))]);
      }
    }
    this.#publish(closing, released);
    return { added, removed, failed };
  }

  /**
   * Hands the listening sockets, one per listener, to another process (a takeover): `send`
   * passes them on and throws when it cannot. Once it returned, this plane releases listeners
   * rather than shutting them down (see {@linkcode shutdown}); the fds stay this plane's to
   * close. Throws in SO_REUSEPORT mode, where a listener is a group of sockets, one per engine,
   * that a process with another number of engines could not take over without closing some
   * (resetting what they queued).
   */
  handOver(send: (sockets: { address: string; port: number; fd: number }[]) => void): void {
    if (!this.#exclusive) {
      throw new Error(
        "Cannot hand the listeners over: SPLICE_LISTEN_MODE=reuseport gives each engine its " +
          "own socket; takeover needs the default mode (one socket per listener)",
      );
    }
    if (this.#stopped) throw new Error("Cannot hand the listeners over: the proxy is stopping");
    send([...this.#listeners].map(([address, l]) => ({ address, port: l.port, fd: l.fds[0] })));
    this.#shared = true;
  }

  /**
   * The sockets taken over at start are this process's alone from now on (the process they
   * came from has let go of them): listeners are shut down again when removed. Until then they
   * are released, never shut down, since the other process may still serve them.
   */
  ownListeners(): void {
    this.#shared = false;
  }

  /**
   * Resolves once every engine applied the routes published so far (its listeners are in its
   * epoll), or after `timeoutMs`, with whether they all did.
   */
  async applied(timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    const generation = this.#generation;
    const behind = (): boolean =>
      this.#engines.some((_, e) => (this.#appliedBy[e] ?? 0) < generation);
    while (behind()) {
      if (performance.now() > deadline) return false;
      await delay(DRAIN_POLL_MS);
    }
    return true;
  }

  /** Resets the passive health of the backends of clusters a reload changed. */
  forgetHealth(clusters: string[]): void {
    for (const name of clusters) {
      const slot = this.#clusterSlots.get(name);
      if (slot !== undefined) Atomics.store(this.#views.ints, CLUSTER_PICKS + slot, 0);
    }
    for (const [key, slot] of this.#backendSlots) {
      if (!clusters.includes(key.slice(0, key.indexOf("/")))) continue;
      Atomics.store(this.#views.ints, BACKEND_ACTIVE + slot * 2 + 1, 0);
      Atomics.store(this.#views.ints, BACKEND_STATE + slot, 0);
      this.#views.ejectedUntil[slot] = 0;
    }
  }

  /**
   * Stops accepting, lets connections finish for up to `drainMs`, ends the rest, and stops the
   * engines. Resolves when every connection is closed. After {@linkcode handOver}, the
   * listening sockets are released instead of shut down: the process they went to keeps
   * serving them, and nothing they had queued is reset.
   */
  async shutdown(drainMs: number): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const timer of this.#restartTimers) clearTimeout(timer);
    this.#restartTimers.clear();
    const fds = [...this.#listeners.values()].flatMap((l) => l.fds);
    const slots = [...this.#listeners.values()].map((l) => l.slot);
    if (!this.#shared) fds.forEach(stopListening);
    this.#listeners.clear();
    this.#publish(fds, this.#shared ? slots : []);
    const deadline = performance.now() + drainMs;
    while (this.#open() > 0 && performance.now() < deadline) await delay(DRAIN_POLL_MS);
    for (const engine of this.#engines) engine.mail({ type: "abort-all" });
    // Aborted relays end within a loop turn; bounded all the same, for an engine that died.
    const aborted = performance.now() + ABORT_WAIT_MS;
    while (this.#open() > 0 && performance.now() < aborted) await delay(DRAIN_POLL_MS);
    await Promise.all(this.#engines.map((engine) => engine.stop()));
    // Engines that stopped without acknowledging (they died) never will: close what is left.
    for (const { fds } of this.#closing.values()) fds.forEach(closeFd);
    this.#closing.clear();
  }

  /**
   * Sets the out-of-service bits (proxy/balancer.ts's `OUT_*`) of `backend` of `cluster`, which
   * every engine reads before it picks it; 0 puts it back in service.
   */
  setBackendOut(cluster: string, backend: string, bits: number): void {
    const slot = this.#backendSlots.get(`${cluster}/${backend}`);
    if (slot !== undefined) Atomics.store(this.#views.ints, BACKEND_STATE + slot, bits);
  }

  /** The counters, summed over the engines, with per-backend health. */
  stats(base: ProxyStats): ProxyStats {
    const current = new Set(
      this.#spec.clusters.flatMap((c) => c.backends.map((b) => `${c.name}/${b.address}`)),
    );
    return planeStats(this.#views, this.#engines.length, this.#backendSlots, current, base);
  }

  #open(): number {
    let total = 0;
    for (let e = 0; e < this.#engines.length; e++) {
      total += this.#views.counters[e * ENGINE_STRIDE + ENGINE_OPEN];
    }
    return total;
  }

  #listen(spec: ListenerSpec, inherited?: number): void {
    const slot = this.#freeListenerSlot();
    const count = this.#exclusive ? 1 : this.#engines.length;
    const { fds, port } = listenerSockets(spec, count, inherited);
    this.#listeners.set(spec.address, { spec, slot, fds, port });
  }

  #freeListenerSlot(): number {
    const used = new Set([...this.#listeners.values()].map((l) => l.slot));
    for (let slot = 0; slot < MAX_LISTENERS; slot++) {
      // A slot still counting open connections belongs to a removed listener draining.
      if (!used.has(slot) && Atomics.load(this.#views.ints, slot) === 0) return slot;
    }
    throw new RangeError(`Cannot add a listener: at most ${MAX_LISTENERS} at a time`);
  }

  #clusterSlot(name: string): number {
    let slot = this.#clusterSlots.get(name);
    if (slot === undefined) {
      // Past the bound, clusters share the last slot: round robin stays fair, not exact.
      slot = Math.min(this.#clusterSlots.size, MAX_CLUSTERS - 1);
      this.#clusterSlots.set(name, slot);
    }
    return slot;
  }

  #backendSlot(key: string): number {
    const known = this.#backendSlots.get(key);
    if (known !== undefined) return known;
    if (this.#backendSlots.size < MAX_BACKENDS) {
      const slot = this.#backendSlots.size;
      this.#backendSlots.set(key, slot);
      return slot;
    }
    // Full: the slot of a backend no cluster names any more and no connection uses takes the
    // new one, its counters and health cleared (its totals leave the stats with it).
    const current = new Set(
      this.#spec.clusters.flatMap((c) => c.backends.map((b) => `${c.name}/${b.address}`)),
    );
    for (const [old, slot] of this.#backendSlots) {
      if (current.has(old) || Atomics.load(this.#views.ints, BACKEND_ACTIVE + slot * 2) !== 0) {
        continue;
      }
      this.#backendSlots.delete(old);
      this.#backendSlots.set(key, slot);
      Atomics.store(this.#views.ints, BACKEND_ACTIVE + slot * 2 + 1, 0);
      Atomics.store(this.#views.ints, BACKEND_STATE + slot, 0);
      this.#views.ejectedUntil[slot] = 0;
      for (let e = 0; e < this.#engines.length; e++) {
        const base = e * ENGINE_STRIDE + ENGINE_BACKENDS + slot * BACKEND_FIELDS;
        this.#views.counters.fill(0, base, base + BACKEND_FIELDS);
      }
      return slot;
    }
    return -1; // more than MAX_BACKENDS backends in use at once: left out of the routes
  }

  /**
   * Sends every engine the routes of the current spec; closes `closing` once all applied.
   * `released` are the slots of removed listeners whose sockets another process also holds.
   */
  #publish(closing: number[] = [], released: number[] = []): void {
    const spec = this.#spec;
    const generation = ++this.#generation;
    const clusters: ClusterRoute[] = spec.clusters.map((cluster) => ({
      name: cluster.name,
      slot: this.#clusterSlot(cluster.name),
      sequence: [],
      sendProxy: cluster.sendProxy === "v1" ? 1 : cluster.sendProxy === "v2" ? 2 : 0,
      policy: policyOf(cluster.loadBalancing),
      backends: cluster.backends.flatMap((backend) => {
        const slot = this.#backendSlot(`${cluster.name}/${backend.address}`);
        if (slot < 0) return [];
        const route: BackendRoute = {
          slot,
          address: backend.address,
          sockaddr: new Uint8Array(0),
          weight: backend.weight,
          tier: tierOf(backend),
          hash: hashText(backend.address),
        };
        // FFI sockets are outside Deno's sandbox: the proxy keeps to --allow-net itself.
        const refused = netRefusal(backend);
        if (refused !== null) {
          route.refusal = { reason: refused, local: true };
          return [route];
        }
        try {
          route.sockaddr = this.#names.sockaddr(backend.hostname, backend.port);
        } catch (error) {
          route.refusal = { reason: (error as Error).message, local: false };
        }
        return [route];
      }),
    }));
    this.#names.keepOnly(spec);
    for (const cluster of clusters) cluster.sequence = roundRobinOrder(cluster);
    const listenerRoute = listenerRoutes(spec);
    if (spec.listeners.some((l) => (l.maxConnectionsPerIp ?? 0) > 0)) {
      // Made once, the first time a limit is configured, and kept: engines hold on to it.
      this.#ipTable ??= newIpTable(fdHardLimit());
    }
    const mode = spec.spliceMode === "splice"
      ? MODE_SPLICE
      : spec.spliceMode === "copy"
      ? MODE_COPY
      : MODE_AUTO;
    // Engines stop accepting while the barriers are counted (see RELOADING), and resume once
    // their mail is in the ring: what is queued now is exactly what came before this reload.
    const ints = this.#views.ints;
    Atomics.store(ints, RELOADING, 1);
    const until = performance.now() + RELOAD_WAIT_MS;
    for (let e = 0; e < this.#engines.length; e++) {
      while (Atomics.load(ints, ACCEPTING + e) !== 0 && performance.now() < until) {
        // an accept4 and an atomic add: a few microseconds
      }
    }
    this.#engines.forEach((engine, e) => {
      const barrier: Record<number, number> = {};
      for (const listener of this.#listeners.values()) {
        const queued = acceptQueueLength(this.#exclusive ? listener.fds[0] : listener.fds[e]);
        const taken = Atomics.load(
          this.#views.ints,
          ticketIndex(listener.slot, e, this.#exclusive),
        );
        barrier[listener.slot] = (taken + queued) | 0;
      }
      const routes: Routes = {
        barrier,
        generation,
        listeners: [...this.#listeners.values()].map((l) =>
          listenerRoute(l.spec, l.slot, this.#exclusive ? l.fds[0] : l.fds[e])
        ),
        clusters,
        connectTimeoutMs: spec.connectTimeoutMs,
        idleTimeoutMs: spec.idleTimeoutMs,
        mode,
        pipeCapacity: pipeCapacityOverride() ?? RELAY_PIPE_CAPACITY,
        exclusive: this.#exclusive,
        failuresToEject: DEFAULT_FAILURES_TO_EJECT,
        ejectMs: DEFAULT_EJECT_MS,
        accessLog: spec.accessLog ?? "all",
        ipTable: this.#ipTable,
        released,
      };
      engine.mail({ type: "routes", routes });
    });
    Atomics.store(ints, PUBLISHED, generation);
    Atomics.store(ints, RELOADING, 0);
    if (closing.length > 0) {
      this.#closing.set(generation, {
        waiting: new Set(this.#engines.map((_, e) => e)),
        fds: closing,
      });
    }
  }

  #receive(engine: number, report: PlaneReport): void {
    if (report.applied !== undefined) {
      this.#appliedBy[engine] = Math.max(this.#appliedBy[engine] ?? 0, report.applied);
      for (const [generation, entry] of this.#closing) {
        if (generation > report.applied) continue;
        entry.waiting.delete(engine);
        if (entry.waiting.size > 0) continue;
        entry.fds.forEach(closeFd);
        this.#closing.delete(generation);
      }
    }
    for (const event of report.events) {
      const reported = reportable(
        event,
        event.type === "refused" ? this.#refusals : this.#throttle,
      );
      if (reported !== null) this.#hooks.event(reported);
    }
    for (const record of report.records) this.#hooks.record(toConnectionRecord(record, this.#spec));
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
