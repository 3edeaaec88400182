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
 * # Capacity in bytes requested for each splice pipe, from 0 to 1073741824 (1 GiB), set once
 * # per process (the first non-zero value applied wins). 0 or absent sets nothing: relay(),
 * # and so the proxy, then requests 1048576 (RELAY_PIPE_CAPACITY), and SplicePipe.create()
 * # 65536 (DEFAULT_SPLICE_PIPE_CAPACITY). Values above /proc/sys/fs/pipe-max-size (1 MiB by
 * # default) need CAP_SYS_RESOURCE, or the kernel keeps its own size.
 * splice_pipe_capacity_bytes = 1048576
 * connect_timeout_ms = 3000        # to a backend: 1 to 600000, default 3000
 * idle_timeout_ms = 0              # 0 to 2147483647, default 0: no idle timeout
 * drain_timeout_ms = 10000         # on shutdown and reload: 0 to 3600000, default 10000
 * splice_mode = "auto"             # "auto" (default), "splice" or "copy"
 * log_format = "text"              # "text" (default) or "json"
 * access_log = "all"               # "all" (default), "errors" (not ended cleanly) or "off"
 * engines = 0                      # 0 to 64, default 0: one per CPU the process may run on
 * dns_nameserver = "127.0.0.1:53"  # for srv / host backends; absent: the system's resolver
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
 * max_connections_per_ip = 100     # 1 to 1000000; absent: no per-address limit
 * allow = ["10.0.0.0/8", "::1"]    # CIDRs or addresses served; absent or empty: all
 * deny = ["10.6.6.0/24"]           # CIDRs or addresses refused; deny wins over allow
 * expect_proxy = false             # true: each connection starts with a PROXY v1/v2 header
 * proxy_header_timeout_ms = 3000   # 1 to 600000, default 3000
 * sni_timeout_ms = 3000            # ClientHello deadline where frontends have a hostname
 *
 * [clusters.app]                   # any number; names of letters, digits, "_" and "-"
 * protocol = "tcp"                 # only "tcp", the default
 * load_balancing = "round_robin"   # "round_robin" (default), "least_connections", "random",
 *                                  # "source_hash" (a client address keeps its backend)
 * send_proxy = "v2"                # optional: "v1" or "v2", a PROXY header to each backend
 * # Required, at least one: each the address of a listener. `hostname` (a TLS server name,
 * # exact or "*.domain") shares a listener between clusters; an address with the same
 * # hostname (or with none) belongs to one cluster only.
 * frontends = [
 *   { address = "127.0.0.1:8080" },
 *   { address = "127.0.0.1:8080", hostname = "*.example.com" },
 * ]
 * # Required, at least one, addresses unique in the cluster.
 * backends = [
 *   { address = "127.0.0.1:9000", weight = 100 },   # weight: 0 to 1000000, default 100;
 *   { address = "[::1]:9001", weight = 0 },         # 0 drains the backend
 *   { address = "10.0.0.9:9000", backup = true },   # only while no other backend is up
 *   { srv = "_app._tcp.example.internal" },         # SRV targets, ports, weights, priorities
 *   { host = "app.example.internal", port = 9000 }, # every A and AAAA address
 * ]
 * dns_refresh_ms = 5000            # srv / host looked up again: 100 to 3600000, default 5000
 *
 * [clusters.app.health_check]      # optional: active checks from the control plane
 * interval_ms = 2000               # 100 to 3600000, default 2000
 * timeout_ms = 1000                # connect, send and expect: 1 to 600000, default 1000
 * rise = 2                         # passes in a row that bring a backend back: 1 to 1000, 2
 * fall = 3                         # failures in a row that take it out: 1 to 1000, 3
 * send = "PING\r\n"                 # optional: written after the connect
 * expect = "+PONG"                 # optional: the answer must contain it
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
import { type ConfigIssue, formatValue } from "./config/messages.ts";
import {
  describeIntegerRange,
  isTable,
  type SchemaOutput,
  type TableField,
  validateTable,
} from "./config/schema.ts";
import { checkAddresses, clusterWarnings } from "./proxy/config_checks.ts";
import {
  type ClusterConfig,
  type ListenerConfig,
  type MetricsConfig,
  PROXY_FIELDS,
} from "./proxy/config_schema.ts";
import type { AccessLog } from "./proxy/types.ts";
import type { SocketAddress } from "./proxy/config_address.ts";
import { MAX_SPLICE_PIPE_CAPACITY, setPipeCapacity } from "./splice_pipe.ts";

// Defined beside the code that builds them; part of this module's API.
export type { ConfigIssue } from "./config/messages.ts";
export { formatAddress, type SocketAddress } from "./proxy/config_address.ts";
export type {
  BackendConfig,
  ClusterConfig,
  FrontendConfig,
  HealthCheckConfig,
  ListenerConfig,
  MetricsConfig,
} from "./proxy/config_schema.ts";

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
   * 1073741824, set process-wide by {@linkcode applyConfig}. `0` (also when the key is absent)
   * sets nothing, and each kind of pipe keeps its default: `relay()` (and so the proxy)
   * requests `RELAY_PIPE_CAPACITY`, 1048576, and `SplicePipe.create()` requests
   * `DEFAULT_SPLICE_PIPE_CAPACITY`, 65536.
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
  /**
   * `log_format`: `"text"` (default; an error is quoted as a JSON string) or `"json"`, one
   * object a line.
   */
  readonly logFormat: "text" | "json";
  /**
   * `access_log`: which connections get an access-log line (a `"connection"` event): `"all"`
   * (default), `"errors"` (those that did not end cleanly: refused, failed to connect, reset,
   * timed out, aborted) or `"off"`. Metrics count every connection either way.
   */
  readonly accessLog: AccessLog;
  /**
   * `engines`: how many engine Workers (threads) accept and relay the proxy's connections,
   * 0 to 64. `0`, the default (also when the key is absent), means one per CPU this process may
   * run on (`sched_getaffinity`), counted when the proxy starts. Without `--allow-ffi` the
   * proxy relays through Deno conns, has no engines, and the key has no effect.
   */
  readonly engines: number;
  /**
   * `dns_nameserver`: the DNS server (`"IP:PORT"`) that `srv` and `host` backends are looked up
   * at; `undefined` (absent): the system's resolver.
   */
  readonly dnsNameserver?: SocketAddress;
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

/** How many issues a {@linkcode ConfigError} message lists before summing up the rest. */
const MAX_LISTED_ISSUES = 20;

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
 *   //   idle_timeout_ms, drain_timeout_ms, splice_mode, log_format, engines, metrics,
 *   //   listeners, clusters)
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
  return clusterWarnings(config.clusters);
}

/**
 * Puts a configuration into effect for the whole process: today the splice pipe capacity. The
 * other settings (listeners, clusters, timeouts...) are for the proxy that runs them.
 *
 * The splice pipe capacity is set once per process (see `setPipeCapacity`): the first
 * configuration with a non-zero `splicePipeCapacityBytes` fixes it, and later ones leave it
 * alone, because pipes already in use would keep their old size anyway. A `0` neither sets nor
 * fixes it: until a later configuration sets one, `relay()` keeps requesting
 * `RELAY_PIPE_CAPACITY` (1 MiB) and `SplicePipe.create()` `DEFAULT_SPLICE_PIPE_CAPACITY`
 * (64 KiB).
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
// The file's root table
//
// The module's own key, then the proxy's (proxy/config_schema.ts). The assignment
// `const config: Config = output` in parseConfig fails to compile when the schema and `Config`
// drift apart.

const CONFIG_SCHEMA = {
  kind: "table",
  fields: {
    splice_pipe_capacity_bytes: {
      kind: "integer",
      min: 0,
      max: MAX_SPLICE_PIPE_CAPACITY,
      default: 0,
    },
    ...PROXY_FIELDS,
  },
} as const satisfies TableField;

// ---------------------------------------------------------------------------------------------
// Loading, and the message of a ConfigError

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
