/**
 * The connect of the proxy's data plane inside an engine: a non-blocking connect to the backend
 * the cluster's policy picks, its deadline, the next backend on a failure (the backend's fault
 * counted toward its ejection, the proxy's own not), and the start of the relay once it is up
 * (after the PROXY header of `send_proxy`).
 *
 * Invariants:
 * - while a connection connects, only its backend socket's writability is looked at; the
 *   client's readiness is remembered for the relay, and its bytes wait in the kernel;
 * - a failed or timed-out connect's socket is closed at once (out of epoll first);
 * - a backend slot's active count is taken here when its connect succeeds (plane.ts gives it
 *   back when the relay ends).
 *
 * @module
 */

import { errno, libc } from "../ffi/libc.ts";
import {
  IPPROTO_TCP,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  TCP_NODELAY,
} from "../ffi/constants.ts";
import { ECONNRESET, EINPROGRESS, errnoName } from "../ffi/errno.ts";
import { sockaddrFamily } from "../ffi/net.ts";
import { EPOLL_CTL_DEL } from "../ffi/constants.ts";
import { socketError } from "../ffi/tcp.ts";
import { failsEveryBackend, localConnectFailure } from "../proxy/faults.ts";
import { hashText } from "../proxy/balancer.ts";
import { failRead, type Relay } from "./pump.ts";
import { markConnected, markFailed, pickBackend } from "./plane_pick.ts";
import {
  BACKEND_FIELDS,
  type BackendRoute,
  type ClusterRoute,
  ENGINE_BACKENDS,
  ENGINE_CONNECT_FAILURES,
  ENGINE_LOCAL_ERRORS,
  LOCAL_CODES,
  type PlaneEvent,
  type PlaneViews,
  POLICY_SOURCE_HASH,
  type Routes,
} from "./plane_layout.ts";
import type { ReportQueue } from "./plane_report.ts";
import type { Gate } from "./plane_gate.ts";
import type { PlaneEnd } from "./plane_layout.ts";
import { syscallNumber } from "./wire.ts";

const GETSOCKOPT = syscallNumber("getsockopt");
/** Permission denied: how a backend outside --allow-net is counted. */
const EACCES = 13;

/** What the loop lends the plane. */
export interface PlaneHost {
  epfd: number;
  relays: Map<number, Relay>;
  now(): number;
  /** Registers a relay side (edge-triggered, both ways); returns 0 or the errno. */
  register(fd: number, token: number): number;
  /** Pumps a relay that can move bytes now. */
  service(relay: Relay): void;
  /** Ends a relay: the loop deregisters it, then calls {@linkcode the plane's `ended`}. */
  finishNow(relay: Relay, end: PlaneEnd): void;
  /** Asks for a timeout check at `at` (the loop's clock). */
  wakeAt(at: number): void;
  /** Relays that have a deadline (connect or idle). */
  timed: Set<Relay>;
}

/** One engine's connects. */
export class Connector {
  #host: PlaneHost;
  #views: PlaneViews;
  #counters: Float64Array;
  #report: ReportQueue;
  #gate: Gate;
  #routes: () => Routes | null;
  #one = new Int32Array([1]);
  #control = new Uint8Array(16);

  constructor(
    host: PlaneHost,
    views: PlaneViews,
    counters: Float64Array,
    report: ReportQueue,
    gate: Gate,
    routes: () => Routes | null,
  ) {
    this.#host = host;
    this.#views = views;
    this.#counters = counters;
    this.#report = report;
    this.#gate = gate;
    this.#routes = routes;
  }

  /** Starts a connect to the next backend, or ends the connection when none is left. */
  next(relay: Relay, cluster: ClusterRoute): void {
    const proxied = relay.proxied!;
    const symbols = libc();
    for (;;) {
      // The slot of the attempt before joins the list only now: most connections make one
      // attempt, and a list held for each would cost memory per connection.
      if (proxied.backendSlot >= 0) proxied.tried = [...proxied.tried, proxied.backendSlot];
      const backend = pickBackend(
        cluster,
        proxied.tried,
        this.#views,
        cluster.policy === POLICY_SOURCE_HASH ? hashText(hostOf(proxied.client)) : 0,
      );
      if (backend === null) {
        // As on the Deno path: "local-error" only when every backend would fail alike.
        this.#host.finishNow(relay, "no-backend");
        return;
      }
      proxied.backendSlot = backend.slot;
      proxied.backend = backend.address;
      if (backend.refusal !== undefined) {
        proxied.reason = backend.refusal.reason;
        if (!backend.refusal.local) {
          this.#backendFailed(relay, cluster, backend, 0, "connect");
          continue;
        }
        if (this.#localFailure(relay, cluster, backend, EACCES, "connect")) return;
        continue;
      }
      proxied.reason = "";
      const fd = symbols.socket(
        sockaddrFamily(backend.sockaddr),
        SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
        0,
      );
      if (fd < 0) {
        if (this.#localFailure(relay, cluster, backend, errno(), "socket")) return;
        continue;
      }
      symbols.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, this.#one, 4);
      const result = symbols.connect(fd, backend.sockaddr, backend.sockaddr.byteLength);
      const code = result === 0 ? 0 : errno();
      if (result === 0 || code === EINPROGRESS) {
        relay.b.fd = fd;
        const failed = this.#host.register(fd, relay.id * 2 + 1);
        if (failed !== 0) {
          relay.b.fd = -1;
          symbols.close(fd);
          if (this.#localFailure(relay, cluster, backend, failed, "epoll_ctl")) return;
          continue;
        }
        if (result === 0) {
          this.#connected(relay, backend);
          return;
        }
        relay.connectDeadline = this.#host.now() + proxied.connectTimeoutMs;
        this.#host.timed.add(relay);
        this.#host.wakeAt(relay.connectDeadline);
        return;
      }
      symbols.close(fd);
      if (localCode(code) !== null) {
        if (this.#localFailure(relay, cluster, backend, code, "connect")) return;
        continue;
      }
      this.#backendFailed(relay, cluster, backend, code, "connect");
    }
  }

  /**
   * The backend socket of a connecting relay is writable, or `failed` (an error or hang-up was
   * reported, which SO_ERROR explains): the connect is over.
   */
  ready(relay: Relay, failed: boolean): void {
    const proxied = relay.proxied!;
    const cluster = proxied.cluster;
    const backend = cluster?.backends.find((b) => b.slot === proxied.backendSlot);
    const code = failed ? socketError(relay.b.fd) : 0;
    if ((code === 0 || code === ECONNRESET) && backend) {
      // ECONNRESET: the handshake completed and the backend reset right after. It did accept,
      // so this is a relay that ends in a reset, passed on to the client as one.
      if (code === ECONNRESET) failRead(relay, relay.b, code, GETSOCKOPT);
      this.#connected(relay, backend);
      return;
    }
    this.#dropBackendSocket(relay);
    if (!cluster || !backend) {
      this.#host.finishNow(relay, "no-backend");
      return;
    }
    this.#backendFailed(relay, cluster, backend, code, "connect");
    this.next(relay, cluster);
  }

  /** A connect ran past its deadline: its socket is closed at once, the next backend tried. */
  timedOut(relay: Relay): void {
    const proxied = relay.proxied!;
    const cluster = proxied.cluster;
    const backend = cluster?.backends.find((b) => b.slot === proxied.backendSlot);
    this.#dropBackendSocket(relay);
    if (!cluster || !backend) {
      this.#host.finishNow(relay, "no-backend");
      return;
    }
    this.#backendFailed(relay, cluster, backend, 110, "connect"); // ETIMEDOUT
    this.next(relay, cluster);
  }

  #dropBackendSocket(relay: Relay): void {
    if (relay.b.fd < 0) return;
    // Out of epoll before the close: a child process spawned meanwhile may hold a copy of the
    // fd, and the registration would outlive the close and report on the next socket's token.
    libc().epoll_ctl(this.#host.epfd, EPOLL_CTL_DEL, relay.b.fd, this.#control);
    libc().close(relay.b.fd);
    relay.b.fd = -1;
    relay.b.readable = false;
    relay.b.writable = false;
  }

  #connected(relay: Relay, backend: BackendRoute): void {
    relay.connecting = false;
    relay.connectDeadline = 0;
    this.#host.timed.delete(relay);
    markConnected(this.#views, backend.slot);
    this.#counters[ENGINE_BACKENDS + backend.slot * BACKEND_FIELDS]++;
    relay.lastActive = this.#host.now();
    if (relay.idleMs > 0) {
      this.#host.timed.add(relay);
      this.#host.wakeAt(relay.lastActive + relay.idleMs);
    }
    const version = relay.proxied!.cluster?.sendProxy ?? 0;
    if (version !== 0) this.#gate.sendProxyHeader(relay, version);
    this.#host.service(relay);
  }

  /** Counts a failure the backend caused; ejects it at the threshold (once, across engines). */
  #backendFailed(
    relay: Relay,
    cluster: ClusterRoute,
    backend: BackendRoute,
    code: number,
    syscall: string,
  ): void {
    const proxied = relay.proxied!;
    proxied.errno = code;
    proxied.syscall = syscall;
    this.#counters[ENGINE_CONNECT_FAILURES]++;
    this.#counters[ENGINE_BACKENDS + backend.slot * BACKEND_FIELDS + 1]++;
    const routes = this.#routes()!;
    if (!markFailed(this.#views, backend.slot, routes.failuresToEject, routes.ejectMs)) return;
    this.#report.event({
      type: "backend-ejected",
      cluster: cluster.name,
      backend: backend.address,
    });
  }

  /**
   * Counts a failure that is the proxy's own (out of fds or ports); no backend is blamed.
   * Returns `true` when the connection was ended: every backend would fail the same way.
   */
  #localFailure(
    relay: Relay,
    cluster: ClusterRoute,
    backend: BackendRoute,
    code: number,
    syscall: string,
  ): boolean {
    const proxied = relay.proxied!;
    const name = localCode(code) ?? errnoName(code);
    proxied.errno = code;
    proxied.syscall = syscall;
    proxied.local = true;
    const index = LOCAL_CODES.indexOf(name);
    if (index !== -1) this.#counters[ENGINE_LOCAL_ERRORS + index]++;
    const event: PlaneEvent = {
      type: "local-error",
      cluster: cluster.name,
      backend: backend.address,
      code: name,
      errno: code,
    };
    if (proxied.reason !== "") event.reason = proxied.reason;
    this.#report.event(event);
    if (!failsEveryBackend(name)) return false;
    this.#host.finishNow(relay, "local-error");
    return true;
  }
}

/** The host of a `host:port` client address (IPv6 without brackets): what source_hash hashes. */
function hostOf(client: string): string {
  const host = client.slice(0, client.lastIndexOf(":"));
  return host.startsWith("[") ? host.slice(1, -1) : host;
}

/** The name a connect errno gets when it is the proxy's own failure, else null. */
function localCode(code: number): string | null {
  const name = errnoName(code);
  // Deno's words for these (proxy/faults.ts) are "permission".
  return localConnectFailure(name === "EACCES" || name === "EPERM" ? "permission" : name);
}
