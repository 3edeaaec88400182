/**
 * The proxy's part of the configuration file: its timeouts, modes and engines, `[metrics]`,
 * `[[listeners]]` and `[clusters.<name>]` with their frontends and backends, as a schema for
 * the walker of config/schema.ts, and the public types those tables become. The root of the
 * file (config.ts) adds the module's own key to these.
 *
 * @module
 */

import type { FieldMap } from "../config/schema.ts";
import { addressField, type SocketAddress } from "./config_address.ts";
import { cidrField, dnsNameField, hostnameField } from "./config_rules.ts";

/**
 * The `[metrics]` table.
 *
 * @example
 * ```ts
 * import { type MetricsConfig, parseConfig } from "@zerocopy/splice/config";
 *
 * const metrics: MetricsConfig | undefined = parseConfig(`
 * [metrics]
 * address = "127.0.0.1:9901"
 * token = "7f3c9a1e5b2d8f4a6c0e"
 * `).metrics;
 * console.log(metrics?.address.port, metrics?.token); // 9901 7f3c9a1e5b2d8f4a6c0e
 * ```
 */
export interface MetricsConfig {
  /** `address` (required): where the metrics endpoint listens. */
  readonly address: SocketAddress;
  /**
   * `token`: when set, state-changing admin routes (POST /reload) need
   * `Authorization: Bearer <token>`; the environment variable SPLICE_ADMIN_TOKEN, when
   * readable, takes precedence. At least 16 printable ASCII characters, without whitespace;
   * `undefined` when absent.
   */
  readonly token?: string;
}

/**
 * One `[[listeners]]` table: an address the proxy accepts connections on.
 *
 * @example
 * ```ts
 * import { type ListenerConfig, parseConfig } from "@zerocopy/splice/config";
 *
 * const [listener]: readonly ListenerConfig[] = parseConfig(`
 * [[listeners]]
 * address = "0.0.0.0:0"
 * max_connections = 500
 * `).listeners;
 * console.log(listener.address, listener.maxConnections, listener.expectProxy);
 * // { hostname: "0.0.0.0", port: 0 } 500 false
 * ```
 */
export interface ListenerConfig {
  /** `protocol`: only `"tcp"`, the default. */
  readonly protocol: "tcp";
  /**
   * `address` (required): unique among listeners; port 0 picks any free port. Cluster
   * frontends name a listener by this address.
   */
  readonly address: SocketAddress;
  /** `max_connections`: open connections beyond this are refused, 1 to 1000000; 10000. */
  readonly maxConnections: number;
  /**
   * `max_connections_per_ip`: open connections from one client address beyond this are
   * refused, 1 to 1000000; `undefined` (absent): no such limit. The address is the one the
   * PROXY header gives when `expect_proxy` is on.
   */
  readonly maxConnectionsPerIp?: number;
  /**
   * `allow`: CIDRs (`"192.0.2.0/24"`, `"2001:db8::/32"`, a bare address) whose clients are
   * served; empty (absent): every client not denied.
   */
  readonly allow: readonly string[];
  /** `deny`: CIDRs whose clients are refused; `deny` wins over `allow`. Empty when absent. */
  readonly deny: readonly string[];
  /**
   * `expect_proxy`: each connection must start with a PROXY protocol header (v1 or v2), whose
   * client address is then the one logs, metrics, rules and limits see; `false` by default.
   */
  readonly expectProxy: boolean;
  /**
   * `proxy_header_timeout_ms`: how long a connection may take to send its whole PROXY header,
   * 1 to 600000; 3000.
   */
  readonly proxyHeaderTimeoutMs: number;
  /**
   * `sni_timeout_ms`: on a listener whose frontends route by `hostname`, how long a connection
   * may take to send its TLS ClientHello, 1 to 600000; 3000.
   */
  readonly sniTimeoutMs: number;
}

/**
 * One `[clusters.<name>]` table: backends and the listeners whose connections they serve.
 *
 * @example
 * ```ts
 * import { type ClusterConfig, parseConfig } from "@zerocopy/splice/config";
 *
 * const config = parseConfig(`
 * [[listeners]]
 * address = "127.0.0.1:8080"
 *
 * [clusters.app]
 * load_balancing = "least_connections"
 * frontends = [{ address = "127.0.0.1:8080" }]
 * backends = [{ address = "127.0.0.1:9000" }, { address = "127.0.0.1:9001", weight = 0 }]
 * `);
 * const app: ClusterConfig = config.clusters.app;
 * console.log(app.loadBalancing, app.backends.map((backend) => backend.weight));
 * // least_connections [100, 0]
 * ```
 */
export interface ClusterConfig {
  /** `protocol`: only `"tcp"`, the default. */
  readonly protocol: "tcp";
  /** `load_balancing`: how connections spread over backends; `"round_robin"` by default. */
  readonly loadBalancing: "round_robin" | "least_connections" | "random" | "source_hash";
  /**
   * `dns_refresh_ms`: how often backends named by `srv` or `host` are looked up again, 100 to
   * 3600000; 5000. DNS answers carry no TTL here, so the refresh is periodic.
   */
  readonly dnsRefreshMs: number;
  /**
   * `[clusters.<name>.health_check]`: active checks of each backend, from the control plane;
   * `undefined` (absent): passive ejection only.
   */
  readonly healthCheck?: HealthCheckConfig;
  /**
   * `send_proxy`: a PROXY protocol header, `"v1"` (text) or `"v2"` (binary), sent to the
   * backend before the client's bytes, carrying the client's address; `undefined` (absent):
   * none.
   */
  readonly sendProxy?: "v1" | "v2";
  /**
   * `frontends` (required, at least one): the listeners this cluster serves. Each must be the
   * address of a listener; clusters share a listener only by `hostname` (TLS server names),
   * and no two frontends may have the same address and hostname.
   */
  readonly frontends: readonly FrontendConfig[];
  /** `backends` (required, at least one, addresses unique in the cluster): the servers. */
  readonly backends: readonly BackendConfig[];
}

/**
 * One entry of a cluster's `frontends`.
 *
 * @example
 * ```ts
 * import { type FrontendConfig, parseConfig } from "@zerocopy/splice/config";
 *
 * const config = parseConfig(`
 * [[listeners]]
 * address = "[::1]:8443"
 *
 * [clusters.tls]
 * frontends = [{ address = "[::1]:8443" }]
 * backends = [{ address = "10.0.0.5:443" }]
 * `);
 * const frontend: FrontendConfig = config.clusters.tls.frontends[0];
 * console.log(frontend.address); // { hostname: "::1", port: 8443 }
 * ```
 */
export interface FrontendConfig {
  /** `address` (required): the address of one of the `[[listeners]]`, as written there. */
  readonly address: SocketAddress;
  /**
   * `hostname`: the TLS server name (SNI) this frontend takes on its listener, exact
   * (`"a.example.com"`) or a wildcard (`"*.example.com"`: any name under the domain, not the
   * domain itself), lowercased. The ClientHello is read, not decrypted, and relayed untouched.
   * An exact name wins over a wildcard, a longer wildcard over a shorter, and the listener's
   * frontend without a hostname takes the rest; `undefined` (absent): that default.
   */
  readonly hostname?: string;
}

/**
 * One entry of a cluster's `backends`.
 *
 * @example
 * ```ts
 * import { type BackendConfig, parseConfig } from "@zerocopy/splice/config";
 *
 * const config = parseConfig(`
 * [[listeners]]
 * address = "127.0.0.1:8080"
 *
 * [clusters.app]
 * frontends = [{ address = "127.0.0.1:8080" }]
 * backends = [{ address = "app.internal:9000", weight = 0 }]
 * `);
 * const backend: BackendConfig = config.clusters.app.backends[0];
 * console.log(backend.address, backend.weight, backend.backup);
 * // { hostname: "app.internal", port: 9000 } 0 false
 * ```
 */
export interface BackendConfig {
  /**
   * `address`: where the backend listens; port 1 to 65535. Each backend entry has an
   * `address`, or names a service instead: `srv`, or `host` and `port`.
   */
  readonly address?: SocketAddress;
  /**
   * `srv`: a DNS SRV name (`"_app._tcp.example.internal"`): each target of its answer, at its
   * port, with its weight, is a backend; only the lowest priority group with a backend up serves.
   */
  readonly srv?: string;
  /** `host` (with `port`): a DNS name each of whose A and AAAA records is a backend. */
  readonly host?: string;
  /** `port`: the port of `host`'s backends, 1 to 65535. */
  readonly port?: number;
  /**
   * `weight`: the backend's share of new connections relative to the others, 0 to 1000000;
   * 100. `0` drains it: it gets no new connections.
   */
  readonly weight: number;
  /** `backup`: used only while no other backend of the cluster is up; `false` by default. */
  readonly backup: boolean;
}

/**
 * A cluster's `health_check` table: each backend is connected to every `interval_ms`; with
 * `send`, that text is written, and with `expect`, the answer must contain that text within
 * `timeout_ms`. `fall` failures in a row take the backend out of service (no new
 * connections), `rise` successes in a row bring it back.
 *
 * @example
 * ```ts
 * import { type HealthCheckConfig, parseConfig } from "@zerocopy/splice/config";
 *
 * const config = parseConfig(`
 * [[listeners]]
 * address = "127.0.0.1:8080"
 *
 * [clusters.app]
 * frontends = [{ address = "127.0.0.1:8080" }]
 * backends = [{ address = "127.0.0.1:9000" }]
 * health_check = { interval_ms = 1000, send = "PING\\r\\n", expect = "PONG" }
 * `);
 * const check: HealthCheckConfig | undefined = config.clusters.app.healthCheck;
 * console.log(check?.intervalMs, check?.rise, check?.fall, check?.expect); // 1000 2 3 PONG
 * ```
 */
export interface HealthCheckConfig {
  /** `interval_ms`: how often each backend is checked, 100 to 3600000; 2000. */
  readonly intervalMs: number;
  /** `timeout_ms`: how long a check may take (connect, send, expect), 1 to 600000; 1000. */
  readonly timeoutMs: number;
  /** `rise`: successes in a row that bring a backend back, 1 to 1000; 2. */
  readonly rise: number;
  /** `fall`: failures in a row that take it out, 1 to 1000; 3. */
  readonly fall: number;
  /** `send`: text written after the connect; absent: nothing. */
  readonly send?: string;
  /** `expect`: text the answer must contain; absent: the connect is the check. */
  readonly expect?: string;
}

/** `protocol = "tcp"`: the only protocol, a key all the same so that files stay valid later. */
const TCP_ONLY = { kind: "enum", values: ["tcp"], default: "tcp" } as const;

/**
 * The proxy's keys of the file's root table, in the order an unknown key's message lists them.
 * config.ts checks that what they produce fits `Config`.
 */
export const PROXY_FIELDS = {
  connect_timeout_ms: { kind: "integer", min: 1, max: 600_000, default: 3_000 },
  idle_timeout_ms: { kind: "integer", min: 0, max: 2 ** 31 - 1, default: 0 },
  drain_timeout_ms: { kind: "integer", min: 0, max: 3_600_000, default: 10_000 },
  splice_mode: { kind: "enum", values: ["auto", "splice", "copy"], default: "auto" },
  log_format: { kind: "enum", values: ["text", "json"], default: "text" },
  access_log: { kind: "enum", values: ["all", "errors", "off"], default: "all" },
  // 0: as many as the CPUs the process may run on (sched_getaffinity), decided at start.
  engines: { kind: "integer", min: 0, max: 64, default: 0 },
  // Absent: the system's resolver.
  dns_nameserver: { ...addressField(false), required: false },
  metrics: {
    kind: "table",
    fields: {
      address: addressField(false),
      token: { kind: "secret", minLength: 16 },
    },
  },
  listeners: {
    kind: "array",
    items: {
      kind: "table",
      fields: {
        protocol: TCP_ONLY,
        address: addressField(true),
        max_connections: { kind: "integer", min: 1, max: 1_000_000, default: 10_000 },
        // Absent: no per-address limit.
        max_connections_per_ip: { kind: "integer", min: 1, max: 1_000_000 },
        allow: { kind: "array", items: cidrField() },
        deny: { kind: "array", items: cidrField() },
        expect_proxy: { kind: "boolean", default: false },
        proxy_header_timeout_ms: { kind: "integer", min: 1, max: 600_000, default: 3_000 },
        sni_timeout_ms: { kind: "integer", min: 1, max: 600_000, default: 3_000 },
      },
    },
  },
  clusters: {
    kind: "map",
    names: { pattern: /^[A-Za-z0-9_-]+$/, rule: 'letters, digits, "_" and "-"' },
    values: {
      kind: "table",
      fields: {
        protocol: TCP_ONLY,
        load_balancing: {
          kind: "enum",
          values: ["round_robin", "least_connections", "random", "source_hash"],
          default: "round_robin",
        },
        // Absent: no active check (passive ejection only).
        health_check: {
          kind: "table",
          fields: {
            interval_ms: { kind: "integer", min: 100, max: 3_600_000, default: 2_000 },
            timeout_ms: { kind: "integer", min: 1, max: 600_000, default: 1_000 },
            rise: { kind: "integer", min: 1, max: 1_000, default: 2 },
            fall: { kind: "integer", min: 1, max: 1_000, default: 3 },
            send: { kind: "string" },
            expect: { kind: "string" },
          },
        },
        // Absent: nothing is sent before the client's bytes.
        send_proxy: { kind: "enum", values: ["v1", "v2"] },
        dns_refresh_ms: { kind: "integer", min: 100, max: 3_600_000, default: 5_000 },
        frontends: {
          kind: "array",
          required: true,
          minItems: 1,
          items: {
            kind: "table",
            // Port 0 too: a frontend names a listener, which may ask for any free port.
            fields: { address: addressField(true), hostname: hostnameField() },
          },
        },
        backends: {
          kind: "array",
          required: true,
          minItems: 1,
          items: {
            kind: "table",
            // One of: address; srv; host and port (checked in config_checks.ts).
            fields: {
              address: { ...addressField(false), required: false },
              srv: dnsNameField(),
              host: dnsNameField(),
              port: { kind: "integer", min: 1, max: 65_535 },
              weight: { kind: "integer", min: 0, max: 1_000_000, default: 100 },
              backup: { kind: "boolean", default: false },
            },
          },
        },
      },
    },
  },
} as const satisfies FieldMap;
