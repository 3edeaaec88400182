/**
 * The listener stages of the proxy on its Deno-conn path (no `--allow-ffi`): the same rules as
 * the engines' (engine/plane_stages.ts), with the same helpers, over a Deno conn. Bytes are read,
 * not peeked (Deno has no MSG_PEEK): what follows a PROXY header, and the whole ClientHello, are
 * handed back for relay()'s `initialData`, so the backend gets every byte the client sent after
 * the header, untouched.
 *
 * @module
 */

import { CidrList } from "../protocol/cidr.ts";
import {
  CLIENT_HELLO_MAX_BYTES,
  serverNameFromClientHello,
  ServerNameRoutes,
} from "../protocol/client_hello.ts";
import {
  encodeProxyHeader,
  parseProxyHeader,
  PROXY_V2_MAX_BYTES,
  type ProxyAddress,
} from "../protocol/proxy_header.ts";
import { formatIp, parseIp, unmapIpv4 } from "../protocol/ip.ts";
import { formatAddress } from "./config_address.ts";
import { REFUSAL_REPORT_KEYS, REFUSAL_REPORT_MS, Throttle } from "./faults.ts";
import type { ProxyCounters } from "./stats.ts";
import type { ClusterSpec, ConnectionRecord, ListenerSpec, ProxyEvent } from "./types.ts";

/** A stage's deadline when the spec leaves it out, in ms (as the engines'). */
const DEFAULT_STAGE_TIMEOUT_MS = 3000;

/** A listener's stages, built once per spec; null when it has none. */
export interface DenoRules {
  allow: CidrList | null;
  deny: CidrList | null;
  maxPerIp: number;
  expectProxy: boolean;
  headerTimeoutMs: number;
  /** Server names to cluster names; null: the listener does not route by name. */
  names: ServerNameRoutes<string> | null;
  sniTimeoutMs: number;
  /** Whether a connection's first bytes are read before its backend is chosen. */
  reads: boolean;
}

/** The stages of `listener` under `clusters`, or null when it has none. */
export function denoRules(listener: ListenerSpec, clusters: ClusterSpec[]): DenoRules | null {
  const named: [string, string][] = [];
  for (const cluster of clusters) {
    for (const frontend of cluster.frontends) {
      if (typeof frontend === "string" || frontend.hostname === undefined) continue;
      if (frontend.address === listener.address) named.push([frontend.hostname, cluster.name]);
    }
  }
  const allow = listener.allow ?? [];
  const deny = listener.deny ?? [];
  const maxPerIp = listener.maxConnectionsPerIp ?? 0;
  const expectProxy = listener.expectProxy ?? false;
  if (!expectProxy && named.length === 0 && allow.length === 0 && deny.length === 0) {
    if (maxPerIp === 0) return null;
  }
  return {
    allow: allow.length > 0 ? CidrList.parse(allow) : null,
    deny: deny.length > 0 ? CidrList.parse(deny) : null,
    maxPerIp,
    expectProxy,
    headerTimeoutMs: listener.proxyHeaderTimeoutMs ?? DEFAULT_STAGE_TIMEOUT_MS,
    names: named.length > 0 ? new ServerNameRoutes(named) : null,
    sniTimeoutMs: listener.sniTimeoutMs ?? DEFAULT_STAGE_TIMEOUT_MS,
    reads: expectProxy || named.length > 0,
  };
}

/** Whether the client at `ip` may connect under `rules`: deny wins; no allow list allows all. */
export function admittedText(rules: DenoRules, ip: string): boolean {
  if (rules.deny !== null && rules.deny.includes(ip)) return false;
  return rules.allow === null || rules.allow.includes(ip);
}

/** An address's text in one form per address: IPv4-mapped IPv6 as IPv4, IPv6 as RFC 5952. */
function addressKey(hostname: string): string {
  const bytes = parseIp(hostname);
  return bytes === null ? hostname : formatIp(unmapIpv4(bytes));
}

/** A connection that passed its reading stages. */
export type DenoPass = Extract<DenoPreface, { kind: "pass" }>;

/** What a connection's first bytes came to. */
export type DenoPreface =
  | {
    kind: "pass";
    /** The client (the PROXY header's, or the socket's), as `host:port`. */
    client: ProxyAddress;
    /** Where it connected to: the header's, or the listening socket's. */
    destination: ProxyAddress;
    /** The ClientHello's server name, on a listener that routes by it; null: none given. */
    serverName: string | null;
    /** The cluster its server name routes to; null: the listener's default. */
    cluster: string | null;
    /** Bytes read past the header: for the backend, before anything else. */
    rest: Uint8Array;
  }
  | {
    kind: "refuse";
    end: "bad-header" | "header-timeout" | "no-route";
    code:
      | "proxy_header_invalid"
      | "proxy_header_timeout"
      | "client_hello_invalid"
      | "client_hello_timeout"
      | "no_route";
    error: string;
  };

/**
 * Reads `conn`'s PROXY header and/or ClientHello as `rules` ask, each bounded by its size and
 * deadline (past it, a refusal: the caller's close of the conn ends the read still pending).
 * `admit` judges the header's client before anything more is read (as the engines do): false
 * gives `"denied"`. Never throws: a client that fails or goes away is a refusal.
 */
export async function readDenoPreface(
  conn: Deno.TcpConn,
  rules: DenoRules,
  admit: (client: ProxyAddress) => boolean = () => true,
): Promise<DenoPreface | { kind: "denied" }> {
  const remote = conn.remoteAddr;
  const local = conn.localAddr;
  let client: ProxyAddress = { hostname: remote.hostname, port: remote.port };
  let destination: ProxyAddress = { hostname: local.hostname, port: local.port };
  const buffer = new Uint8Array(PROXY_V2_MAX_BYTES + CLIENT_HELLO_MAX_BYTES);
  let filled = 0;
  let start = 0;
  const more = async (deadline: number, limit: number): Promise<boolean | "timeout"> => {
    if (filled >= limit) return false;
    const left = deadline - performance.now();
    if (left <= 0) return "timeout";
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), left);
    });
    try {
      const n = await Promise.race([conn.read(buffer.subarray(filled, limit)), timeout]);
      if (n === "timeout") return "timeout";
      if (n === null) return false;
      filled += n;
      return true;
    } catch {
      return false; // reset, or closed
    } finally {
      clearTimeout(timer);
    }
  };
  if (rules.expectProxy) {
    const deadline = performance.now() + rules.headerTimeoutMs;
    for (;;) {
      const parsed = parseProxyHeader(buffer.subarray(0, filled));
      if (parsed.status === "complete") {
        start = parsed.header.length;
        const { source, destination: to } = parsed.header;
        if (source !== null && to !== null) {
          client = source;
          destination = to;
        }
        if (!admit(client)) return { kind: "denied" };
        break;
      }
      if (parsed.status === "invalid") {
        return refusal(
          "bad-header",
          "proxy_header_invalid",
          `Cannot read the PROXY header: ${parsed.reason}`,
        );
      }
      const got = await more(deadline, PROXY_V2_MAX_BYTES);
      if (got === "timeout") {
        return refusal(
          "header-timeout",
          "proxy_header_timeout",
          `No whole PROXY header within ${rules.headerTimeoutMs} ms`,
        );
      }
      if (!got) {
        return refusal(
          "bad-header",
          "proxy_header_invalid",
          "Cannot read the PROXY header: the client closed before sending all of it",
        );
      }
    }
  }
  if (rules.names !== null) {
    const deadline = performance.now() + rules.sniTimeoutMs;
    // Parsed again only once as many bytes are here as it can take whole (see minimumLength).
    let wanted = 0;
    for (;;) {
      const parsed = filled - start < wanted
        ? { status: "incomplete" as const, minimumLength: wanted }
        : serverNameFromClientHello(buffer.subarray(start, filled));
      if (parsed.status === "incomplete") wanted = parsed.minimumLength;
      if (parsed.status === "invalid") {
        return refusal(
          "bad-header",
          "client_hello_invalid",
          `Cannot read the TLS ClientHello: ${parsed.reason}`,
        );
      }
      if (parsed.status !== "incomplete") {
        const serverName = parsed.status === "found" ? parsed.serverName : null;
        return {
          kind: "pass",
          client,
          destination,
          serverName,
          cluster: serverName === null ? null : rules.names.lookup(serverName),
          rest: buffer.slice(start, filled),
        };
      }
      const got = await more(deadline, start + CLIENT_HELLO_MAX_BYTES);
      if (got === "timeout") {
        return refusal(
          "header-timeout",
          "client_hello_timeout",
          `No whole TLS ClientHello within ${rules.sniTimeoutMs} ms`,
        );
      }
      if (!got) {
        return refusal(
          "bad-header",
          "client_hello_invalid",
          filled - start >= CLIENT_HELLO_MAX_BYTES
            ? `Cannot read the TLS ClientHello: not whole within ${CLIENT_HELLO_MAX_BYTES} bytes`
            : "Cannot read the TLS ClientHello: the client closed before sending all of it",
        );
      }
    }
  }
  return {
    kind: "pass",
    client,
    destination,
    serverName: null,
    cluster: null,
    rest: buffer.slice(start, filled),
  };
}

function refusal(
  end: Extract<DenoPreface, { kind: "refuse" }>["end"],
  code: Extract<DenoPreface, { kind: "refuse" }>["code"],
  error: string,
): DenoPreface {
  return { kind: "refuse", end, code, error };
}

/**
 * What the backend gets first: the PROXY header of `send_proxy` (when the cluster has one)
 * and the bytes read past the client's own header; null when there is nothing.
 */
export function firstBytes(
  sendProxy: "v1" | "v2" | undefined,
  preface: Extract<DenoPreface, { kind: "pass" }> | null,
  conn: Deno.TcpConn,
): Uint8Array | null {
  const rest = preface?.rest ?? new Uint8Array(0);
  if (sendProxy === undefined) return rest.length > 0 ? rest : null;
  const source = preface?.client ?? conn.remoteAddr;
  const destination = preface?.destination ?? conn.localAddr;
  const header = encodeProxyHeader(
    sendProxy === "v1" ? 1 : 2,
    { hostname: source.hostname, port: source.port },
    { hostname: destination.hostname, port: destination.port },
  );
  const out = new Uint8Array(header.length + rest.length);
  out.set(header);
  out.set(rest, header.length);
  return out;
}

/**
 * The Deno-conn path's source rules and per-address counts for all its listeners, and the
 * reports of their refusals (at most one a second per listener, address and reason).
 */
export class DenoGate {
  #counters: ProxyCounters;
  /** Its own: a flood of refusals must not hold back the proxy's reports of errors. */
  #throttle = new Throttle(REFUSAL_REPORT_MS, REFUSAL_REPORT_KEYS);
  #report: (event: ProxyEvent) => void;
  /** Open connections per `listener address`, of listeners with `max_connections_per_ip`. */
  #open = new Map<string, number>();

  constructor(counters: ProxyCounters, report: (event: ProxyEvent) => void) {
    this.#counters = counters;
    this.#report = report;
  }

  /**
   * Whether `client` may be served on `listener` under `rules`; if so and the listener limits
   * addresses, it is counted, and the returned key must be given to {@linkcode release}. A
   * refusal is counted and reported here.
   */
  admit(
    listener: string,
    rules: DenoRules,
    client: ProxyAddress,
  ): { key: string | null } | null {
    // One key per address, whatever its text: 192.0.2.1 and ::ffff:192.0.2.1 are one client.
    const key = `${listener} ${addressKey(client.hostname)}`;
    const reason = !admittedText(rules, client.hostname)
      ? "denied"
      : rules.maxPerIp > 0 && (this.#open.get(key) ?? 0) >= rules.maxPerIp
      ? "per_ip_limit"
      : null;
    if (reason === null) {
      if (rules.maxPerIp === 0) return { key: null };
      this.#open.set(key, (this.#open.get(key) ?? 0) + 1);
      return { key };
    }
    this.#counters.refused(reason);
    const { report, suppressed } = this.#throttle.pass(
      `refused ${reason} ${key}`,
      performance.now(),
    );
    if (report) {
      const text = formatAddress(client);
      this.#report({ type: "connection-refused", listener, client: text, reason, suppressed });
    }
    return null;
  }

  /**
   * Runs `conn` through the stages that read its first bytes (`rules.reads`): the PROXY
   * header, then the rules on its address, then the server name, which `route` turns into the
   * target (its argument null: the listener's default). Fills `record`'s client, and its end
   * and error when the stages close the connection; `quiet`: the rules refused it, which is
   * reported here, throttled, instead of a record.
   */
  async pass<T extends { spec: { name: string } }>(
    listener: string,
    rules: DenoRules,
    conn: Deno.TcpConn,
    record: ConnectionRecord,
    route: (cluster: string | null) => T | undefined,
  ): Promise<
    | { kind: "passed"; preface: DenoPass; target: T | undefined; key: string | null }
    | { kind: "refused"; quiet: boolean }
  > {
    // The header's client is judged before its ClientHello is read (a denied client is closed
    // at once, not kept until the SNI deadline).
    let key: string | null = null;
    const read = await readDenoPreface(conn, rules, (client) => {
      const admitted = this.admit(listener, rules, client);
      key = admitted?.key ?? null;
      return admitted !== null;
    });
    if (read.kind === "denied") return { kind: "refused", quiet: true };
    if (read.kind === "refuse") {
      this.release(key);
      this.#counters.refused(read.code);
      record.end = read.end;
      record.error = read.error;
      return { kind: "refused", quiet: false };
    }
    record.client = formatAddress(read.client);
    const target = route(read.cluster);
    if (rules.names !== null) {
      if (target === undefined) {
        this.release(key);
        this.#counters.refused("no_route");
        record.end = "no-route";
        record.error = read.serverName === null
          ? "No frontend takes a ClientHello without a server name"
          : `No frontend for server name "${read.serverName}"`;
        return { kind: "refused", quiet: false };
      }
      record.cluster = target.spec.name;
    }
    return { kind: "passed", preface: read, target, key };
  }

  /** Gives back a count taken by {@linkcode admit}. */
  release(key: string | null): void {
    if (key === null) return;
    const left = (this.#open.get(key) ?? 1) - 1;
    if (left > 0) this.#open.set(key, left);
    else this.#open.delete(key);
  }
}
