/**
 * The data plane without FFI: Deno listeners, one relay() per connection, the stages of
 * proxy/deno_stages.ts. proxy/server.ts runs it when the engines cannot (no `--allow-ffi`, or
 * none could start); its counters, clusters and events are the proxy's.
 *
 * @module
 */

import { acceptLoop, AcceptPauses } from "./accept.ts";
import type { Clusters } from "./clusters.ts";
import { closeQuietly, listenError, relayToCluster } from "./dial.ts";
import { DenoGate, type DenoPass, type DenoRules, denoRules } from "./deno_stages.ts";
import type { Throttle } from "./faults.ts";
import type { ProxyCounters } from "./stats.ts";
import {
  type ConnectionRecord,
  type ListenerSpec,
  logged,
  type ProxyEvent,
  type ProxySpec,
} from "./types.ts";

/** What the Deno-conn plane shares with the proxy around it. */
export interface DenoPlaneHost {
  /** The spec that runs now (a reload replaces it). */
  spec(): ProxySpec;
  readonly clusters: Clusters;
  readonly counters: ProxyCounters;
  readonly throttle: Throttle;
  /** Whether the proxy is shutting down: new connections are closed at once. */
  stopping(): boolean;
  emit(event: ProxyEvent): void;
  internalError(error: unknown): void;
}

interface RunningListener {
  spec: ListenerSpec;
  /** Its stages (proxy/deno_stages.ts); null when it has none. */
  rules: DenoRules | null;
  listener: Deno.TcpListener;
  open: number;
  /** Set by the plane when it closes the listener: the only way its accept loop ends. */
  closed: boolean;
}

/** The listeners and connections of a proxy on the Deno-conn path. */
export class DenoPlane {
  #host: DenoPlaneHost;
  #listeners = new Map<string, RunningListener>();
  #relays = new Set<AbortController>();
  #settled = new Set<Promise<void>>();
  /** Accept loops paused for want of fds: a closing connection frees some and wakes them. */
  #pauses = new AcceptPauses();
  #gate: DenoGate;

  constructor(host: DenoPlaneHost) {
    this.#host = host;
    this.#gate = new DenoGate(host.counters, (event) => host.emit(event));
  }

  /** Listens on every listener; throws if one cannot, with the ones started closed again. */
  start(listeners: readonly ListenerSpec[]): void {
    try {
      for (const listener of listeners) this.#listen(listener);
    } catch (error) {
      for (const running of [...this.#listeners.values()]) this.#stopListener(running, false);
      throw error;
    }
  }

  /** The port each listener got, by configured address. */
  get listenerPorts(): Record<string, number> {
    return Object.fromEntries(
      [...this.#listeners].map(([address, l]) => [address, l.listener.addr.port]),
    );
  }

  /**
   * Applies the listeners of `spec` (the host's spec already): removed ones stop accepting and
   * their connections finish, new ones listen (a failure is reported, not thrown).
   */
  reload(spec: ProxySpec): { added: string[]; removed: string[] } {
    const added: string[] = [];
    const removed: string[] = [];
    const wanted = new Set(spec.listeners.map((l) => l.address));
    for (const [address, running] of this.#listeners) {
      if (!wanted.has(address)) {
        this.#stopListener(running);
        removed.push(address);
      }
    }
    for (const listener of spec.listeners) {
      const running = this.#listeners.get(listener.address);
      if (running) {
        running.spec = listener;
        running.rules = denoRules(listener, spec.clusters);
        continue;
      }
      try {
        this.#listen(listener);
        added.push(listener.address);
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        this.#host.emit({ type: "listen-failed", address: listener.address, error: message });
      }
    }
    return { added, removed };
  }

  /** Stops accepting, lets relays finish for up to `drainMs`, then ends the rest. */
  async shutdown(drainMs: number): Promise<void> {
    for (const running of [...this.#listeners.values()]) this.#stopListener(running);
    const drained = Promise.all([...this.#settled]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, drainMs);
    });
    await Promise.race([drained, deadline]);
    clearTimeout(timer);
    for (const controller of this.#relays) controller.abort();
    await Promise.all([...this.#settled]);
  }

  #listen(spec: ListenerSpec): void {
    let listener: Deno.TcpListener;
    try {
      listener = Deno.listen({ hostname: spec.hostname, port: spec.port });
    } catch (error) {
      throw listenError(spec.address, error);
    }
    const rules = denoRules(spec, this.#host.spec().clusters);
    const running: RunningListener = { spec, rules, listener, open: 0, closed: false };
    this.#listeners.set(spec.address, running);
    // The loop takes every error of accept(); anything else is a bug, reported without ending
    // the proxy.
    acceptLoop(listener, {
      closed: () => running.closed,
      accepted: (client) => this.#accepted(running, client),
      failed: (code, error, pauseMs) => this.#acceptFailed(running, code, error, pauseMs),
    }, this.#pauses).catch((error) => this.#host.internalError(error));
    this.#host.emit({ type: "listening", address: spec.address, port: listener.addr.port });
  }

  #stopListener(running: RunningListener, announce = true): void {
    if (this.#listeners.get(running.spec.address) === running) {
      this.#listeners.delete(running.spec.address);
    }
    running.closed = true;
    try {
      running.listener.close();
    } catch {
      // already closed
    }
    this.#pauses.wake();
    if (announce) this.#host.emit({ type: "listener-closed", address: running.spec.address });
  }

  /** Takes a connection from `running`'s accept loop (see proxy/accept.ts). */
  #accepted(running: RunningListener, client: Deno.TcpConn): void {
    if (this.#host.stopping()) {
      client.close();
      return;
    }
    if (running.open >= running.spec.maxConnections) {
      this.#host.counters.rejected();
      if (logged(this.#host.spec().accessLog, "over-limit")) {
        const record = this.#newRecord(running, client);
        record.end = "over-limit";
        this.#host.emit({ type: "connection", record });
      }
      client.close();
      return;
    }
    // With expect_proxy the rules wait for the address the header gives (in #serve).
    let admitted: { key: string | null } | null = { key: null };
    if (running.rules !== null && !running.rules.expectProxy) {
      const { hostname, port } = client.remoteAddr;
      admitted = this.#gate.admit(running.spec.address, running.rules, { hostname, port });
      if (admitted === null) {
        client.close();
        return;
      }
    }
    // #serve catches every failure of the connection itself; the catch here is the proof that
    // nothing one connection does (or a throwing onEvent) can reject unhandled and end the
    // process: a rejection here is a bug, counted and reported, and the proxy runs on.
    const settled = this.#serve(running, client, admitted.key).catch((error) =>
      this.#host.internalError(error)
    );
    this.#settled.add(settled);
    settled.finally(() => this.#settled.delete(settled));
  }

  /** Counts an accept error; a pause is reported at most once a second per listener and errno. */
  #acceptFailed(running: RunningListener, code: string, error: unknown, pauseMs: number): void {
    this.#host.counters.acceptFailed(code);
    if (pauseMs === 0) return;
    const { report, suppressed } = this.#host.throttle.pass(
      `accept ${running.spec.address} ${code}`,
      performance.now(),
    );
    if (!report) return;
    this.#host.emit({
      type: "accept-error",
      address: running.spec.address,
      code,
      error: error instanceof Error ? error.message : String(error),
      pauseMs,
      suppressed,
    });
  }

  /** A log record for a connection accepted on `running`, before anything happened to it. */
  #newRecord(running: RunningListener, client: Deno.TcpConn): ConnectionRecord {
    return {
      client: `${client.remoteAddr.hostname}:${client.remoteAddr.port}`,
      listener: running.spec.address,
      cluster: this.#host.clusters.atFrontend(running.spec.address)?.spec.name ?? "",
      backend: null,
      bytesIn: 0,
      bytesOut: 0,
      durationMs: 0,
      mode: "none",
      end: "no-backend",
    };
  }

  async #serve(
    running: RunningListener,
    client: Deno.TcpConn,
    counted: string | null,
  ): Promise<void> {
    const started = performance.now();
    let runtime = this.#host.clusters.atFrontend(running.spec.address);
    const record = this.#newRecord(running, client);
    running.open++;
    this.#host.counters.opened();
    // A refusal by the rules is reported by the gate, throttled, not as one record each.
    let quiet = false;
    try {
      let preface: DenoPass | null = null;
      if (running.rules !== null && running.rules.reads) {
        const passed = await this.#gate.pass(
          running.spec.address,
          running.rules,
          client,
          record,
          (name) => name === null ? runtime : this.#host.clusters.get(name),
        );
        if (passed.kind === "refused") {
          quiet = passed.quiet;
          client.close();
          return;
        }
        preface = passed.preface;
        runtime = passed.target;
        counted = passed.key ?? counted;
      }
      if (runtime === undefined) return void client.close();
      await relayToCluster(runtime, client, record, preface, {
        spec: this.#host.spec(),
        counters: this.#host.counters,
        relays: this.#relays,
        localError: (cluster, backend, code, error) =>
          this.#localError(cluster, backend, code, error),
        ejected: (cluster, backend) =>
          this.#host.emit({ type: "backend-ejected", cluster, backend }),
      });
    } catch (error) {
      // Not a peer's doing (relay() reports those in its result): a bug. The connection is
      // closed and the proxy goes on.
      record.end = "internal-error";
      record.error = error instanceof Error ? error.message : String(error);
      closeQuietly(client);
      this.#host.internalError(error);
    } finally {
      running.open--;
      this.#host.counters.closed();
      this.#gate.release(counted);
      record.durationMs = Math.round(performance.now() - started);
      if (!quiet && logged(this.#host.spec().accessLog, record.end)) {
        this.#host.emit({ type: "connection", record });
      }
      // Its fds are free: a listener paused for want of them may accept again.
      this.#pauses.wake();
    }
  }

  /** Counts a connect that failed for the proxy's own reason, reported at most once a second. */
  #localError(cluster: string, backend: string, code: string, error: string): void {
    this.#host.counters.localError(code);
    const { report, suppressed } = this.#host.throttle.pass(
      `local ${cluster}/${backend} ${code}`,
      performance.now(),
    );
    if (report) this.#host.emit({ type: "local-error", cluster, backend, code, error, suppressed });
  }
}
