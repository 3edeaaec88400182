/**
 * The proxy data plane's shared memory: what the engines and the main thread (the control
 * plane) both read and write, laid out in one SharedArrayBuffer per proxy, and the messages
 * that go between them. Like wire.ts for the command ring, this is the one place that knows
 * the layout.
 *
 * - Limits and health hold across engines because they live here: a listener's open count is
 *   taken with `Atomics.add` before a connection is served, so `max_connections` is exact; a
 *   backend's failures, active connections and ejection are shared, so an ejection made by one
 *   engine is seen by all.
 * - Counters are per engine, each block written by its engine only and summed by the main
 *   thread on a read of the stats, so counting costs no atomic operation and no message.
 *
 * @module
 */

import type { AccessLog, ConnectionRecord } from "../proxy/types.ts";
import type { CidrList } from "../protocol/cidr.ts";
import type { ServerNameRoutes } from "../protocol/client_hello.ts";
import { RESOURCE_CODES, TRANSIENT_ACCEPT_CODES } from "../proxy/faults.ts";

/** Listener slots (addresses seen by one proxy); a slot is never reused while it runs. */
export const MAX_LISTENERS = 256;
/** Backend slots (`cluster/address` pairs seen by one proxy), stable across reloads. */
export const MAX_BACKENDS = 1024;
/** Engines one proxy may run. */
export const MAX_ENGINES = 64;
/** Cluster slots (names seen by one proxy), stable across reloads. */
export const MAX_CLUSTERS = 256;
/** The longest round-robin sequence a cluster gets (see {@linkcode ClusterRoute.sequence}). */
export const MAX_SEQUENCE = 4096;

/** Int32 region: open connections per listener slot, then per backend slot active and failures. */
export const LISTENER_OPEN = 0;
/** Int32 index of backend slot 0's active connections (`+ slot * 2`). */
export const BACKEND_ACTIVE = MAX_LISTENERS;
/** Int32 index of backend slot 0's consecutive connect failures (`+ slot * 2`). */
export const BACKEND_FAILURES = MAX_LISTENERS + 1;
/** Int32 index of cluster slot 0's round-robin position (`+ slot`). */
export const CLUSTER_PICKS = MAX_LISTENERS + MAX_BACKENDS * 2;
/**
 * Int32 index of the accept tickets: per listener socket, connections accepted from it so far
 * (`+ slot * MAX_ENGINES + engine`, engine 0 for a socket all engines share). The accept queue
 * is first in, first out, so a ticket says where a connection stood in it (see
 * {@linkcode Routes.barrier}).
 */
export const LISTENER_TICKETS = CLUSTER_PICKS + MAX_CLUSTERS;
/**
 * Int32 index of the reload flag: 1 while the main thread counts, for new routes, the
 * connections accepted and queued so far; engines accept nothing meanwhile, so the count is
 * exact.
 */
export const RELOADING = LISTENER_TICKETS + MAX_LISTENERS * MAX_ENGINES;
/**
 * Int32 index of engine 0's accepting flag (`+ engine`): 1 from before it looks at
 * {@linkcode RELOADING} until its accept4 has taken its ticket. An engine sets its flag, then
 * reads the reload flag; the main thread sets the reload flag, then waits for every accepting
 * flag to clear: with sequentially consistent atomics one of the two always sees the other.
 */
export const ACCEPTING = RELOADING + 1;
/**
 * Int32 index of the newest routes generation published: an engine whose routes are older has
 * mail waiting, and accepts nothing until it has read it.
 */
export const PUBLISHED = ACCEPTING + MAX_ENGINES;
/**
 * Int32 index of backend slot 0's state (`+ slot`): the bits the control plane sets (active
 * health checks, runtime control: proxy/balancer.ts's `OUT_*`); 0 is a backend that may take
 * connections.
 */
export const BACKEND_STATE = PUBLISHED + 1;
/** Int32s of the shared region. */
export const INT_COUNT = BACKEND_STATE + MAX_BACKENDS;

/** The ticket counter of listener `slot`'s socket in `engine` (0 when the socket is shared). */
export function ticketIndex(slot: number, engine: number, exclusive: boolean): number {
  return LISTENER_TICKETS + slot * MAX_ENGINES + (exclusive ? 0 : engine);
}

/**
 * Float64 region (after the Int32 one): per backend slot the absolute time (ms since the epoch,
 * `performance.timeOrigin + performance.now()`, which every thread computes alike) until which
 * it is ejected; written rarely, read on each pick, a stale read only delays the other engines'
 * view by one connection.
 */
export const EJECTED_UNTIL = 0;

/** Per-engine counter block, in Float64s; one writer (its engine). */
export const ENGINE_OPENED = 0;
/** Connections served now (opened and not yet ended). */
export const ENGINE_OPEN = 1;
/** Connections closed at once: their listener was at `max_connections`. */
export const ENGINE_REJECTED = 2;
/** Bytes client to backend. */
export const ENGINE_BYTES_IN = 3;
/** Bytes backend to client. */
export const ENGINE_BYTES_OUT = 4;
/** Connections that spliced any byte. */
export const ENGINE_SPLICED = 5;
/** Connections that copied all their bytes. */
export const ENGINE_COPIED = 6;
/** Connects that failed by the backend's fault. */
export const ENGINE_CONNECT_FAILURES = 7;
/** First of the refusal counters, one per {@linkcode REFUSAL_CODES} entry (8 to 15). */
export const ENGINE_REFUSED = 8;
/** First of the accept error counters, one per {@linkcode ACCEPT_CODES} entry. */
export const ENGINE_ACCEPT_ERRORS = 16;
/** First of the local error counters, one per {@linkcode LOCAL_CODES} entry. */
export const ENGINE_LOCAL_ERRORS = 48;
/** First backend counter: per slot connections, failures, bytes in, bytes out. */
export const ENGINE_BACKENDS = 64;
/** Float64s per backend slot in an engine's block. */
export const BACKEND_FIELDS = 4;
/** Float64s per engine block. */
export const ENGINE_STRIDE = ENGINE_BACKENDS + MAX_BACKENDS * BACKEND_FIELDS;

/** accept(2) errors counted by name; anything else counts as the last, "other". */
export const ACCEPT_CODES: readonly string[] = [
  ...TRANSIENT_ACCEPT_CODES.filter((code) => code !== "EAGAIN"),
  ...RESOURCE_CODES,
  "other",
];

/**
 * Why a connection was closed before any backend was tried, by its listener's stages: the
 * `reason` label of `splice_connections_refused_total`. At most 8 (their counters' room).
 */
export const REFUSAL_CODES = [
  "denied",
  "per_ip_limit",
  "proxy_header_invalid",
  "proxy_header_timeout",
  "client_hello_invalid",
  "client_hello_timeout",
  "no_route",
  "per_ip_table_full",
] as const;
/** One of {@linkcode REFUSAL_CODES}. */
export type RefusalCode = typeof REFUSAL_CODES[number];

/** The proxy's own connect failures, counted apart from the backends' (see proxy/faults.ts). */
export const LOCAL_CODES: readonly string[] = [...RESOURCE_CODES, "EADDRNOTAVAIL", "permission"];

/** Bytes of the Int32 region, rounded up so that the Float64 regions after it are aligned. */
const INT_BYTES = Math.ceil((INT_COUNT * 4) / 8) * 8;

/** Bytes of the shared buffer for `engines` engines. */
export function planeBytes(engines: number): number {
  return INT_BYTES + MAX_BACKENDS * 8 + engines * ENGINE_STRIDE * 8;
}

/** Views of one proxy's shared buffer. */
export interface PlaneViews {
  ints: Int32Array;
  ejectedUntil: Float64Array;
  /** Engine `e`'s counters: `counters.subarray(e * ENGINE_STRIDE, (e + 1) * ENGINE_STRIDE)`. */
  counters: Float64Array;
}

/** The views of `buffer` laid out for {@linkcode planeBytes}. */
export function planeViews(buffer: SharedArrayBuffer): PlaneViews {
  return {
    ints: new Int32Array(buffer, 0, INT_COUNT),
    ejectedUntil: new Float64Array(buffer, INT_BYTES, MAX_BACKENDS),
    counters: new Float64Array(buffer, INT_BYTES + MAX_BACKENDS * 8),
  };
}

/** Load balancing policies as numbers. */
export const POLICY_ROUND_ROBIN = 0;
/** Fewest active connections per unit of weight. */
export const POLICY_LEAST_CONNECTIONS = 1;
/** Weighted random. */
export const POLICY_RANDOM = 2;
/** The client address's hash (weighted rendezvous hashing). */
export const POLICY_SOURCE_HASH = 3;

/** A backend as an engine routes to it. */
export interface BackendRoute {
  slot: number;
  /** `host:port` as configured. */
  address: string;
  /** Where to connect: a `struct sockaddr`, resolved by the main thread. */
  sockaddr: Uint8Array;
  weight: number;
  /**
   * Its group (proxy/balancer.ts's `tierOf`): only the lowest group with a backend up takes
   * connections (0 for most; an SRV record's priority; backups last).
   */
  tier: number;
  /** The hash of `address`, for source_hash (proxy/balancer.ts's hashText). */
  hash: number;
  /**
   * Why no connect can be made to it, when none can: its host is outside --allow-net (the
   * proxy's own failure, `local`) or does not resolve (the backend's).
   */
  refusal?: { reason: string; local: boolean };
}

/** A cluster as an engine routes to it. */
export interface ClusterRoute {
  name: string;
  slot: number;
  policy: number;
  backends: BackendRoute[];
  /**
   * Round robin's order, as indexes into `backends`: the smooth weighted round robin of the
   * weights, computed once by the main thread. Engines take turns from one shared position,
   * so the order holds across engines exactly as in one.
   */
  sequence: number[];
  /** PROXY protocol header sent to each backend first: 0 none, 1 v1, 2 v2. */
  sendProxy: number;
}

/** A listener as one engine serves it. */
export interface ListenerRoute {
  slot: number;
  /** As configured, for records and events. */
  address: string;
  /** This engine's listening socket for it (its own with SO_REUSEPORT, or the shared one). */
  fd: number;
  /**
   * Index into {@linkcode Routes.clusters}; -1 when no cluster has it as a frontend (without a
   * hostname: with `names`, the default for names no frontend claims).
   */
  cluster: number;
  maxConnections: number;
  /** Open connections per client address; 0: no limit. */
  maxPerIp: number;
  /** CIDRs served (empty: all) and refused; checked on the client address. */
  allow: string[];
  deny: string[];
  /** Each connection starts with a PROXY header, read before anything else. */
  expectProxy: boolean;
  headerTimeoutMs: number;
  /** Server names (exact or `*.` wildcards) and their cluster indexes; empty: no SNI stage. */
  names: [string, number][];
  sniTimeoutMs: number;
  /** Engine-local: the stages built from the above when the routes are applied (plane.ts). */
  rules?: ListenerRules | null;
}

/** A listener's stages, built once per routes (not per connection). */
export interface ListenerRules {
  allow: CidrList | null;
  deny: CidrList | null;
  maxPerIp: number;
  expectProxy: boolean;
  headerTimeoutMs: number;
  /** Server names to clusters; null: the listener does not route by name. */
  names: ServerNameRoutes<ClusterRoute> | null;
  /** Where a name no frontend claims goes (the frontend without a hostname); null: closed. */
  fallback: ClusterRoute | null;
  sniTimeoutMs: number;
}

/** Everything an engine needs to serve new connections; replaced whole on each reload. */
export interface Routes {
  generation: number;
  listeners: ListenerRoute[];
  clusters: ClusterRoute[];
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** `MODE_*` of wire.ts. */
  mode: number;
  pipeCapacity: number;
  /** Listeners' fds are shared by every engine: registered with EPOLLEXCLUSIVE. */
  exclusive: boolean;
  /**
   * Per listener slot, the first accept ticket these routes apply to: the tickets already
   * taken plus the connections queued when the reload was asked for. Connections the kernel
   * had completed before the reload keep the previous routes, even when accepted after.
   */
  barrier: Record<number, number>;
  /** Connect failures in a row that eject a backend, and for how long. */
  failuresToEject: number;
  ejectMs: number;
  /** The shared per-address counts (engine/ip_table.ts), once any listener has a limit. */
  ipTable: SharedArrayBuffer | null;
  /** Which ended connections get a record: the newest routes' setting applies to every end. */
  accessLog: AccessLog;
  /**
   * Slots of listeners these routes remove whose sockets live on in another process (handed
   * over in a takeover): they are not shut down, so an engine that lets go of one first
   * accepts what it has queued, which would otherwise wait for the next wake-up elsewhere.
   */
  released: number[];
}

/** Messages from the main thread to an engine (each announced by `OP_MAIL` in the ring). */
export type PlaneMail =
  | { type: "routes"; routes: Routes }
  | { type: "abort-all" };

/**
 * How a proxied connection ended, as an engine reports it: the fields of the proxy's
 * `ConnectionRecord` (type-only, so no import at run time) without its error text, which the main
 * thread writes from the errno and syscall here (proxy/plane_reports.ts).
 */
export type PlaneRecord =
  & Omit<ConnectionRecord, "mode" | "end" | "error">
  & {
    /** An engine splices or copies; "fallback" is relay()'s copy loop, never an engine's. */
    mode: Exclude<ConnectionRecord["mode"], "fallback">;
    /** "internal-error" is the main thread's own. */
    end: Exclude<ConnectionRecord["end"], "internal-error">;
    /** The backend last tried, for a connection that never relayed (its error names it). */
    attempted?: string;
    /** Why the last connect could not be made, when no errno says it. */
    reason?: string;
    /** errno and syscall of the failure, or of the last connect that failed. */
    errno?: number;
    syscall?: string;
    side?: "a" | "b";
  };

/**
 * How a proxied connection ends: as recorded, or `"refused"` by its listener's rules, which is
 * reported as a throttled event instead of a record.
 */
export type PlaneEnd = PlaneRecord["end"] | "refused";

/** Something an engine reports besides records. */
export type PlaneEvent =
  | { type: "backend-ejected"; cluster: string; backend: string }
  | {
    type: "refused";
    listener: string;
    client: string;
    reason: "denied" | "per_ip_limit" | "per_ip_table_full";
    /** Refusals of this client and reason this engine left unreported since the last. */
    suppressed: number;
  }
  | { type: "accept-error"; address: string; code: string; errno: number; pauseMs: number }
  | {
    type: "local-error";
    cluster: string;
    backend: string;
    code: string;
    errno: number;
    reason?: string;
  };

/** Messages from an engine about the data plane, batched per loop turn. */
export interface PlaneReport {
  type: "plane";
  records: PlaneRecord[];
  events: PlaneEvent[];
  /** The routes generation now applied, once per mail. */
  applied?: number;
}
