/**
 * The backend choice of the proxy's data plane, per connection attempt, with the health and the
 * round-robin position every engine shares (plane_layout.ts): the policies of
 * proxy/balancer.ts, for the Deno-conn path, with their state in shared memory.
 *
 * @module
 */

import { Balancer, rendezvousScore } from "../proxy/balancer.ts";
import {
  BACKEND_ACTIVE,
  BACKEND_FAILURES,
  BACKEND_STATE,
  type BackendRoute,
  CLUSTER_PICKS,
  type ClusterRoute,
  MAX_SEQUENCE,
  type PlaneViews,
  POLICY_LEAST_CONNECTIONS,
  POLICY_RANDOM,
  POLICY_ROUND_ROBIN,
  POLICY_SOURCE_HASH,
} from "./plane_layout.ts";

/**
 * The backend for the next attempt, skipping those tried, those the control plane took out
 * (down by the active check, drained, in maintenance) and, while others remain, the ejected
 * ones; of those up, only the lowest group (tier: backups last) (as proxy/balancer.ts does for the Deno
 * path, with the health shared). `clientHash`: the client address's hash, for source_hash.
 */
export function pickBackend(
  cluster: ClusterRoute,
  tried: number[],
  views: PlaneViews,
  clientHash = 0,
): BackendRoute | null {
  const ejected = views.ejectedUntil;
  const ints = views.ints;
  // The common case first, allocating nothing: round robin's next turn is a primary backend
  // that has weight, was not tried, is in service and is not ejected.
  if (cluster.policy === POLICY_ROUND_ROBIN && cluster.sequence.length > 0) {
    const sequence = cluster.sequence;
    const start = Atomics.add(ints, CLUSTER_PICKS + cluster.slot, 1) >>> 0;
    const now = wallClock();
    for (let k = 0; k < sequence.length; k++) {
      const b = cluster.backends[sequence[(start + k) % sequence.length]];
      if (
        b.weight > 0 && b.tier === 0 && ejected[b.slot] <= now &&
        Atomics.load(ints, BACKEND_STATE + b.slot) === 0 && !tried.includes(b.slot)
      ) return b;
    }
  }
  const usable = cluster.backends.filter((b) =>
    b.weight > 0 && !tried.includes(b.slot) && Atomics.load(ints, BACKEND_STATE + b.slot) === 0
  );
  if (usable.length === 0) return null;
  const now = wallClock();
  const up = usable.filter((b) => ejected[b.slot] <= now);
  let first = Infinity;
  for (const b of up) first = Math.min(first, b.tier);
  const pool = up.length > 0
    ? up.filter((b) => b.tier === first)
    : [usable.reduce((a, b) => (ejected[a.slot] <= ejected[b.slot] ? a : b))];
  if (cluster.policy === POLICY_LEAST_CONNECTIONS) {
    const active = (b: BackendRoute): number => Atomics.load(ints, BACKEND_ACTIVE + b.slot * 2);
    return pool.reduce((best, b) => {
      const lhs = active(b) * best.weight;
      const rhs = active(best) * b.weight;
      return lhs < rhs || (lhs === rhs && b.weight > best.weight) ? b : best;
    });
  }
  if (cluster.policy === POLICY_RANDOM) {
    const total = pool.reduce((sum, b) => sum + b.weight, 0);
    let ticket = Math.random() * total;
    for (const b of pool) {
      ticket -= b.weight;
      if (ticket < 0) return b;
    }
    return pool[pool.length - 1];
  }
  if (cluster.policy === POLICY_SOURCE_HASH) {
    return pool.reduce((best, b) =>
      rendezvousScore(clientHash, b.hash, b.weight) >
          rendezvousScore(clientHash, best.hash, best.weight)
        ? b
        : best
    );
  }
  // Round robin with no primary in turn (all tried, out or ejected): the pool in turns.
  const turn = Atomics.add(ints, CLUSTER_PICKS + cluster.slot, 1) >>> 0;
  return pool[turn % pool.length];
}

/** A connect to backend `slot` succeeded: one more active, its failures forgiven. */
export function markConnected(views: PlaneViews, slot: number): void {
  Atomics.add(views.ints, BACKEND_ACTIVE + slot * 2, 1);
  Atomics.store(views.ints, BACKEND_FAILURES + slot * 2, 0);
  views.ejectedUntil[slot] = 0;
}

/**
 * A connect to backend `slot` failed by its fault. Returns `true` when this failure ejected it
 * (the threshold reached while it was not ejected), so that one engine reports it.
 */
export function markFailed(
  views: PlaneViews,
  slot: number,
  failuresToEject: number,
  ejectMs: number,
): boolean {
  const failures = Atomics.add(views.ints, BACKEND_FAILURES + slot * 2, 1) + 1;
  const now = wallClock();
  if (failures < failuresToEject || views.ejectedUntil[slot] > now) return false;
  views.ejectedUntil[slot] = now + ejectMs;
  return true;
}

/** The clock every thread reads alike: absolute ms, for the shared ejection deadlines. */
export function wallClock(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * One cycle of smooth weighted round robin over `cluster`'s backends (the weights divided by
 * their greatest common divisor), as indexes; cut at {@linkcode MAX_SEQUENCE}, which keeps the
 * proportions over any window of that length.
 */
export function roundRobinOrder(cluster: ClusterRoute): number[] {
  const weighted = cluster.backends.filter((b) => b.weight > 0);
  if (weighted.length === 0) return [];
  const divisor = weighted.reduce((g, b) => gcd(g, b.weight), 0);
  const length = Math.min(MAX_SEQUENCE, weighted.reduce((sum, b) => sum + b.weight / divisor, 0));
  const balancer = new Balancer(
    cluster.backends.map((b) => ({ address: String(b.slot), weight: b.weight / divisor })),
    "round_robin",
  );
  const order: number[] = [];
  for (let i = 0; i < length; i++) {
    const picked = balancer.pick(0);
    if (picked === null) break;
    order.push(cluster.backends.findIndex((b) => String(b.slot) === picked.address));
  }
  return order;
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}
