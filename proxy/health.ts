/**
 * Active health checks, run once per proxy on the control plane (the main thread), never once
 * per engine: each checked backend is connected to every `interval_ms`, optionally sent a
 * probe and expected to answer, and `fall` failures in a row take it out of service, `rise`
 * successes bring it back. The proxy turns each change into the backend's state bit, which
 * both data planes honour, and an event.
 *
 * Invariants:
 * - one check at a time per backend: the next is scheduled when the last one ends, so a slow
 *   backend is never probed by overlapping checks;
 * - a backend keeps its state across a reload that keeps its cluster's check and its address;
 *   one no longer checked is reported back in service, so nothing stays out for a check that
 *   no longer exists.
 *
 * @module
 */

import { closeQuietly, connectWithin } from "./dial.ts";
import type { BackendSpec, HealthCheckSpec, ProxySpec } from "./types.ts";

/** A backend's health changed. */
export interface HealthChange {
  cluster: string;
  backend: string;
  up: boolean;
  /** Why: the last check's failure, or what brought it back. */
  reason: string;
}

/** What the checker knows of one backend, for stats and the status page. */
export interface HealthState {
  up: boolean;
  /** When the last check ended (ms since the epoch); 0 before the first. */
  lastCheckAt: number;
  /** `"ok"`, or why the last check failed. */
  lastResult: string;
}

interface Check {
  cluster: string;
  backend: BackendSpec;
  spec: HealthCheckSpec;
  /** The spec as text: a reload that changes it starts the backend's checks afresh. */
  signature: string;
  state: HealthState;
  successes: number;
  failures: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  running: Promise<void> | null;
  stopped: boolean;
  /** Paused by the operator (maintenance): no check runs, the last verdict stands. */
  paused: boolean;
}

/** The active checks of one proxy. */
export class HealthChecker {
  #checks = new Map<string, Check>();
  #onChange: (change: HealthChange) => void;

  constructor(onChange: (change: HealthChange) => void) {
    this.#onChange = onChange;
  }

  /**
   * Checks the backends `spec` asks to: new ones start (up, checked at once), unchanged ones
   * keep their state, removed ones stop (reported back in service if they were out).
   */
  apply(spec: ProxySpec): void {
    const wanted = new Map<string, Pick<Check, "cluster" | "backend" | "spec" | "signature">>();
    for (const cluster of spec.clusters) {
      if (cluster.healthCheck === undefined) continue;
      for (const backend of cluster.backends) {
        const signature = JSON.stringify([cluster.healthCheck, backend.hostname, backend.port]);
        wanted.set(`${cluster.name}/${backend.address}`, {
          cluster: cluster.name,
          backend,
          spec: cluster.healthCheck,
          signature,
        });
      }
    }
    for (const [key, check] of this.#checks) {
      const next = wanted.get(key);
      if (next !== undefined && next.signature === check.signature) continue;
      this.#stop(check);
      this.#checks.delete(key);
      if (!check.state.up) {
        this.#onChange({
          cluster: check.cluster,
          backend: check.backend.address,
          up: true,
          reason: "no longer checked",
        });
      }
    }
    for (const [key, next] of wanted) {
      if (this.#checks.has(key)) continue;
      const check: Check = {
        ...next,
        state: { up: true, lastCheckAt: 0, lastResult: "" },
        successes: 0,
        failures: 0,
        timer: undefined,
        running: null,
        stopped: false,
        paused: false,
      };
      this.#checks.set(key, check);
      this.#run(check);
    }
  }

  /**
   * Pauses (maintenance) or resumes the checks of `key` (`cluster/address`); a resumed backend
   * is checked at once. Nothing for a backend not checked.
   */
  pause(key: string, paused: boolean): void {
    const check = this.#checks.get(key);
    if (check === undefined || check.paused === paused) return;
    check.paused = paused;
    if (paused) {
      clearTimeout(check.timer);
      check.timer = undefined;
    } else if (check.running === null) {
      this.#run(check);
    }
  }

  /** Whether `backend` of `cluster` is up (true when it is not checked). */
  up(cluster: string, backend: string): boolean {
    return this.#checks.get(`${cluster}/${backend}`)?.state.up ?? true;
  }

  /** The state of each checked backend, by `cluster/address`. */
  snapshot(): Record<string, HealthState> {
    return Object.fromEntries([...this.#checks].map(([key, check]) => [key, { ...check.state }]));
  }

  /** Stops every check; resolves once none runs. */
  async stop(): Promise<void> {
    const running = [...this.#checks.values()].map((check) => {
      this.#stop(check);
      return check.running;
    });
    this.#checks.clear();
    await Promise.all(running);
  }

  #stop(check: Check): void {
    check.stopped = true;
    clearTimeout(check.timer);
  }

  #run(check: Check): void {
    check.running = probe(check.backend, check.spec).then((failure) => {
      check.running = null;
      if (check.stopped || check.paused) return;
      this.#record(check, failure);
      check.timer = setTimeout(() => this.#run(check), check.spec.intervalMs);
    });
  }

  #record(check: Check, failure: string | null): void {
    const state = check.state;
    state.lastCheckAt = performance.timeOrigin + performance.now();
    state.lastResult = failure ?? "ok";
    if (failure === null) {
      check.failures = 0;
      check.successes++;
      if (!state.up && check.successes >= check.spec.rise) {
        state.up = true;
        this.#onChange({
          cluster: check.cluster,
          backend: check.backend.address,
          up: true,
          reason: `${inARow(check.successes)} passed`,
        });
      }
      return;
    }
    check.successes = 0;
    check.failures++;
    if (state.up && check.failures >= check.spec.fall) {
      state.up = false;
      this.#onChange({
        cluster: check.cluster,
        backend: check.backend.address,
        up: false,
        reason: `${inARow(check.failures)} failed, the last: ${failure}`,
      });
    }
  }
}

/** "1 check" or "N checks in a row". */
function inARow(count: number): string {
  return count === 1 ? "1 check" : `${count} checks in a row`;
}

/**
 * One check of `backend`: null when it passed, else why not. Connect, send and expect share
 * one deadline; whatever is open when it passes is closed, which ends the pending read.
 */
export async function probe(backend: BackendSpec, spec: HealthCheckSpec): Promise<string | null> {
  const deadline = performance.now() + spec.timeoutMs;
  let conn: Deno.TcpConn;
  try {
    conn = await connectWithin(backend, spec.timeoutMs);
  } catch (error) {
    return `connect: ${error instanceof Error ? error.message : String(error)}`;
  }
  const timer = setTimeout(() => closeQuietly(conn), Math.max(0, deadline - performance.now()));
  try {
    if (spec.send !== undefined && spec.send.length > 0) {
      const bytes = new TextEncoder().encode(spec.send);
      for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
    }
    if (spec.expect === undefined || spec.expect.length === 0) return null;
    // Bounded: an answer is looked at up to 16 KiB.
    const buffer = new Uint8Array(16 * 1024);
    let filled = 0;
    const decoder = new TextDecoder();
    while (filled < buffer.length) {
      const n = await conn.read(buffer.subarray(filled));
      if (n === null) break;
      filled += n;
      if (decoder.decode(buffer.subarray(0, filled)).includes(spec.expect)) return null;
    }
    return performance.now() >= deadline
      ? `no ${JSON.stringify(spec.expect)} within ${spec.timeoutMs} ms`
      : `the answer has no ${JSON.stringify(spec.expect)}`;
  } catch (error) {
    return performance.now() >= deadline
      ? `no ${JSON.stringify(spec.expect ?? "")} within ${spec.timeoutMs} ms`
      : error instanceof Error
      ? error.message
      : String(error);
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}
