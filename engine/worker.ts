/// <reference lib="deno.worker" />
/**
 * The relay engine's event loop, in a dedicated Worker that blocks in a synchronous
 * `epoll_wait`: readiness reaches the splice with no event-loop hop and no thread-pool hand-off,
 * and the main thread stays free for the application. One loop serves every relay.
 *
 * Each iteration: take the commands in the ring, sleep in `epoll_wait` (bounded by the next idle
 * or linger deadline), pump the relays that became ready, give a turn to those whose pump ran
 * out of rounds, end idle relays, and post what ended, batched.
 *
 * Loop invariants:
 * - a relay's sockets are registered in epoll only while it is in `relays`; `finish`
 *   deregisters them before its end is posted, because the main thread closes both fds as soon
 *   as it learns of the end, and their numbers are reused at once;
 * - epoll tokens are `id * 2 + side`, ids stay below 2^30, so a token never equals `WAKE_TOKEN`;
 * - a relay in `again` has readiness left that no edge will report again: it is serviced in this
 *   iteration's second pass and the loop does not sleep while any is left;
 * - every fd the Worker opened (epoll, pipes) is closed when the loop ends, also on a crash.
 *
 * @module
 */

import { errno, libc } from "../ffi/libc.ts";
import {
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_DATA_OFFSET,
  EPOLL_EVENT_SIZE,
  EPOLLERR,
  EPOLLET,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  SHUT_WR,
  SO_ERROR,
  SOL_SOCKET,
} from "../ffi/constants.ts";
import { ECONNRESET, EINTR, EPIPE } from "../ffi/errno.ts";
import { closeFd } from "../ffi/pipe.ts";
import { ACK_POLL_MS, resetConnection, socketError, unackedBytes } from "../ffi/tcp.ts";
import { decideRelay } from "./decision.ts";
import { LISTENER_TOKEN, Plane } from "./plane.ts";
import type { Failure } from "./plane_report.ts";
import type { PlaneEnd, PlaneMail, PlaneRecord } from "./plane_layout.ts";
import { PipePool } from "./pipe_pool.ts";
import { failRead, pump, Relay, type Side } from "./pump.ts";
import {
  ADD_CAPACITY,
  ADD_CONNECT_MS,
  ADD_FD_A,
  ADD_FD_B,
  ADD_IDLE_MS,
  ADD_MODE,
  END_ABORTED,
  END_DONE,
  END_ERROR,
  END_IDLE,
  END_RESET,
  type EngineResult,
  HEAD,
  OP_ABORT,
  OP_ADD,
  OP_MAIL,
  OP_STOP,
  RING_SLOTS,
  SLEEPING,
  SLOT_ID,
  SLOT_INTS,
  SLOTS_START,
  SYSCALL_NAMES,
  syscallNumber,
  TAIL,
  type WorkerInit,
  type WorkerMessage,
} from "./wire.ts";

/**
 * How long a relay that can deliver nothing more waits, before it passes a failure on as a
 * reset (see `decideRelay`), for the peer of the side it resets to acknowledge what was sent to
 * it: a reset destroys what is still unacknowledged.
 */
const RESET_LINGER_MS = 5_000;
const MAX_EVENTS = 256;
/** epoll data of the eventfd; relay tokens are `id * 2 + side`, always below this. */
const WAKE_TOKEN = 0xffffffff;
/** The longest sleep with idle timeouts pending; a late estimate is simply checked again. */
const MAX_IDLE_WAIT_MS = 60_000;

const EPOLL_CTL = syscallNumber("epoll_ctl");
const GETSOCKOPT = syscallNumber("getsockopt");
const CONNECT = syscallNumber("connect");
/** Connect timed out. */
const ETIMEDOUT = 110;

const symbols = libc();
const events = new Uint8Array(EPOLL_EVENT_SIZE * MAX_EVENTS);
/** Indexes into `events` of the hang-ups of a batch, handled after the rest (see loop()). */
const deferredEvents = new Int32Array(MAX_EVENTS);
/** Events that say a side ended or failed. */
const HANG_UP_EVENTS = EPOLLRDHUP | EPOLLHUP | EPOLLERR;
const eventsView = new DataView(events.buffer);
const control = new Uint8Array(EPOLL_EVENT_SIZE);
const controlView = new DataView(control.buffer);
const wakeBuffer = new Uint8Array(8);
const errorValue = new Int32Array(1);
const errorLength = new Uint32Array(1);

const pool = new PipePool();
const relays = new Map<number, Relay>();
/** Relays with an idle timeout or a linger deadline. */
const withTimeout = new Set<Relay>();
/** Relays whose pump ran out of rounds with readiness left. */
const again = new Set<Relay>();
let finished: EngineResult[] = [];
let now = performance.now();
/**
 * When the idle timeouts must next be checked. An estimate from the activity known at the last
 * check: relays active since then only make the check early, and it is simply repeated.
 */
let nextCheck = Infinity;
/** The proxy's data plane, in an engine started for it. */
let plane: Plane | null = null;
let epollFd = -1;
let ringView: Int32Array | null = null;
let wakeFd = -1;
let stopping = false;

const END_NAMES: Record<number, PlaneRecord["end"]> = {
  [END_DONE]: "done",
  [END_RESET]: "reset",
  [END_ERROR]: "error",
  [END_IDLE]: "idle-timeout",
  [END_ABORTED]: "aborted",
};

function post(message: WorkerMessage): void {
  self.postMessage(message);
}

function epollControl(epfd: number, op: number, fd: number, token: number): number {
  controlView.setUint32(0, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, true);
  controlView.setUint32(EPOLL_DATA_OFFSET, token, true);
  controlView.setUint32(EPOLL_DATA_OFFSET + 4, 0, true);
  return symbols.epoll_ctl(epfd, op, fd, control) === 0 ? 0 : errno();
}

function start(init: WorkerInit): void {
  ringView = new Int32Array(init.ring);
  wakeFd = init.eventFd;
  epollFd = symbols.epoll_create1(EPOLL_CLOEXEC);
  if (epollFd < 0) throw new Error(`Cannot create the engine's epoll instance: errno ${errno()}`);
  epollControl(epollFd, EPOLL_CTL_ADD, init.eventFd, WAKE_TOKEN);
  if (init.plane) {
    const epfd = epollFd;
    plane = new Plane(
      {
        epfd,
        relays,
        now: () => now,
        register: (fd, token) => epollControl(epfd, EPOLL_CTL_ADD, fd, token),
        service: (relay) => service(epfd, relay),
        finishNow: (relay, end) => finish(epfd, relay, end),
        wakeAt: (at) => {
          nextCheck = Math.min(nextCheck, at);
        },
        timed: withTimeout,
      },
      init.plane.buffer,
      init.plane.engine,
    );
  }
  post({ type: "started" });
}

/**
 * Runs the loop until it stops (then releases everything and ends the Worker) or a message
 * waits (then returns, so that the event loop can deliver it; `resume` runs it again).
 */
function resume(): void {
  let outcome: WorkerMessage;
  try {
    if (loop(epollFd, ringView!, wakeFd) === "mail") return;
    outcome = { type: "stopped" };
  } catch (error) {
    outcome = { type: "fatal", message: error instanceof Error ? error.message : String(error) };
  }
  end(outcome);
}

/**
 * Releases everything, then says so: the main thread terminates the Worker on this message, and
 * the shared counts must be given back before (another engine may take this one's place).
 */
function end(outcome: WorkerMessage): void {
  try {
    release();
  } finally {
    post(outcome);
    self.close();
  }
}

/** Closes every fd the Worker opened; also after a crash, as they would outlive it. */
function release(): void {
  for (const relay of relays.values()) {
    for (const dir of [relay.aToB, relay.bToA]) {
      if (dir.pipe !== null) pool.release(dir.pipe, relay.capacity, 1);
    }
    // Its shares of the shared limits and counts are given back too: the other engines and
    // a restarted one go on with them.
    if (relay.proxied !== null) plane!.ended(relay, "aborted", null);
  }
  pool.close();
  if (epollFd >= 0) closeFd(epollFd);
}

function receiveMail(mail: PlaneMail): void {
  if (plane === null) return;
  now = performance.now();
  if (mail.type === "routes") plane.apply(mail.routes);
  else plane.abortAll();
}

function loop(epfd: number, ring: Int32Array, eventFd: number): "stop" | "mail" {
  for (;;) {
    now = performance.now();
    let head = Atomics.load(ring, HEAD);
    const tail = Atomics.load(ring, TAIL);
    while (head !== tail) {
      const base = SLOTS_START + (head & (RING_SLOTS - 1)) * SLOT_INTS;
      const op = ring[base];
      if (op === OP_ADD) {
        addRelay(epfd, ring, base);
      } else if (op === OP_ABORT) {
        const relay = relays.get(ring[base + SLOT_ID]);
        if (relay) finish(epfd, relay, END_ABORTED);
      } else if (op === OP_STOP) {
        stopping = true;
      } else if (op === OP_MAIL) {
        Atomics.store(ring, HEAD, (head + 1) | 0);
        flushResults(true);
        return "mail";
      }
      head = (head + 1) | 0;
      Atomics.store(ring, HEAD, head);
    }
    flushResults(stopping && relays.size === 0);
    if (stopping && relays.size === 0) return "stop";

    let timeout = -1;
    if (again.size > 0) timeout = 0;
    // epoll takes whole ms: rounded up, so a deadline a fraction away never spins.
    else if (nextCheck !== Infinity) timeout = Math.ceil(idleWait());
    // Announce the sleep, then look at the ring once more: the main thread publishes its
    // command before it reads SLEEPING, so one of the two sides always sees the other.
    Atomics.store(ring, SLEEPING, 1);
    if (Atomics.load(ring, TAIL) !== head) timeout = 0;
    const count = symbols.epoll_wait(epfd, events, MAX_EVENTS, timeout);
    Atomics.store(ring, SLEEPING, 0);
    if (count < 0) {
      const code = errno();
      if (code === EINTR) continue;
      throw new Error(`Cannot wait for readiness: epoll_wait failed with errno ${code}`);
    }
    now = performance.now();

    // Hang-ups go last: a batch often holds one connection's end beside another's bytes (a
    // backend's reply, a connect just completed), and those bytes are on a client's critical
    // path, while the end's work (reading the EOF, closing, recording) is on nobody's.
    let deferred = 0;
    for (let i = 0; i < count; i++) {
      const offset = i * EPOLL_EVENT_SIZE;
      const flags = eventsView.getUint32(offset, true);
      if ((flags & HANG_UP_EVENTS) !== 0 && count > 1) {
        deferredEvents[deferred++] = i;
        continue;
      }
      handleEvent(epfd, eventFd, flags, eventsView.getUint32(offset + EPOLL_DATA_OFFSET, true));
    }
    for (let k = 0; k < deferred; k++) {
      const offset = deferredEvents[k] * EPOLL_EVENT_SIZE;
      const flags = eventsView.getUint32(offset, true);
      handleEvent(epfd, eventFd, flags, eventsView.getUint32(offset + EPOLL_DATA_OFFSET, true));
    }
    if (again.size > 0) {
      const turn = [...again];
      again.clear();
      for (const relay of turn) if (relays.has(relay.id)) service(epfd, relay);
    }
    if (nextCheck !== Infinity) expireIdle(epfd);
    flushResults();
  }
}

/** One readiness event: a wake-up, a listener's queue, or a relay side. */
function handleEvent(epfd: number, eventFd: number, flags: number, token: number): void {
  if (token === WAKE_TOKEN) {
    symbols.read(eventFd, wakeBuffer, 8n);
    return;
  }
  if (token >= LISTENER_TOKEN) {
    // Refused while newer routes wait in the mail (see Plane.accept).
    plane?.accept(token - LISTENER_TOKEN);
    return;
  }
  const relay = relays.get(token >>> 1);
  if (!relay) return; // ended earlier in this batch
  const side = (token & 1) === 0 ? relay.a : relay.b;
  if (flags & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) side.readable = true;
  if (flags & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) side.hangUp = true;
  if (flags & (EPOLLOUT | EPOLLHUP | EPOLLERR)) side.writable = true;
  if (relay.connecting) {
    // A client whose first bytes its listener's stages read (the PROXY header, the
    // ClientHello) before any backend is chosen.
    if (side === relay.a && (flags & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) !== 0) {
      if (relay.proxied !== null && (relay.proxied.stages?.pending ?? 0) !== 0) {
        plane!.prefaceReady(relay);
      }
      return;
    }
    // Until side b connects nothing moves; side a's readiness waits with it.
    if (side === relay.b && (flags & (EPOLLOUT | EPOLLHUP | EPOLLERR)) !== 0) {
      // Writable with no error or hang-up: the handshake completed, and SO_ERROR would say 0
      // (a connect that failed reports EPOLLERR, and EPOLLHUP once the socket is closed).
      const failed = (flags & (EPOLLHUP | EPOLLERR)) !== 0;
      if (relay.proxied !== null) plane!.connectReady(relay, failed);
      else connectEnded(epfd, relay, failed);
    }
    return;
  }
  // A side that already sent its FIN is never read again, so a reset after it would go
  // unnoticed; its pending error says so. An open side is left to its next read, which
  // delivers the bytes still queued before reporting the error.
  if ((flags & EPOLLERR) !== 0 && side.state === "eof") pendingError(relay, side);
  service(epfd, relay);
}

function addRelay(epfd: number, ring: Int32Array, base: number): void {
  const id = ring[base + SLOT_ID];
  const relay = new Relay(
    id,
    ring[base + ADD_FD_A],
    ring[base + ADD_FD_B],
    ring[base + ADD_MODE],
    ring[base + ADD_IDLE_MS],
    ring[base + ADD_CAPACITY],
    now,
  );
  relays.set(id, relay);
  // A socket already readable or writable reports so at registration (edge from "unknown").
  for (const [side, token] of [[relay.a, id * 2], [relay.b, id * 2 + 1]] as const) {
    const code = epollControl(epfd, EPOLL_CTL_ADD, side.fd, token);
    if (code !== 0) failRead(relay, side, code, EPOLL_CTL);
  }
  if (relay.idleMs > 0) {
    withTimeout.add(relay);
    nextCheck = Math.min(nextCheck, now + relay.idleMs);
  }
  const connectMs = ring[base + ADD_CONNECT_MS];
  if (connectMs > 0 && relay.b.state !== "broken") {
    relay.connecting = true;
    relay.connectDeadline = now + connectMs;
    withTimeout.add(relay);
    nextCheck = Math.min(nextCheck, relay.connectDeadline);
    return;
  }
  service(epfd, relay);
}

/** Side b's connect (started by relay()) is over: relay, or end with its error. */
function connectEnded(epfd: number, relay: Relay, failed: boolean): void {
  const code = failed ? socketError(relay.b.fd) : 0;
  relay.connecting = false;
  relay.connectDeadline = 0;
  if (relay.idleMs === 0) withTimeout.delete(relay);
  relay.lastActive = now;
  if (code !== 0) {
    failRead(relay, relay.b, code, CONNECT);
    finish(epfd, relay, END_ERROR);
    return;
  }
  service(epfd, relay);
}

/** Pumps both directions, applies the relay decision, and ends the relay when it says so. */
function service(epfd: number, relay: Relay): void {
  if (pump(relay, relay.aToB, pool, now)) again.add(relay);
  if (pump(relay, relay.bToA, pool, now)) again.add(relay);
  const { a, b } = relay;
  const decision = decideRelay(
    { read: a.state, writable: !a.writeFailed },
    { read: b.state, writable: !b.writeFailed },
    relay.aToB.inFlight(),
    relay.bToA.inFlight(),
  );
  // A proxied relay that ends cleanly has both inputs read to their end and is closed in this
  // turn (Plane.ended): close(2) sends the FIN that a shutdown would, one syscall sooner.
  const closingNow = !decision.open && relay.proxied !== null && relay.brokenSide === -1;
  if (!closingNow) {
    if (decision.shutdownB && !b.shutDown) shutdownSide(b);
    if (decision.shutdownA && !a.shutDown) shutdownSide(a);
  }
  if (!decision.open) {
    finish(epfd, relay, endOf(relay));
  } else if (decision.lingering) {
    // A reset destroys what the reset side's peer has not acknowledged yet. Once its send queue
    // is empty, the reset loses nothing: EPOLLOUT edges as acks arrive bring the relay back
    // here, and the linger deadline bounds the wait (a peer that stopped reading never acks).
    const toReset = decision.resetA ? a : b;
    if (unackedBytes(toReset.fd) === 0 || (relay.lingerUntil !== 0 && now >= relay.lingerUntil)) {
      resetConnection(toReset.fd);
      finish(epfd, relay, endOf(relay));
    } else {
      // Acks raise no epoll event unless a send had filled the buffer: look again shortly.
      if (relay.lingerUntil === 0) relay.lingerUntil = now + RESET_LINGER_MS;
      withTimeout.add(relay);
      nextCheck = Math.min(nextCheck, now + ACK_POLL_MS, relay.lingerUntil);
    }
  }
}

function endOf(relay: Relay): number {
  if (relay.brokenSide === -1) return END_DONE;
  return relay.errno === ECONNRESET || relay.errno === EPIPE ? END_RESET : END_ERROR;
}

function shutdownSide(side: Side): void {
  side.shutDown = true;
  // ENOTCONN here means the peer is already gone; the other direction will report it.
  symbols.shutdown(side.fd, SHUT_WR);
}

function pendingError(relay: Relay, side: Side): void {
  errorLength[0] = 4;
  const ok = symbols.getsockopt(side.fd, SOL_SOCKET, SO_ERROR, errorValue, errorLength) === 0;
  if (ok && errorValue[0] !== 0) failRead(relay, side, errorValue[0], GETSOCKOPT);
}

function finish(epfd: number, relay: Relay, end: number | PlaneEnd): void {
  relays.delete(relay.id);
  withTimeout.delete(relay);
  again.delete(relay);
  // The plane closes its own sockets right after, which takes them out of epoll (nothing else
  // holds them); relay()'s are closed by the main thread once it learns of the end, so they
  // leave epoll first, before their numbers can be reused.
  if (relay.proxied === null) {
    for (const side of [relay.a, relay.b]) symbols.epoll_ctl(epfd, EPOLL_CTL_DEL, side.fd, control);
  }
  for (const dir of [relay.aToB, relay.bToA]) {
    if (dir.pipe !== null) pool.release(dir.pipe, relay.capacity, dir.pending);
    dir.pipe = null;
  }
  const failed = end === END_RESET || end === END_ERROR;
  if (relay.proxied !== null) {
    const failure: Failure | null = failed
      ? { errno: relay.errno, syscall: SYSCALL_NAMES[relay.syscall], side: relay.brokenSide }
      : null;
    plane!.ended(relay, typeof end === "number" ? END_NAMES[end] : end, failure);
    return;
  }
  finished.push([
    relay.id,
    relay.aToB.bytes,
    relay.bToA.bytes,
    relay.aToB.spliced,
    relay.bToA.spliced,
    end as number,
    failed ? relay.errno : 0,
    failed ? relay.syscall : 0,
    failed ? relay.brokenSide : -1,
  ]);
}

/** Posts what ended; the plane's records may wait for company unless `all` (leaving the loop). */
function flushResults(all = false): void {
  if (finished.length > 0) {
    post({ type: "ended", results: finished });
    finished = [];
  }
  const report = plane?.report;
  if (report?.pending) {
    const dueAt = report.dueAt();
    if (all || now >= dueAt) post({ type: "plane", ...report.take() });
    else nextCheck = Math.min(nextCheck, dueAt);
  }
}

function idleWait(): number {
  return Math.max(0, Math.min(nextCheck - now, MAX_IDLE_WAIT_MS));
}

function expireIdle(epfd: number): void {
  if (now < nextCheck) return;
  nextCheck = Infinity;
  plane?.resumePaused(now);
  for (const relay of [...withTimeout]) {
    if (relay.connecting) {
      if (now < relay.connectDeadline) {
        nextCheck = Math.min(nextCheck, relay.connectDeadline);
      } else if (relay.proxied !== null) {
        plane!.connectTimedOut(relay);
      } else {
        failRead(relay, relay.b, ETIMEDOUT, CONNECT);
        finish(epfd, relay, END_ERROR);
      }
      continue;
    }
    if (relay.lingerUntil !== 0) {
      service(epfd, relay); // resets and ends it once all is acknowledged, or at the deadline
      if (!relays.has(relay.id)) continue;
      nextCheck = Math.min(nextCheck, now + ACK_POLL_MS);
    }
    const idleAt = relay.idleMs > 0 ? relay.lastActive + relay.idleMs : Infinity;
    if (now >= idleAt) {
      finish(epfd, relay, END_IDLE);
      continue;
    }
    nextCheck = Math.min(nextCheck, idleAt, relay.lingerUntil || Infinity);
  }
}

self.onmessage = (event: MessageEvent<WorkerInit>): void => {
  try {
    start(event.data);
  } catch (error) {
    end({ type: "fatal", message: error instanceof Error ? error.message : String(error) });
    return;
  }
  // Later messages are mail for the data plane, each announced in the ring by OP_MAIL.
  self.onmessage = (mail: MessageEvent<PlaneMail>): void => {
    try {
      receiveMail(mail.data);
    } catch (error) {
      end({ type: "fatal", message: error instanceof Error ? error.message : String(error) });
      return;
    }
    resume();
  };
  resume();
};
