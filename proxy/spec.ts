/**
 * From the validated config file to what the proxy runs on.
 *
 * @module
 */

import type { Config } from "../config.ts";
import { formatAddress } from "./config_address.ts";
import type { ClusterSpec, DiscoverySpec, ProxySpec } from "./types.ts";
import type { ClusterConfig } from "./config_schema.ts";

/**
 * The proxy spec a checked config describes, for {@linkcode TcpProxy.start} and
 * {@linkcode TcpProxy.reload}. Only the proxy's part: the splice pipe capacity is put into effect
 * by `applyConfig` (as {@linkcode startProxy} does), and `metrics` and `logFormat` are the
 * embedding application's business.
 *
 * @example
 * ```ts
 * import { specFromConfig } from "@zerocopy/splice/proxy";
 * import { parseConfig } from "@zerocopy/splice/config";
 *
 * const spec = specFromConfig(parseConfig(`
 * [[listeners]]
 * address = "[::1]:8080"
 *
 * [clusters.app]
 * frontends = [{ address = "[::1]:8080" }]
 * backends = [{ address = "127.0.0.1:9000", weight = 3 }]
 * `));
 * const { address, hostname, port, maxConnections } = spec.listeners[0];
 * console.log(address, hostname, port, maxConnections); // "[::1]:8080" "::1" 8080 10000
 * console.log(spec.clusters[0].backends[0].weight); // 3
 * console.log(spec.engines); // 0: one engine per CPU the process may run on
 * ```
 */
export function specFromConfig(config: Config): ProxySpec {
  return {
    listeners: config.listeners.map((listener) => ({
      address: formatAddress(listener.address),
      hostname: listener.address.hostname,
      port: listener.address.port,
      maxConnections: listener.maxConnections,
      maxConnectionsPerIp: listener.maxConnectionsPerIp ?? 0,
      allow: [...listener.allow],
      deny: [...listener.deny],
      expectProxy: listener.expectProxy,
      proxyHeaderTimeoutMs: listener.proxyHeaderTimeoutMs,
      sniTimeoutMs: listener.sniTimeoutMs,
    })),
    clusters: Object.entries(config.clusters).map(([name, cluster]) => ({
      name,
      loadBalancing: cluster.loadBalancing,
      frontends: cluster.frontends.map((frontend) =>
        frontend.hostname === undefined
          ? formatAddress(frontend.address)
          : { address: formatAddress(frontend.address), hostname: frontend.hostname }
      ),
      ...(cluster.sendProxy === undefined ? {} : { sendProxy: cluster.sendProxy }),
      ...(cluster.healthCheck === undefined ? {} : { healthCheck: { ...cluster.healthCheck } }),
      backends: cluster.backends.flatMap((backend) =>
        backend.address === undefined ? [] : [{
          address: formatAddress(backend.address),
          hostname: backend.address.hostname,
          port: backend.address.port,
          weight: backend.weight,
          ...(backend.backup ? { backup: true } : {}),
        }]
      ),
      ...discoveryOf(cluster),
    })),
    connectTimeoutMs: config.connectTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    drainTimeoutMs: config.drainTimeoutMs,
    spliceMode: config.spliceMode,
    engines: config.engines,
    accessLog: config.accessLog,
    ...(config.dnsNameserver === undefined ? {} : { dnsNameserver: { ...config.dnsNameserver } }),
  };
}

/** The `discover` and `dnsRefreshMs` of a cluster with backends named by DNS; none without. */
function discoveryOf(cluster: ClusterConfig): Pick<ClusterSpec, "discover" | "dnsRefreshMs"> {
  const discover: DiscoverySpec[] = cluster.backends.flatMap((backend): DiscoverySpec[] => {
    const common = { weight: backend.weight, ...(backend.backup ? { backup: true } : {}) };
    if (backend.srv !== undefined) return [{ srv: backend.srv, ...common }];
    if (backend.host !== undefined && backend.port !== undefined) {
      return [{ host: backend.host, port: backend.port, ...common }];
    }
    return [];
  });
  return discover.length === 0 ? {} : { discover, dnsRefreshMs: cluster.dnsRefreshMs };
}
