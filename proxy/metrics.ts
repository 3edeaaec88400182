/**
 * The metrics and admin endpoint: Prometheus text on `/metrics`, JSON on `/status`, and
 * `POST /reload` to reload the config file.
 *
 * @module
 */

import type { ProxyStats } from "./server.ts";

/** Prometheus text exposition of the proxy's counters. */
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
  metric("splice_reloads_total", "counter", "Configurations applied after start.", stats.reloads);
  const perBackend: Array<[string, string, string, (b: ProxyStats["backends"][string]) => number]> =
    [
      ["splice_backend_connections_active", "gauge", "Open connections.", (b) => b.active],
      ["splice_backend_ejected", "gauge", "1 while passive health skips it.", (b) => +b.ejected],
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

/** Serves `/metrics`, `/status` and `POST /reload` on `hostname:port` until `signal` aborts. */
export function serveAdmin(
  address: { hostname: string; port: number },
  handlers: { stats: () => ProxyStats; reload: () => Promise<string | null> },
  signal: AbortSignal,
): Deno.HttpServer {
  return Deno.serve({
    hostname: address.hostname,
    port: address.port,
    signal,
    onListen: () => {},
  }, async (request) => {
    const path = new URL(request.url).pathname;
    if (request.method === "GET" && path === "/metrics") {
      return new Response(prometheusText(handlers.stats()), {
        headers: { "content-type": "text/plain; version=0.0.4" },
      });
    }
    if (request.method === "GET" && path === "/status") return Response.json(handlers.stats());
    if (request.method === "POST" && path === "/reload") {
      const error = await handlers.reload();
      return error === null
        ? Response.json({ reloaded: true })
        : Response.json({ reloaded: false, error }, { status: 400 });
    }
    return new Response("not found: try /metrics, /status or POST /reload\n", { status: 404 });
  });
}
