/**
 * IP address text to bytes and back, for the protocol parsers: strict on input, and the
 * canonical text Deno prints on output (RFC 5952 for IPv6). Pure code with no Deno APIs, so it
 * also runs in Worker threads.
 *
 * @module
 */

const DOT = 0x2e;
const COLON = 0x3a;

/** The longest valid text: six hex groups and a dotted quad, "ffff:...:ffff:255.255.255.255". */
const MAX_IP_TEXT = 45;

/**
 * Parses an IPv4 address in dotted-quad form, or an IPv6 address in any RFC 4291 textual form
 * (an embedded IPv4 tail like `::ffff:192.0.2.1` included), into its 4 or 16 bytes.
 *
 * Strict: IPv4 octets are decimal 0 to 255 without leading zeros ("010" would be octal to some
 * parsers and decimal to others); no brackets, zone ids (`%eth0`), prefix lengths or spaces.
 *
 * @param text the address
 * @returns 4 bytes for IPv4, 16 for IPv6, or `null` when `text` is not an address
 *
 * @example
 * ```ts
 * import { parseIp } from "@zerocopy/splice";
 *
 * console.log(parseIp("192.0.2.1")); // Uint8Array(4) [ 192, 0, 2, 1 ]
 * console.log(parseIp("2001:DB8::1")?.length); // 16
 * console.log(parseIp("[::1]")); // null
 * console.log(parseIp("192.0.2.01")); // null
 * ```
 */
export function parseIp(text: string): Uint8Array | null {
  if (text.length === 0 || text.length > MAX_IP_TEXT) return null;
  if (text.indexOf(":") === -1) {
    const bytes = new Uint8Array(4);
    return readIpv4(text, 0, text.length, bytes, 0) ? bytes : null;
  }
  return parseIpv6(text);
}

/**
 * Formats 4 bytes as a dotted quad, or 16 bytes as IPv6 text in the RFC 5952 form Deno prints:
 * lowercase hex without leading zeros, the longest run of two or more zero groups (the first
 * of equal runs) as `::`, and an IPv4-mapped address as `::ffff:a.b.c.d`.
 *
 * @param bytes an address of 4 or 16 bytes, e.g. from {@linkcode parseIp}
 * @returns the address text
 * @throws {TypeError} when `bytes` is neither 4 nor 16 bytes long
 *
 * @example
 * ```ts
 * import { formatIp, parseIp } from "@zerocopy/splice";
 *
 * console.log(formatIp(new Uint8Array([192, 0, 2, 1]))); // "192.0.2.1"
 * console.log(formatIp(parseIp("2001:0DB8:0:0:0:0:0:0001")!)); // "2001:db8::1"
 * console.log(formatIp(parseIp("::FFFF:c000:0201")!)); // "::ffff:192.0.2.1"
 * ```
 */
export function formatIp(bytes: Uint8Array): string {
  if (bytes.length === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  if (bytes.length !== 16) {
    throw new TypeError(`Cannot format an IP address of ${bytes.length} bytes (need 4 or 16)`);
  }
  if (isIpv4Mapped(bytes)) {
    return `::ffff:${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  }
  // A single zero group stays "0": RFC 5952 4.2.2 reserves "::" for two or more.
  let bestStart = -1;
  let bestLength = 1;
  for (let group = 0; group < 8;) {
    if (bytes[group * 2] !== 0 || bytes[group * 2 + 1] !== 0) {
      group++;
      continue;
    }
    const start = group;
    while (group < 8 && bytes[group * 2] === 0 && bytes[group * 2 + 1] === 0) group++;
    if (group - start > bestLength) {
      bestStart = start;
      bestLength = group - start;
    }
  }
  let text = "";
  for (let group = 0; group < 8;) {
    if (group === bestStart) {
      text += "::";
      group += bestLength;
      continue;
    }
    if (text.length > 0 && text.charCodeAt(text.length - 1) !== COLON) text += ":";
    text += ((bytes[group * 2] << 8) | bytes[group * 2 + 1]).toString(16);
    group++;
  }
  return text;
}

function isIpv4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/**
 * `bytes` as its 4 IPv4 bytes when it is IPv4-mapped IPv6 (`::ffff:a.b.c.d`, an IPv4 client seen
 * through a dual-stack socket), else `bytes` itself. For the proxy's own use: one form per
 * address.
 */
export function unmapIpv4(bytes: Uint8Array): Uint8Array {
  return bytes.length === 16 && isIpv4Mapped(bytes) ? bytes.subarray(12) : bytes;
}

/** Writes the dotted quad text[start, end) to bytes[offset..offset+4); false if malformed. */
function readIpv4(
  text: string,
  start: number,
  end: number,
  bytes: Uint8Array,
  offset: number,
): boolean {
  let octet = 0;
  let digits = 0;
  let count = 0;
  // The position `end` acts as a final dot, so every octet is closed by one.
  for (let i = start; i <= end; i++) {
    const code = i < end ? text.charCodeAt(i) : DOT;
    if (code === DOT) {
      if (digits === 0 || count === 4) return false;
      bytes[offset + count++] = octet;
      octet = 0;
      digits = 0;
    } else if (code >= 0x30 && code <= 0x39) {
      if (digits > 0 && octet === 0) return false;
      octet = octet * 10 + (code - 0x30);
      digits++;
      if (octet > 255) return false;
    } else {
      return false;
    }
  }
  return count === 4;
}

function parseIpv6(text: string): Uint8Array | null {
  const gap = text.indexOf("::");
  if (gap !== -1 && text.indexOf("::", gap + 1) !== -1) return null;
  const words: number[] = [];
  let head: number;
  if (gap === -1) {
    if (!readGroups(text, 0, text.length, true, words) || words.length !== 8) return null;
    head = 8;
  } else {
    // Only the last group of the whole address may be a dotted quad.
    if (!readGroups(text, 0, gap, false, words)) return null;
    head = words.length;
    // "::" stands for at least one zero group, so at most seven are written out.
    if (!readGroups(text, gap + 2, text.length, true, words) || words.length > 7) return null;
  }
  const bytes = new Uint8Array(16);
  for (let i = 0; i < words.length; i++) {
    const group = i < head ? i : 8 - (words.length - i);
    bytes[group * 2] = words[i] >> 8;
    bytes[group * 2 + 1] = words[i] & 0xff;
  }
  return bytes;
}

/**
 * Appends the 16-bit words of the colon-separated groups text[start, end) to `words`; a dotted
 * quad in the last group (when allowed) counts as two words. Empty text has no groups; an empty
 * group (a stray colon) is malformed.
 */
function readGroups(
  text: string,
  start: number,
  end: number,
  allowIpv4: boolean,
  words: number[],
): boolean {
  if (start === end) return true;
  let groupStart = start;
  for (let i = start; i <= end; i++) {
    if (i < end && text.charCodeAt(i) !== COLON) continue;
    if (i === end && allowIpv4 && text.lastIndexOf(".", end - 1) >= groupStart) {
      const quad = new Uint8Array(4);
      if (!readIpv4(text, groupStart, end, quad, 0)) return false;
      words.push((quad[0] << 8) | quad[1], (quad[2] << 8) | quad[3]);
      return true;
    }
    const length = i - groupStart;
    if (length === 0 || length > 4) return false;
    let word = 0;
    for (let j = groupStart; j < i; j++) {
      const digit = hexValue(text.charCodeAt(j));
      if (digit < 0) return false;
      word = (word << 4) | digit;
    }
    words.push(word);
    groupStart = i + 1;
  }
  return true;
}

function hexValue(code: number): number {
  if (code >= 0x30 && code <= 0x39) return code - 0x30;
  const lower = code | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10;
  return -1;
}
