/**
 * Backend choice for the TCP proxy: weighted round robin, weighted least connections and
 * weighted random, with passive health (a backend whose connects keep failing is skipped for a
 * while). Pure bookkeeping, no I/O, so that every policy is tested without sockets.
 *
 * @module
 */

/**
 * How a cluster spreads connections over its backends, by weight: `"round_robin"` (smooth
 * weighted round robin), `"least_connections"` (fewest active connections per unit of weight),
 * `"random"` (weighted random) or `"source_hash"` (the client address's hash: the same client
 * goes to the same backend while the set is unchanged, and a change of the set moves only the
 * clients of the backends it adds or removes). The config file's `load_balancing`.
 *
 * @example
 * ```ts
 * import type { ClusterSpec, LoadBalancing } from "@zerocopy/splice/proxy";
 *
 * const loadBalancing: LoadBalancing = "least_connections";
 * const cluster: ClusterSpec = { name: "app", loadBalancing, frontends: [], backends: [] };
 * ```
 */
export type LoadBalancing = "round_robin" | "least_connections" | "random" | "source_hash";

/** A backend as the balancer sees it. */
export interface BalancedBackend {
  /** `host:port`, the key of the backend. */
  address: string;
  /** Relative share of new connections; 0 takes none (drained). */
  weight: number;
  /** Used only while no other backend is up. */
  backup?: boolean;
  /** Its SRV priority group, when it was discovered (lower first); absent: 0. */
  priority?: number;
}

/** The group a backend is in: only the lowest group with a backend up takes connections. */
export function tierOf(backend: BalancedBackend): number {
  // Backups after every SRV priority (0 to 65535).
  return backend.backup ? 65536 : backend.priority ?? 0;
}

/** Passive health settings. */
export interface HealthOptions {
  /** Consecutive connect failures after which a backend is skipped. Default 3. */
  failuresToEject?: number;
  /** How long an ejected backend is skipped, in ms. Default 10,000. */
  ejectMs?: number;
}

interface State {
  backend: BalancedBackend;
  /** hashText of the address, for source_hash. */
  hash: number;
  /** Taken out by the control plane (down, drained, in maintenance): `STATE_*` bits. */
  out: number;
  /** Smooth weighted round robin's running score (nginx's algorithm). */
  current: number;
  active: number;
  failures: number;
  ejectedUntil: number;
}

/**
 * Why a backend is out of service, as bits (`Balancer.setOut`, and the engines' shared
 * BACKEND_STATE): the active health check says it is down.
 */
export const OUT_DOWN = 1;
/** Out-of-service bit: drained at run time (no new connections; open ones finish). */
export const OUT_DRAIN = 2;
/** Out-of-service bit: in maintenance at run time (no new connections, no health checks). */
export const OUT_MAINT = 4;

/** Connect failures in a row that eject a backend (both data planes). */
export const DEFAULT_FAILURES_TO_EJECT = 3;
/** How long an ejected backend is skipped, in ms (both data planes). */
export const DEFAULT_EJECT_MS = 10_000;

/**
 * Chooses backends for new connections and keeps the counts each policy needs. Call
 * {@linkcode Balancer.pick} for each attempt, then {@linkcode Balancer.connected} (then
 * {@linkcode Balancer.released} when the connection ends) or {@linkcode Balancer.failed} for a
 * failure the backend caused; neither for the proxy's own failures (out of fds, not permitted).
 *
 * When every backend with weight is ejected, the least recently ejected one is tried anyway:
 * a cluster never refuses a connection only because its health bookkeeping says so.
 */
export class Balancer {
  readonly policy: LoadBalancing;
  #states: State[];
  #failuresToEject: number;
  #ejectMs: number;
  #random: () => number;

  constructor(
    backends: readonly BalancedBackend[],
    policy: LoadBalancing,
    options?: HealthOptions & { random?: () => number },
  ) {
    this.policy = policy;
    this.#states = backends.map((backend) => ({
      backend,
      hash: hashText(backend.address),
      out: 0,
      current: 0,
      active: 0,
      failures: 0,
      ejectedUntil: 0,
    }));
    this.#failuresToEject = options?.failuresToEject ?? DEFAULT_FAILURES_TO_EJECT;
    this.#ejectMs = options?.ejectMs ?? DEFAULT_EJECT_MS;
    this.#random = options?.random ?? Math.random;
  }

  /**
   * The backend for the next attempt, skipping `exclude` (those already tried for this
   * connection), those taken out ({@linkcode Balancer.setOut}) and, while others remain,
   * ejected ones; backups only while no other backend is up; `null` when none is left.
   * `clientHash`: {@linkcode hashText} of the client's address, for `"source_hash"`.
   */
  pick(now: number, exclude?: ReadonlySet<string>, clientHash = 0): BalancedBackend | null {
    const usable = this.#states.filter((s) =>
      s.backend.weight > 0 && s.out === 0 && !exclude?.has(s.backend.address)
    );
    if (usable.length === 0) return null;
    const up = usable.filter((s) => s.ejectedUntil <= now);
    let first = Infinity;
    for (const s of up) first = Math.min(first, tierOf(s.backend));
    const pool = up.length > 0
      ? up.filter((s) => tierOf(s.backend) === first)
      : [usable.reduce((a, b) => (a.ejectedUntil <= b.ejectedUntil ? a : b))];
    return this.#choose(pool, clientHash).backend;
  }

  /** Takes `address` out of (bits other than 0) or back into service, as the control plane says. */
  setOut(address: string, bits: number): void {
    const state = this.#find(address);
    if (state) state.out = bits;
  }

  #choose(pool: State[], clientHash: number): State {
    if (this.policy === "source_hash") {
      return pool.reduce((best, s) =>
        rendezvousScore(clientHash, s.hash, s.backend.weight) >
            rendezvousScore(clientHash, best.hash, best.backend.weight)
          ? s
          : best
      );
    }
    if (this.policy === "least_connections") {
      // Fewest active per unit of weight; ties go to the heavier backend, then list order.
      return pool.reduce((best, s) => {
        const lhs = s.active * best.backend.weight;
        const rhs = best.active * s.backend.weight;
        return lhs < rhs || (lhs === rhs && s.backend.weight > best.backend.weight) ? s : best;
      });
    }
    if (this.policy === "random") {
      const total = pool.reduce((sum, s) => sum + s.backend.weight, 0);
      let ticket = this.#random() * total;
      for (const s of pool) {
        ticket -= s.backend.weight;
        if (ticket < 0) return s;
      }
      return pool[pool.length - 1];
    }
    // Smooth weighted round robin: every backend gains its weight, the leader is picked and
    // pays the total back. Spreads picks evenly in proportion to weight, without bursts.
    let total = 0;
    let best = pool[0];
    for (const s of pool) {
      s.current += s.backend.weight;
      total += s.backend.weight;
      if (s.current > best.current) best = s;
    }
    best.current -= total;
    return best;
  }

  /** A connect to `address` succeeded: it counts as active and its failures are forgiven. */
  connected(address: string): void {
    const state = this.#find(address);
    if (!state) return;
    state.active++;
    state.failures = 0;
    state.ejectedUntil = 0;
  }

  /** A connection to `address` ended. */
  released(address: string): void {
    const state = this.#find(address);
    if (state && state.active > 0) state.active--;
  }

  /**
   * A connect to `address` failed (refused or timed out). Returns `true` when this failure
   * ejected the backend, so that the caller can report it once.
   */
  failed(address: string, now: number): boolean {
    const state = this.#find(address);
    if (!state) return false;
    state.failures++;
    if (state.failures < this.#failuresToEject || state.ejectedUntil > now) return false;
    state.ejectedUntil = now + this.#ejectMs;
    return true;
  }

  /**
   * Per backend: active connections, whether it is ejected at `now`, and whether it is up (not
   * taken out as down by {@linkcode Balancer.setOut}).
   */
  snapshot(now: number): Array<{ address: string; active: number; ejected: boolean; up: boolean }> {
    return this.#states.map((s) => ({
      address: s.backend.address,
      active: s.active,
      ejected: s.ejectedUntil > now,
      up: (s.out & OUT_DOWN) === 0,
    }));
  }

  #find(address: string): State | undefined {
    return this.#states.find((s) => s.backend.address === address);
  }
}

/** FNV-1a of `text`, 32 bits: the stable hash source_hash uses for addresses. */
export function hashText(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * Weighted rendezvous hashing: the score of a backend (`backendHash`, `weight`) for a client
 * (`clientHash`); the highest score takes the client. A backend's score for a client does not
 * depend on the other backends, so adding or removing one moves only the clients it wins or
 * held, and each backend wins clients in proportion to its weight.
 */
export function rendezvousScore(clientHash: number, backendHash: number, weight: number): number {
  // Two rounds of murmur3's finaliser over the pair: an even spread in (0, 1).
  let h = Math.imul(clientHash ^ Math.imul(backendHash, 0x9e3779b1), 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h ^ backendHash, 0x85ebca6b);
  h ^= h >>> 13;
  const u = ((h >>> 0) + 0.5) / 4294967296;
  return -weight / Math.log(u);
}
