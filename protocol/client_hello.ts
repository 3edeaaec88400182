/**
 * The server name (SNI) a TLS client asks for, read from the first bytes it sends, and routing by
 * that name. Pure functions over bytes: no Deno API, so they run in workers on the hot path too.
 *
 * @module
 */

/**
 * Bytes of a stream this module reads at most to find the ClientHello: 16384. A ClientHello that
 * cannot end within them (counting the record headers that carry it) is reported invalid.
 *
 * @example
 * ```ts
 * import { CLIENT_HELLO_MAX_BYTES } from "@zerocopy/splice";
 *
 * console.log(CLIENT_HELLO_MAX_BYTES); // 16384
 * ```
 */
export const CLIENT_HELLO_MAX_BYTES = 16384;

/**
 * What {@linkcode serverNameFromClientHello} found in the first bytes of a stream:
 * - `incomplete`: a valid prefix; wait for more bytes (the caller bounds the wait by
 *   {@linkcode CLIENT_HELLO_MAX_BYTES} and a timeout). `minimumLength` is the fewest bytes, from
 *   the start, that the whole ClientHello can take: a caller may wait for that many before it
 *   asks again, so that a client sending a byte at a time is not parsed once per byte (its
 *   ClientHello may then be found invalid later than it could have been);
 * - `found`: the host name, lowercase, without a trailing dot;
 * - `none`: a complete, well-formed ClientHello without a `server_name` extension, or whose
 *   extension has no `host_name` entry;
 * - `invalid`: not TLS or malformed, with a short lowercase reason.
 *
 * @example
 * ```ts
 * import { type ServerNameParse, serverNameFromClientHello } from "@zerocopy/splice";
 *
 * const parse: ServerNameParse = serverNameFromClientHello(new Uint8Array([22, 3, 1]));
 * console.log(parse.status); // "incomplete"
 * ```
 */
export type ServerNameParse =
  | { readonly status: "incomplete"; readonly minimumLength: number }
  | { readonly status: "found"; readonly serverName: string }
  | { readonly status: "none" }
  | { readonly status: "invalid"; readonly reason: string };

// Shared, frozen: the answer without data costs no allocation on the hot path. INCOMPLETE is
// the body parser's marker only; serverNameFromClientHello answers with its minimumLength.
const INCOMPLETE = Object.freeze({ status: "incomplete" as const, minimumLength: 0 });
const NONE: ServerNameParse = Object.freeze({ status: "none" as const });

const RECORD_HEADER = 5;
const HANDSHAKE_HEADER = 4;
/** RFC 8446 5.1: a plaintext record carries at most 2^14 bytes. */
const MAX_RECORD = 16384;
const CONTENT_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
const EXTENSION_SERVER_NAME = 0;
const NAME_TYPE_HOST_NAME = 0;
const MAX_NAME = 253;
const MAX_LABEL = 63;

function invalid(reason: string): ServerNameParse {
  return { status: "invalid", reason };
}

/**
 * Reads the server name (SNI) from the first bytes a TLS client sends: the records that carry
 * its ClientHello, which may be fragmented over several handshake records. Call it again with
 * the longer buffer while it answers `incomplete`. It answers `found` or `none` only once the
 * whole ClientHello is in `bytes`, and `invalid` as soon as the bytes cannot start a valid one.
 * It never throws and never reads past `bytes.length`; a ClientHello in a single record (the
 * common case) is parsed in place, without copying.
 *
 * @param bytes the start of the stream
 * @returns what the bytes tell so far
 *
 * @example
 * ```ts
 * import { serverNameFromClientHello } from "@zerocopy/splice";
 *
 * // A minimal ClientHello, in one record, for "Example.COM."
 * const name = new TextEncoder().encode("Example.COM.");
 * const hello = Uint8Array.of(
 *   22, 3, 1, 0, 56 + name.length, // record: handshake, TLS 1.0 framing, length
 *   1, 0, 0, 52 + name.length, // handshake: ClientHello, length
 *   3, 3, ...new Uint8Array(32), 0, // legacy_version, random, empty session_id
 *   0, 2, 0x13, 0x01, 1, 0, // one cipher suite, null compression
 *   0, 9 + name.length, // extensions
 *   0, 0, 0, 5 + name.length, 0, 3 + name.length, 0, 0, name.length, ...name, // server_name
 * );
 * console.log(serverNameFromClientHello(hello)); // { status: "found", serverName: "example.com" }
 * console.log(serverNameFromClientHello(hello.subarray(0, 20)));
 * // { status: "incomplete", minimumLength: 73 }: the whole hello takes 73 bytes
 * console.log(serverNameFromClientHello(new TextEncoder().encode("GET / HTTP/1.1\r\n")));
 * // { status: "invalid", reason: "not a tls handshake" }
 * ```
 */
export function serverNameFromClientHello(bytes: Uint8Array): ServerNameParse {
  const length = bytes.length;
  let pos = 0; // stream offset of the record header being read
  let records = 0;
  let have = 0; // handshake bytes present in `bytes`, over the records walked
  let needed = -1; // handshake header + body length, once its 4 header bytes are present
  let bodyLength = 0;
  // Every handshake byte not here yet comes after the last byte here: a lower bound.
  const pending = (): ServerNameParse => ({
    status: "incomplete",
    minimumLength: needed < 0 ? length + 1 : length + needed - have,
  });
  // Walks the record headers until the handshake message is covered or the bytes run out.
  while (needed < 0 || have < needed) {
    if (pos >= length) return pending();
    if (bytes[pos] !== CONTENT_HANDSHAKE) {
      return invalid(
        records === 0 ? "not a tls handshake" : "non-handshake record in client hello",
      );
    }
    if (pos + 1 < length && bytes[pos + 1] !== 3) {
      return invalid(records === 0 ? "not a tls handshake" : "bad record version");
    }
    if (pos + 2 < length && bytes[pos + 2] > 4) return invalid("bad record version");
    if (pos + RECORD_HEADER > length) return pending();
    const recordLength = (bytes[pos + 3] << 8) | bytes[pos + 4];
    if (recordLength > MAX_RECORD) return invalid("record over 16384 bytes");
    // RFC 8446 5.1: no zero-length handshake fragments.
    if (recordLength === 0) return invalid("empty handshake record");
    records++;
    const data = pos + RECORD_HEADER;
    const haveBefore = have;
    for (let i = 0; haveBefore + i < HANDSHAKE_HEADER && i < recordLength; i++) {
      if (data + i >= length) return pending();
      const at = haveBefore + i;
      const byte = bytes[data + i];
      if (at === 0) {
        if (byte !== HANDSHAKE_CLIENT_HELLO) return invalid("not a client hello");
      } else {
        bodyLength = (bodyLength << 8) | byte;
        if (at === 3) needed = HANDSHAKE_HEADER + bodyLength;
      }
    }
    // The earliest stream offset the message can end at: its rest, plus one more record header
    // if this record cannot hold it.
    const rest = (needed < 0 ? HANDSHAKE_HEADER : needed) - haveBefore;
    const earliestEnd = data + rest + (rest > recordLength ? RECORD_HEADER : 0);
    if (earliestEnd > CLIENT_HELLO_MAX_BYTES) return invalid("client hello over 16384 bytes");
    const take = rest < recordLength ? rest : recordLength;
    const present = length - data < take ? length - data : take;
    have += present;
    if (present < take) break;
    pos = data + recordLength;
  }
  if (needed < 0) return pending();
  // In place when in one record: the body starts after the two headers.
  const start = RECORD_HEADER + HANDSHAKE_HEADER;
  const parsed = records === 1
    ? parseClientHello(bytes, start, start + bodyLength, RECORD_HEADER + have)
    : parseClientHello(reassemble(bytes, have), HANDSHAKE_HEADER, needed, have);
  return parsed === INCOMPLETE ? pending() : parsed;
}

/** Copies the first `have` handshake bytes out of the records; their headers are valid. */
function reassemble(bytes: Uint8Array, have: number): Uint8Array {
  const joined = new Uint8Array(have);
  let pos = 0;
  for (let filled = 0; filled < have;) {
    const recordLength = (bytes[pos + 3] << 8) | bytes[pos + 4];
    const data = pos + RECORD_HEADER;
    const take = Math.min(recordLength, have - filled);
    joined.set(bytes.subarray(data, data + take), filled);
    filled += take;
    pos = data + recordLength;
  }
  return joined;
}

/**
 * Parses a ClientHello body in `buf[start, end)` of which `buf[start, avail)` is present.
 * Lengths are checked against `end`, the declared size, so malformed data is reported even
 * before the rest arrives; reading past `avail` answers `incomplete`.
 */
function parseClientHello(
  buf: Uint8Array,
  start: number,
  end: number,
  avail: number,
): ServerNameParse {
  let p = start;
  // legacy_version (2) and random (32)
  if (p + 34 > end) return invalid("truncated client hello");
  if (p + 1 > avail) return INCOMPLETE;
  if (buf[p] !== 3) return invalid("bad client hello version");
  p += 34;
  if (p + 1 > end) return invalid("truncated client hello");
  if (p + 1 > avail) return INCOMPLETE;
  const sessionIdLength = buf[p];
  if (sessionIdLength > 32 || p + 1 + sessionIdLength > end) {
    return invalid("bad session id length");
  }
  p += 1 + sessionIdLength;
  if (p + 2 > end) return invalid("truncated client hello");
  if (p + 2 > avail) return INCOMPLETE;
  const suitesLength = (buf[p] << 8) | buf[p + 1];
  if (suitesLength < 2 || (suitesLength & 1) !== 0 || p + 2 + suitesLength > end) {
    return invalid("bad cipher suites length");
  }
  p += 2 + suitesLength;
  if (p + 1 > end) return invalid("truncated client hello");
  if (p + 1 > avail) return INCOMPLETE;
  const compressionLength = buf[p];
  if (compressionLength < 1 || p + 1 + compressionLength > end) {
    return invalid("bad compression methods length");
  }
  p += 1 + compressionLength;
  // A hello without extensions (SSLv3 style) ends here.
  if (p === end) return avail < end ? INCOMPLETE : NONE;
  if (p + 2 > end) return invalid("bad extensions length");
  if (p + 2 > avail) return INCOMPLETE;
  if (((buf[p] << 8) | buf[p + 1]) !== end - p - 2) return invalid("bad extensions length");
  p += 2;
  let serverName: string | null = null;
  let seen = false;
  while (p < end) {
    if (p + 4 > end) return invalid("bad extension length");
    if (p + 4 > avail) return INCOMPLETE;
    const type = (buf[p] << 8) | buf[p + 1];
    const extensionLength = (buf[p + 2] << 8) | buf[p + 3];
    p += 4;
    if (p + extensionLength > end) return invalid("bad extension length");
    if (type === EXTENSION_SERVER_NAME) {
      if (seen) return invalid("duplicate server name extension");
      seen = true;
      if (p + extensionLength > avail) return INCOMPLETE;
      const name = serverNameExtension(buf, p, p + extensionLength);
      if (name === BAD_LIST) return invalid("bad server name list");
      if (name === BAD_NAME) return invalid("bad server name");
      serverName = name;
    }
    // Other extensions are skipped unread; every header is still walked, to find a duplicate.
    p += extensionLength;
  }
  if (avail < end) return INCOMPLETE;
  return serverName === null ? NONE : { status: "found", serverName };
}

const BAD_LIST = 1;
const BAD_NAME = 2;

/**
 * The first host_name of a server_name extension in `buf[p, end)` (RFC 6066 3), lowercase and
 * without a trailing dot; null without one; BAD_LIST or BAD_NAME when malformed.
 */
function serverNameExtension(
  buf: Uint8Array,
  p: number,
  end: number,
): string | null | typeof BAD_LIST | typeof BAD_NAME {
  // The list is not empty in a ClientHello, and fills the extension exactly.
  if (p + 2 > end || ((buf[p] << 8) | buf[p + 1]) !== end - p - 2 || end - p - 2 === 0) {
    return BAD_LIST;
  }
  p += 2;
  let found: string | null = null;
  while (p < end) {
    if (p + 3 > end) return BAD_LIST;
    const nameType = buf[p];
    const nameLength = (buf[p + 1] << 8) | buf[p + 2];
    p += 3;
    if (nameLength === 0 || p + nameLength > end) return BAD_LIST;
    if (nameType === NAME_TYPE_HOST_NAME && found === null) {
      found = hostName(buf, p, p + nameLength);
      if (found === null) return BAD_NAME;
    }
    p += nameLength;
  }
  return found;
}

/**
 * Validates and lowercases a host name in `buf[start, end)`: ASCII letters, digits, `-`, `_`
 * (seen in the wild though not in RFC 952) and dots; one trailing dot dropped; 1 to 253
 * characters and labels of 1 to 63. Null when it is not one.
 */
function hostName(buf: Uint8Array, start: number, end: number): string | null {
  if (end > start && buf[end - 1] === 0x2e) end--;
  if (end - start < 1 || end - start > MAX_NAME) return null;
  let name = "";
  let labelStart = start;
  for (let i = start; i < end; i++) {
    let c = buf[i];
    if (c === 0x2e) {
      if (i === labelStart) return null;
      labelStart = i + 1;
    } else if (c >= 0x41 && c <= 0x5a) {
      c |= 0x20;
    } else if (
      !((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f)
    ) {
      return null;
    }
    if (i - labelStart >= MAX_LABEL) return null;
    name += String.fromCharCode(c);
  }
  // A name cannot end in an empty label ("a.." before the trailing dot went).
  return labelStart === end ? null : name;
}

/**
 * Routes server names to values: an exact name first, then the longest matching wildcard. A
 * wildcard `"*.example.com"` matches any name ending in `".example.com"` (one label or more
 * before it) but not `"example.com"` itself. Names and patterns compare lowercase, a trailing
 * dot ignored; of two entries with the same pattern the first is kept. Build it once and call
 * {@linkcode ServerNameRoutes.lookup} per connection: that is two map look-ups plus one per
 * label of the name.
 *
 * @example
 * ```ts
 * import { ServerNameRoutes } from "@zerocopy/splice";
 *
 * const routes = new ServerNameRoutes<string>([
 *   ["*.example.com", "wildcard"],
 *   ["*.eu.example.com", "eu"],
 *   ["www.example.com", "www"],
 * ]);
 * console.log(routes.lookup("WWW.example.com")); // "www"
 * console.log(routes.lookup("a.eu.example.com")); // "eu"
 * console.log(routes.lookup("a.example.com")); // "wildcard"
 * console.log(routes.lookup("example.com")); // null
 * ```
 */
export class ServerNameRoutes<T> {
  #exact = new Map<string, T>();
  /** By the suffix after `"*."`. */
  #wildcard = new Map<string, T>();

  /**
   * Builds the routes from `[pattern, value]` entries.
   *
   * @param entries the patterns, exact names or `"*."` wildcards, with their values
   * @throws {TypeError} for an empty pattern or a `*` other than a whole first label
   *
   * @example
   * ```ts
   * import { ServerNameRoutes } from "@zerocopy/splice";
   *
   * const routes = new ServerNameRoutes([["api.example.com", 8443]]);
   * console.log(routes.lookup("api.example.com.")); // 8443
   * ```
   */
  constructor(entries: Iterable<[pattern: string, value: T]>) {
    for (const [pattern, value] of entries) {
      const key = normalizeName(pattern);
      const wildcard = key.startsWith("*.");
      const rest = wildcard ? key.slice(2) : key;
      if (rest === "" || rest.startsWith(".") || rest.includes("*")) {
        throw new TypeError(
          `Cannot route server name pattern "${pattern}": expected a name or "*." and a name`,
        );
      }
      const map = wildcard ? this.#wildcard : this.#exact;
      if (!map.has(rest)) map.set(rest, value);
    }
  }

  /**
   * The value of the pattern `serverName` routes to, or null when none matches.
   *
   * @param serverName a host name, e.g. from {@linkcode serverNameFromClientHello}
   * @returns the value of the exact match, else of the longest matching wildcard, else null
   *
   * @example
   * ```ts
   * import { ServerNameRoutes } from "@zerocopy/splice";
   *
   * const routes = new ServerNameRoutes([["*.example.com", "any"]]);
   * console.log(routes.lookup("a.b.example.com")); // "any"
   * console.log(routes.lookup("example.org")); // null
   * ```
   */
  lookup(serverName: string): T | null {
    const name = normalizeName(serverName);
    const exact = this.#exact.get(name);
    if (exact !== undefined || this.#exact.has(name)) return exact as T;
    if (this.#wildcard.size === 0) return null;
    // The first suffix found from the left is the longest; a first label must not be empty.
    for (let dot = name.indexOf("."); dot > 0; dot = name.indexOf(".", dot + 1)) {
      const suffix = name.slice(dot + 1);
      const value = this.#wildcard.get(suffix);
      if (value !== undefined || this.#wildcard.has(suffix)) return value as T;
    }
    return null;
  }
}

/** Lowercase without a trailing dot. */
function normalizeName(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith(".") ? lower.slice(0, -1) : lower;
}

/**
 * Picks the pattern a server name routes to: an exact name first, then the longest matching
 * wildcard (`"*.example.com"` matches any name that ends in `".example.com"`, one label or
 * more, but not `"example.com"` itself), else null. Names and patterns compare lowercase. It
 * builds a {@linkcode ServerNameRoutes} on each call: to route many names, build that once.
 *
 * @param serverName a host name
 * @param patterns exact names and `"*."` wildcards
 * @returns the matching pattern as given, or null
 * @throws {TypeError} for an empty pattern or a `*` other than a whole first label
 *
 * @example
 * ```ts
 * import { matchServerName } from "@zerocopy/splice";
 *
 * const patterns = ["*.example.com", "API.example.com"];
 * console.log(matchServerName("api.example.com", patterns)); // "API.example.com"
 * console.log(matchServerName("www.example.com", patterns)); // "*.example.com"
 * console.log(matchServerName("example.com", patterns)); // null
 * ```
 */
export function matchServerName(serverName: string, patterns: readonly string[]): string | null {
  return new ServerNameRoutes(patterns.map((pattern): [string, string] => [pattern, pattern]))
    .lookup(serverName);
}
