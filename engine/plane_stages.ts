/**
 * The stages a proxied connection may pass between accept and connect, per its listener: the
 * source-address rules (`allow`, `deny`), the per-address limit, the PROXY protocol header
 * (`expect_proxy`) and the TLS server name (SNI routing). A listener with none of them has no
 * rules object at all, and its connections pay nothing for this module.
 *
 * Invariants:
 * - bytes are looked at with MSG_PEEK and taken only when they are the PROXY header: the
 *   ClientHello and everything after it stay in the socket for the relay, untouched;
 * - a connection's stages decide before any backend is tried: a refused one never reaches a
 *   backend;
 * - an address counted in the per-address table is remembered on the connection and given
 *   back exactly once, when it ends.
 *
 * @module
 */

import { errno, libc } from "../ffi/libc.ts";
import { MSG_PEEK } from "../ffi/constants.ts";
import { EAGAIN, EINTR, errnoName } from "../ffi/errno.ts";
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
  type ProxyHeader,
} from "../protocol/proxy_header.ts";
import { formatIp, parseIp } from "../protocol/ip.ts";
import type { ClusterRoute, ListenerRoute, ListenerRules, RefusalCode } from "./plane_layout.ts";

/** A PROXY header is still to be read. */
export const STAGE_PROXY = 1;
/** The ClientHello's server name is still to be read. */
export const STAGE_SNI = 2;

/** A connection's progress through its listener's stages. */
export interface Stages {
  rules: ListenerRules;
  /** `STAGE_*` bits still to pass. */
  pending: number;
  /** The address counted in the per-address table, given back when the connection ends. */
  counted: Uint8Array | null;
  /** The socket's client address, until a PROXY header replaces it. */
  ip: Uint8Array;
  /** Where the client connected to, per its PROXY header; null: the listening socket's. */
  destination: ProxyAddress | null;
  /**
   * The fewest bytes its ClientHello can take whole, as the last look at it found: it is not
   * parsed again before that many are queued, so one sent a byte at a time is not parsed once
   * per byte (each parse reads it from the start).
   */
  helloLength: number;
}

/** The rules of `route`, or null when it has no stage (the fast path). */
export function listenerRules(
  route: ListenerRoute,
  clusters: ClusterRoute[],
): ListenerRules | null {
  const plain = !route.expectProxy && route.names.length === 0 && route.allow.length === 0 &&
    route.deny.length === 0 && route.maxPerIp === 0;
  if (plain) return null;
  return {
    // The main thread parsed them already (the config's check): these cannot throw.
    allow: route.allow.length > 0 ? CidrList.parse(route.allow) : null,
    deny: route.deny.length > 0 ? CidrList.parse(route.deny) : null,
    maxPerIp: route.maxPerIp,
    expectProxy: route.expectProxy,
    headerTimeoutMs: route.headerTimeoutMs,
    names: route.names.length > 0
      ? new ServerNameRoutes(route.names.map(([name, i]) => [name, clusters[i]] as const))
      : null,
    fallback: route.cluster >= 0 ? clusters[route.cluster] ?? null : null,
    sniTimeoutMs: route.sniTimeoutMs,
  };
}

/** The stages a new connection on a listener with `rules` starts with. */
export function firstStages(rules: ListenerRules, ip: Uint8Array): Stages {
  return {
    rules,
    pending: (rules.expectProxy ? STAGE_PROXY : 0) | (rules.names !== null ? STAGE_SNI : 0),
    counted: null,
    ip,
    destination: null,
    helloLength: 0,
  };
}

/** Whether `ip` may connect under `rules`: deny wins; an absent allow list allows all. */
export function admitted(rules: ListenerRules, ip: Uint8Array): boolean {
  if (rules.deny !== null && rules.deny.includesBytes(ip)) return false;
  return rules.allow === null || rules.allow.includesBytes(ip);
}

/** `"host:port"` (IPv6 in brackets) as an address; null when it is not one. */
export function parseEndpoint(text: string): ProxyAddress | null {
  const colon = text.lastIndexOf(":");
  if (colon < 0) return null;
  let host = text.slice(0, colon);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  const bytes = parseIp(host);
  const port = Number(text.slice(colon + 1));
  if (bytes === null || !Number.isInteger(port)) return null;
  return { hostname: formatIp(bytes), port };
}

/**
 * The PROXY header (`version` 1 or 2) a backend gets for a client at `client` that connected
 * to `destination`; null when either is no IP address.
 */
export function proxyHeaderFor(
  version: number,
  client: string,
  destination: ProxyAddress | null,
): Uint8Array | null {
  const source = parseEndpoint(client);
  if (source === null || destination === null) return null;
  return encodeProxyHeader(version === 1 ? 1 : 2, source, destination);
}

/** What reading a connection's first bytes came to. */
export type PrefaceStep =
  | { kind: "wait" }
  | { kind: "header"; header: ProxyHeader }
  | { kind: "route"; cluster: ClusterRoute }
  | Refusal;

/** A connection closed by its stages, and why. */
export interface Refusal {
  kind: "refuse";
  end: "bad-header" | "header-timeout" | "no-route" | "reset";
  /** The refusal counter's reason; null: not a refusal (the client went away). */
  code: RefusalCode | null;
  error: string;
}

const WAIT: PrefaceStep = { kind: "wait" };

function refusal(end: Refusal["end"], code: RefusalCode | null, error: string): Refusal {
  return { kind: "refuse", end, code, error };
}

/**
 * Reads the next stage's bytes from client socket `fd` into `buffer` (at least
 * CLIENT_HELLO_MAX_BYTES long): the PROXY header, which is taken from the socket once whole,
 * or the ClientHello, which is only looked at. `hangUp`: the client sent its FIN, so bytes
 * still missing never come. Only the bytes queued now are looked at, so each call is bounded by
 * the buffer; a client that trickles its bytes is bounded by the stage's deadline.
 */
export function readPreface(
  fd: number,
  stages: Stages,
  buffer: Uint8Array,
  hangUp: boolean,
): PrefaceStep {
  const symbols = libc();
  const header = (stages.pending & STAGE_PROXY) !== 0;
  const limit = header ? PROXY_V2_MAX_BYTES : CLIENT_HELLO_MAX_BYTES;
  const n = Number(symbols.recv(fd, buffer, BigInt(limit), MSG_PEEK));
  if (n < 0) {
    const code = errno();
    if (code === EAGAIN || code === EINTR) return WAIT;
    return refusal("reset", null, `Cannot read from the client: ${errnoName(code)}`);
  }
  const bytes = buffer.subarray(0, n);
  if (header) {
    const parsed = parseProxyHeader(bytes);
    if (parsed.status === "incomplete") {
      if (n === 0 || hangUp) {
        return refusal(
          "bad-header",
          "proxy_header_invalid",
          "Cannot read the PROXY header: the client closed before sending all of it",
        );
      }
      return WAIT;
    }
    if (parsed.status === "invalid") {
      return refusal(
        "bad-header",
        "proxy_header_invalid",
        `Cannot read the PROXY header: ${parsed.reason}`,
      );
    }
    // Exactly the header's bytes: what follows is the client's, for the backend.
    const length = parsed.header.length;
    const taken = Number(symbols.read(fd, buffer, BigInt(length)));
    if (taken !== length) {
      return refusal("reset", null, "Cannot take the PROXY header from the socket");
    }
    stages.pending &= ~STAGE_PROXY;
    return { kind: "header", header: parsed.header };
  }
  // Fewer bytes than the ClientHello needs: nothing to learn yet, unless no more will come.
  if (n < stages.helloLength && n > 0 && n < CLIENT_HELLO_MAX_BYTES && !hangUp) return WAIT;
  const parsed = serverNameFromClientHello(bytes);
  if (parsed.status === "incomplete") {
    stages.helloLength = parsed.minimumLength;
    if (n === 0 || hangUp) {
      return refusal(
        "bad-header",
        "client_hello_invalid",
        "Cannot read the TLS ClientHello: the client closed before sending all of it",
      );
    }
    if (n >= CLIENT_HELLO_MAX_BYTES) {
      return refusal(
        "bad-header",
        "client_hello_invalid",
        `Cannot read the TLS ClientHello: not whole within ${CLIENT_HELLO_MAX_BYTES} bytes`,
      );
    }
    return WAIT;
  }
  if (parsed.status === "invalid") {
    return refusal(
      "bad-header",
      "client_hello_invalid",
      `Cannot read the TLS ClientHello: ${parsed.reason}`,
    );
  }
  stages.pending &= ~STAGE_SNI;
  const name = parsed.status === "found" ? parsed.serverName : null;
  const cluster = (name === null ? null : stages.rules.names!.lookup(name)) ??
    stages.rules.fallback;
  if (cluster === null) {
    return refusal(
      "no-route",
      "no_route",
      name === null
        ? "No frontend takes a ClientHello without a server name"
        : `No frontend for server name "${name}"`,
    );
  }
  return { kind: "route", cluster };
}
