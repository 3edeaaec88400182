/**
 * The proxy's counters as Prometheus text: what the admin endpoint (./admin.ts) serves on
 * `/metrics`.
 *
 * @module
 */

import type { ProxyStats } from "./types.ts";
import { REFUSAL_CODES } from "../engine/plane_layout.ts";

/**
 * Prometheus text exposition of the proxy's counters. `splice_engine_connections_total` has a
 * line per engine, labelled with its number, and is left out altogether when there are no
 * engines (connections relayed through Deno conns).
 *
 * @example
 * ```ts
 * import { prometheusText } from "./metrics.ts";
 *
 * const text = prometheusText({
 *   connectionsOpen: 0, connectionsTotal: 5, connectionsRejected: 0, connectionsRefused: {}, bytesIn: 0,
 *   bytesOut: 0,
 *   splicedConnections: 0, copiedConnections: 0, connectFailures: 0, acceptErrors: {},
 *   localErrors: { EMFILE: 2 }, internalErrors: 0, reloads: 0, engines: [3, 2], backends: {},
 * });
 * console.log(text.split("\n")[2]); // "splice_connections_open 0"
 * console.log(text.match(/^splice_engine_connections_total\{.*$/gm));
 * // [ 'splice_engine_connections_total{engine="0"} 3',
 * //   'splice_engine_connections_total{engine="1"} 2' ]
 * ```
 */
export function prometheusText(stats: ProxyStats): string {
  const lines: string[] = [];
  const metric = (name: string, type: string, help: string, value: number): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name} ${value}`);
  };
  metric("splice_connections_open", "gauge", "Connections being relayed.", stats.connectionsOpen);
  metric("splice_connections_total", "counter", "Connections accepted.", stats.connectionsTotal);
  metric(
    "splice_connections_rejected_total",
    "counter",
    "Connections closed at once: listener at max_connections.",
    stats.connectionsRejected,
  );
  labelled(
    lines,
    "splice_connections_refused_total",
    "Connections closed by their listener's rules or stages before any backend, by reason.",
    // Every reason, zeros included: a rate over a series that appears only with its first
    // refusal misses that refusal.
    { ...Object.fromEntries(REFUSAL_CODES.map((code) => [code, 0])), ...stats.connectionsRefused },
  );
  if (stats.engines.length > 0) {
    const name = "splice_engine_connections_total";
    lines.push(`# HELP ${name} Connections accepted, by engine.`, `# TYPE ${name} counter`);
    stats.engines.forEach((count, engine) => lines.push(`${name}{engine="${engine}"} ${count}`));
  }
  metric("splice_bytes_in_total", "counter", "Bytes from clients to backends.", stats.bytesIn);
  metric("splice_bytes_out_total", "counter", "Bytes from backends to clients.", stats.bytesOut);
  lines.push(
    "# HELP splice_connections_by_mode_total Finished connections by the path that moved them.",
    "# TYPE splice_connections_by_mode_total counter",
    `splice_connections_by_mode_total{mode="splice"} ${stats.splicedConnections}`,
    `splice_connections_by_mode_total{mode="copy"} ${stats.copiedConnections}`,
  );
  metric(
    "splice_connect_failures_total",
    "counter",
    "Backend connects refused or timed out.",
    stats.connectFailures,
  );
  labelled(
    lines,
    "splice_accept_errors_total",
    "accept() errors by errno: transient ones skipped, resource ones paused on.",
    stats.acceptErrors,
  );
  labelled(
    lines,
    "splice_local_errors_total",
    "Backend connects that failed for the proxy's own reasons (fds, ports, permission).",
    stats.localErrors,
  );
  metric(
    "splice_internal_errors_total",
    "counter",
    "Connections closed by a bug in the proxy or its event handler.",
    stats.internalErrors,
  );
  metric("splice_reloads_total", "counter", "Configurations applied after start.", stats.reloads);
  const perBackend: Array<[string, string, string, (b: ProxyStats["backends"][string]) => number]> =
    [
      ["splice_backend_connections_active", "gauge", "Open connections.", (b) => b.active],
      ["splice_backend_ejected", "gauge", "1 while passive health skips it.", (b) => +b.ejected],
      ["splice_backend_up", "gauge", "0 while its active health check says down.", (b) => +b.up],
      ["splice_backend_connections_total", "counter", "Connections made.", (b) => b.connections],
      ["splice_backend_connect_failures_total", "counter", "Failed connects.", (b) => b.failures],
      ["splice_backend_bytes_in_total", "counter", "Bytes sent to it.", (b) => b.bytesIn],
      ["splice_backend_bytes_out_total", "counter", "Bytes received from it.", (b) => b.bytesOut],
    ];
  for (const [name, type, help, pick] of perBackend) {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [key, backend] of Object.entries(stats.backends)) {
      const address = key.slice(backend.cluster.length + 1);
      lines.push(`${name}{cluster="${backend.cluster}",backend="${address}"} ${pick(backend)}`);
    }
  }
  return lines.join("\n") + "\n";
}

/** A counter with a `reason` label per key; the family is listed (HELP, TYPE) even when empty. */
function labelled(
  lines: string[],
  name: string,
  help: string,
  counts: Readonly<Record<string, number>>,
): void {
  lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`);
  for (const [reason, count] of Object.entries(counts)) {
    lines.push(`${name}{reason="${reason}"} ${count}`);
  }
}
