/**
 * What the control plane decides about backends while the proxy runs, apart from the config
 * file: the active health checks' verdicts (./health.ts) and the operator's runtime changes
 * (`PUT /clusters/{cluster}/backends/{address}` on the admin endpoint: a weight, or a state of
 * `ready`, `drain` or `maint`). Both become a backend's out-of-service bits, which the data
 * planes honour, and runtime weights become part of the spec the data planes are given.
 *
 * Invariants:
 * - a backend's bits are always derived from both sources at once, so a check that passes never
 *   brings back a backend an operator drained, and a drain never hides a check's verdict;
 * - a runtime change outlives a reload only when the reload left that backend as it was in the
 *   file (same address, weight and backup flag): the file is the operator's later word;
 * - `maint` pauses the backend's health checks; `ready` resumes them.
 *
 * @module
 */

import { OUT_DOWN, OUT_DRAIN, OUT_MAINT } from "./balancer.ts";
import { type HealthChange, HealthChecker } from "./health.ts";
import type {
  BackendSpec,
  BackendView,
  ProxyEvent,
  ProxySpec,
  ProxyStats,
  ProxyStatus,
} from "./types.ts";

/**
 * A backend's runtime state: `ready` (in service), `drain` (no new connections, open ones
 * finish) or `maint` (the same, and its health checks paused).
 *
 * @example
 * ```ts
 * import type { BackendState } from "@zerocopy/splice/proxy";
 *
 * const state: BackendState = "maint";
 * console.log(state); // maint
 * ```
 */
export type BackendState = "ready" | "drain" | "maint";

/**
 * A runtime change: a new weight, a new state, or both (the body of the admin endpoint's `PUT
 * /clusters/{cluster}/backends/{address}`).
 *
 * @example
 * ```ts
 * import type { BackendChange } from "@zerocopy/splice/proxy";
 *
 * const drain: BackendChange = { state: "drain" };
 * const heavier: BackendChange = { weight: 300 };
 * console.log(drain.state, heavier.weight); // drain 300
 * ```
 */
export interface BackendChange {
  /** The backend's new weight, 0 to 1000000. */
  weight?: number;
  /** Its new state. */
  state?: BackendState;
}

interface Override {
  weight?: number;
  state?: BackendState;
  /** The backend as the file had it when the change was made. */
  file: string;
}

/** The largest weight, as the config file allows. */
const MAX_WEIGHT = 1_000_000;

/**
 * A `PUT` body as a change: JSON `{"weight": N}` and/or `{"state": "ready" | "drain" |
 * "maint"}`, nothing else. Throws a TypeError naming what is wrong.
 */
export function parseBackendChange(text: string): BackendChange {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new TypeError('Cannot parse the body: expected JSON such as {"weight": 50}');
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TypeError('Cannot parse the body: expected an object such as {"state": "drain"}');
  }
  const change: BackendChange = {};
  for (const [key, field] of Object.entries(value)) {
    if (key === "weight") {
      if (!Number.isInteger(field) || (field as number) < 0 || (field as number) > MAX_WEIGHT) {
        throw new TypeError(
          `Cannot parse the body: weight ${JSON.stringify(field)} is not a whole number from 0 ` +
            `to ${MAX_WEIGHT}`,
        );
      }
      change.weight = field as number;
    } else if (key === "state") {
      if (field !== "ready" && field !== "drain" && field !== "maint") {
        throw new TypeError(
          `Cannot parse the body: state ${JSON.stringify(field)} is not "ready", "drain" or ` +
            '"maint"',
        );
      }
      change.state = field;
    } else {
      throw new TypeError(
        `Cannot parse the body: unknown key ${JSON.stringify(key)} (expected "weight", "state")`,
      );
    }
  }
  if (change.weight === undefined && change.state === undefined) {
    throw new TypeError('Cannot parse the body: expected "weight" or "state"');
  }
  return change;
}

/** The control plane's decisions about backends, for one proxy. */
export class BackendControls {
  #overrides = new Map<string, Override>();
  #health: HealthChecker;
  #spec: ProxySpec | null = null;
  #setOut: (cluster: string, backend: string, bits: number) => void;
  #emit: (event: ProxyEvent) => void;

  /**
   * `setOut` puts a backend's out-of-service bits into effect in the running data plane;
   * `emit` reports health changes.
   */
  constructor(
    setOut: (cluster: string, backend: string, bits: number) => void,
    emit: (event: ProxyEvent) => void,
  ) {
    this.#setOut = setOut;
    this.#emit = emit;
    this.#health = new HealthChecker((change) => this.#healthChanged(change));
  }

  /**
   * Takes a new spec from the file (at start, or a reload): drops the runtime changes of the
   * backends it changed, starts and stops health checks, and returns the spec to run, with the
   * runtime weights that remain.
   */
  apply(spec: ProxySpec): ProxySpec {
    for (const [key, override] of this.#overrides) {
      const backend = findBackend(spec, key);
      if (backend === null || JSON.stringify(backend) !== override.file) {
        this.#overrides.delete(key);
      }
    }
    this.#spec = spec;
    this.#health.apply(spec);
    for (const key of this.#overrides.keys()) this.#pauseIfMaint(key);
    return this.effective();
  }

  /** The current spec with the runtime weights in it. */
  effective(): ProxySpec {
    const spec = this.#spec!;
    if (this.#overrides.size === 0) return spec;
    return {
      ...spec,
      clusters: spec.clusters.map((cluster) => ({
        ...cluster,
        backends: cluster.backends.map((backend) => {
          const weight = this.#overrides.get(`${cluster.name}/${backend.address}`)?.weight;
          return weight === undefined ? backend : { ...backend, weight };
        }),
      })),
    };
  }

  /**
   * Applies a runtime change to `backend` of `cluster`; false when there is no such backend.
   * The caller republishes {@linkcode effective} when the weight changed.
   */
  change(cluster: string, backend: string, change: BackendChange): boolean {
    const key = `${cluster}/${backend}`;
    const spec = this.#spec === null ? null : findBackend(this.#spec, key);
    if (spec === null) return false;
    const override = this.#overrides.get(key) ?? { file: JSON.stringify(spec) };
    if (change.weight !== undefined) {
      override.weight = change.weight === spec.weight ? undefined : change.weight;
    }
    if (change.state !== undefined) {
      override.state = change.state === "ready" ? undefined : change.state;
    }
    if (override.weight === undefined && override.state === undefined) {
      this.#overrides.delete(key);
    } else {
      this.#overrides.set(key, override);
    }
    this.#pauseIfMaint(key);
    this.#setOut(cluster, backend, this.outBits(cluster, backend));
    return true;
  }

  /** The out-of-service bits of a backend, from both sources. */
  outBits(cluster: string, backend: string): number {
    const state = this.#overrides.get(`${cluster}/${backend}`)?.state;
    return (this.#health.up(cluster, backend) ? 0 : OUT_DOWN) |
      (state === "drain" ? OUT_DRAIN : 0) | (state === "maint" ? OUT_MAINT : 0);
  }

  /**
   * A backend as it runs: its weight and runtime state, its last check, and `stats` (its entry
   * of the proxy's stats, absent before any connection); null when there is no such backend.
   */
  view(
    cluster: string,
    backend: string,
    stats: ProxyStats["backends"][string] | undefined,
  ): BackendView | null {
    const key = `${cluster}/${backend}`;
    const spec = this.#spec === null ? null : findBackend(this.#spec, key);
    if (spec === null) return null;
    const override = this.#overrides.get(key);
    const check = this.#health.snapshot()[key];
    return {
      cluster,
      backend,
      weight: override?.weight ?? spec.weight,
      state: override?.state ?? "ready",
      up: stats?.up ?? true,
      lastCheck: check ?? null,
      active: stats?.active ?? 0,
      ejected: stats?.ejected ?? false,
      connections: stats?.connections ?? 0,
      failures: stats?.failures ?? 0,
      bytesIn: stats?.bytesIn ?? 0,
      bytesOut: stats?.bytesOut ?? 0,
    };
  }

  /**
   * The proxy's status (`/status`): `stats`, the listeners and their ports, and each backend's
   * view (a backend a reload removed stays listed with its totals, "ready" and weight 0).
   */
  status(stats: ProxyStats, ports: Record<string, number>): ProxyStatus {
    const backends: Record<string, BackendView> = {};
    for (const [key, entry] of Object.entries(stats.backends)) {
      const backend = key.slice(key.indexOf("/") + 1);
      backends[key] = this.view(entry.cluster, backend, entry) ??
        { ...entry, backend, weight: 0, state: "ready", lastCheck: null };
    }
    const listeners = Object.entries(ports).map(([address, port]) => ({ address, port }));
    return { ...stats, listeners, backends };
  }

  /** Stops the health checks; resolves once none runs. */
  stop(): Promise<void> {
    return this.#health.stop();
  }

  #pauseIfMaint(key: string): void {
    this.#health.pause(key, this.#overrides.get(key)?.state === "maint");
  }

  #healthChanged(change: HealthChange): void {
    this.#setOut(change.cluster, change.backend, this.outBits(change.cluster, change.backend));
    this.#emit({ type: "backend-health", ...change });
  }
}

/** `cluster/address`'s backend in `spec`, or null. */
function findBackend(spec: ProxySpec, key: string): BackendSpec | null {
  const slash = key.indexOf("/");
  const cluster = spec.clusters.find((c) => c.name === key.slice(0, slash));
  return cluster?.backends.find((b) => b.address === key.slice(slash + 1)) ?? null;
}
