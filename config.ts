/**
 * The proxy's TOML configuration file: {@linkcode loadConfig} reads and checks it,
 * {@linkcode parseConfig} checks text already in memory, {@linkcode configWarnings} points out
 * what is valid but almost certainly a mistake, {@linkcode applyConfig} puts a checked
 * {@linkcode Config} into effect.
 *
 * Every key is optional; an empty file is a valid configuration. The whole file, with each
 * key's range and default:
 *
 * ```toml
 * # Capacity in bytes requested for each splice pipe, from 0 to 1073741824 (1 GiB).
 * # 0 or absent keeps the default of 65536. Values above /proc/sys/fs/pipe-max-size
 * # (1 MiB by default) need CAP_SYS_RESOURCE, or the kernel keeps its own size.
 * splice_pipe_capacity_bytes = 1048576
 * connect_timeout_ms = 3000        # to a backend: 1 to 600000, default 3000
 * idle_timeout_ms = 0              # 0 to 2147483647, default 0: no idle timeout
 * drain_timeout_ms = 10000         # on shutdown and reload: 0 to 3600000, default 10000
 * splice_mode = "auto"             # "auto" (default), "splice" or "copy"
 * log_format = "text"              # "text" (default) or "json"
 *
 * [metrics]                        # optional: no metrics endpoint without it
 * address = "127.0.0.1:9901"       # required
 * # Optional: state-changing admin routes (POST /reload) then need the header
 * # "Authorization: Bearer <token>". At least 16 printable ASCII characters, no whitespace.
 * # The environment variable SPLICE_ADMIN_TOKEN, when readable, takes precedence.
 * token = "a-long-random-secret-string"
 *
 * [[listeners]]                    # any number, addresses unique
 * protocol = "tcp"                 # only "tcp", the default
 * address = "127.0.0.1:8080"       # required; port 0 picks any free port
 * max_connections = 10000          # 1 to 1000000, default 10000
 *
 * [clusters.app]                   # any number; names of letters, digits, "_" and "-"
 * protocol = "tcp"                 # only "tcp", the default
 * load_balancing = "round_robin"   # "round_robin" (default), "least_connections", "random"
 * # Required, at least one: each the address of a listener, claimed by one cluster only.
 * frontends = [{ address = "127.0.0.1:8080" }]
 * # Required, at least one, addresses unique in the cluster.
 * backends = [
 *   { address = "127.0.0.1:9000", weight = 100 },   # weight: 0 to 1000000, default 100;
 *   { address = "[::1]:9001", weight = 0 },         # 0 drains the backend
 * ]
 * ```
 *
 * An address is `"host:port"`, with an IPv6 host in brackets (`"[::1]:8080"`), and a port from
 * 1 to 65535 (0 as well in listener and frontend addresses). Addresses are compared after
 * normalisation: host names lowercased, IPv6 in canonical form.
 *
 * Keys are snake_case in the file and camelCase in {@linkcode Config}. The file must be UTF-8, as
 * TOML requires. It is checked as a whole: a wrong type, a value out of range, an unknown key or
 * value (a typo, most of the time, for which the nearest known one is suggested), a frontend no
 * listener has or an address used twice is reported with its key path and value, and all
 * problems of a file come out in one {@linkcode ConfigError}, so a running proxy can reject a bad
 * reload, log every mistake at once and keep its previous configuration. Messages show long key
 * paths and values cut short, and never more than the first characters of the token.
 *
 * A valid configuration may still hold a likely mistake, such as a cluster whose backends all
 * have weight 0: {@linkcode configWarnings} lists those, for the proxy to log at start, on
 * reload and under `--check`.
 *
 * ```ts
 * import { applyConfig, configWarnings, loadConfig } from "@zerocopy/splice/config";
 *
 * const config = await loadConfig("proxy.toml");
 * for (const warning of configWarnings(config)) console.warn(warning.message);
 * applyConfig(config);
 * ```
 *
 * @module
 */

import { parse, TomlError } from "smol-toml";
import { MAX_SPLICE_PIPE_CAPACITY, setPipeCapacity } from "./splice_pipe.ts";

/**
 * A checked configuration, as returned by {@linkcode parseConfig} and {@linkcode loadConfig}.
 * Keys are the file's keys in camelCase; absent keys have their defaults.
 *
 * @example
 * ```ts
 * import { type Config, parseConfig } from "@zerocopy/splice/config";
 *
 * const config: Config = parseConfig(`
 * splice_pipe_capacity_bytes = 1048576
 *
 * [[listeners]]
 * address = "127.0.0.1:8080"
 *
 * [clusters.app]
 * frontends = [{ address = "127.0.0.1:8080" }]
 * backends = [{ address = "127.0.0.1:9000" }]
 * `);
 * console.log(config.splicePipeCapacityBytes); // 1048576
 * console.log(config.connectTimeoutMs); // 3000
 * console.log(config.listeners[0].address); // { hostname: "127.0.0.1", port: 8080 }
 * console.log(config.clusters.app.backends[0].weight); // 100
 * ```
 */
export interface Config {
  /**
   * `splice_pipe_capacity_bytes`: the capacity requested for each splice pipe, from 0 to
   * 1073741824. `0` (also when the key is absent) keeps the default of 65536.
   */
  readonly splicePipeCapacityBytes: number;
  /** `connect_timeout_ms`: how long a connect to a backend may take, 1 to 600000; 3000. */
  readonly connectTimeoutMs: number;
  /**
   * `idle_timeout_ms`: a connection with no traffic either way for this long is closed, 0 to
   * 2147483647; `0`, the default, never closes one.
   */
  readonly idleTimeoutMs: number;
  /**
   * `drain_timeout_ms`: on shutdown or reload, how long open connections may run on before they
   * are closed, 0 to 3600000; 10000.
   */
  readonly drainTimeoutMs: number;
  /**
   * `splice_mode`: how bytes are moved. `"auto"` (default) splices where the platform allows
   * and copies elsewhere; `"splice"` and `"copy"` force one way.
   */
  readonly spliceMode: "auto" | "splice" | "copy";
  /** `log_format`: `"text"` (default) or `"json"`, one object a line. */
  readonly logFormat: "text" | "json";
  /** `[metrics]`: the metrics endpoint; `undefined` (no endpoint) when the table is absent. */
  readonly metrics?: MetricsConfig;
  /** `[[listeners]]`: the addresses the proxy accepts connections on; empty when absent. */
  readonly listeners: readonly ListenerConfig[];
  /**
   * `[clusters.<name>]`: the clusters by name (letters, digits, `_` and `-`); empty when
   * absent.
   */
  readonly clusters: { readonly [name: string]: ClusterConfig };
}

/**
 * A parsed `address = "host:port"`: the shape `Deno.listen` and `Deno.connect` take. The host
 * name is lowercased and an IPv6 address, written `"[::1]:8080"` in the file, is given without
 * brackets, in canonical form.
 *
 * @example
 * ```ts
 * import { parseConfig, type SocketAddress } from "@zerocopy/splice/config";
 *
 * const config = parseConfig('[metrics]\naddress = "[0:0::1]:9901"');
 * const address: SocketAddress | undefined = config.metrics?.address;
 * console.log(address); // { hostname: "::1", port: 9901 }
 * ```
 */
export interface SocketAddress {
  /** A host name, an IPv4 address or an IPv6 address (without brackets). */
  readonly hostname: string;
  /** 1 to 65535; 0 ("any free port") only in listener and frontend addresses. */
  readonly port: number;
}

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
 * console.log(listener);
 * // { address: { hostname: "0.0.0.0", port: 0 }, maxConnections: 500, protocol: "tcp" }
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
  readonly loadBalancing: "round_robin" | "least_connections" | "random";
  /**
   * `frontends` (required, at least one): the listeners this cluster serves. Each must be the
   * address of a listener, and no two clusters may share one.
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
 * console.log(backend); // { address: { hostname: "app.internal", port: 9000 }, weight: 0 }
 * ```
 */
export interface BackendConfig {
  /** `address` (required): where the backend listens; port 1 to 65535. */
  readonly address: SocketAddress;
  /**
   * `weight`: the backend's share of new connections relative to the others, 0 to 1000000;
   * 100. `0` drains it: it gets no new connections.
   */
  readonly weight: number;
}

/**
 * One problem found in a configuration.
 *
 * @example
 * ```ts
 * import { ConfigError, type ConfigIssue, parseConfig } from "@zerocopy/splice/config";
 *
 * try {
 *   parseConfig("splice_pipe_capacity_bytes = -1");
 * } catch (error) {
 *   if (!(error instanceof ConfigError)) throw error;
 *   const issue: ConfigIssue = error.issues[0];
 *   console.log(issue.keyPath, issue.value); // splice_pipe_capacity_bytes -1
 * }
 * ```
 */
export interface ConfigIssue {
  /**
   * Where the problem is, as a TOML key path such as `clusters.app.backends[1].weight`; `""`
   * for the file as a whole (unreadable, not valid TOML).
   */
  readonly keyPath: string;
  /**
   * The offending value as parsed, `undefined` when there is none (a missing key, a syntax
   * error) and for the secret `metrics.token`, which is not repeated. An integer is a `number`
   * when it fits one exactly, else a `bigint`; tables and arrays are passed as parsed, with
   * their integers as `bigint`.
   */
  readonly value: unknown;
  /**
   * The problem in one line that names the key path and the value, e.g.
   * `splice_pipe_capacity_bytes = -1: expected a whole number from 0 to 1073741824`. Key paths
   * longer than 80 characters lose their middle and values longer than 60 their end, each cut
   * marked `...`, so a message stays a few hundred characters at most. An unknown key or
   * value suggests the nearest known one in the first 1000 issues of a file; later ones list
   * the known keys or values, as when none is near.
   */
  readonly message: string;
}

/** How many issues a {@linkcode ConfigError} message lists before summing up the rest. */
const MAX_LISTED_ISSUES = 20;

/**
 * How many issues of a file may suggest the nearest known key or value. One search takes
 * microseconds, but a file can hold hundreds of thousands of unknown keys, which took seconds.
 * Past this many issues, far more than a message lists, an unknown key lists the known keys and
 * an unknown value the valid ones, as when none is near.
 */
const MAX_SUGGESTED_ISSUES = 1_000;

/**
 * A configuration that cannot be read, parsed or applied. Its message lists every problem, one
 * per line; {@linkcode ConfigError.issues} holds them for programs. Nothing else is thrown for
 * bad input, so catching this class is enough to keep running on the previous configuration.
 *
 * @example Keep the old configuration when a reload fails
 * ```ts
 * import { type Config, ConfigError, parseConfig } from "@zerocopy/splice/config";
 *
 * let current: Config = parseConfig("");
 * try {
 *   current = parseConfig("splice_pipe_capacity = 1048576");
 * } catch (error) {
 *   if (!(error instanceof ConfigError)) throw error;
 *   // Cannot parse config: unknown key "splice_pipe_capacity": did you mean
 *   // "splice_pipe_capacity_bytes"?
 *   console.error(error.message);
 * }
 * console.log(current.splicePipeCapacityBytes); // 0
 * ```
 */
export class ConfigError extends Error {
  /**
   * The file the configuration came from, `undefined` when it was given as text.
   *
   * @example
   * ```ts
   * import { ConfigError, parseConfig } from "@zerocopy/splice/config";
   *
   * try {
   *   parseConfig("splice_pipe_capacity_bytes = true", { path: "proxy.toml" });
   * } catch (error) {
   *   if (!(error instanceof ConfigError)) throw error;
   *   console.log(error.path); // "proxy.toml"
   * }
   * ```
   */
  readonly path: string | undefined;
  /**
   * Every problem found, in file order; never empty.
   *
   * @example List the key paths to fix
   * ```ts
   * import { ConfigError, parseConfig } from "@zerocopy/splice/config";
   *
   * try {
   *   parseConfig("splice_pipe_capacity_bytes = 1.5\nlisten = 8080");
   * } catch (error) {
   *   if (!(error instanceof ConfigError)) throw error;
   *   console.log(error.issues.map((issue) => issue.keyPath));
   *   // ["splice_pipe_capacity_bytes", "listen"]
   * }
   * ```
   */
  readonly issues: readonly ConfigIssue[];

  /**
   * Builds the error and its message from the issues; {@linkcode loadConfig},
   * {@linkcode parseConfig} and {@linkcode applyConfig} are the usual sources.
   *
   * @param issues the problems, at least one
   * @param options `path` of the file, `operation` that failed (`"parse"` by default: checking
   * counts as parsing) and `cause`
   *
   * @example Report a check of your own in the same shape
   * ```ts
   * import { ConfigError } from "@zerocopy/splice/config";
   *
   * const keyPath = "splice_pipe_capacity_bytes";
   * const error = new ConfigError([{
   *   keyPath,
   *   value: 4194304,
   *   message: `${keyPath} = 4194304: above /proc/sys/fs/pipe-max-size (1048576)`,
   * }], { path: "proxy.toml", operation: "apply" });
   * console.log(error.message);
   * // Cannot apply config "proxy.toml": splice_pipe_capacity_bytes = 4194304: above
   * // /proc/sys/fs/pipe-max-size (1048576)
   * ```
   */
  constructor(
    issues: readonly ConfigIssue[],
    options: { path?: string; operation?: "read" | "parse" | "apply"; cause?: unknown } = {},
  ) {
    super(formatErrorMessage(options.operation ?? "parse", options.path, issues), {
      cause: options.cause,
    });
    this.name = "ConfigError";
    this.path = options.path;
    this.issues = Object.freeze([...issues]);
  }
}

/**
 * Parses and checks the text of a configuration file.
 *
 * @param text the TOML text
 * @param options `path` names the file in error messages
 * @returns the configuration, with defaults filled in
 * @throws {ConfigError} when the text is not valid TOML, breaks the schema or its addresses do
 * not fit together (a frontend without a listener, an address used twice); all problems are
 * reported at once, those of single values first
 *
 * @example
 * ```ts
 * import { parseConfig } from "@zerocopy/splice/config";
 *
 * console.log(parseConfig("").splicePipeCapacityBytes); // 0
 * console.log(parseConfig("splice_pipe_capacity_bytes = 0x100000").splicePipeCapacityBytes);
 * // 1048576
 * ```
 *
 * @example Every problem is reported
 * ```ts
 * import { ConfigError, parseConfig } from "@zerocopy/splice/config";
 *
 * try {
 *   parseConfig('splice_pipe_capacity_bytes = "64k"\nlisten = 8080', { path: "proxy.toml" });
 * } catch (error) {
 *   if (!(error instanceof ConfigError)) throw error;
 *   console.error(error.message);
 *   // Cannot parse config "proxy.toml": 2 problems:
 *   //   splice_pipe_capacity_bytes = "64k": expected an integer, got a string
 *   //   unknown key "listen" (known keys: splice_pipe_capacity_bytes, connect_timeout_ms,
 *   //   idle_timeout_ms, drain_timeout_ms, splice_mode, log_format, metrics, listeners, clusters)
 * }
 * ```
 */
export function parseConfig(text: string, options?: { path?: string }): Config {
  const path = options?.path;
  let document: unknown;
  try {
    // Integers as bigint keep them apart from floats (`1.0` is a float in TOML but `1` in JS)
    // and let an out-of-range integer be reported as such instead of as a syntax error.
    // A byte order mark is not TOML, but editors on some systems write one.
    document = parse(text.replace(/^\uFEFF/, ""), { integersAsBigInt: true });
  } catch (error) {
    throw new ConfigError([syntaxIssue(error)], { path, cause: error });
  }
  const issues: ConfigIssue[] = [];
  const output = validateTable(CONFIG_SCHEMA, document, "", issues) as SchemaOutput<
    typeof CONFIG_SCHEMA
  >;
  if (isTable(document)) checkAddresses(document, issues);
  if (issues.length > 0) throw new ConfigError(issues, { path });
  const config: Config = output;
  return config;
}

/**
 * Reads a configuration file and checks it with {@linkcode parseConfig}. Needs read permission
 * for the file.
 *
 * @param path the file, as a path or a `file:` URL
 * @returns the configuration, with defaults filled in
 * @throws {ConfigError} when the file cannot be read (its `cause` is the original error), is
 * not valid TOML or breaks the schema
 *
 * @example Load at start-up, or keep running with the previous configuration
 * ```ts
 * import { ConfigError, loadConfig } from "@zerocopy/splice/config";
 *
 * try {
 *   const config = await loadConfig("/etc/splice/proxy.toml");
 *   console.log(config.splicePipeCapacityBytes);
 * } catch (error) {
 *   if (!(error instanceof ConfigError)) throw error;
 *   // e.g. Cannot read config "/etc/splice/proxy.toml": No such file or directory
 *   console.error(error.message);
 * }
 * ```
 */
export async function loadConfig(path: string | URL): Promise<Config> {
  const shownPath = path instanceof URL ? displayUrl(path) : String(path);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    throw new ConfigError(
      [{ keyPath: "", value: undefined, message: describeReadError(error) }],
      { path: shownPath, operation: "read", cause: error },
    );
  }
  return parseConfig(decodeUtf8(bytes, shownPath), { path: shownPath });
}

/**
 * Lists what is valid in a configuration but almost certainly a mistake. Today: a cluster whose
 * backends all have weight 0, which takes no connections. The proxy logs these at start, on
 * reload and under `--check`, and runs the configuration all the same.
 *
 * @param config a configuration from {@linkcode parseConfig} or {@linkcode loadConfig}
 * @returns the warnings, in the shape of {@linkcode ConfigIssue}, in cluster order; empty when
 * there is nothing to say
 *
 * @example
 * ```ts
 * import { configWarnings, parseConfig } from "@zerocopy/splice/config";
 *
 * const config = parseConfig(`
 * [[listeners]]
 * address = "127.0.0.1:8080"
 *
 * [clusters.app]
 * frontends = [{ address = "127.0.0.1:8080" }]
 * backends = [{ address = "127.0.0.1:9000", weight = 0 }]
 * `);
 * for (const warning of configWarnings(config)) console.warn(warning.message);
 * // clusters.app.backends: every backend has weight 0, so the cluster takes no connections
 * ```
 */
export function configWarnings(config: Config): ConfigIssue[] {
  const warnings: ConfigIssue[] = [];
  for (const [name, cluster] of Object.entries(config.clusters)) {
    const backends = cluster.backends;
    // `every` holds for an empty list, which the schema already rejects.
    if (backends.length === 0 || !backends.every((backend) => backend.weight === 0)) continue;
    const keyPath = `${joinKeyPath("clusters", name)}.backends`;
    warnings.push({
      keyPath,
      value: backends,
      message: `${formatKeyPath(keyPath)}: every backend has weight 0, so the cluster takes ` +
        "no connections",
    });
  }
  return warnings;
}

/**
 * Puts a configuration into effect for the whole process: today the splice pipe capacity. The
 * other settings (listeners, clusters, timeouts...) are for the proxy that runs them.
 *
 * The splice pipe capacity is set once per process (see `setPipeCapacity`): the first
 * configuration with a non-zero `splicePipeCapacityBytes` fixes it, and later ones leave it
 * alone, because pipes already in use would keep their old size anyway.
 *
 * @param config a configuration from {@linkcode parseConfig} or {@linkcode loadConfig}
 * @returns `pipeCapacityApplied`: whether this call set the pipe capacity
 * @throws {ConfigError} when `config` was built by hand with an out-of-range value
 *
 * @example
 * ```ts
 * import { applyConfig, parseConfig } from "@zerocopy/splice/config";
 *
 * const { pipeCapacityApplied } = applyConfig(
 *   parseConfig("splice_pipe_capacity_bytes = 1048576"),
 * );
 * console.log(pipeCapacityApplied); // true the first time in a process, then false
 * ```
 */
export function applyConfig(config: Config): { pipeCapacityApplied: boolean } {
  const field = CONFIG_SCHEMA.fields.splice_pipe_capacity_bytes;
  const bytes: unknown = config.splicePipeCapacityBytes;
  // Checked here rather than left to setPipeCapacity's RangeError, so that callers catching
  // ConfigError for bad input also catch a hand-built Config.
  if (
    typeof bytes !== "number" || !Number.isInteger(bytes) || bytes < field.min ||
    bytes > field.max
  ) {
    const keyPath = "splice_pipe_capacity_bytes";
    const shown = typeof bytes === "number" ? String(bytes) : formatValue(bytes);
    throw new ConfigError([{
      keyPath,
      value: bytes,
      message: `${keyPath} = ${shown}: ${describeIntegerRange(field)}`,
    }], { operation: "apply" });
  }
  return { pipeCapacityApplied: setPipeCapacity(bytes) };
}

// ---------------------------------------------------------------------------------------------
// Schema
//
// The file format is described by data, not code: one generic validator walks the schema, so a
// new key or section is one more entry below plus its property in `Config`. The assignment
// `const config: Config = output` in parseConfig fails to compile when the two drift apart.

/** An integer from `min` to `max`; `default` when absent. */
interface IntegerField {
  readonly kind: "integer";
  readonly min: number;
  readonly max: number;
  readonly default?: number;
  readonly required?: boolean;
}

/** A string; `default` when absent. */
interface StringField {
  readonly kind: "string";
  readonly default?: string;
  readonly required?: boolean;
}

/** One of a few strings. */
interface EnumField {
  readonly kind: "enum";
  readonly values: readonly string[];
  readonly default?: string;
  readonly required?: boolean;
}

/**
 * A secret string, such as a token: at least `minLength` characters, printable ASCII without
 * whitespace (it travels in an HTTP header). Messages show no more than its first few
 * characters, and issues carry no value.
 */
interface SecretField {
  readonly kind: "secret";
  readonly minLength: number;
  readonly required?: boolean;
}

/** `true` or `false`. */
interface BooleanField {
  readonly kind: "boolean";
  readonly default?: boolean;
  readonly required?: boolean;
}

/**
 * A socket address, `"host:port"` or `"[ipv6]:port"`, parsed into a {@linkcode SocketAddress}.
 * Port 0 ("any free port") only with `anyPort`.
 */
interface AddressField {
  readonly kind: "address";
  readonly anyPort?: boolean;
  readonly required?: boolean;
}

/** A table with known keys, e.g. `[metrics]`. Absent: `undefined` unless required. */
interface TableField {
  readonly kind: "table";
  readonly fields: FieldMap;
  readonly required?: boolean;
}

/**
 * An array, e.g. `[[listeners]]` or `backends = [{ ... }]`. Absent: empty unless required; at
 * least `minItems` long.
 */
interface ArrayField {
  readonly kind: "array";
  readonly items: Field;
  readonly required?: boolean;
  readonly minItems?: number;
}

/**
 * A table of user-named entries, e.g. `[clusters.<name>]`. Absent: empty. Names must match
 * `names.pattern`, which `names.rule` describes.
 */
interface MapField {
  readonly kind: "map";
  readonly values: Field;
  readonly names?: { readonly pattern: RegExp; readonly rule: string };
}

type Field =
  | IntegerField
  | StringField
  | EnumField
  | SecretField
  | BooleanField
  | AddressField
  | TableField
  | ArrayField
  | MapField;

type FieldMap = { readonly [key: string]: Field };

const TCP_ONLY = { kind: "enum", values: ["tcp"], default: "tcp" } as const;

const CONFIG_SCHEMA = {
  kind: "table",
  fields: {
    splice_pipe_capacity_bytes: {
      kind: "integer",
      min: 0,
      max: MAX_SPLICE_PIPE_CAPACITY,
      default: 0,
    },
    connect_timeout_ms: { kind: "integer", min: 1, max: 600_000, default: 3_000 },
    idle_timeout_ms: { kind: "integer", min: 0, max: 2 ** 31 - 1, default: 0 },
    drain_timeout_ms: { kind: "integer", min: 0, max: 3_600_000, default: 10_000 },
    splice_mode: { kind: "enum", values: ["auto", "splice", "copy"], default: "auto" },
    log_format: { kind: "enum", values: ["text", "json"], default: "text" },
    metrics: {
      kind: "table",
      fields: {
        address: { kind: "address", required: true },
        token: { kind: "secret", minLength: 16 },
      },
    },
    listeners: {
      kind: "array",
      items: {
        kind: "table",
        fields: {
          protocol: TCP_ONLY,
          address: { kind: "address", anyPort: true, required: true },
          max_connections: { kind: "integer", min: 1, max: 1_000_000, default: 10_000 },
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
            values: ["round_robin", "least_connections", "random"],
            default: "round_robin",
          },
          frontends: {
            kind: "array",
            required: true,
            minItems: 1,
            items: {
              kind: "table",
              // Port 0 too: a frontend names a listener, which may ask for any free port.
              fields: { address: { kind: "address", anyPort: true, required: true } },
            },
          },
          backends: {
            kind: "array",
            required: true,
            minItems: 1,
            items: {
              kind: "table",
              fields: {
                address: { kind: "address", required: true },
                weight: { kind: "integer", min: 0, max: 1_000_000, default: 100 },
              },
            },
          },
        },
      },
    },
  },
} as const satisfies TableField;

// The TypeScript type a schema field produces, so the schema and `Config` are checked against
// each other.

type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}`
  ? `${Head}${Capitalize<CamelCase<Tail>>}`
  : S;

type SchemaOutput<F> = F extends { kind: "integer" } ? number
  : F extends { kind: "string" | "secret" } ? string
  : F extends { kind: "enum"; values: readonly (infer V)[] } ? V
  : F extends { kind: "boolean" } ? boolean
  : F extends { kind: "address" } ? { hostname: string; port: number }
  : F extends { kind: "table"; fields: infer M } ? TableOutput<M>
  : F extends { kind: "array"; items: infer I } ? SchemaOutput<I>[]
  : F extends { kind: "map"; values: infer V } ? Record<string, SchemaOutput<V>>
  : never;

type AlwaysPresent<F> = F extends { default: unknown } | { required: true } ? true
  : F extends { kind: "array" | "map" } ? true
  : false;

type TableOutput<M> =
  & {
    [
      K in keyof M as K extends string ? AlwaysPresent<M[K]> extends true ? CamelCase<K> : never
        : never
    ]: SchemaOutput<M[K]>;
  }
  & {
    [
      K in keyof M as K extends string ? AlwaysPresent<M[K]> extends true ? never : CamelCase<K>
        : never
    ]?: SchemaOutput<M[K]>;
  };

// ---------------------------------------------------------------------------------------------
// Validator
//
// Each function checks one value against one field, pushes every problem it finds to `issues`
// and returns the converted value, or `undefined` when the value is unusable. It never stops at
// the first problem, so a user fixes a file in one round.

function validateField(
  field: Field,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): unknown {
  switch (field.kind) {
    case "integer":
      return validateInteger(field, value, keyPath, issues);
    case "string":
      if (typeof value === "string") return value;
      issues.push(typeIssue(keyPath, value, "a string"));
      return undefined;
    case "enum":
      return validateEnum(field, value, keyPath, issues);
    case "secret":
      return validateSecret(field, value, keyPath, issues);
    case "boolean":
      if (typeof value === "boolean") return value;
      issues.push(typeIssue(keyPath, value, "a boolean"));
      return undefined;
    case "address":
      return validateAddress(field, value, keyPath, issues);
    case "table":
      return validateTable(field, value, keyPath, issues);
    case "array":
      return validateArray(field, value, keyPath, issues);
    case "map":
      return validateMap(field, value, keyPath, issues);
  }
}

function validateInteger(
  field: IntegerField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): number | undefined {
  if (typeof value === "bigint") {
    if (value >= BigInt(field.min) && value <= BigInt(field.max)) return Number(value);
    issues.push(valueIssue(keyPath, value, describeIntegerRange(field)));
  } else if (typeof value === "number") {
    // A float, since integers arrive as bigint. `1024.0` gets a hint, as it looks whole.
    const hint = Number.isInteger(value) ? ", written without a decimal point" : "";
    issues.push(valueIssue(keyPath, value, describeIntegerRange(field) + hint));
  } else {
    issues.push(typeIssue(keyPath, value, "an integer"));
  }
  return undefined;
}

function validateEnum(
  field: EnumField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): string | undefined {
  const expected = `one of ${field.values.map((v) => JSON.stringify(v)).join(", ")}`;
  if (typeof value !== "string") {
    issues.push(typeIssue(keyPath, value, expected));
    return undefined;
  }
  if (field.values.includes(value)) return value;
  const suggestion = issues.length < MAX_SUGGESTED_ISSUES
    ? closestMatch(value, field.values)
    : undefined;
  const hint = suggestion === undefined ? "" : `: did you mean ${JSON.stringify(suggestion)}?`;
  issues.push(valueIssue(keyPath, value, `expected ${expected}${hint}`));
  return undefined;
}

function validateSecret(
  field: SecretField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): string | undefined {
  const expected = `expected a string of at least ${field.minLength} printable ASCII ` +
    "characters, without whitespace";
  if (typeof value !== "string") {
    issues.push(secretIssue(keyPath, value, `${expected}, got ${tomlTypeName(value)}`));
    return undefined;
  }
  const found: string[] = [];
  // Code points, not UTF-16 units: what a user counts as characters.
  let length = 0;
  for (const _ of value) length++;
  if (length < field.minLength) found.push(`${length} characters`);
  // A token travels in an HTTP header, whose bytes are read as Latin-1: outside printable
  // ASCII it could never match.
  const bad = /[^\x21-\x7e]/u.exec(value);
  if (bad !== null) {
    const code = bad[0].codePointAt(0)!;
    const kind = /\s/u.test(bad[0])
      ? "whitespace"
      : /\p{Cc}/u.test(bad[0])
      ? "a control character"
      : "a character outside printable ASCII";
    let position = 1;
    for (const _ of value.slice(0, bad.index)) position++;
    const unicode = `U+${code.toString(16).toUpperCase().padStart(4, "0")}`;
    found.push(`${kind} (${unicode}) at character ${position}`);
  }
  if (found.length === 0) return value;
  issues.push(secretIssue(keyPath, value, `${expected}, got ${found.join(" and ")}`));
  return undefined;
}

function validateAddress(
  field: AddressField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): SocketAddress | undefined {
  if (typeof value !== "string") {
    issues.push(typeIssue(keyPath, value, `an address ${ADDRESS_EXAMPLE}`));
    return undefined;
  }
  const result = parseAddress(value, field.anyPort ?? false);
  if (typeof result === "string") {
    issues.push(valueIssue(keyPath, value, result));
    return undefined;
  }
  return result;
}

function validateTable(
  field: TableField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): Record<string, unknown> | undefined {
  if (!isTable(value)) {
    issues.push(typeIssue(keyPath, value, "a table"));
    return undefined;
  }
  const knownKeys = Object.keys(field.fields);
  const entries: [string, unknown][] = [];
  // Document order, so issues come out in the order the user reads the file.
  for (const key of Object.keys(value)) {
    const child = value[key];
    const childPath = joinKeyPath(keyPath, key);
    // Object.hasOwn: a key such as "constructor" must not match Object.prototype members.
    if (!Object.hasOwn(field.fields, key)) {
      issues.push(unknownKeyIssue(childPath, key, child, field, issues.length));
      continue;
    }
    const result = validateField(field.fields[key], child, childPath, issues);
    if (result !== undefined) entries.push([camelCase(key), result]);
  }
  for (const key of knownKeys) {
    if (Object.hasOwn(value, key)) continue;
    const result = absentValue(field.fields[key], joinKeyPath(keyPath, key), issues);
    if (result !== undefined) entries.push([camelCase(key), result]);
  }
  return Object.fromEntries(entries);
}

function validateArray(
  field: ArrayField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): unknown[] | undefined {
  if (!Array.isArray(value)) {
    issues.push(typeIssue(keyPath, value, "an array"));
    return undefined;
  }
  if (field.minItems !== undefined && value.length < field.minItems) {
    const items = field.minItems === 1 ? "entry" : "entries";
    issues.push(valueIssue(keyPath, value, `expected at least ${field.minItems} ${items}`));
  }
  return value.map((item, index) =>
    validateField(field.items, item, `${keyPath}[${index}]`, issues)
  );
}

function validateMap(
  field: MapField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): Record<string, unknown> | undefined {
  if (!isTable(value)) {
    issues.push(typeIssue(keyPath, value, "a table"));
    return undefined;
  }
  const names = field.names;
  // Object.fromEntries defines properties, so a user-chosen name like "__proto__" stays data.
  return Object.fromEntries(
    Object.entries(value).map(([name, child]) => {
      const childPath = joinKeyPath(keyPath, name);
      if (names !== undefined && !names.pattern.test(name)) {
        issues.push({
          keyPath: childPath,
          value: plainValue(child),
          message: `${formatKeyPath(childPath)}: invalid name ${formatValue(name)}: ` +
            `expected one or more ${names.rule}`,
        });
      }
      return [name, validateField(field.values, child, childPath, issues)];
    }),
  );
}

function absentValue(field: Field, keyPath: string, issues: ConfigIssue[]): unknown {
  switch (field.kind) {
    case "array":
      if (field.required) break;
      return [];
    case "map":
      return {};
    case "table":
    case "address":
    case "secret":
      break;
    default:
      if (field.default !== undefined) return field.default;
  }
  if (field.required) {
    issues.push({
      keyPath,
      value: undefined,
      message: `missing required key ${JSON.stringify(formatKeyPath(keyPath))}`,
    });
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Addresses

const ADDRESS_EXAMPLE = '"host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"';

/**
 * Parses `"host:port"` or `"[ipv6]:port"`. The host name is lowercased and an IPv6 address put
 * in its canonical form, so that equal addresses compare equal as text (see
 * {@linkcode formatAddress}). Returns the problem, as a message, when the text is no address.
 */
function parseAddress(text: string, anyPort: boolean): SocketAddress | string {
  let host: string;
  let portText: string;
  let hostname: string | undefined;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) return `missing "]" after the IPv6 address: expected ${ADDRESS_EXAMPLE}`;
    host = text.slice(1, close);
    const rest = text.slice(close + 1);
    if (!rest.startsWith(":")) return `missing ":port" after "]": expected ${ADDRESS_EXAMPLE}`;
    portText = rest.slice(1);
    if (host === "") return `the host is empty: expected ${ADDRESS_EXAMPLE}`;
    hostname = canonicalIpv6(host);
    if (hostname === undefined) return `${formatValue(host)} is not an IPv6 address`;
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) return `missing ":port": expected ${ADDRESS_EXAMPLE}`;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host === "") return `the host is empty: expected ${ADDRESS_EXAMPLE}`;
    if (host.includes(":")) {
      return `an IPv6 address needs brackets, e.g. "[::1]:8080": expected ${ADDRESS_EXAMPLE}`;
    }
    if (!/^[A-Za-z0-9._-]+$/.test(host)) {
      return `${formatValue(host)} is not a host name or an IP address`;
    }
    hostname = host.toLowerCase();
  }
  if (portText === "") return `the port is empty: expected ${ADDRESS_EXAMPLE}`;
  if (!/^[0-9]+$/.test(portText)) return `port ${formatValue(portText)} is not a number`;
  const port = Number(portText);
  const minPort = anyPort ? 0 : 1;
  if (port < minPort || port > 65535) {
    const hint = anyPort
      ? " (0: any free port)"
      : port === 0
      ? ' (port 0, "any free port", is for listeners only)'
      : "";
    return `port ${cutEnd(portText, MAX_SHOWN_VALUE_LENGTH)} is out of range: ` +
      `expected ${minPort} to 65535${hint}`;
  }
  return { hostname, port };
}

/** `host` in canonical IPv6 form (`0:0::1` becomes `::1`), `undefined` if it is no IPv6. */
function canonicalIpv6(host: string): string | undefined {
  if (!/^[0-9A-Fa-f:.]+$/.test(host) || !host.includes(":")) return undefined;
  try {
    return new URL(`http://[${host}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
}

/**
 * The text form of an address, IPv6 in brackets; equal addresses give equal text. Frontends
 * name their listener by this text.
 *
 * @example
 * ```ts
 * import { formatAddress } from "@zerocopy/splice/config";
 *
 * console.log(formatAddress({ hostname: "::1", port: 8080 })); // "[::1]:8080"
 * ```
 */
export function formatAddress(address: SocketAddress): string {
  return address.hostname.includes(":")
    ? `[${address.hostname}]:${address.port}`
    : `${address.hostname}:${address.port}`;
}

// ---------------------------------------------------------------------------------------------
// Checks across keys
//
// Run on the parsed document, after the schema: every address that parses takes part, so these
// problems are reported alongside type and range errors. Addresses compare as normalised text.

function checkAddresses(document: Record<string, unknown>, issues: ConfigIssue[]): void {
  const listeners = new Map<string, string>();
  const rawListeners = ownValue(document, "listeners");
  // A listener that cannot be read would make every frontend that names it look orphaned.
  let listenersComplete = rawListeners === undefined || Array.isArray(rawListeners);
  for (const entry of addressEntries(rawListeners, "listeners", true)) {
    if (entry.address === undefined) {
      listenersComplete = false;
      continue;
    }
    const first = listeners.get(entry.address);
    if (first === undefined) listeners.set(entry.address, entry.keyPath);
    else {
      issues.push(
        valueIssue(entry.keyPath, entry.raw, `same address as ${formatKeyPath(first)}`),
      );
    }
  }
  const listed = listeners.size === 0
    ? "no listeners are configured"
    : `listeners: ${formatValues([...listeners.keys()])}`;

  const clusters = ownValue(document, "clusters");
  if (!isTable(clusters)) return;
  const claimed = new Map<string, { cluster: string; keyPath: string }>();
  for (const [name, cluster] of Object.entries(clusters)) {
    if (!isTable(cluster)) continue;
    const clusterPath = joinKeyPath("clusters", name);
    const frontends = new Map<string, string>();
    const frontendPath = `${clusterPath}.frontends`;
    for (const entry of addressEntries(ownValue(cluster, "frontends"), frontendPath, true)) {
      if (entry.address === undefined) continue;
      const first = frontends.get(entry.address);
      if (first !== undefined) {
        issues.push(
          valueIssue(entry.keyPath, entry.raw, `same address as ${formatKeyPath(first)}`),
        );
        continue;
      }
      frontends.set(entry.address, entry.keyPath);
      if (listenersComplete && !listeners.has(entry.address)) {
        issues.push(
          valueIssue(entry.keyPath, entry.raw, `no listener has this address (${listed})`),
        );
      }
      const owner = claimed.get(entry.address);
      if (owner === undefined) {
        claimed.set(entry.address, { cluster: name, keyPath: entry.keyPath });
      } else {
        issues.push(
          valueIssue(
            entry.keyPath,
            entry.raw,
            `already the frontend of ${formatKeyPath(owner.keyPath)}`,
          ),
        );
      }
    }
    const backends = new Map<string, string>();
    const backendPath = `${clusterPath}.backends`;
    for (const entry of addressEntries(ownValue(cluster, "backends"), backendPath, false)) {
      if (entry.address === undefined) continue;
      const first = backends.get(entry.address);
      if (first === undefined) backends.set(entry.address, entry.keyPath);
      else {
        issues.push(
          valueIssue(entry.keyPath, entry.raw, `same address as ${formatKeyPath(first)}`),
        );
      }
    }
  }
}

/**
 * The `address` of each table in `array`, with its key path and its text as written;
 * `address` is `undefined` when the entry has none that parses (the schema reports why).
 */
function* addressEntries(
  array: unknown,
  arrayPath: string,
  anyPort: boolean,
): Generator<{ keyPath: string; raw: unknown; address: string | undefined }> {
  if (!Array.isArray(array)) return;
  for (const [index, item] of array.entries()) {
    const keyPath = `${arrayPath}[${index}].address`;
    const raw = isTable(item) ? ownValue(item, "address") : undefined;
    const parsed = typeof raw === "string" ? parseAddress(raw, anyPort) : undefined;
    const address = parsed === undefined || typeof parsed === "string"
      ? undefined
      : formatAddress(parsed);
    yield { keyPath, raw, address };
  }
}

function ownValue(table: Record<string, unknown>, key: string): unknown {
  return Object.hasOwn(table, key) ? table[key] : undefined;
}

// ---------------------------------------------------------------------------------------------
// Messages

function formatErrorMessage(
  operation: string,
  path: string | undefined,
  issues: readonly ConfigIssue[],
): string {
  const head = `Cannot ${operation} config${path === undefined ? "" : ` "${path}"`}`;
  if (issues.length === 0) return head;
  if (issues.length === 1) return `${head}: ${issues[0].message}`;
  const lines = issues.slice(0, MAX_LISTED_ISSUES).map((issue) => `  ${issue.message}`);
  if (issues.length > MAX_LISTED_ISSUES) {
    lines.push(`  ... and ${issues.length - MAX_LISTED_ISSUES} more`);
  }
  return `${head}: ${issues.length} problems:\n${lines.join("\n")}`;
}

function describeIntegerRange(field: IntegerField): string {
  return `expected a whole number from ${field.min} to ${field.max}`;
}

function valueIssue(keyPath: string, value: unknown, problem: string): ConfigIssue {
  return {
    keyPath,
    value: plainValue(value),
    message: `${formatKeyPath(keyPath)} = ${formatValue(value)}: ${problem}`,
  };
}

/** An issue with a secret: its value is withheld, and the message shows its start only. */
function secretIssue(keyPath: string, value: unknown, problem: string): ConfigIssue {
  return {
    keyPath,
    value: undefined,
    message: `${formatKeyPath(keyPath)} = ${formatSecret(value)}: ${problem}`,
  };
}

function typeIssue(keyPath: string, value: unknown, expected: string): ConfigIssue {
  return valueIssue(keyPath, value, `expected ${expected}, got ${tomlTypeName(value)}`);
}

/**
 * The issue of a key `table` does not know. `issuesBefore` is how many issues the file has so
 * far: it decides whether a suggestion is looked for.
 */
function unknownKeyIssue(
  keyPath: string,
  key: string,
  value: unknown,
  table: TableField,
  issuesBefore: number,
): ConfigIssue {
  const suggestion = issuesBefore < MAX_SUGGESTED_ISSUES
    ? closestMatch(key, Object.keys(table.fields))
    : undefined;
  const hint = suggestion !== undefined
    ? `: did you mean ${JSON.stringify(suggestion)}?`
    : knownKeysHint(table);
  return {
    keyPath,
    value: plainValue(value),
    message: `unknown key ${JSON.stringify(formatKeyPath(keyPath))}${hint}`,
  };
}

const knownKeysHints = new WeakMap<TableField, string>();

/**
 * ` (known keys: a, b)`, made once per table: a file of unknown keys would otherwise repeat
 * the list in new memory for each of them.
 */
function knownKeysHint(table: TableField): string {
  let hint = knownKeysHints.get(table);
  if (hint === undefined) {
    const knownKeys = Object.keys(table.fields);
    hint = knownKeys.length === 0
      ? " (this table takes no keys)"
      : ` (known keys: ${knownKeys.join(", ")})`;
    knownKeysHints.set(table, hint);
  }
  return hint;
}

function syntaxIssue(error: unknown): ConfigIssue {
  if (error instanceof TomlError) {
    // smol-toml's message is "Invalid TOML document: <reason>\n\n<code excerpt>"; the excerpt
    // stays reachable through `cause`, the message keeps to one line.
    const reason = error.message.replace(/^Invalid TOML document: /, "").split("\n")[0];
    return {
      keyPath: "",
      value: undefined,
      message: `invalid TOML at line ${error.line}, column ${error.column}: ${reason}`,
    };
  }
  const reason = error instanceof Error ? error.message : String(error);
  return { keyPath: "", value: undefined, message: `invalid TOML: ${reason.split("\n")[0]}` };
}

function describeReadError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  // Deno appends "(os error 2): readfile '<path>'"; the path is already in the message head.
  return error.message.replace(/ \(os error \d+\)[\s\S]*$/, "");
}

/**
 * The text of a configuration file. TOML files must be UTF-8: a lossy decode would slip U+FFFD
 * into the user's keys and values, so a bad sequence is an error that names its byte offset,
 * counted from 0 as `xxd` and `hexdump` do, and its line. A leading byte order mark is dropped.
 */
function decodeUtf8(bytes: Uint8Array, path: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (error) {
    const offset = invalidUtf8Offset(bytes);
    let line = 1;
    for (let i = 0; i < offset; i++) if (bytes[i] === 0x0a) line++;
    // -1 only if this validator and the decoder disagreed: the message then goes without place.
    const where = offset < 0 ? "" : ` at byte ${offset} on line ${line}`;
    throw new ConfigError([{
      keyPath: "",
      value: undefined,
      message: `invalid UTF-8${where} (TOML files must be UTF-8)`,
    }], { path, cause: error });
  }
}

/**
 * Where the first ill-formed sequence starts, -1 if there is none. Follows the WHATWG decoder
 * that `TextDecoder` implements: each lead byte allows a range for its first continuation byte,
 * which excludes overlong forms, UTF-16 surrogates and code points above U+10FFFF.
 */
function invalidUtf8Offset(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const lead = bytes[i];
    if (lead < 0x80) {
      i++;
      continue;
    }
    let continuations: number;
    let low = 0x80;
    let high = 0xbf;
    if (lead >= 0xc2 && lead <= 0xdf) {
      continuations = 1;
    } else if (lead >= 0xe0 && lead <= 0xef) {
      continuations = 2;
      if (lead === 0xe0) low = 0xa0;
      if (lead === 0xed) high = 0x9f;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
      continuations = 3;
      if (lead === 0xf0) low = 0x90;
      if (lead === 0xf4) high = 0x8f;
    } else {
      return i;
    }
    for (let k = 1; k <= continuations; k++) {
      const byte = bytes[i + k];
      // `undefined` past the end: the sequence is cut short.
      if (byte === undefined || byte < low || byte > high) return i;
      low = 0x80;
      high = 0xbf;
    }
    i += continuations + 1;
  }
  return -1;
}

function displayUrl(url: URL): string {
  if (url.protocol !== "file:") return url.href;
  try {
    return decodeURIComponent(url.pathname);
  } catch {
    return url.href;
  }
}

/** The TOML type of a parsed value, with its article. */
function tomlTypeName(value: unknown): string {
  if (typeof value === "string") return "a string";
  if (typeof value === "bigint") return "an integer";
  if (typeof value === "number") return "a float";
  if (typeof value === "boolean") return "a boolean";
  if (value instanceof Date) return "a date-time";
  if (Array.isArray(value)) return "an array";
  return "a table";
}

/** Integers that fit a number exactly become one, so callers need not compare with `-1n`. */
function plainValue(value: unknown): unknown {
  if (typeof value === "bigint" && Number.isSafeInteger(Number(value))) return Number(value);
  return value;
}

const MAX_SHOWN_VALUE_LENGTH = 60;
const MAX_SHOWN_KEY_PATH_LENGTH = 80;
const MAX_SHOWN_SECRET_LENGTH = 4;
const MAX_SHOWN_ITEMS = 3;

/** A parsed value written back as TOML, shortened: enough to spot it in the file. */
function formatValue(value: unknown, depth = 0): string {
  return cutEnd(formatValueUnbounded(value, depth), MAX_SHOWN_VALUE_LENGTH);
}

/**
 * A secret as messages show it: its first few characters only, so that a log of a rejected
 * configuration does not hand out a token that is nearly right.
 */
function formatSecret(value: unknown): string {
  if (typeof value !== "string") {
    const text = formatValueUnbounded(value, 0);
    return text.length > MAX_SHOWN_SECRET_LENGTH
      ? `${headOf(text, MAX_SHOWN_SECRET_LENGTH)}...`
      : text;
  }
  if (value.length <= MAX_SHOWN_SECRET_LENGTH) return JSON.stringify(value);
  return `${JSON.stringify(headOf(value, MAX_SHOWN_SECRET_LENGTH)).slice(0, -1)}..."`;
}

/**
 * A key path as messages show it, at most 80 characters. A longer one loses its middle rather
 * than its end, which names the key itself: `clusters.<long name>.backends[0].address`.
 */
function formatKeyPath(keyPath: string): string {
  if (keyPath.length <= MAX_SHOWN_KEY_PATH_LENGTH) return keyPath;
  const head = MAX_SHOWN_KEY_PATH_LENGTH / 2;
  const tail = MAX_SHOWN_KEY_PATH_LENGTH - head - 3;
  return `${headOf(keyPath, head)}...${tailOf(keyPath, tail)}`;
}

/** `"a", "b", "c" and 2 more`: the first few values, with the count of the others. */
function formatValues(values: readonly unknown[]): string {
  const shown = values.slice(0, MAX_SHOWN_ITEMS).map((value) => formatValue(value)).join(", ");
  const more = values.length - MAX_SHOWN_ITEMS;
  return more > 0 ? `${shown} and ${more} more` : shown;
}

/** `text` cut to `max` characters at most, the cut marked `...`. */
function cutEnd(text: string, max: number): string {
  return text.length > max ? `${headOf(text, max - 3)}...` : text;
}

/** The first `length` UTF-16 units of `text`, one fewer rather than half a surrogate pair. */
function headOf(text: string, length: number): string {
  const last = text.charCodeAt(length - 1);
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? length - 1 : length);
}

/** The last `length` UTF-16 units of `text`, one fewer rather than half a surrogate pair. */
function tailOf(text: string, length: number): string {
  const start = text.length - length;
  const first = text.charCodeAt(start);
  return text.slice(first >= 0xdc00 && first <= 0xdfff ? start + 1 : start);
}

function formatValueUnbounded(value: unknown, depth: number): string {
  // Only the start of a long string can be shown: the rest need not be escaped.
  if (typeof value === "string") return JSON.stringify(value.slice(0, MAX_SHOWN_VALUE_LENGTH));
  if (typeof value === "bigint" || typeof value === "boolean") return String(value);
  if (typeof value === "number") {
    if (Number.isNaN(value)) return "nan";
    if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
    if (Object.is(value, -0)) return "-0.0";
    const text = String(value);
    // TOML writes floats with a point; "1" would read as the integer the user did not write.
    return /[.eE]/.test(text) ? text : `${text}.0`;
  }
  if (value instanceof Date) return value.toISOString();
  if (value === undefined || value === null) return String(value);
  if (depth >= 2) return Array.isArray(value) ? "[...]" : "{...}";
  if (Array.isArray(value)) {
    const items = value.slice(0, MAX_SHOWN_ITEMS).map((item) => formatValue(item, depth + 1));
    if (value.length > MAX_SHOWN_ITEMS) items.push("...");
    return `[${items.join(", ")}]`;
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (entries.length === 0) return "{}";
    const items = entries.slice(0, MAX_SHOWN_ITEMS).map(([key, item]) =>
      `${formatKey(key)} = ${formatValue(item, depth + 1)}`
    );
    if (entries.length > MAX_SHOWN_ITEMS) items.push("...");
    return `{ ${items.join(", ")} }`;
  }
  return String(value);
}

function formatKey(key: string): string {
  return /^[A-Za-z0-9_-]+$/.test(key) ? key : JSON.stringify(key);
}

function joinKeyPath(parent: string, key: string): string {
  return parent === "" ? formatKey(key) : `${parent}.${formatKey(key)}`;
}

function camelCase(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, letter: string) => letter.toUpperCase());
}

function isTable(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === null || prototype === Object.prototype;
}

/**
 * The candidate nearest to `word` by edit distance (transpositions count as one edit, the
 * commonest typo), if it is close enough to be what was meant rather than a different word. The
 * first of equally near candidates wins.
 *
 * The distance is at least the difference in length, so a candidate whose length is too far
 * from the word's to beat the best so far, or to be within the limit, is not measured: the work
 * is bounded by the candidates' lengths, however long the word.
 */
function closestMatch(word: string, candidates: readonly string[]): string | undefined {
  const lowerWord = word.toLowerCase();
  let best: string | undefined;
  // The largest distance that can still win: within the limit, and below the best so far.
  let bound = Math.max(2, Math.floor(word.length / 3));
  for (const candidate of candidates) {
    const lowerCandidate = candidate.toLowerCase();
    if (Math.abs(lowerWord.length - lowerCandidate.length) > bound) continue;
    const distance = editDistance(lowerWord, lowerCandidate);
    if (distance > bound) continue;
    best = candidate;
    bound = distance - 1;
  }
  return best;
}

/** Optimal string alignment distance: Levenshtein plus adjacent transpositions. */
function editDistance(a: string, b: string): number {
  let previous2: number[] = [];
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let distance = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        distance = Math.min(distance, previous2[j - 2] + 1);
      }
      current.push(distance);
    }
    previous2 = previous;
    previous = current;
  }
  return previous[b.length];
}
