/**
 * The engines' view of a spec's listeners and policies (engine/plane_layout.ts's route types),
 * made by the control plane each time it publishes routes.
 *
 * @module
 */

import {
  type ListenerRoute,
  POLICY_LEAST_CONNECTIONS,
  POLICY_RANDOM,
  POLICY_ROUND_ROBIN,
  POLICY_SOURCE_HASH,
} from "../engine/plane_layout.ts";
import type { ClusterSpec, ListenerSpec, ProxySpec } from "./types.ts";

/** A stage's deadline (PROXY header, ClientHello) when the spec leaves it out, in ms. */
const DEFAULT_STAGE_TIMEOUT_MS = 3000;

/** The `POLICY_*` code of a cluster's `load_balancing`. */
export function policyOf(loadBalancing: ClusterSpec["loadBalancing"]): number {
  return loadBalancing === "least_connections"
    ? POLICY_LEAST_CONNECTIONS
    : loadBalancing === "random"
    ? POLICY_RANDOM
    : loadBalancing === "source_hash"
    ? POLICY_SOURCE_HASH
    : POLICY_ROUND_ROBIN;
}

/**
 * Returns the route maker of `spec`'s listeners: which cluster a listener's connections go to
 * (the frontend without a hostname), and which go by server name, with the listener's stages.
 * Clusters are named by their index in `spec.clusters`.
 */
export function listenerRoutes(
  spec: ProxySpec,
): (listener: ListenerSpec, slot: number, fd: number) => ListenerRoute {
  const clusterOf = new Map<string, number>();
  const namesOf = new Map<string, [string, number][]>();
  spec.clusters.forEach((cluster, i) => {
    for (const frontend of cluster.frontends) {
      if (typeof frontend === "string" || frontend.hostname === undefined) {
        clusterOf.set(typeof frontend === "string" ? frontend : frontend.address, i);
        continue;
      }
      const names = namesOf.get(frontend.address) ?? [];
      names.push([frontend.hostname, i]);
      namesOf.set(frontend.address, names);
    }
  });
  return (listener, slot, fd) => ({
    slot,
    address: listener.address,
    fd,
    cluster: clusterOf.get(listener.address) ?? -1,
    maxConnections: listener.maxConnections,
    maxPerIp: listener.maxConnectionsPerIp ?? 0,
    allow: listener.allow ?? [],
    deny: listener.deny ?? [],
    expectProxy: listener.expectProxy ?? false,
    headerTimeoutMs: listener.proxyHeaderTimeoutMs ?? DEFAULT_STAGE_TIMEOUT_MS,
    names: namesOf.get(listener.address) ?? [],
    sniTimeoutMs: listener.sniTimeoutMs ?? DEFAULT_STAGE_TIMEOUT_MS,
  });
}
