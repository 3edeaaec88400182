/**
 * The values of the config file's connection rules: CIDRs (`allow`, `deny`) and server-name
 * patterns (a frontend's `hostname`), each as a schema field that checks and normalises its
 * text, so that a mistake is named with its key and value like every other.
 *
 * @module
 */

import { cutEnd, MAX_SHOWN_VALUE_LENGTH } from "../config/messages.ts";
import type { ParsedField } from "../config/schema.ts";
import { CidrList } from "../protocol/cidr.ts";

/** The schema field of one CIDR (`"192.0.2.0/24"`, `"2001:db8::/32"`, or a bare address). */
export function cidrField(): ParsedField<string> & { readonly required: true } {
  return {
    kind: "parsed",
    expected: 'a CIDR, e.g. "192.0.2.0/24", "2001:db8::/32" or "10.0.0.1"',
    parse: (text) => {
      try {
        CidrList.parse([text]);
        return { value: text };
      } catch (error) {
        // CidrList's message names the value already; only its reason is wanted here.
        const message = error instanceof Error ? error.message : String(error);
        return { problem: message.replace(/^Cannot parse CIDR "[^"]*": /, "") };
      }
    },
    required: true,
  };
}

/** The longest host name DNS allows, without its trailing dot. */
const MAX_HOSTNAME_LENGTH = 253;
const LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * The schema field of a frontend's `hostname`: a server name (`"a.example.com"`) or a
 * wildcard over the names under a domain (`"*.example.com"`), lowercased, a trailing dot
 * dropped. A wildcard is `*.` and a domain of at least two labels: `"*.com"` would route a
 * whole top-level domain, almost certainly a mistake.
 */
export function hostnameField(): ParsedField<string> {
  return {
    kind: "parsed",
    expected: 'a server name, e.g. "a.example.com", or a wildcard, e.g. "*.example.com"',
    parse: (text) => {
      const problem = hostnameProblem(text);
      return problem === null ? { value: normaliseHostname(text) } : { problem };
    },
  };
}

/**
 * The schema field of a DNS name to look up (`srv`, `host`): a name as a frontend `hostname`
 * takes, but no wildcard; lowercased, a trailing dot dropped.
 */
export function dnsNameField(): ParsedField<string> {
  return {
    kind: "parsed",
    expected: 'a DNS name, e.g. "app.example.internal" or "_app._tcp.example.internal"',
    parse: (text) => {
      if (text.startsWith("*")) return { problem: "a name to look up has no wildcard" };
      const problem = hostnameProblem(text);
      return problem === null ? { value: normaliseHostname(text) } : { problem };
    },
  };
}

/** `text` lowercased, without a trailing dot. */
export function normaliseHostname(text: string): string {
  const lower = text.toLowerCase();
  return lower.endsWith(".") ? lower.slice(0, -1) : lower;
}

function hostnameProblem(text: string): string | null {
  const name = normaliseHostname(text);
  const wildcard = name.startsWith("*.");
  const domain = wildcard ? name.slice(2) : name;
  if (domain.length === 0) return "the name is empty";
  if (domain.length > MAX_HOSTNAME_LENGTH) {
    return `the name is ${domain.length} characters long, over ${MAX_HOSTNAME_LENGTH}`;
  }
  const labels = domain.split(".");
  for (const label of labels) {
    if (label === "*") return 'a wildcard is "*." at the start only, as in "*.example.com"';
    if (label === "") return "the name has an empty label (two dots in a row, or a dot first)";
    if (!LABEL.test(label)) {
      return `label "${cutEnd(label, MAX_SHOWN_VALUE_LENGTH)}" is not a DNS label ` +
        '(letters, digits, "-" and "_", at most 63, not starting or ending with "-")';
    }
  }
  if (wildcard && labels.length < 2) {
    return `"${name}" covers a whole top-level domain: name one under it, as "*.example.com"`;
  }
  return null;
}
