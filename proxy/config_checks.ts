/**
 * What the proxy's schema cannot say about one value alone: how the addresses of a file fit
 * together (a frontend names a listener, one cluster per frontend address and hostname, no
 * address twice), and what
 * is valid yet almost certainly a mistake (the warnings behind `configWarnings`).
 *
 * The address checks run on the parsed document, after the schema: every address that parses
 * takes part, so these problems are reported alongside type and range errors. Addresses compare
 * as normalised text.
 *
 * @module
 */

import {
  type ConfigIssue,
  formatKeyPath,
  formatValues,
  joinKeyPath,
  valueIssue,
} from "../config/messages.ts";
import { isTable } from "../config/schema.ts";
import { formatAddress, parseAddress } from "./config_address.ts";
import { normaliseHostname } from "./config_rules.ts";
import type { ClusterConfig } from "./config_schema.ts";

/**
 * Pushes to `issues` each address of `document` that does not fit with the others: a listener
 * address used twice, a frontend or backend repeated within its cluster, a frontend no listener
 * has (unless a listener is unreadable, which would make every frontend look orphaned) or one
 * another cluster claimed first. In file order.
 */
export function checkAddresses(document: Record<string, unknown>, issues: ConfigIssue[]): void {
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
      // A listener is shared by server name: the pair is what must be unique.
      const key = `${entry.address} ${entry.hostname}`;
      const named = entry.hostname === "" ? "" : ` and hostname "${entry.hostname}"`;
      const first = frontends.get(key);
      if (first !== undefined) {
        issues.push(
          valueIssue(entry.keyPath, entry.raw, `same address${named} as ${formatKeyPath(first)}`),
        );
        continue;
      }
      frontends.set(key, entry.keyPath);
      if (listenersComplete && !listeners.has(entry.address)) {
        issues.push(
          valueIssue(entry.keyPath, entry.raw, `no listener has this address (${listed})`),
        );
      }
      const owner = claimed.get(key);
      if (owner === undefined) {
        claimed.set(key, { cluster: name, keyPath: entry.keyPath });
      } else {
        issues.push(
          valueIssue(
            entry.keyPath,
            entry.raw,
            `already the frontend of ${formatKeyPath(owner.keyPath)}` +
              (entry.hostname === "" ? "" : ` for hostname "${entry.hostname}"`),
          ),
        );
      }
    }
    const backends = new Map<string, string>();
    const backendPath = `${clusterPath}.backends`;
    checkBackendSources(ownValue(cluster, "backends"), backendPath, issues);
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
 * Pushes an issue for each backend entry that does not name exactly one source: an `address`,
 * an `srv` name, or a `host` with a `port`.
 */
function checkBackendSources(array: unknown, arrayPath: string, issues: ConfigIssue[]): void {
  if (!Array.isArray(array)) return;
  for (const [index, item] of array.entries()) {
    if (!isTable(item)) continue;
    const keyPath = `${arrayPath}[${index}]`;
    const given = ["address", "srv", "host"].filter((key) => Object.hasOwn(item, key));
    const port = Object.hasOwn(item, "port");
    if (given.length === 0) {
      issues.push({
        keyPath,
        value: undefined,
        message: `${formatKeyPath(keyPath)}: needs "address", "srv", or "host" and "port"`,
      });
    } else if (given.length > 1) {
      issues.push({
        keyPath,
        value: undefined,
        message: `${formatKeyPath(keyPath)}: ${given.map((k) => `"${k}"`).join(" and ")} ` +
          "both given: a backend names one source",
      });
    } else if (given[0] === "host" && !port) {
      issues.push(valueIssue(`${keyPath}.host`, item.host, 'needs "port" beside it'));
    } else if (given[0] !== "host" && port) {
      issues.push(valueIssue(`${keyPath}.port`, item.port, 'only goes with "host"'));
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
): Generator<{ keyPath: string; raw: unknown; address: string | undefined; hostname: string }> {
  if (!Array.isArray(array)) return;
  for (const [index, item] of array.entries()) {
    const keyPath = `${arrayPath}[${index}].address`;
    const raw = isTable(item) ? ownValue(item, "address") : undefined;
    const parsed = typeof raw === "string" ? parseAddress(raw, anyPort) : undefined;
    const address = parsed === undefined || typeof parsed === "string"
      ? undefined
      : formatAddress(parsed);
    // Frontends only; a hostname that does not parse is the schema's to report.
    const rawHostname = isTable(item) ? ownValue(item, "hostname") : undefined;
    const hostname = typeof rawHostname === "string" ? normaliseHostname(rawHostname) : "";
    yield { keyPath, raw, address, hostname };
  }
}

function ownValue(table: Record<string, unknown>, key: string): unknown {
  return Object.hasOwn(table, key) ? table[key] : undefined;
}

/**
 * The warnings of a checked configuration's clusters: each one whose backends all have weight
 * 0, which takes no connections. In cluster order.
 */
export function clusterWarnings(
  clusters: { readonly [name: string]: ClusterConfig },
): ConfigIssue[] {
  const warnings: ConfigIssue[] = [];
  for (const [name, cluster] of Object.entries(clusters)) {
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
