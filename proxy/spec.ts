/**
 * From the validated config file to what the proxy runs on.
 *
 * @module
 */

import { type Config, formatAddress } from "../config.ts";
import type { ProxySpec } from "./server.ts";

/** The proxy spec a config describes. */
export function specFromConfig(config: Config): ProxySpec {
  return {
    listeners: config.listeners.map((listener) => ({
      address: formatAddress(listener.address),
      hostname: listener.address.hostname,
      port: listener.address.port,
      maxConnections: listener.maxConnections,
    })),
    clusters: Object.entries(config.clusters).map(([name, cluster]) => ({
      name,
      loadBalancing: cluster.loadBalancing,
      frontends: cluster.frontends.map((frontend) => formatAddress(frontend.address)),
      backends: cluster.backends.map((backend) => ({
        address: formatAddress(backend.address),
        hostname: backend.address.hostname,
        port: backend.address.port,
        weight: backend.weight,
      })),
    })),
    connectTimeoutMs: config.connectTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    drainTimeoutMs: config.drainTimeoutMs,
    spliceMode: config.spliceMode,
  };
}
