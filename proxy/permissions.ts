/**
 * Which of a config's addresses Deno's permissions would refuse. A backend named by a host that
 * `--allow-net` does not include fails every connect with a permission error: better said at
 * start, on reload and under `--check` than found in the access log.
 *
 * @module
 */

import type { Config } from "../config.ts";
import { formatAddress } from "./config_address.ts";

/** One address of the config, with the key that holds it. */
interface Wanted {
  keyPath: string;
  address: string;
}

function wantedAddresses(config: Config): Wanted[] {
  const wanted: Wanted[] = [];
  if (config.metrics) {
    wanted.push({ keyPath: "metrics.address", address: formatAddress(config.metrics.address) });
  }
  config.listeners.forEach((listener, i) => {
    wanted.push({ keyPath: `listeners[${i}].address`, address: formatAddress(listener.address) });
  });
  for (const [name, cluster] of Object.entries(config.clusters)) {
    cluster.backends.forEach((backend, i) => {
      // A backend found through DNS has no address until it is looked up.
      if (backend.address === undefined) return;
      wanted.push({
        keyPath: `clusters.${name}.backends[${i}].address`,
        address: formatAddress(backend.address),
      });
    });
  }
  return wanted;
}

/**
 * Lines naming each address of `config` that this process's `--allow-net` does not include
 * (queried without prompting). `checked` is `false` when no address at all is granted: then the
 * process was probably started without the proxy's permissions (as `--check` often is), and
 * nothing can be said.
 */
export function netPermissionProblems(config: Config): { checked: boolean; problems: string[] } {
  const wanted = wantedAddresses(config);
  const refused = wanted.filter(({ address }) =>
    Deno.permissions.querySync({ name: "net", host: address }).state !== "granted"
  );
  if (wanted.length > 0 && refused.length === wanted.length) {
    return { checked: false, problems: [] };
  }
  return {
    checked: true,
    problems: refused.map(({ keyPath, address }) =>
      `${keyPath} = "${address}": not permitted by --allow-net: every connection to it will fail ` +
      `(add ${address} to --allow-net)`
    ),
  };
}
