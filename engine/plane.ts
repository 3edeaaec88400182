/**
 * The proxy's data plane inside an engine Worker: listening sockets, accept, the listener's
 * stages (plane_gate.ts), the connect (plane_connect.ts), and the end and record of each
 * connection. A connection accepted here never becomes a Deno conn and never touches the main
 * thread: once its backend connects it is an ordinary relay of the loop (pump.ts), which this
 * module closes when it ends.
 *
 * Invariants:
 * - a listener slot's open count (shared) is taken before a connection is served and given
 *   back exactly once, when `ended` runs for it, so `max_connections` holds across engines;
 * - a backend slot's active count, taken when its connect succeeds, is given back in `ended`;
 * - the client socket accepted here, and the backend socket once connected, are closed here,
 *   the pair when the relay ends.
 *
 * @module
 */

import { errno, libc } from "../ffi/libc.ts";
import { acceptErrorKind, nextBackoff } from "../proxy/faults.ts";
import { logged } from "../proxy/types.ts";
import {
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_DATA_OFFSET,
  EPOLLEXCLUSIVE,
  EPOLLIN,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
} from "../ffi/constants.ts";
import { EAGAIN, EINTR, errnoName } from "../ffi/errno.ts";

/** accept(2) on a socket that no longer listens. */
const EINVAL = 22;

import { formatSockaddr, SOCKADDR_MAX, sockaddrIp } from "../ffi/net.ts";
import { Relay } from "./pump.ts";
import { type Failure, recordOf, ReportQueue } from "./plane_report.ts";
import {
  ACCEPT_CODES,
  ACCEPTING,
  BACKEND_ACTIVE,
  BACKEND_FIELDS,
  ENGINE_ACCEPT_ERRORS,
  ENGINE_BACKENDS,
  ENGINE_BYTES_IN,
  ENGINE_BYTES_OUT,
  ENGINE_COPIED,
  ENGINE_OPEN,
  ENGINE_OPENED,
  ENGINE_REJECTED,
  ENGINE_SPLICED,
  ENGINE_STRIDE,
  LISTENER_OPEN,
  type ListenerRoute,
  type PlaneEnd,
  type PlaneViews,
  planeViews,
  PUBLISHED,
  RELOADING,
  type Routes,
  ticketIndex,
} from "./plane_layout.ts";
import { Gate } from "./plane_gate.ts";
import { Connector, type PlaneHost } from "./plane_connect.ts";
import { admitted, firstStages, listenerRules, type Stages } from "./plane_stages.ts";

/** The `tried` list of a connection before its first attempt; never written to. */
const NONE_TRIED: number[] = [];
/** Connections one listener may accept per wake-up before other work gets a turn. */
const ACCEPTS_PER_TURN = 64;
/** At most what a full accept queue holds (a backlog of 511) and as much again. */
const RELEASE_ACCEPTS = 1024;
/** First epoll token of listeners (`+ slot`); relay tokens stay below 2^31. */
export const LISTENER_TOKEN = 0x80000000;
/**
 * Relay ids of proxied connections. relay()'s ids (up to 2^30) never reach a plane engine,
 * which takes no OP_ADD; the range is kept apart anyway, so that tokens say which kind is which.
 */
const FIRST_ID = 2 ** 29;
const LAST_ID = 2 ** 30;
/** accept(2) errors that say the process is short of a resource: the listener pauses. */

interface Listening {
  route: ListenerRoute;
  registered: boolean;
  pausedUntil: number;
  pauseMs: number;
}

/** One engine's share of the proxy's data plane. */
export class Plane {
  #host: PlaneHost;
  #views: PlaneViews;
  #counters: Float64Array;
  #ints: Int32Array;
  #routes: Routes | null = null;
  /** The routes before the last reload, for connections queued before it. */
  #previous: Routes | null = null;
  /** Per listener slot, the first ticket the current routes apply to. */
  #barrier = new Map<number, number>();
  #engine: number;
  /** The listeners this engine watches, by slot. */
  #listening = new Map<number, Listening>();
  #nextId = FIRST_ID;
  #report = new ReportQueue();
  #addr = new Uint8Array(SOCKADDR_MAX);
  #addrLength = new Uint32Array(1);
  #control = new Uint8Array(16);
  #gate: Gate;
  #connector: Connector;
  #controlView = new DataView(this.#control.buffer);

  constructor(host: PlaneHost, buffer: SharedArrayBuffer, engine: number) {
    this.#host = host;
    this.#engine = engine;
    this.#views = planeViews(buffer);
    this.#ints = this.#views.ints;
    this.#counters = this.#views.counters.subarray(
      engine * ENGINE_STRIDE,
      (engine + 1) * ENGINE_STRIDE,
    );
    this.#gate = new Gate(host, this.#counters, this.#report);
    this.#connector = new Connector(
      host,
      this.#views,
      this.#counters,
      this.#report,
      this.#gate,
      () => this.#routes,
    );
  }

  /** The queue of what is to be posted (see plane_report.ts). */
  get report(): ReportQueue {
    return this.#report;
  }

  /**
   * Serves `routes` from now on: new listeners are registered, removed ones deregistered (the
   * main thread closes their sockets once every engine said it applied this generation).
   * Connections already accepted keep the backend they have or are connecting to.
   */
  apply(routes: Routes): void {
    for (const route of routes.listeners) route.rules = listenerRules(route, routes.clusters);
    if (routes.ipTable !== null) this.#gate.useTable(routes.ipTable);
    this.#previous = this.#routes;
    this.#barrier = new Map(Object.entries(routes.barrier).map(([slot, t]) => [Number(slot), t]));
    const wanted = new Map(routes.listeners.map((l) => [l.slot, l]));
    for (const [slot, listening] of this.#listening) {
      const next = wanted.get(slot);
      if (next && next.fd === listening.route.fd) {
        listening.route = next;
        continue;
      }
      if (listening.registered) this.#unregister(listening);
      this.#listening.delete(slot);
      if (routes.released.includes(slot) && this.#routes !== null) {
        this.#acceptRest(listening.route, this.#routes);
      }
    }
    for (const route of routes.listeners) {
      if (this.#listening.has(route.slot)) continue;
      const listening: Listening = { route, registered: false, pausedUntil: 0, pauseMs: 0 };
      this.#listening.set(route.slot, listening);
      this.#registerListener(listening, routes.exclusive);
    }
    this.#routes = routes;
    this.#report.applied(routes.generation);
  }

  /** Ends every proxied connection now (the drain timeout passed). */
  abortAll(): void {
    for (const relay of [...this.#host.relays.values()]) {
      if (relay.proxied !== null) this.#host.finishNow(relay, "aborted");
    }
  }

  /** Whether any listener is paused, and when the earliest resumes. */
  resumePaused(now: number): void {
    const routes = this.#routes;
    if (routes === null) return;
    for (const listening of this.#listening.values()) {
      if (listening.registered || listening.pausedUntil === 0) continue;
      if (now >= listening.pausedUntil) {
        listening.pausedUntil = 0;
        this.#registerListener(listening, routes.exclusive);
      } else {
        this.#host.wakeAt(listening.pausedUntil);
      }
    }
  }

  #registerListener(listening: Listening, exclusive: boolean): void {
    // Level-triggered: a listener left with connections queued (turn over, paused) is reported
    // again without any bookkeeping here.
    this.#controlView.setUint32(0, EPOLLIN | (exclusive ? EPOLLEXCLUSIVE : 0), true);
    this.#controlView.setUint32(EPOLL_DATA_OFFSET, LISTENER_TOKEN + listening.route.slot, true);
    this.#controlView.setUint32(EPOLL_DATA_OFFSET + 4, 0, true);
    const ok = libc().epoll_ctl(this.#host.epfd, EPOLL_CTL_ADD, listening.route.fd, this.#control);
    listening.registered = ok === 0;
  }

  #unregister(listening: Listening): void {
    libc().epoll_ctl(this.#host.epfd, EPOLL_CTL_DEL, listening.route.fd, this.#control);
    listening.registered = false;
  }

  /** Accepts what `slot`'s listener has queued, up to `limit` (a turn's worth). */
  accept(slot: number, limit = ACCEPTS_PER_TURN): void {
    const listening = this.#listening.get(slot);
    const routes = this.#routes;
    if (!listening || !listening.registered || routes === null) return;
    const route = listening.route;
    const accepting = ACCEPTING + this.#engine;
    for (let i = 0; i < limit; i++) {
      // The main thread is counting for a reload, or newer routes wait in the mail: nothing is
      // accepted until they apply (the listener, level-triggered, is reported again).
      Atomics.store(this.#ints, accepting, 1);
      if (
        Atomics.load(this.#ints, RELOADING) !== 0 ||
        Atomics.load(this.#ints, PUBLISHED) !== routes.generation
      ) {
        Atomics.store(this.#ints, accepting, 0);
        return;
      }
      const fd = this.#acceptOne(route.fd);
      if (fd < 0) {
        Atomics.store(this.#ints, accepting, 0);
        const code = errno();
        if (code === EAGAIN) return;
        if (code === EINTR) continue;
        // The main thread stopped this listener (removed, or draining): new routes follow.
        if (code === EINVAL) {
          this.#unregister(listening);
          return;
        }
        const name = errnoName(code);
        const index = ACCEPT_CODES.indexOf(name);
        this.#counters[ENGINE_ACCEPT_ERRORS + (index === -1 ? ACCEPT_CODES.length - 1 : index)]++;
        // A client that gave up while queued is its own affair: the next one is accepted.
        if (acceptErrorKind(name) === "transient") continue;
        listening.pauseMs = nextBackoff(listening.pauseMs);
        listening.pausedUntil = this.#host.now() + listening.pauseMs;
        this.#unregister(listening);
        this.#host.wakeAt(listening.pausedUntil);
        this.#report.event({
          type: "accept-error",
          address: route.address,
          code: name,
          errno: code,
          pauseMs: listening.pauseMs,
        });
        return;
      }
      listening.pauseMs = 0;
      const client = formatSockaddr(this.#addr);
      const ticket = Atomics.add(
        this.#ints,
        ticketIndex(route.slot, this.#engine, routes.exclusive),
        1,
      );
      Atomics.store(this.#ints, accepting, 0);
      const barrier = this.#barrier.get(route.slot);
      const previous = this.#previous;
      // Counters wrap at 2^31: compared by their difference.
      if (barrier !== undefined && previous !== null && ((ticket - barrier) | 0) < 0) {
        // The same socket under the previous routes; a socket new in this reload (or a slot
        // reused for another address) had no previous routes, and takes the current ones.
        const before = previous.listeners.find((l) => l.slot === route.slot && l.fd === route.fd);
        if (before) this.#accepted(fd, client, before, previous);
        else this.#accepted(fd, client, route, routes);
      } else {
        this.#accepted(fd, client, route, routes);
      }
    }
  }

  /** One accept4 on `listener`, its peer's address left in #addr: the fd, or -1 (see errno). */
  #acceptOne(listener: number): number {
    this.#addrLength[0] = SOCKADDR_MAX;
    return libc().accept4(listener, this.#addr, this.#addrLength, SOCK_NONBLOCK | SOCK_CLOEXEC);
  }

  /**
   * Accepts what a released listener (see `Routes.released`) has queued, under the routes it
   * was accepting with. It is out of this engine's epoll already, so every connection that
   * arrives from now on wakes a waiter in the process the socket went to; one that arrived
   * before may have woken only this engine, and is taken here. Bounded: a socket that keeps
   * filling is the other process's to serve. (What this engine cannot take, at a limit or out
   * of fds, waits for the other process's next wake-up: the next connection to arrive.)
   */
  #acceptRest(route: ListenerRoute, routes: Routes): void {
    for (let i = 0; i < RELEASE_ACCEPTS; i++) {
      // At the listener's limit a connection accepted here would be refused; left queued, the
      // other process serves it (at the next connection's wake-up at the latest).
      if (Atomics.load(this.#ints, LISTENER_OPEN + route.slot) >= route.maxConnections) return;
      const fd = this.#acceptOne(route.fd);
      if (fd < 0) {
        const code = errno();
        if (code === EINTR || acceptErrorKind(errnoName(code)) === "transient") continue;
        // EAGAIN: nothing queued. Anything else (out of fds): what is left is the other's.
        return;
      }
      this.#accepted(fd, formatSockaddr(this.#addr), route, routes);
    }
  }

  #accepted(fd: number, client: string, route: ListenerRoute, routes: Routes): void {
    const rules = route.rules ?? null;
    let stages: Stages | null = null;
    if (rules !== null) {
      stages = firstStages(rules, sockaddrIp(this.#addr));
      // With expect_proxy the rules wait for the address the header gives.
      if (!rules.expectProxy && !admitted(rules, stages.ip)) {
        libc().close(fd);
        this.#gate.refused(route.address, client, stages.ip, "denied");
        return;
      }
    }
    const open = Atomics.add(this.#ints, LISTENER_OPEN + route.slot, 1);
    const cluster = route.cluster >= 0 ? routes.clusters[route.cluster] ?? null : null;
    if (open >= route.maxConnections) {
      // Counted before the close: whoever sees the close may read the counters next.
      this.#counters[ENGINE_REJECTED]++;
      Atomics.sub(this.#ints, LISTENER_OPEN + route.slot, 1);
      libc().close(fd);
      if (!logged(this.#routes?.accessLog, "over-limit")) return;
      this.#report.record({
        client,
        listener: route.address,
        cluster: cluster?.name ?? "",
        backend: null,
        bytesIn: 0,
        bytesOut: 0,
        durationMs: 0,
        mode: "none",
        end: "over-limit",
      }, this.#host.now());
      return;
    }
    const over = stages !== null && !stages.rules.expectProxy
      ? this.#gate.countAddress(route.slot, stages)
      : null;
    if (over !== null) {
      Atomics.sub(this.#ints, LISTENER_OPEN + route.slot, 1);
      libc().close(fd);
      this.#gate.refused(route.address, client, stages!.ip, over);
      return;
    }
    this.#counters[ENGINE_OPENED]++;
    this.#counters[ENGINE_OPEN]++;
    const now = this.#host.now();
    // Ids wrap after 2^29 connections: one still held by a long-lived relay is skipped.
    let id = this.#nextId;
    while (this.#host.relays.has(id)) id = id + 1 >= LAST_ID ? FIRST_ID : id + 1;
    this.#nextId = id + 1 >= LAST_ID ? FIRST_ID : id + 1;
    const relay = new Relay(
      id,
      fd,
      -1,
      routes.mode,
      routes.idleTimeoutMs,
      routes.pipeCapacity,
      now,
    );
    relay.connecting = true;
    relay.proxied = {
      tried: NONE_TRIED,
      listenerSlot: route.slot,
      listener: route.address,
      cluster,
      connectTimeoutMs: routes.connectTimeoutMs,
      backendSlot: -1,
      backend: null,
      client,
      startedAt: now,
      errno: 0,
      syscall: "",
      local: false,
      reason: "",
      stages,
    };
    // No TCP_NODELAY here: the socket has it from its listener (ffi/net.ts, setNoDelay).
    this.#host.relays.set(id, relay);
    const code = this.#host.register(fd, id * 2);
    if (code !== 0) {
      relay.proxied.errno = code;
      relay.proxied.syscall = "epoll_ctl";
      relay.proxied.local = true;
      this.#host.finishNow(relay, "local-error");
      return;
    }
    if (stages !== null && stages.pending !== 0) {
      // Its first bytes decide. A client that speaks first has mostly sent them by the time it
      // is accepted: they are read now, not a loop turn later. Bytes still to come are reported
      // (edge-triggered) until the stage's deadline.
      this.#gate.stageDeadline(relay, stages);
      this.prefaceReady(relay);
      return;
    }
    if (cluster === null) {
      this.#host.finishNow(relay, "no-backend");
      return;
    }
    this.#connector.next(relay, cluster);
  }

  /** The client of a relay still in its stages sent bytes (or hung up): reads them. */
  prefaceReady(relay: Relay): void {
    if (!this.#gate.read(relay)) return;
    const cluster = relay.proxied!.cluster;
    if (cluster === null) {
      this.#host.finishNow(relay, "no-backend");
      return;
    }
    this.#connector.next(relay, cluster);
  }

  /** The backend socket of a connecting relay is writable, or `failed` (see Connector). */
  connectReady(relay: Relay, failed: boolean): void {
    this.#connector.ready(relay, failed);
  }

  /** A connect ran past its deadline (or a stage did: see Gate). */
  connectTimedOut(relay: Relay): void {
    if ((relay.proxied!.stages?.pending ?? 0) !== 0) this.#gate.timedOut(relay);
    else this.#connector.timedOut(relay);
  }

  /**
   * A proxied relay ended (already out of epoll): closes both sockets, gives back its shares of
   * the limits, counts it and records it.
   */
  ended(relay: Relay, end: PlaneEnd, failure: Failure | null): void {
    const proxied = relay.proxied!;
    // Its two fds are free now: a listener paused for want of fds tries again at once.
    for (const listening of this.#listening.values()) {
      if (listening.pausedUntil === 0) continue;
      listening.pausedUntil = this.#host.now();
      this.#host.wakeAt(listening.pausedUntil);
    }
    // Counted before the sockets close: whoever sees a close may read the counters next.
    Atomics.sub(this.#ints, LISTENER_OPEN + proxied.listenerSlot, 1);
    if (proxied.stages !== null) this.#gate.release(proxied.listenerSlot, proxied.stages);
    this.#counters[ENGINE_OPEN]--;
    const relayed = !relay.connecting && proxied.backendSlot >= 0;
    const bytesIn = relay.aToB.bytes;
    const bytesOut = relay.bToA.bytes;
    const spliced = relay.aToB.spliced + relay.bToA.spliced;
    if (relayed) {
      Atomics.sub(this.#ints, BACKEND_ACTIVE + proxied.backendSlot * 2, 1);
      const base = ENGINE_BACKENDS + proxied.backendSlot * BACKEND_FIELDS;
      this.#counters[base + 2] += bytesIn;
      this.#counters[base + 3] += bytesOut;
      this.#counters[ENGINE_BYTES_IN] += bytesIn;
      this.#counters[ENGINE_BYTES_OUT] += bytesOut;
      this.#counters[spliced > 0 ? ENGINE_SPLICED : ENGINE_COPIED]++;
    }
    // Nothing of a record is built unless it is logged: under churn that is most of an
    // engine's work per connection outside the kernel, and of the main thread's.
    // A refusal by the rules is reported by #refused, throttled, not one record each.
    if (end !== "refused" && logged(this.#routes?.accessLog, end)) {
      this.#report.record(recordOf(relay, end, failure, this.#host.now()), this.#host.now());
    }
    const symbols = libc();
    if (relay.a.fd >= 0) symbols.close(relay.a.fd);
    if (relay.b.fd >= 0) symbols.close(relay.b.fd);
  }
}
