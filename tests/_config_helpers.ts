/**
 * What the config tests share: the defaults, a full proxy file and its Config, and ways to get
 * the ConfigError a call must throw.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type Config, ConfigError, parseConfig } from "../config.ts";

export const KEY = "splice_pipe_capacity_bytes";
export const KNOWN_KEYS = "splice_pipe_capacity_bytes, connect_timeout_ms, idle_timeout_ms, " +
  "drain_timeout_ms, splice_mode, log_format, access_log, engines, dns_nameserver, metrics, listeners, clusters";

/** The configuration of an empty file. */
export const DEFAULTS: Config = {
  splicePipeCapacityBytes: 0,
  connectTimeoutMs: 3000,
  idleTimeoutMs: 0,
  drainTimeoutMs: 10_000,
  spliceMode: "auto",
  logFormat: "text",
  accessLog: "all",
  engines: 0,
  listeners: [],
  clusters: {},
};

/** Runs `fn` and returns the ConfigError it must throw. */
export function configErrorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${error}`);
    return error;
  }
  assert.fail("expected a ConfigError, nothing was thrown");
}

/** Awaits `promise` and returns the ConfigError it must reject with. */
export async function configErrorOfAsync(promise: Promise<unknown>): Promise<ConfigError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${error}`);
    return error;
  }
  assert.fail("expected a ConfigError, nothing was thrown");
}

/** Writes `content` to a fresh temporary .toml file, hands its path to `fn`, then removes it. */
export async function withTempConfig(
  content: string | Uint8Array,
  fn: (path: string) => Promise<void>,
): Promise<void> {
  const path = await Deno.makeTempFile({ prefix: "splice_config_", suffix: ".toml" });
  try {
    if (typeof content === "string") await Deno.writeTextFile(path, content);
    else await Deno.writeFile(path, content);
    await fn(path);
  } finally {
    await Deno.remove(path);
  }
}

export const FULL = `
splice_pipe_capacity_bytes = 65536
connect_timeout_ms = 2500
idle_timeout_ms = 2147483647
drain_timeout_ms = 0
splice_mode = "copy"
log_format = "json"
access_log = "errors"
engines = 64

[metrics]
address = "LocalHost:9901"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:8080"
max_connections = 1000000
max_connections_per_ip = 50
allow = ["127.0.0.0/8", "::1"]
deny = ["127.0.0.2"]
expect_proxy = true
proxy_header_timeout_ms = 1500
sni_timeout_ms = 2500

[[listeners]]
address = "[0:0::1]:0"

[clusters.app]
protocol = "tcp"
load_balancing = "least_connections"
send_proxy = "v2"
frontends = [
  { address = "127.0.0.1:8080" },
  { address = "127.0.0.1:8080", hostname = "*.Example.COM." },
]
backends = [
  { address = "127.0.0.1:9000", weight = 1000000 },
  { address = "[::1]:9001", weight = 0 },
  { address = "backend-3.internal:65535", backup = true },
]

[clusters.v6_only-2]
frontends = [{ address = "[::1]:0" }]

[[clusters.v6_only-2.backends]]
address = "10.0.0.1:1"
`;

export const FULL_CONFIG: Config = {
  splicePipeCapacityBytes: 65_536,
  connectTimeoutMs: 2500,
  idleTimeoutMs: 2 ** 31 - 1,
  drainTimeoutMs: 0,
  spliceMode: "copy",
  logFormat: "json",
  accessLog: "errors",
  engines: 64,
  metrics: { address: { hostname: "localhost", port: 9901 } },
  listeners: [
    {
      protocol: "tcp",
      address: { hostname: "127.0.0.1", port: 8080 },
      maxConnections: 1_000_000,
      maxConnectionsPerIp: 50,
      allow: ["127.0.0.0/8", "::1"],
      deny: ["127.0.0.2"],
      expectProxy: true,
      proxyHeaderTimeoutMs: 1500,
      sniTimeoutMs: 2500,
    },
    {
      protocol: "tcp",
      address: { hostname: "::1", port: 0 },
      maxConnections: 10_000,
      allow: [],
      deny: [],
      expectProxy: false,
      proxyHeaderTimeoutMs: 3000,
      sniTimeoutMs: 3000,
    },
  ],
  clusters: {
    app: {
      protocol: "tcp",
      loadBalancing: "least_connections",
      sendProxy: "v2",
      dnsRefreshMs: 5000,
      frontends: [
        { address: { hostname: "127.0.0.1", port: 8080 } },
        { address: { hostname: "127.0.0.1", port: 8080 }, hostname: "*.example.com" },
      ],
      backends: [
        { address: { hostname: "127.0.0.1", port: 9000 }, weight: 1_000_000, backup: false },
        { address: { hostname: "::1", port: 9001 }, weight: 0, backup: false },
        { address: { hostname: "backend-3.internal", port: 65_535 }, weight: 100, backup: true },
      ],
    },
    "v6_only-2": {
      protocol: "tcp",
      loadBalancing: "round_robin",
      dnsRefreshMs: 5000,
      frontends: [{ address: { hostname: "::1", port: 0 } }],
      backends: [{ address: { hostname: "10.0.0.1", port: 1 }, weight: 100, backup: false }],
    },
  },
};

/** A valid file with one listener and one cluster, to which a test adds `extra`. */
export function proxyToml(extra = "", backends = '[{ address = "127.0.0.1:9000" }]'): string {
  return `[[listeners]]
address = "127.0.0.1:8080"

[clusters.app]
frontends = [{ address = "127.0.0.1:8080" }]
backends = ${backends}
${extra}`;
}

/** The single issue `toml` must raise; checks that the message names the key and the value. */
export function onlyIssue(toml: string): ConfigError["issues"][number] {
  const error = configErrorOf(() => parseConfig(toml, { path: "proxy.toml" }));
  assert.equal(error.issues.length, 1, error.message);
  assert.equal(error.message, `Cannot parse config "proxy.toml": ${error.issues[0].message}`);
  return error.issues[0];
}
