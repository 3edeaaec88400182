/**
 * The proxy's public types: what it runs on (the spec), what it reports (events, connection
 * records) and what it counts (stats). Kept apart from the server so that the spec's builders
 * and the server's users depend on the types, not on each other; with them the one rule both
 * data planes follow for which connections are reported ({@linkcode logged}).
 *
 * @module
 */

import type { RelayMode, RelayResult } from "../relay.ts";
import type { LoadBalancing } from "./balancer.ts";

/**
 * A listening address, as in `[[listeners]]` of the config file.
 *
 * @example
 * ```ts
 * import type { ListenerSpec } from "@zerocopy/splice/proxy";
 *
 * const listener: ListenerSpec = {
 *   address: "127.0.0.1:8080",
 *   hostname: "127.0.0.1",
 *   port: 8080,
 *   maxConnections: 10_000,
 * };
 * ```
 */
export interface ListenerSpec {
  /** `host:port` as configured; the key that frontends refer to. */
  address: string;
  /** The host to listen on, IPv6 without brackets (`"::1"`). */
  hostname: string;
  /** 0 picks a free port (see {@linkcode TcpProxy.listenerPorts}). */
  port: number;
  /** Connections beyond this are closed at once. */
  maxConnections: number;
  /** Connections from one client address beyond this are closed at once; absent or 0: none. */
  maxConnectionsPerIp?: number;
  /** CIDRs whose clients are served; absent or empty: all not denied. */
  allow?: string[];
  /** CIDRs whose clients are refused at once; wins over `allow`. */
  deny?: string[];
  /**
   * Each connection starts with a PROXY protocol header (v1 or v2), whose client address the
   * rules, limits, logs and `send_proxy` then use; a missing or bad one closes it.
   */
  expectProxy?: boolean;
  /** How long the PROXY header may take, in ms; 3000 when absent. */
  proxyHeaderTimeoutMs?: number;
  /** How long the TLS ClientHello may take where frontends route by hostname, in ms; 3000. */
  sniTimeoutMs?: number;
}

/**
 * A cluster's frontend that takes a listener's TLS connections for some server names (SNI):
 * `hostname` exact (`"a.example.com"`) or a wildcard (`"*.example.com"`), lowercase. A frontend
 * given as the listener's address alone takes the names no hostname claims.
 *
 * @example
 * ```ts
 * import type { FrontendSpec } from "@zerocopy/splice/proxy";
 *
 * const frontend: FrontendSpec = { address: "127.0.0.1:8443", hostname: "*.example.com" };
 * console.log(frontend.hostname); // "*.example.com"
 * ```
 */
export interface FrontendSpec {
  /** The listener's address, as in {@linkcode ListenerSpec.address}. */
  address: string;
  /** The server name or wildcard; absent: the listener's default. */
  hostname?: string;
}

/**
 * A backend server, as in a cluster's `backends` in the config file.
 *
 * @example
 * ```ts
 * import type { BackendSpec } from "@zerocopy/splice/proxy";
 *
 * const backend: BackendSpec = {
 *   address: "[::1]:9000",
 *   hostname: "::1",
 *   port: 9000,
 *   weight: 100,
 * };
 * ```
 */
export interface BackendSpec {
  /** `host:port` as configured; the backend's key in stats and events. */
  address: string;
  /** The host to connect to, IPv6 without brackets (`"::1"`). */
  hostname: string;
  /** The port to connect to, 1 to 65535. */
  port: number;
  /** Relative share of new connections; 0 takes none (drained). */
  weight: number;
  /** Used only while no other backend of the cluster is up; `false` when absent. */
  backup?: boolean;
  /**
   * The priority group of a backend found through an SRV record (lower first): only the lowest
   * group with a backend up takes connections; absent: 0.
   */
  priority?: number;
}

/**
 * Backends a cluster finds in DNS: the targets of an SRV name (each at its port, with the
 * record's weight and priority), or every A and AAAA address of `host` at `port` (with
 * `weight`). Looked up again every `dnsRefreshMs` of the cluster.
 *
 * @example
 * ```ts
 * import type { DiscoverySpec } from "@zerocopy/splice/proxy";
 *
 * const services: DiscoverySpec[] = [
 *   { srv: "_app._tcp.example.internal", weight: 100 },
 *   { host: "app.example.internal", port: 9000, weight: 100, backup: true },
 * ];
 * console.log(services.length); // 2
 * ```
 */
export type DiscoverySpec =
  & { weight: number; backup?: boolean }
  & ({ srv: string } | { host: string; port: number });

/**
 * Active health checks of a cluster's backends, as in its `health_check` table: connect every
 * `intervalMs`, write `send` if given, and expect `expect` in the answer if given, all within
 * `timeoutMs`; `fall` failures in a row take a backend out, `rise` successes bring it back.
 *
 * @example
 * ```ts
 * import type { HealthCheckSpec } from "@zerocopy/splice/proxy";
 *
 * const check: HealthCheckSpec = { intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3 };
 * console.log(check.fall); // 3
 * ```
 */
export interface HealthCheckSpec {
  /** How often each backend is checked, in ms. */
  intervalMs: number;
  /** How long one check may take, in ms. */
  timeoutMs: number;
  /** Successes in a row that bring a backend back. */
  rise: number;
  /** Failures in a row that take it out. */
  fall: number;
  /** Written after the connect. */
  send?: string;
  /** Must be in the answer. */
  expect?: string;
}

/**
 * A cluster: the backends that serve some frontends.
 *
 * @example
 * ```ts
 * import type { ClusterSpec } from "@zerocopy/splice/proxy";
 *
 * const cluster: ClusterSpec = {
 *   name: "app",
 *   loadBalancing: "least_connections",
 *   frontends: ["127.0.0.1:8080"],
 *   backends: [
 *     { address: "127.0.0.1:9000", hostname: "127.0.0.1", port: 9000, weight: 100 },
 *     { address: "127.0.0.1:9001", hostname: "127.0.0.1", port: 9001, weight: 50 },
 *   ],
 * };
 * ```
 */
export interface ClusterSpec {
  /** The cluster's name, unique in the spec; a key in stats and events. */
  name: string;
  /** How new connections are spread over {@linkcode ClusterSpec.backends}. */
  loadBalancing: LoadBalancing;
  /**
   * The listeners whose connections go to this cluster: a listener's address (all its
   * connections, or those no hostname claims), or a {@linkcode FrontendSpec} with a hostname.
   */
  frontends: (string | FrontendSpec)[];
  /** A PROXY protocol header, `"v1"` or `"v2"`, sent to each backend first; absent: none. */
  sendProxy?: "v1" | "v2";
  /** Active health checks of its backends; absent: passive ejection only. */
  healthCheck?: HealthCheckSpec;
  /** Backends looked up in DNS, beside `backends`; absent: none. */
  discover?: DiscoverySpec[];
  /** How often `discover` is looked up again, in ms; 5000 when absent. */
  dnsRefreshMs?: number;
  /** The servers connections are relayed to, tried in policy order until one accepts. */
  backends: BackendSpec[];
}

/**
 * Everything the proxy runs on; reloadable as a whole with {@linkcode TcpProxy.reload}.
 * {@linkcode specFromConfig} builds one from a checked config file, or write it by hand.
 *
 * @example
 * ```ts
 * import { type ProxySpec, TcpProxy } from "@zerocopy/splice/proxy";
 *
 * const spec: ProxySpec = {
 *   listeners: [{ address: "127.0.0.1:0", hostname: "127.0.0.1", port: 0, maxConnections: 100 }],
 *   clusters: [{
 *     name: "app",
 *     loadBalancing: "round_robin",
 *     frontends: ["127.0.0.1:0"],
 *     backends: [{ address: "127.0.0.1:9000", hostname: "127.0.0.1", port: 9000, weight: 100 }],
 *   }],
 *   connectTimeoutMs: 3000,
 *   idleTimeoutMs: 0,
 *   drainTimeoutMs: 10_000,
 *   spliceMode: "auto",
 *   engines: 2,
 * };
 * const proxy = TcpProxy.start(spec);
 * await proxy.shutdown();
 * ```
 */
export interface ProxySpec {
  /** The addresses to accept connections on. */
  listeners: ListenerSpec[];
  /** Where each listener's connections go; a listener no cluster claims closes them. */
  clusters: ClusterSpec[];
  /** How long a connect to one backend may take before the next is tried, in ms. */
  connectTimeoutMs: number;
  /** A relay with no traffic for this long is ended, in ms; 0 never ends one. */
  idleTimeoutMs: number;
  /** How long {@linkcode TcpProxy.shutdown} lets connections finish, in ms. */
  drainTimeoutMs: number;
  /** `relay()`'s mode: `"auto"` splices where it can, `"splice"` or `"copy"` forces one. */
  spliceMode: RelayMode;
  /**
   * How many engine Workers accept and relay connections, 1 to 64; `0` or absent: one per CPU
   * this process may run on (`sched_getaffinity`). {@linkcode specFromConfig} always sets it
   * (the config file's `engines`); it is optional so that a spec written by hand may leave it
   * to the default. Without `--allow-ffi` connections are relayed through Deno conns and it
   * has no effect.
   */
  engines?: number;
  /**
   * Which finished connections become `"connection"` events (access-log records): `"all"`,
   * the default when absent; `"errors"`, those that did not end `"done"`; `"off"`, none.
   * Leaving records out saves their cost per connection (building, passing from the engine,
   * formatting); stats and metrics count every connection either way.
   */
  accessLog?: AccessLog;
  /** The DNS server `discover` uses (`{ hostname: IP, port }`); absent: the system's. */
  dnsNameserver?: { hostname: string; port: number };
}

/**
 * Which finished connections the proxy reports (the config file's `access_log`): every one,
 * those that did not end `"done"`, or none.
 *
 * @example
 * ```ts
 * import type { AccessLog, ProxySpec } from "@zerocopy/splice/proxy";
 *
 * const accessLog: AccessLog = "errors";
 * const spec: ProxySpec = {
 *   listeners: [],
 *   clusters: [],
 *   connectTimeoutMs: 3000,
 *   idleTimeoutMs: 0,
 *   drainTimeoutMs: 10_000,
 *   spliceMode: "auto",
 *   accessLog,
 * };
 * console.log(spec.accessLog); // "errors"
 * ```
 */
export type AccessLog = "all" | "errors" | "off";

/**
 * Whether a connection that ended with `end` is reported under `accessLog`: the one rule for
 * both data planes (the engines decide before building a record at all).
 */
export function logged(accessLog: AccessLog | undefined, end: ConnectionRecord["end"]): boolean {
  return accessLog === undefined || accessLog === "all" ||
    (accessLog === "errors" && end !== "done");
}

/**
 * One finished connection, for the access log: the `record` of a `"connection"`
 * {@linkcode ProxyEvent}.
 *
 * @example
 * ```ts
 * import type { ConnectionRecord } from "@zerocopy/splice/proxy";
 *
 * function logLine(record: ConnectionRecord): string {
 *   return `${record.client} -> ${record.backend ?? "-"} ${record.end} ` +
 *     `in=${record.bytesIn} out=${record.bytesOut} ${record.durationMs}ms`;
 * }
 * console.log(logLine({
 *   client: "127.0.0.1:51000",
 *   listener: "127.0.0.1:8080",
 *   cluster: "app",
 *   backend: "127.0.0.1:9000",
 *   bytesIn: 120,
 *   bytesOut: 4096,
 *   durationMs: 12,
 *   mode: "splice",
 *   end: "done",
 * }));
 * ```
 */
export interface ConnectionRecord {
  /** The client's `host:port`. */
  client: string;
  /** The configured address of the listener that accepted it. */
  listener: string;
  /** The cluster it went to; `""` when no cluster claims the listener. */
  cluster: string;
  /** The backend that served it; `null` when none accepted. */
  backend: string | null;
  /** Bytes relayed from the client to the backend. */
  bytesIn: number;
  /** Bytes relayed from the backend to the client. */
  bytesOut: number;
  /** From accept to close, in ms. */
  durationMs: number;
  /** How the bytes moved (`relay()`'s mode); `"none"` when no relay ran. */
  mode: RelayResult["mode"] | "none";
  /**
   * Why it ended: the relay's end; `"no-backend"` (every backend refused, timed out or was not
   * permitted); `"local-error"` (the proxy itself could not connect: out of fds, memory or
   * local ports); `"over-limit"` (the listener was at `max_connections`; closed at once);
   * `"bad-header"` (a missing or malformed PROXY header, or a TLS ClientHello that could not be
   * read, on a listener that needs one); `"header-timeout"` (that header or ClientHello did not
   * come whole in time); `"no-route"` (no frontend takes the ClientHello's server name); or
   * `"internal-error"` (a bug in the proxy or its `onEvent`; counted, the proxy runs on).
   */
  end:
    | RelayResult["end"]
    | "no-backend"
    | "local-error"
    | "over-limit"
    | "bad-header"
    | "header-timeout"
    | "no-route"
    | "internal-error";
  /** The error message, when it ended on one: the relay's, or the last connect failure's. */
  error?: string;
}

/**
 * Proxy events for logs, passed to the `onEvent` option of {@linkcode TcpProxy.start}:
 *
 * - `"connection"`: a connection finished, with its {@linkcode ConnectionRecord};
 * - `"backend-ejected"`: a backend failed too many connects in a row and is skipped a while;
 * - `"dns-change"`: a cluster's backends found through DNS changed (the full list found now);
 * - `"dns-error"`: a DNS lookup failed or found nothing; the last good set stays;
 * - `"backend-health"`: a backend's active health check took it out of service (`up` false:
 *   `fall` failures in a row) or brought it back (`rise` successes), with the `reason`;
 * - `"listening"`: a listener started, with the port it got;
 * - `"listener-closed"`: a listener stopped accepting (reload or shutdown);
 * - `"listen-failed"`: a listener added by a reload could not start;
 * - `"accept-error"`: accepting failed for want of fds or memory (or unexpectedly); the listener
 *   pauses `pauseMs` and accepts again. At most one a second per listener and errno, with the
 *   number of such errors `suppressed` since the last one; each is counted in
 *   {@linkcode ProxyStats.acceptErrors}. Transient errors (a client that reset before it was
 *   accepted) are counted there too, but not reported;
 * - `"connection-refused"`: a listener's `allow` / `deny` rules or `max_connections_per_ip`
 *   closed a connection at once; at most one a second per listener, client address and reason,
 *   each counted in {@linkcode ProxyStats.connectionsRefused};
 * - `"local-error"`: a connect to a backend failed for the proxy's own reasons (out of fds or
 *   local ports, or not permitted by `--allow-net`); the backend is not blamed. At most one a
 *   second per backend and reason;
 * - `"internal-error"`: a bug, in the proxy or in `onEvent` itself; the connection is closed,
 *   the proxy runs on. At most one a second.
 *
 * Every `suppressed` count says how many events of that kind were held back since the last one
 * reported.
 *
 * @example
 * ```ts
 * import { type ProxyEvent, startProxy } from "@zerocopy/splice/proxy";
 * import { parseConfig } from "@zerocopy/splice/config";
 *
 * function onEvent(event: ProxyEvent): void {
 *   switch (event.type) {
 *     case "connection":
 *       console.log(event.record.client, event.record.backend, event.record.end);
 *       break;
 *     case "backend-ejected":
 *       console.warn(`${event.cluster}: ${event.backend} ejected`);
 *       break;
 *     case "backend-health":
 *       console.warn(`${event.cluster}: ${event.backend} ${event.up ? "up" : "down"}`);
 *       break;
 *     case "listening":
 *       console.log(`listening on ${event.address} (port ${event.port})`);
 *       break;
 *     case "listener-closed":
 *       console.log(`closed ${event.address}`);
 *       break;
 *     case "listen-failed":
 *       console.error(`cannot listen on ${event.address}: ${event.error}`);
 *       break;
 *     case "connection-refused":
 *       console.warn(`${event.listener}: refused ${event.client} (${event.reason})`);
 *       break;
 *     case "accept-error":
 *     case "local-error":
 *     case "internal-error":
 *       console.error(`${event.type}: ${event.error} (${event.suppressed} more)`);
 *       break;
 *   }
 * }
 * const proxy = startProxy(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'), { onEvent });
 * await proxy.shutdown();
 * ```
 */
export type ProxyEvent =
  | { type: "connection"; record: ConnectionRecord }
  | { type: "backend-ejected"; cluster: string; backend: string }
  | { type: "backend-health"; cluster: string; backend: string; up: boolean; reason: string }
  | { type: "dns-change"; cluster: string; backends: string[] }
  | { type: "dns-error"; cluster: string; name: string; error: string }
  | { type: "listening"; address: string; port: number }
  | { type: "listener-closed"; address: string }
  | { type: "listen-failed"; address: string; error: string }
  | {
    type: "connection-refused";
    listener: string;
    client: string;
    reason: "denied" | "per_ip_limit" | "per_ip_table_full";
    suppressed: number;
  }
  | {
    type: "accept-error";
    address: string;
    code: string;
    error: string;
    pauseMs: number;
    suppressed: number;
  }
  | {
    type: "local-error";
    cluster: string;
    backend: string;
    code: string;
    error: string;
    suppressed: number;
  }
  | { type: "internal-error"; error: string; suppressed: number };

/**
 * Counters, as served on the metrics endpoint: what {@linkcode TcpProxy.stats} returns.
 * Totals count since {@linkcode TcpProxy.start} and survive reloads.
 *
 * @example
 * ```ts
 * import { type ProxyStats, startProxy } from "@zerocopy/splice/proxy";
 * import { parseConfig } from "@zerocopy/splice/config";
 *
 * const proxy = startProxy(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'));
 * const stats: ProxyStats = proxy.stats();
 * console.log(stats.connectionsOpen, stats.bytesIn, stats.bytesOut);
 * for (const [key, backend] of Object.entries(stats.backends)) {
 *   console.log(key, backend.active, backend.ejected ? "ejected" : "healthy");
 * }
 * await proxy.shutdown();
 * ```
 */
export interface ProxyStats {
  /** Connections accepted and not yet closed. */
  connectionsOpen: number;
  /** Connections accepted, over-limit ones excluded. */
  connectionsTotal: number;
  /** Connections closed at once because their listener was at `maxConnections`. */
  connectionsRejected: number;
  /**
   * Connections closed by their listener's stages before any backend, by reason: `denied`
   * (allow/deny), `per_ip_limit`, `proxy_header_invalid`, `proxy_header_timeout`,
   * `client_hello_invalid`, `client_hello_timeout`, `no_route` (no frontend for the server
   * name), `per_ip_table_full` (more client addresses at once than the engines' shared table
   * holds: it is sized to twice the fd limit, at most 131,072). Reasons never seen are absent.
   */
  connectionsRefused: Record<string, number>;
  /** Bytes relayed from clients to backends, counted when a connection ends. */
  bytesIn: number;
  /** Bytes relayed from backends to clients, counted when a connection ends. */
  bytesOut: number;
  /** Finished connections relayed with `splice(2)`. */
  splicedConnections: number;
  /** Finished connections relayed with the userspace copy loop. */
  copiedConnections: number;
  /** Connects to backends that failed or timed out (the backend's fault). */
  connectFailures: number;
  /**
   * Errors of `accept()`, by errno name (`EMFILE`, `ECONNABORTED`...): the listeners paused on
   * the resource ones and skipped the transient ones.
   */
  acceptErrors: Record<string, number>;
  /**
   * Connects that failed for the proxy's own reasons, by errno name (`EMFILE`,
   * `EADDRNOTAVAIL`...) or `permission` (not allowed by `--allow-net`); no backend is blamed.
   */
  localErrors: Record<string, number>;
  /** Connections closed because of a bug in the proxy or its `onEvent`. */
  internalErrors: number;
  /** Calls to {@linkcode TcpProxy.reload}. */
  reloads: number;
  /**
   * Connections accepted by each engine, counted as {@linkcode ProxyStats.connectionsTotal}
   * is (over-limit ones excluded), so that they sum to it; the index is the engine's number
   * (the `engine` label of `splice_engine_connections_total`). Empty when connections are
   * relayed through Deno conns (without `--allow-ffi`), where there are no engines.
   */
  engines: number[];
  /** Per backend, keyed `cluster/host:port`. */
  backends: Record<string, {
    /** The backend's cluster. */
    cluster: string;
    /** Connections to it now. */
    active: number;
    /** Whether passive health skips it now. */
    ejected: boolean;
    /** Whether its active health check (when its cluster has one) says it is up. */
    up: boolean;
    /** Connects to it that succeeded. */
    connections: number;
    /** Connects to it that failed or timed out. */
    failures: number;
    /** Bytes relayed to it, counted when a connection ends. */
    bytesIn: number;
    /** Bytes relayed from it, counted when a connection ends. */
    bytesOut: number;
  }>;
}

/**
 * A backend as the running proxy has it: {@linkcode TcpProxy.backend}, and the answer of the
 * admin endpoint's `GET /clusters/{cluster}/backends/{address}`.
 *
 * @example
 * ```ts
 * import type { BackendView } from "@zerocopy/splice/proxy";
 *
 * function line(view: BackendView): string {
 *   return `${view.cluster}/${view.backend} ${view.state} weight=${view.weight} ` +
 *     `${view.up ? "up" : "down"} active=${view.active}`;
 * }
 * ```
 */
export interface BackendView {
  /** The backend's cluster. */
  cluster: string;
  /** The backend's address, as configured. */
  backend: string;
  /** Its weight now: the file's, or the runtime one. */
  weight: number;
  /** `"ready"`, or `"drain"` / `"maint"` as set at run time. */
  state: "ready" | "drain" | "maint";
  /** Whether its active health check says it is up (true when it has none). */
  up: boolean;
  /** Its last health check: when it ended (ms since the epoch) and `"ok"` or why not. */
  lastCheck: { up: boolean; lastCheckAt: number; lastResult: string } | null;
  /** Connections to it now. */
  active: number;
  /** Whether passive health skips it now. */
  ejected: boolean;
  /** Connects to it that succeeded. */
  connections: number;
  /** Connects to it that failed by its fault. */
  failures: number;
  /** Bytes relayed to it. */
  bytesIn: number;
  /** Bytes relayed from it. */
  bytesOut: number;
}

/**
 * What the admin endpoint's `/status` answers ({@linkcode TcpProxy.status}): the stats, with
 * the listeners and each backend's full view.
 *
 * @example
 * ```ts
 * import type { ProxyStatus } from "@zerocopy/splice/proxy";
 *
 * function down(status: ProxyStatus): string[] {
 *   return Object.entries(status.backends).flatMap(([key, b]) => b.up ? [] : [key]);
 * }
 * ```
 */
export interface ProxyStatus extends Omit<ProxyStats, "backends"> {
  /** The listeners, with the port each got. */
  listeners: { address: string; port: number }[];
  /** Per backend, keyed `cluster/host:port`. */
  backends: Record<string, BackendView>;
}
