/**
 * The PROXY protocol (HAProxy's `doc/proxy-protocol.txt`), versions 1 (a text line) and 2
 * (binary): a proxy puts one header at the very start of a TCP stream to pass the original
 * client and server addresses on to the next hop.
 *
 * Pure code with no Deno APIs, so it also runs in Worker threads; the parser runs once per
 * connection, on every read until it reaches a verdict, so it builds no strings before the
 * header is complete.
 *
 * @module
 */

import { formatIp, parseIp, unmapIpv4 } from "./ip.ts";

/**
 * An endpoint in a PROXY header.
 *
 * @example
 * ```ts
 * import type { ProxyAddress } from "@zerocopy/splice";
 *
 * const client: ProxyAddress = { hostname: "2001:db8::1", port: 51234 };
 * console.log(`[${client.hostname}]:${client.port}`); // "[2001:db8::1]:51234"
 * ```
 */
export interface ProxyAddress {
  /**
   * IPv4 dotted quad (`"192.0.2.1"`) or IPv6 in canonical compressed lowercase form without
   * brackets (`"2001:db8::1"`, `"::1"`, `"::ffff:192.0.2.1"`), as Deno prints addresses.
   */
  hostname: string;
  /** The TCP port, 0 to 65535. */
  port: number;
}

/**
 * A parsed PROXY header.
 *
 * @example Take the client's address, or the socket's own when the header has none
 * ```ts
 * import { type ProxyAddress, type ProxyHeader, parseProxyHeader } from "@zerocopy/splice";
 *
 * function clientOf(header: ProxyHeader, socketPeer: ProxyAddress): ProxyAddress {
 *   return header.source ?? socketPeer; // null for LOCAL, UNKNOWN, UDP, UNIX, UNSPEC
 * }
 *
 * const line = new TextEncoder().encode("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n");
 * const result = parseProxyHeader(line);
 * if (result.status === "complete") {
 *   console.log(clientOf(result.header, { hostname: "10.0.0.2", port: 40000 }));
 *   // { hostname: "192.0.2.1", port: 56324 }
 *   console.log(result.header.length); // 45
 * }
 * ```
 */
export interface ProxyHeader {
  /** 1 for the text form, 2 for the binary form. */
  version: 1 | 2;
  /**
   * `"proxy"`: source and destination are the original connection's. `"local"` (the v2 LOCAL
   * command, or v1 `UNKNOWN`): the sender made the connection itself, e.g. a health check, and
   * the receiver uses the socket's own addresses.
   */
  command: "proxy" | "local";
  /**
   * The original client; `null` when `command` is `"local"`, and for v2 address families other
   * than TCP over IPv4 or IPv6 (UNSPEC, UDP, AF_UNIX): those headers are accepted but carry no
   * usable TCP address, so callers treat a `null` source as "use the socket's address".
   */
  source: ProxyAddress | null;
  /** The address the client connected to; `null` whenever `source` is. */
  destination: ProxyAddress | null;
  /**
   * Bytes the header takes at the start of the stream, v2 TLVs included: what to consume before
   * relaying. Never more than the input given to {@linkcode parseProxyHeader}.
   */
  length: number;
}

/**
 * The verdict of {@linkcode parseProxyHeader} on the bytes read so far: `"complete"`,
 * `"incomplete"` (a valid prefix: read more and parse again from the start) or `"invalid"` with
 * a short lowercase `reason` such as `"bad signature"` (close the connection).
 *
 * @example
 * ```ts
 * import { parseProxyHeader, type ProxyHeaderParse } from "@zerocopy/splice";
 *
 * const stream = new TextEncoder().encode("PROXY UNKNOWN\r\nGET / HTTP/1.1\r\n");
 * const partial: ProxyHeaderParse = parseProxyHeader(stream.subarray(0, 8));
 * console.log(partial.status); // "incomplete"
 * const bad = parseProxyHeader(new TextEncoder().encode("GET / HTTP/1.1\r\n"));
 * console.log(bad); // { status: "invalid", reason: "bad signature" }
 * const whole = parseProxyHeader(stream);
 * if (whole.status === "complete") {
 *   console.log(whole.header.command); // "local"
 *   console.log(stream.subarray(whole.header.length).length); // 16: the request, untouched
 * }
 * ```
 */
export type ProxyHeaderParse =
  | { status: "complete"; header: ProxyHeader }
  | { status: "incomplete" }
  | { status: "invalid"; reason: string };

/**
 * Maximum bytes of a v1 line, CRLF included, as the specification fixes it: 107.
 *
 * @example
 * ```ts
 * import { PROXY_V1_MAX_BYTES, parseProxyHeader } from "@zerocopy/splice";
 *
 * const endless = new TextEncoder().encode("PROXY UNKNOWN " + "x".repeat(PROXY_V1_MAX_BYTES));
 * console.log(parseProxyHeader(endless));
 * // { status: "invalid", reason: "v1 line longer than 107 bytes" }
 * ```
 */
export const PROXY_V1_MAX_BYTES = 107;

/**
 * Maximum bytes this module accepts for a whole v2 header (the 16-byte fixed part, addresses
 * and TLVs): 4096. A longer header is invalid as soon as its fixed part arrives. Since this is
 * also above {@linkcode PROXY_V1_MAX_BYTES}, a buffer of this size always holds enough bytes
 * for {@linkcode parseProxyHeader} to return `"complete"` or `"invalid"`.
 *
 * @example
 * ```ts
 * import { PROXY_V2_MAX_BYTES } from "@zerocopy/splice";
 *
 * const buffer = new Uint8Array(PROXY_V2_MAX_BYTES); // read the header into this
 * console.log(buffer.length); // 4096
 * ```
 */
export const PROXY_V2_MAX_BYTES = 4096;

const CR = 0x0d;
const LF = 0x0a;
const SPACE = 0x20;
const V1_SIGNATURE = asciiBytes("PROXY ");
/** The v1 protocol that carries no addresses, right after the signature. */
const V1_UNKNOWN = asciiBytes("UNKNOWN");
const V2_SIGNATURE = asciiBytes("\r\n\r\n\0\r\nQUIT\n");
/** Signature, version and command, family and transport, and the 2-byte length. */
const V2_FIXED_BYTES = 16;
const V2_VERSION_COMMAND_LOCAL = 0x20;
const V2_VERSION_COMMAND_PROXY = 0x21;
const V2_UNSPEC = 0x00;
const V2_TCP4 = 0x11;
const V2_TCP6 = 0x21;
const V2_IPV4_ADDRESS_BYTES = 12;
const V2_IPV6_ADDRESS_BYTES = 36;
const V2_UNIX_ADDRESS_BYTES = 216;

/** Shared: the hot path returns it on every short read, and it carries no per-call data. */
const INCOMPLETE: ProxyHeaderParse = Object.freeze({ status: "incomplete" as const });

/**
 * Parses a PROXY header (v1 or v2, told apart by the signature) at the start of `bytes`, the
 * stream as read so far. Never throws and never reads past `bytes.length`; bytes after the
 * header are not looked at, so `bytes` may hold the start of the payload too.
 *
 * Strict on v1: single spaces, decimal ports without leading zeros, dotted quads without
 * leading zeros for `TCP4` and any valid IPv6 text for `TCP6` (reported in canonical form). On
 * v2: version 2, command LOCAL or PROXY, a known family, an address block long enough for it
 * and well-formed TLVs, which are then skipped.
 *
 * @param bytes the first bytes received on the connection
 * @returns `"complete"` with the header, `"incomplete"` when `bytes` is a valid prefix, or
 * `"invalid"` with a reason
 *
 * @example Read the header off a connection, keeping the payload that came with it
 * ```ts
 * import { PROXY_V2_MAX_BYTES, type ProxyHeader, parseProxyHeader } from "@zerocopy/splice";
 *
 * async function readProxyHeader(
 *   conn: Deno.Conn,
 * ): Promise<{ header: ProxyHeader; payload: Uint8Array }> {
 *   // Enough for a verdict: parsing never asks for more than PROXY_V2_MAX_BYTES.
 *   const buffer = new Uint8Array(PROXY_V2_MAX_BYTES);
 *   let filled = 0;
 *   while (true) {
 *     const count = await conn.read(buffer.subarray(filled));
 *     if (count === null) throw new Error("connection closed inside the PROXY header");
 *     filled += count;
 *     const result = parseProxyHeader(buffer.subarray(0, filled));
 *     if (result.status === "invalid") throw new Error(`bad PROXY header: ${result.reason}`);
 *     if (result.status === "complete") {
 *       return { header: result.header, payload: buffer.subarray(result.header.length, filled) };
 *     }
 *   }
 * }
 * ```
 */
export function parseProxyHeader(bytes: Uint8Array): ProxyHeaderParse {
  if (bytes.length === 0) return INCOMPLETE;
  if (bytes[0] === V1_SIGNATURE[0]) return parseV1(bytes);
  if (bytes[0] === V2_SIGNATURE[0]) return parseV2(bytes);
  return invalid("bad signature");
}

/**
 * Encodes a PROXY header (PROXY command, TCP) that announces a connection from `source` to
 * `destination`. Both IPv4: v1 `TCP4` / v2 family 0x11; both IPv6: `TCP6` / 0x21; mixed, the
 * IPv4 end is written as IPv4-mapped IPv6 (`::ffff:a.b.c.d`) under `TCP6` / 0x21. An
 * IPv4-mapped address counts as IPv4 (a dual-stack listener's IPv4 client gets `TCP4`). v2
 * headers carry no TLVs. Addresses are written in canonical form.
 *
 * @param version 1 for the text line, 2 for the binary form
 * @param source the original client; `hostname` is an IP address, IPv6 without brackets
 * @param destination the address the client connected to, in the same form
 * @returns the header bytes, to send before any payload
 * @throws {TypeError} when a hostname is not an IP address (host names are not resolved)
 * @throws {RangeError} when a port is not an integer from 0 to 65535, or `version` is not 1 or 2
 *
 * @example
 * ```ts
 * import { encodeProxyHeader } from "@zerocopy/splice";
 *
 * const client = { hostname: "192.0.2.1", port: 56324 };
 * const v1 = encodeProxyHeader(1, client, { hostname: "198.51.100.7", port: 443 });
 * console.log(new TextDecoder().decode(v1)); // "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
 * const v2 = encodeProxyHeader(2, client, { hostname: "2001:db8::7", port: 443 });
 * console.log(v2.length); // 52: 16 fixed bytes, then 36 for TCP over IPv6
 * try {
 *   encodeProxyHeader(1, { hostname: "[::1]", port: 1 }, client);
 * } catch (error) {
 *   console.log((error as Error).message);
 *   // 'Cannot encode a PROXY header: "[::1]" is not an IP address'
 * }
 * ```
 */
export function encodeProxyHeader(
  version: 1 | 2,
  source: ProxyAddress,
  destination: ProxyAddress,
): Uint8Array {
  // An IPv4-mapped address is an IPv4 client seen through a dual-stack socket: written as IPv4.
  let sourceIp = unmapIpv4(encodableIp(source));
  let destinationIp = unmapIpv4(encodableIp(destination));
  if (sourceIp.length !== destinationIp.length) {
    if (sourceIp.length === 4) sourceIp = mapIpv4(sourceIp);
    else destinationIp = mapIpv4(destinationIp);
  }
  if (version === 1) {
    const protocol = sourceIp.length === 4 ? "TCP4" : "TCP6";
    const line = `PROXY ${protocol} ${formatIp(sourceIp)} ${formatIp(destinationIp)} ` +
      `${source.port} ${destination.port}\r\n`;
    return asciiBytes(line);
  }
  if (version !== 2) {
    throw new RangeError(`Cannot encode a PROXY header: version ${version} is not 1 or 2`);
  }
  const ipv4 = sourceIp.length === 4;
  const addressBytes = ipv4 ? V2_IPV4_ADDRESS_BYTES : V2_IPV6_ADDRESS_BYTES;
  const bytes = new Uint8Array(V2_FIXED_BYTES + addressBytes);
  bytes.set(V2_SIGNATURE, 0);
  bytes[12] = V2_VERSION_COMMAND_PROXY;
  bytes[13] = ipv4 ? V2_TCP4 : V2_TCP6;
  bytes[14] = addressBytes >> 8;
  bytes[15] = addressBytes & 0xff;
  bytes.set(sourceIp, V2_FIXED_BYTES);
  bytes.set(destinationIp, V2_FIXED_BYTES + sourceIp.length);
  const ports = V2_FIXED_BYTES + 2 * sourceIp.length;
  bytes[ports] = source.port >> 8;
  bytes[ports + 1] = source.port & 0xff;
  bytes[ports + 2] = destination.port >> 8;
  bytes[ports + 3] = destination.port & 0xff;
  return bytes;
}

/** One byte per UTF-16 unit: only for text known to be ASCII. */
function asciiBytes(text: string): Uint8Array {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

function invalid(reason: string): ProxyHeaderParse {
  return { status: "invalid", reason };
}

function complete(
  version: 1 | 2,
  command: "proxy" | "local",
  source: ProxyAddress | null,
  destination: ProxyAddress | null,
  length: number,
): ProxyHeaderParse {
  return { status: "complete", header: { version, command, source, destination, length } };
}

/**
 * 1: bytes[offset, limit) starts with the whole `pattern`; 0: is a shorter prefix of it;
 * -1: differs.
 */
function matchAt(
  bytes: Uint8Array,
  pattern: Uint8Array,
  offset = 0,
  limit: number = bytes.length,
): 1 | 0 | -1 {
  const count = Math.min(limit - offset, pattern.length);
  for (let i = 0; i < count; i++) if (bytes[offset + i] !== pattern[i]) return -1;
  return count === pattern.length ? 1 : 0;
}

function parseV1(bytes: Uint8Array): ProxyHeaderParse {
  const signature = matchAt(bytes, V1_SIGNATURE);
  if (signature !== 1) return signature === 0 ? INCOMPLETE : invalid("bad signature");
  // The CR must sit at index 105 or before for CRLF to end within 107 bytes; once 106 bytes
  // hold no CR the line can no longer end in time.
  const lastCr = PROXY_V1_MAX_BYTES - 2;
  const scanEnd = Math.min(bytes.length, lastCr + 1);
  let cr = -1;
  for (let i = V1_SIGNATURE.length; i < scanEnd; i++) {
    if (bytes[i] === CR) {
      cr = i;
      break;
    }
    if (bytes[i] === LF) return invalid("bad v1 line ending");
  }
  if (cr === -1) {
    return bytes.length > lastCr
      ? invalid(`v1 line longer than ${PROXY_V1_MAX_BYTES} bytes`)
      : INCOMPLETE;
  }
  if (cr + 1 === bytes.length) return INCOMPLETE;
  if (bytes[cr + 1] !== LF) return invalid("bad v1 line ending");
  const length = cr + 2;

  // UNKNOWN ends at the CRLF or a space; whatever follows it on the line is to be ignored.
  const afterUnknown = V1_SIGNATURE.length + V1_UNKNOWN.length;
  if (
    matchAt(bytes, V1_UNKNOWN, V1_SIGNATURE.length, cr) === 1 &&
    (cr === afterUnknown || bytes[afterUnknown] === SPACE)
  ) {
    return complete(1, "local", null, null, length);
  }

  // The line is complete and at most 99 bytes from here, so a string is now cheap. Bytes map
  // to code points one to one; anything outside ASCII then fails the field checks.
  let line = "";
  for (let i = V1_SIGNATURE.length; i < cr; i++) line += String.fromCharCode(bytes[i]);
  const fields = line.split(" ");
  const protocol = fields[0];
  if (protocol !== "TCP4" && protocol !== "TCP6") return invalid("bad v1 protocol");
  // Exactly one space between fields: a doubled, leading or trailing space makes an empty field.
  if (fields.length !== 5) return invalid("bad v1 field count");
  const ipLength = protocol === "TCP4" ? 4 : 16;
  const sourceIp = parseIp(fields[1]);
  const destinationIp = parseIp(fields[2]);
  if (sourceIp?.length !== ipLength || destinationIp?.length !== ipLength) {
    return invalid("bad v1 address");
  }
  const sourcePort = parsePort(fields[3]);
  const destinationPort = parsePort(fields[4]);
  if (sourcePort < 0 || destinationPort < 0) return invalid("bad v1 port");
  return complete(
    1,
    "proxy",
    { hostname: formatIp(sourceIp), port: sourcePort },
    { hostname: formatIp(destinationIp), port: destinationPort },
    length,
  );
}

/** A decimal port 0 to 65535 without sign or leading zeros, or -1. */
function parsePort(text: string): number {
  if (text.length === 0 || text.length > 5) return -1;
  if (text.length > 1 && text.charCodeAt(0) === 0x30) return -1;
  let port = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x30 || code > 0x39) return -1;
    port = port * 10 + (code - 0x30);
  }
  return port <= 65535 ? port : -1;
}

/** Address block bytes the PROXY command needs for a v2 family byte, or -1 if unknown. */
function v2AddressBytes(family: number): number {
  switch (family) {
    case V2_UNSPEC:
      return 0;
    case V2_TCP4:
    case 0x12: // UDP over IPv4
      return V2_IPV4_ADDRESS_BYTES;
    case V2_TCP6:
    case 0x22: // UDP over IPv6
      return V2_IPV6_ADDRESS_BYTES;
    case 0x31: // AF_UNIX stream
    case 0x32: // AF_UNIX datagram
      return V2_UNIX_ADDRESS_BYTES;
    default:
      return -1;
  }
}

function parseV2(bytes: Uint8Array): ProxyHeaderParse {
  const signature = matchAt(bytes, V2_SIGNATURE);
  if (signature !== 1) return signature === 0 ? INCOMPLETE : invalid("bad signature");
  // Each fixed field is checked as soon as it arrives, so junk is refused without waiting.
  if (bytes.length < 13) return INCOMPLETE;
  const versionCommand = bytes[12];
  if (versionCommand >> 4 !== 2) return invalid("bad v2 version");
  if (versionCommand !== V2_VERSION_COMMAND_LOCAL && versionCommand !== V2_VERSION_COMMAND_PROXY) {
    return invalid("bad v2 command");
  }
  if (bytes.length < 14) return INCOMPLETE;
  const family = bytes[13];
  // The specification has receivers reject unassigned families, whatever the command.
  const addressBytes = v2AddressBytes(family);
  if (addressBytes < 0) return invalid("bad v2 family");
  if (bytes.length < V2_FIXED_BYTES) return INCOMPLETE;
  const total = V2_FIXED_BYTES + ((bytes[14] << 8) | bytes[15]);
  if (total > PROXY_V2_MAX_BYTES) {
    return invalid(`v2 length ${total} over ${PROXY_V2_MAX_BYTES}`);
  }
  const proxy = versionCommand === V2_VERSION_COMMAND_PROXY;
  if (proxy && total < V2_FIXED_BYTES + addressBytes) return invalid("v2 address block too short");
  if (bytes.length < total) return INCOMPLETE;

  // LOCAL discards the whole block, and UNSPEC defines no layout: neither has a known place
  // where TLVs would start, so their blocks are skipped unread.
  if (!proxy) return complete(2, "local", null, null, total);
  if (family === V2_UNSPEC) return complete(2, "proxy", null, null, total);

  // TLVs fill the rest of the block exactly: each is a type byte, a big-endian 2-byte length
  // and that many value bytes.
  let tlv = V2_FIXED_BYTES + addressBytes;
  while (tlv < total) {
    if (tlv + 3 > total) return invalid("bad tlv");
    tlv += 3 + ((bytes[tlv + 1] << 8) | bytes[tlv + 2]);
  }
  if (tlv !== total) return invalid("bad tlv");

  if (family !== V2_TCP4 && family !== V2_TCP6) return complete(2, "proxy", null, null, total);
  const ipLength = family === V2_TCP4 ? 4 : 16;
  const portsAt = V2_FIXED_BYTES + 2 * ipLength;
  const source = v2Address(bytes, V2_FIXED_BYTES, ipLength, portsAt);
  const destination = v2Address(bytes, V2_FIXED_BYTES + ipLength, ipLength, portsAt + 2);
  return complete(2, "proxy", source, destination, total);
}

function v2Address(
  bytes: Uint8Array,
  ipAt: number,
  ipLength: number,
  portAt: number,
): ProxyAddress {
  const hostname = formatIp(bytes.subarray(ipAt, ipAt + ipLength));
  return { hostname, port: (bytes[portAt] << 8) | bytes[portAt + 1] };
}

function encodableIp(address: ProxyAddress): Uint8Array {
  const ip = typeof address.hostname === "string" ? parseIp(address.hostname) : null;
  if (ip === null) {
    const shown = JSON.stringify(String(address.hostname));
    throw new TypeError(`Cannot encode a PROXY header: ${shown} is not an IP address`);
  }
  const port = address.port;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(
      `Cannot encode a PROXY header: port ${port} is out of range (0 to 65535)`,
    );
  }
  return ip;
}

/** `::ffff:a.b.c.d`, the IPv6 form of an IPv4 address. */

function mapIpv4(ipv4: Uint8Array): Uint8Array {
  const ipv6 = new Uint8Array(16);
  ipv6[10] = 0xff;
  ipv6[11] = 0xff;
  ipv6.set(ipv4, 12);
  return ipv6;
}
