/**
 * The L4 TCP proxy as a library, for applications that embed it: start a proxy from a config
 * object, reconfigure it, read its stats, shut it down.
 *
 * ```ts
 * import { specFromConfig, startProxy } from "@zerocopy/splice/proxy";
 * import { loadConfig } from "@zerocopy/splice/config";
 *
 * const proxy = startProxy(await loadConfig("proxy.toml"), {
 *   onEvent: (event) => console.log(JSON.stringify(event)),
 * });
 * Deno.addSignalListener("SIGHUP", async () => {
 *   proxy.reload(specFromConfig(await loadConfig("proxy.toml")));
 * });
 * Deno.addSignalListener("SIGTERM", async () => {
 *   console.log(proxy.stats());
 *   await proxy.shutdown();
 *   Deno.exit(0);
 * });
 * ```
 *
 * {@linkcode startProxy} applies the config and starts a {@linkcode TcpProxy};
 * {@linkcode TcpProxy.reload} takes a new {@linkcode ProxySpec}, which
 * {@linkcode specFromConfig} builds from a config (or write one by hand and call
 * {@linkcode TcpProxy.start}). Needs `--allow-net` for the listeners and backends, and
 * `--allow-ffi` for the splice fast path (without it the copy loop serves).
 *
 * @module
 */

export { TcpProxy, type TcpProxyOptions } from "./server.ts";
export { startProxy, startProxyResolved } from "./start.ts";
export type {
  AccessLog,
  BackendSpec,
  BackendView,
  ClusterSpec,
  ConnectionRecord,
  DiscoverySpec,
  FrontendSpec,
  HealthCheckSpec,
  ListenerSpec,
  ProxyEvent,
  ProxySpec,
  ProxyStats,
  ProxyStatus,
} from "./types.ts";
export { specFromConfig } from "./spec.ts";
export type { BackendChange, BackendState } from "./control.ts";
export type { LoadBalancing } from "./balancer.ts";
// Referenced by the exports above (the types of their fields and parameters): re-exported so
// that this entry point's documentation is complete. Also exported by "@zerocopy/splice" and
// "@zerocopy/splice/config".
export type { RelayEnd, RelayMode, RelayResult } from "../relay.ts";
export type {
  BackendConfig,
  ClusterConfig,
  Config,
  FrontendConfig,
  HealthCheckConfig,
  ListenerConfig,
  MetricsConfig,
  SocketAddress,
} from "../config.ts";
