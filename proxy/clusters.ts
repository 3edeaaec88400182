/**
 * The clusters of the Deno-conn data plane (proxy/server.ts): each with its balancer, kept
 * across a reload that leaves the cluster as it was (so its round robin and health go on), and
 * found by the listener address its connections arrive on.
 *
 * @module
 */

import { Balancer } from "./balancer.ts";
import type { ClusterSpec, ProxySpec } from "./types.ts";

/** A cluster as the Deno-conn data plane runs it. */
export interface ClusterRuntime {
  spec: ClusterSpec;
  balancer: Balancer;
}

/** The running clusters, by name and by frontend address. */
export class Clusters {
  #byName = new Map<string, ClusterRuntime>();
  #byFrontend = new Map<string, ClusterRuntime>();

  /**
   * Runs `spec`'s clusters: an unchanged one keeps its balancer, a new or changed one gets a
   * fresh balancer whose backends start with the bits `outBits` gives (the control plane's
   * verdicts, not "all in"). Returns the names of the clusters added, changed or removed.
   */
  apply(spec: ProxySpec, outBits: (cluster: string, backend: string) => number): string[] {
    const changed: string[] = [];
    const next = new Map<string, ClusterRuntime>();
    for (const cluster of spec.clusters) {
      const old = this.#byName.get(cluster.name);
      if (old && JSON.stringify(old.spec) === JSON.stringify(cluster)) {
        next.set(cluster.name, old);
        continue;
      }
      changed.push(cluster.name);
      const balancer = new Balancer(cluster.backends, cluster.loadBalancing);
      for (const { address } of cluster.backends) {
        balancer.setOut(address, outBits(cluster.name, address));
      }
      next.set(cluster.name, { spec: cluster, balancer });
    }
    for (const name of this.#byName.keys()) if (!next.has(name)) changed.push(name);
    this.#byName = next;
    this.#byFrontend = new Map();
    for (const runtime of next.values()) {
      for (const frontend of runtime.spec.frontends) {
        // A frontend with a hostname is reached through its listener's rules (deno_stages.ts).
        if (typeof frontend === "string") this.#byFrontend.set(frontend, runtime);
        else if (frontend.hostname === undefined) this.#byFrontend.set(frontend.address, runtime);
      }
    }
    return changed;
  }

  /** The cluster named `name`. */
  get(name: string): ClusterRuntime | undefined {
    return this.#byName.get(name);
  }

  /** The cluster whose frontend (without a hostname) is the listener at `address`. */
  atFrontend(address: string): ClusterRuntime | undefined {
    return this.#byFrontend.get(address);
  }

  /** Every running cluster. */
  values(): IterableIterator<ClusterRuntime> {
    return this.#byName.values();
  }
}
