/**
 * Relay TCP bytes between two sockets inside the Linux kernel with `splice(2)`, through
 * `Deno.dlopen`, with a userspace copy loop where splice cannot be used.
 *
 * ```ts ignore
 * import { SplicePipe, spliceIn, spliceOut } from "@zerocopy/splice";
 *
 * using pipe = SplicePipe.create(); // null without --allow-ffi or off Linux
 * ```
 *
 * Needs `--allow-ffi` for the fast path; without it, importing works and the copy loop serves.
 *
 * @module
 */

export {
  DEFAULT_SPLICE_PIPE_CAPACITY,
  MAX_SPLICE_PIPE_CAPACITY,
  requestedPipeCapacity,
  setPipeCapacity,
  type SocketLike,
  spliceAvailable,
  spliceIn,
  spliceOut,
  SplicePipe,
  type SplicePipeOptions,
  type SpliceResult,
  type SpliceStatus,
} from "./splice_pipe.ts";
export {
  copy,
  COPY_BUFFER_SIZE,
  COPY_LINGER_MS,
  copyBidirectional,
  type CopyBidirectionalOptions,
  type CopyBidirectionalResult,
  type CopyDestination,
  type CopyOptions,
  type CopyResult,
  type CopySource,
  type DuplexConn,
} from "./copy.ts";
export { SyscallError } from "./errors.ts";
export {
  relay,
  RELAY_PIPE_CAPACITY,
  type RelayEnd,
  type RelayEndpoint,
  type RelayMode,
  type RelayOptions,
  type RelayResult,
  type RelayTarget,
  shutdownRelayEngine,
} from "./relay.ts";
export {
  encodeProxyHeader,
  parseProxyHeader,
  PROXY_V1_MAX_BYTES,
  PROXY_V2_MAX_BYTES,
  type ProxyAddress,
  type ProxyHeader,
  type ProxyHeaderParse,
} from "./protocol/proxy_header.ts";
export {
  CLIENT_HELLO_MAX_BYTES,
  matchServerName,
  serverNameFromClientHello,
  type ServerNameParse,
  ServerNameRoutes,
} from "./protocol/client_hello.ts";
export { CidrList } from "./protocol/cidr.ts";
export { formatIp, parseIp } from "./protocol/ip.ts";
