/**
 * DNS service discovery on the control plane: backends named by an SRV name, or by a host name
 * and a port, looked up every `dns_refresh_ms` (Deno.resolveDns gives no TTL, so the refresh is
 * periodic) at the configured DNS server or the system's. Each answer becomes backends beside
 * the cluster's fixed ones; the proxy applies a changed set like a reload of that cluster, so a
 * backend that stays keeps its state (connections, health, ejection: all keyed by address), and
 * one that goes takes no new connections while its open ones finish.
 *
 * Invariants:
 * - a failed or empty answer keeps the last good set of that name, and is reported;
 * - one lookup round at a time per cluster: the next is scheduled when the last one ends;
 * - an SRV answer's priorities become groups relative to its lowest (0, then up): only the
 *   lowest group with a backend up serves (proxy/balancer.ts's tiers).
 *
 * @module
 */

import { formatAddress } from "./config_address.ts";
import type { BackendSpec, DiscoverySpec, ProxyEvent, ProxySpec } from "./types.ts";

/** A cluster's lookups. */
interface Lookups {
  entries: DiscoverySpec[];
  refreshMs: number;
  /** The entries and refresh as text: a reload that changes them starts afresh. */
  signature: string;
  /** Per entry, its last good answer as backends (empty until the first). */
  found: BackendSpec[][];
  timer: ReturnType<typeof setTimeout> | undefined;
  running: Promise<void> | null;
  stopped: boolean;
}

/** The default refresh of a cluster's lookups, in ms (the config file's default). */
const DEFAULT_REFRESH_MS = 5000;
/** How long one DNS query may take: a server that went silent is an error, not a hang. */
const LOOKUP_TIMEOUT_MS = 2000;

/** The DNS lookups of one proxy. */
export class Discovery {
  #clusters = new Map<string, Lookups>();
  #nameServer: Deno.ResolveDnsOptions["nameServer"];
  #changed: () => void;
  #report: (event: ProxyEvent) => void;

  /** `changed`: some cluster's set of backends changed; `report` receives DNS errors. */
  constructor(changed: () => void, report: (event: ProxyEvent) => void) {
    this.#changed = changed;
    this.#report = report;
  }

  /** Starts, keeps or stops each cluster's lookups for `spec` (new ones look up at once). */
  apply(spec: ProxySpec): void {
    this.#nameServer = spec.dnsNameserver === undefined
      ? undefined
      : { ipAddr: spec.dnsNameserver.hostname, port: spec.dnsNameserver.port };
    const wanted = new Map<string, { entries: DiscoverySpec[]; refreshMs: number }>();
    for (const cluster of spec.clusters) {
      if (cluster.discover === undefined || cluster.discover.length === 0) continue;
      wanted.set(cluster.name, {
        entries: cluster.discover,
        refreshMs: cluster.dnsRefreshMs ?? DEFAULT_REFRESH_MS,
      });
    }
    for (const [name, lookups] of this.#clusters) {
      const next = wanted.get(name);
      if (next && signatureOf(next, spec) === lookups.signature) continue;
      this.#stop(lookups);
      this.#clusters.delete(name);
    }
    for (const [name, next] of wanted) {
      if (this.#clusters.has(name)) continue;
      const lookups: Lookups = {
        ...next,
        signature: signatureOf(next, spec),
        found: next.entries.map(() => []),
        timer: undefined,
        running: null,
        stopped: false,
      };
      this.#clusters.set(name, lookups);
      this.#run(name, lookups);
    }
  }

  /** `spec` with each cluster's found backends after its fixed ones (first one wins). */
  expand(spec: ProxySpec): ProxySpec {
    if (this.#clusters.size === 0) return spec;
    return {
      ...spec,
      clusters: spec.clusters.map((cluster) => {
        const lookups = this.#clusters.get(cluster.name);
        if (lookups === undefined) return cluster;
        const seen = new Set(cluster.backends.map((b) => b.address));
        const found = lookups.found.flat().filter((b) =>
          !seen.has(b.address) && seen.add(b.address)
        );
        return found.length === 0
          ? cluster
          : { ...cluster, backends: [...cluster.backends, ...found] };
      }),
    };
  }

  /** Resolves once no lookup round runs (each query is bounded to LOOKUP_TIMEOUT_MS). */
  async settled(): Promise<void> {
    await Promise.all([...this.#clusters.values()].map((lookups) => lookups.running));
  }

  /** Stops every lookup; resolves once none runs. */
  async stop(): Promise<void> {
    const running = [...this.#clusters.values()].map((lookups) => {
      this.#stop(lookups);
      return lookups.running;
    });
    this.#clusters.clear();
    await Promise.all(running);
  }

  #stop(lookups: Lookups): void {
    lookups.stopped = true;
    clearTimeout(lookups.timer);
  }

  #run(cluster: string, lookups: Lookups): void {
    const round = Promise.all(lookups.entries.map((entry) => lookup(entry, this.#nameServer)));
    lookups.running = round.then((answers) => {
      lookups.running = null;
      if (lookups.stopped) return;
      let changed = false;
      answers.forEach((answer, i) => {
        const entry = lookups.entries[i];
        if (typeof answer === "string") {
          const name = "srv" in entry ? entry.srv : entry.host;
          this.#report({ type: "dns-error", cluster, name, error: answer });
          return;
        }
        if (JSON.stringify(answer) !== JSON.stringify(lookups.found[i])) {
          lookups.found[i] = answer;
          changed = true;
        }
      });
      if (changed) {
        this.#report({
          type: "dns-change",
          cluster,
          backends: lookups.found.flat().map((b) => b.address),
        });
        this.#changed();
      }
      lookups.timer = setTimeout(() => this.#run(cluster, lookups), lookups.refreshMs);
    });
  }
}

function signatureOf(
  wanted: { entries: DiscoverySpec[]; refreshMs: number },
  spec: ProxySpec,
): string {
  return JSON.stringify([wanted, spec.dnsNameserver ?? null]);
}

/**
 * One entry's backends, sorted by address, or why there are none: a failed lookup, or an
 * answer with no address (both keep the last good set).
 */
export async function lookup(
  entry: DiscoverySpec,
  nameServer: Deno.ResolveDnsOptions["nameServer"],
): Promise<BackendSpec[] | string> {
  const options: Deno.ResolveDnsOptions = {
    signal: AbortSignal.timeout(LOOKUP_TIMEOUT_MS),
    ...(nameServer === undefined ? {} : { nameServer }),
  };
  const backup = entry.backup ? { backup: true } : {};
  try {
    if ("host" in entry) {
      const addresses = await addressesOf(entry.host, options);
      if (addresses.length === 0) return `${entry.host} has no A or AAAA record`;
      return addresses.map((ip) => backendAt(ip, entry.port, entry.weight, backup)).sort(byAddress);
    }
    const records = await Deno.resolveDns(entry.srv, "SRV", options);
    if (records.length === 0) return `${entry.srv} has no SRV record`;
    const lowest = Math.min(...records.map((r) => r.priority));
    const backends: BackendSpec[] = [];
    for (const record of records) {
      const target = record.target.replace(/\.$/, "");
      for (const ip of await addressesOf(target, options)) {
        // A weight of 0 ("rarely") still serves: as 1 beside the others' weights.
        const backend = backendAt(ip, record.port, Math.max(1, record.weight), backup);
        if (record.priority > lowest) backend.priority = record.priority - lowest;
        backends.push(backend);
      }
    }
    if (backends.length === 0) return `the targets of ${entry.srv} have no A or AAAA record`;
    return backends.sort(byAddress);
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/** The A and AAAA addresses of `name`; a type with no record adds none. */
async function addressesOf(name: string, options: Deno.ResolveDnsOptions): Promise<string[]> {
  const one = async (type: "A" | "AAAA"): Promise<string[]> => {
    try {
      return await Deno.resolveDns(name, type, options);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return [];
      throw error;
    }
  };
  const [v4, v6] = await Promise.all([one("A"), one("AAAA")]);
  return [...v4, ...v6];
}

function backendAt(
  ip: string,
  port: number,
  weight: number,
  backup: { backup?: boolean },
): BackendSpec {
  return {
    address: formatAddress({ hostname: ip, port }),
    hostname: ip,
    port,
    weight,
    ...backup,
  };
}

function byAddress(a: BackendSpec, b: BackendSpec): number {
  return a.address < b.address ? -1 : a.address > b.address ? 1 : 0;
}
