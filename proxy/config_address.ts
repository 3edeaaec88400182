/**
 * Socket addresses in the configuration file: `"host:port"`, or `"[ipv6]:port"`, parsed into the
 * shape `Deno.listen` and `Deno.connect` take and written back as canonical text, so that two
 * spellings of one address compare equal (a frontend names its listener by this text).
 *
 * @module
 */

import { cutEnd, formatValue, MAX_SHOWN_VALUE_LENGTH } from "../config/messages.ts";
import type { ParsedField } from "../config/schema.ts";

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

const ADDRESS_EXAMPLE = '"host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"';

/**
 * The schema field of a required address. `anyPort` allows port 0 ("any free port"): for
 * listeners, and for the frontends that name them.
 */
export function addressField(
  anyPort: boolean,
): ParsedField<SocketAddress> & { readonly required: true } {
  return {
    kind: "parsed",
    expected: `an address ${ADDRESS_EXAMPLE}`,
    parse: (text) => {
      const result = parseAddress(text, anyPort);
      return typeof result === "string" ? { problem: result } : { value: result };
    },
    required: true,
  };
}

/**
 * Parses `"host:port"` or `"[ipv6]:port"`. The host name is lowercased and an IPv6 address put
 * in its canonical form, so that equal addresses compare equal as text (see
 * {@linkcode formatAddress}). Returns the problem, as a message, when the text is no address.
 */
export function parseAddress(text: string, anyPort: boolean): SocketAddress | string {
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
