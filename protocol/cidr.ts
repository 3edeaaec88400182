/**
 * Matching IP addresses against lists of CIDR prefixes, for access rules checked on each
 * accepted connection. Pure code with no Deno APIs, so it also runs in Worker threads.
 *
 * @module
 */

import { formatIp, parseIp } from "./ip.ts";

/**
 * An immutable list of IPv4 and IPv6 prefixes, e.g. `192.0.2.0/24` and `2001:db8::/32`, that
 * tells whether an address is inside any of them. A linear scan over 32-bit words: it suits the
 * tens of entries an access list holds.
 *
 * With Deno, a connection's `remoteAddr.hostname` is text, so {@linkcode CidrList.includes} is
 * the usual call; {@linkcode CidrList.includesBytes} serves addresses already in bytes (a PROXY
 * protocol v2 header, a native accept) without allocating.
 *
 * @example
 * ```ts
 * import { CidrList } from "@zerocopy/splice";
 *
 * const trusted = CidrList.parse(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]);
 * console.log(trusted.size); // 3
 * console.log(trusted.includes("10.1.2.3")); // true
 * console.log(trusted.includes("::ffff:192.0.2.7")); // true
 * console.log(trusted.includes("2001:db9::1")); // false
 * ```
 */
export class CidrList {
  /** Per IPv4 entry: network, mask; as signed 32-bit words, so `&` results compare directly. */
  readonly #v4: Int32Array;
  /** Per IPv6 entry: four network words, then four mask words. */
  readonly #v6: Int32Array;

  private constructor(v4: Int32Array, v6: Int32Array) {
    this.#v4 = v4;
    this.#v6 = v6;
  }

  /**
   * Parses prefixes in CIDR notation, `"192.0.2.0/24"` or `"2001:db8::/32"`, or bare addresses
   * (`"10.0.0.1"` is `/32`, `"::1"` is `/128`). A prefix with bits set past its length is
   * rejected rather than masked: it is more likely a typo than meant.
   *
   * @param cidrs the prefixes
   * @returns the list
   * @throws {TypeError} `Cannot parse CIDR "x": <reason>` for the first entry that is not one
   *
   * @example
   * ```ts
   * import { CidrList } from "@zerocopy/splice";
   *
   * console.log(CidrList.parse(["0.0.0.0/0", "::/0"]).includes("203.0.113.9")); // true
   * try {
   *   CidrList.parse(["192.0.2.1/24"]);
   * } catch (error) {
   *   console.log((error as TypeError).message);
   *   // 'Cannot parse CIDR "192.0.2.1/24": host bits are set (did you mean 192.0.2.0/24?)'
   * }
   * ```
   */
  static parse(cidrs: readonly string[]): CidrList {
    const v4: number[] = [];
    const v6: number[] = [];
    for (const cidr of cidrs) {
      const slash = cidr.indexOf("/");
      const bytes = parseIp(slash === -1 ? cidr : cidr.slice(0, slash));
      if (bytes === null) throw cidrError(cidr, "not an IP address");
      const bits = bytes.length * 8;
      let prefix = bits;
      if (slash !== -1) {
        const text = cidr.slice(slash + 1);
        // Decimal without a sign or leading zeros, as Go's netip.ParsePrefix wants.
        if (!/^(0|[1-9][0-9]*)$/.test(text)) {
          throw cidrError(cidr, `bad prefix length "${text}"`);
        }
        if (text.length > 3 || Number(text) > bits) {
          throw cidrError(cidr, `prefix length ${text} is over ${bits}`);
        }
        prefix = Number(text);
      }
      const network = new Uint8Array(bytes.length);
      for (let i = 0; i < bytes.length; i++) {
        const keep = Math.min(Math.max(prefix - i * 8, 0), 8);
        network[i] = bytes[i] & (0xff00 >> keep);
      }
      if (network.some((byte, i) => byte !== bytes[i])) {
        throw cidrError(
          cidr,
          `host bits are set (did you mean ${formatIp(network)}/${prefix}?)`,
        );
      }
      const target = bytes.length === 4 ? v4 : v6;
      const words = bytes.length / 4;
      for (let w = 0; w < words; w++) target.push(wordAt(network, w * 4));
      for (let w = 0; w < words; w++) target.push(maskOf(prefix - w * 32));
    }
    return new CidrList(Int32Array.from(v4), Int32Array.from(v6));
  }

  /**
   * How many entries the list holds, IPv4 and IPv6 together.
   *
   * @example
   * ```ts
   * import { CidrList } from "@zerocopy/splice";
   *
   * console.log(CidrList.parse(["10.0.0.0/8", "::1"]).size); // 2
   * ```
   */
  get size(): number {
    return this.#v4.length / 2 + this.#v6.length / 8;
  }

  /**
   * Whether an address in text (no brackets, no port, no zone) is inside any entry. An
   * IPv4-mapped IPv6 address (`"::ffff:192.0.2.1"`) is matched as its IPv4 address against the
   * IPv4 entries, and as itself against the IPv6 ones (e.g. `::ffff:0:0/96`); a plain IPv4
   * address is matched against the IPv4 entries only. It allocates the parsed address.
   *
   * @param address the address, e.g. a `Deno.NetAddr`'s `hostname`
   * @returns false when it is outside every entry, or not an address
   *
   * @example
   * ```ts
   * import { CidrList } from "@zerocopy/splice";
   *
   * const local = CidrList.parse(["127.0.0.0/8", "::1"]);
   * console.log(local.includes("127.0.0.1")); // true
   * console.log(local.includes("::1")); // true
   * console.log(local.includes("localhost")); // false
   * ```
   */
  includes(address: string): boolean {
    const bytes = parseIp(address);
    return bytes !== null && this.includesBytes(bytes);
  }

  /**
   * {@linkcode CidrList.includes} for an address in bytes, network order: 4 for IPv4, 16 for
   * IPv6; any other length is outside. It does not allocate.
   *
   * @param bytes the address
   * @returns whether it is inside any entry
   *
   * @example
   * ```ts
   * import { CidrList } from "@zerocopy/splice";
   *
   * const list = CidrList.parse(["192.0.2.0/24"]);
   * console.log(list.includesBytes(new Uint8Array([192, 0, 2, 200]))); // true
   * const mapped = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 192, 0, 2, 200]);
   * console.log(list.includesBytes(mapped)); // true
   * console.log(list.includesBytes(new Uint8Array(5))); // false
   * ```
   */
  includesBytes(bytes: Uint8Array): boolean {
    if (bytes.length === 4) return this.#includesV4(wordAt(bytes, 0));
    if (bytes.length !== 16) return false;
    const w0 = wordAt(bytes, 0);
    const w1 = wordAt(bytes, 4);
    const w2 = wordAt(bytes, 8);
    const w3 = wordAt(bytes, 12);
    // ::ffff:a.b.c.d is what a dual-stack listener reports for an IPv4 peer.
    if (w0 === 0 && w1 === 0 && w2 === 0xffff && this.#includesV4(w3)) return true;
    const v6 = this.#v6;
    for (let i = 0; i < v6.length; i += 8) {
      if (
        (w0 & v6[i + 4]) === v6[i] && (w1 & v6[i + 5]) === v6[i + 1] &&
        (w2 & v6[i + 6]) === v6[i + 2] && (w3 & v6[i + 7]) === v6[i + 3]
      ) {
        return true;
      }
    }
    return false;
  }

  #includesV4(word: number): boolean {
    const v4 = this.#v4;
    for (let i = 0; i < v4.length; i += 2) {
      if ((word & v4[i + 1]) === v4[i]) return true;
    }
    return false;
  }
}

function cidrError(cidr: string, reason: string): TypeError {
  return new TypeError(`Cannot parse CIDR "${cidr}": ${reason}`);
}

/** The big-endian word at `offset`, as a signed 32-bit integer like the stored ones. */
function wordAt(bytes: Uint8Array, offset: number): number {
  return (bytes[offset] << 24) | (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) |
    bytes[offset + 3];
}

/** The mask of a word holding `bits` leading prefix bits (clamped to 0..32), signed. */
function maskOf(bits: number): number {
  if (bits <= 0) return 0;
  return bits >= 32 ? -1 : -1 << (32 - bits);
}
