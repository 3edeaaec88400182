/**
 * Starting the proxy from a checked config file, for applications that embed it.
 *
 * @module
 */

import { applyConfig, type Config } from "../config.ts";
import { TcpProxy, type TcpProxyOptions } from "./server.ts";
import { specFromConfig } from "./spec.ts";

/**
 * Starts a proxy from a checked config: {@linkcode applyConfig} (the splice pipe capacity), then
 * {@linkcode TcpProxy.start} on {@linkcode specFromConfig}`(config)`. Throws if a listener cannot
 * listen, or `ConfigError` for a hand-built config with an out-of-range pipe capacity.
 *
 * Reconfigure the running proxy with `proxy.reload(specFromConfig(newConfig))`, read its counters
 * with `proxy.stats()` and stop it with `await proxy.shutdown()`.
 *
 * @example
 * ```ts
 * import { specFromConfig, startProxy } from "@zerocopy/splice/proxy";
 * import { parseConfig } from "@zerocopy/splice/config";
 *
 * const toml = `
 * [[listeners]]
 * address = "127.0.0.1:0"
 *
 * [clusters.app]
 * frontends = [{ address = "127.0.0.1:0" }]
 * backends = [{ address = "127.0.0.1:9000" }]
 * `;
 * const proxy = startProxy(parseConfig(toml), {
 *   onEvent: (event) => {
 *     if (event.type === "connection") console.log(event.record);
 *   },
 * });
 * console.log(proxy.listenerPorts);
 *
 * proxy.reload(specFromConfig(parseConfig(toml.replace("9000", "9001"))));
 * console.log(proxy.stats().reloads); // 1
 * await proxy.shutdown();
 * ```
 */
export function startProxy(
  config: Config,
  options?: TcpProxyOptions,
): TcpProxy {
  applyConfig(config);
  return TcpProxy.start(specFromConfig(config), options);
}

/**
 * {@linkcode startProxy}, listening only once the first DNS lookups of backends found through
 * DNS have answered or failed ({@linkcode TcpProxy.startResolved}): what proxy.ts runs.
 *
 * @example
 * ```ts
 * import { startProxyResolved } from "@zerocopy/splice/proxy";
 * import { parseConfig } from "@zerocopy/splice/config";
 *
 * const proxy = await startProxyResolved(parseConfig('[[listeners]]\naddress = "127.0.0.1:0"'));
 * await proxy.shutdown();
 * ```
 */
export function startProxyResolved(
  config: Config,
  options?: TcpProxyOptions,
): Promise<TcpProxy> {
  applyConfig(config);
  return TcpProxy.startResolved(specFromConfig(config), options);
}
