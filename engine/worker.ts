/// <reference lib="deno.worker" />
/**
 * The relay engine's event loop. It runs in a dedicated Worker that blocks in a synchronous
 * `epoll_wait`, so readiness reaches the splice with no event-loop hop and no thread-pool
 * handoff; the main thread stays free for the application. One loop serves every relay.
 *
 * Sockets are registered edge-triggered for input, output and peer shutdown; each direction is
 * pumped until the kernel says EAGAIN, and remembers the readiness it has not used up.
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
  SPLICE_FLAGS,
} from "../ffi/constants.ts";
import { EAGAIN, ECONNRESET, EINTR, EPIPE } from "../ffi/errno.ts";
import { closeFd, openPipe, resizePipe } from "../ffi/pipe.ts";
import { resetConnection, unackedBytes } from "../ffi/tcp.ts";
import { decideRelay, type ReadState } from "./decision.ts";
import {
  END_ABORTED,
  END_DONE,
  END_ERROR,
  END_IDLE,
  END_RESET,
  type EngineResult,
  HEAD,
  MODE_AUTO,
  MODE_SPLICE,
  OP_ABORT,
  OP_ADD,
  OP_STOP,
  RING_SLOTS,
  SLEEPING,
  SLOT_INTS,
  SLOTS_START,
  TAIL,
  type WorkerInit,
  type WorkerMessage,
} from "./wire.ts";

/** Copy-path buffer; a read that fills it means bulk traffic, which splice moves cheaper. */
const COPY_BUFFER_SIZE = 64 * 1024;
/** A read at least this large switches an `auto` direction to splice. */
const SPLICE_PROMOTE_BYTES = 16 * 1024;
/** Below this a splice costs more than a copy (HAProxy skips splice under 4 kB). */
const SPLICE_SMALL_BYTES = 4 * 1024;
/** Consecutive small splices after which an `auto` direction returns to copying. */
const SPLICE_DEMOTE_AFTER = 2;
/**
 * How long a relay that can deliver nothing more waits, before it passes a failure on as a
 * reset (see `decideRelay`), for the peer of the side it resets to acknowledge what was sent to
 * it: a reset destroys what is still unacknowledged.
 */
const LINGER_MS = 5_000;
/** How often a lingering relay looks at its peers' unacknowledged bytes. */
const LINGER_RECHECK_MS = 20;
/** Chunks a direction may move before other relays get a turn. */
const ROUNDS_PER_TURN = 32;
const MAX_EVENTS = 256;
/** epoll data of the eventfd; relay tokens are `id * 2 + side`, always below this. */
const WAKE_TOKEN = 0xffffffff;

const SYSCALL_SPLICE = 1;
const SYSCALL_READ = 2;
const SYSCALL_WRITE = 3;
const SYSCALL_EPOLL_CTL = 5;
const SYSCALL_GETSOCKOPT = 6;

interface Pipe {
  readEnd: number;
  writeEnd: number;
  capacity: number;
}

class Side {
  /** What reading this side has given. */
  state: ReadState = "open";
  /** Set when a write to it failed: its peer takes no more bytes. */
  writeFailed = false;
  /** Edge-triggered readiness not yet used up (cleared by EAGAIN). */
  readable = false;
  writable = false;
  shutDown = false;
  constructor(readonly fd: number) {}
  /** Whether bytes can still be delivered to it. */
  takesBytes(): boolean {
    return !this.writeFailed && this.state !== "broken";
  }
}

class Direction {
  pipe: Pipe | null = null;
  /** Bytes in the pipe. */
  pending = 0;
  /** Bytes read on the copy path that the destination has not taken yet. */
  leftover: Uint8Array | null = null;
  bytes = 0;
  spliced = 0;
  /** `auto` starts on the copy path and earns splice with a large read; `splice` starts there. */
  useSplice: boolean;
  smallSplices = 0;
  constructor(readonly from: Side, readonly to: Side, readonly mode: number) {
    this.useSplice = mode === MODE_SPLICE;
  }
  inFlight(): number {
    return this.pending + (this.leftover?.byteLength ?? 0);
  }
}

class Relay {
  readonly a: Side;
  readonly b: Side;
  readonly aToB: Direction;
  readonly bToA: Direction;
  lastActive: number;
  errno = 0;
  syscall = 0;
  brokenSide = -1;
  /** When a lingering relay (draining a side after a failure) is ended anyway; 0: not yet. */
  lingerUntil = 0;
  constructor(
    readonly id: number,
    fdA: number,
    fdB: number,
    mode: number,
    readonly idleMs: number,
    readonly capacity: number,
    now: number,
  ) {
    this.a = new Side(fdA);
    this.b = new Side(fdB);
    this.aToB = new Direction(this.a, this.b, mode);
    this.bToA = new Direction(this.b, this.a, mode);
    this.lastActive = now;
  }
}

// --- libc and scratch buffers (this thread only) ---------------------------------------------

const symbols = libc();
const copyBuffer = new Uint8Array(COPY_BUFFER_SIZE);
const copyBufferSize = BigInt(COPY_BUFFER_SIZE);
const events = new Uint8Array(EPOLL_EVENT_SIZE * MAX_EVENTS);
const eventsView = new DataView(events.buffer);
const control = new Uint8Array(EPOLL_EVENT_SIZE);
const controlView = new DataView(control.buffer);
const wakeBuffer = new Uint8Array(8);

// --- pipe pool -------------------------------------------------------------------------------

const freePipes = new Map<number, Pipe[]>();
let pipesOut = 0;
let maxPipes = 1024;

/** A pipe of `capacity`, from the pool or new; `null` when the pool or the kernel says no. */
function acquirePipe(capacity: number): Pipe | null {
  const free = freePipes.get(capacity);
  const reused = free?.pop();
  if (reused) {
    pipesOut++;
    return reused;
  }
  if (pipesOut + pooledCount() >= maxPipes) return null;
  const fds = openPipe();
  if (typeof fds === "number") return null; // EMFILE, ENFILE, ENOMEM: this traffic copies
  const granted = resizePipe(fds[0], capacity);
  pipesOut++;
  // Pool by requested size, so a refused resize does not make every acquire retry it.
  return { readEnd: fds[0], writeEnd: fds[1], capacity: granted > 0 ? granted : 65_536 };
}

function pooledCount(): number {
  let count = 0;
  for (const list of freePipes.values()) count += list.length;
  return count;
}

/** Returns a pipe; one that still holds bytes is destroyed, never reused. */
function releasePipe(pipe: Pipe, requested: number, pending: number): void {
  pipesOut--;
  if (pending !== 0) {
    closeFd(pipe.readEnd);
    closeFd(pipe.writeEnd);
    return;
  }
  let list = freePipes.get(requested);
  if (!list) freePipes.set(requested, list = []);
  list.push(pipe);
}

function closePool(): void {
  for (const list of freePipes.values()) {
    for (const pipe of list) {
      closeFd(pipe.readEnd);
      closeFd(pipe.writeEnd);
    }
  }
  freePipes.clear();
}

// --- the loop --------------------------------------------------------------------------------

const relays = new Map<number, Relay>();
const withTimeout = new Set<Relay>();
const again = new Set<Relay>();
let finished: EngineResult[] = [];
let now = performance.now();

function post(message: WorkerMessage): void {
  self.postMessage(message);
}

function epollControl(epfd: number, op: number, fd: number, token: number): number {
  controlView.setUint32(0, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, true);
  controlView.setUint32(EPOLL_DATA_OFFSET, token, true);
  controlView.setUint32(EPOLL_DATA_OFFSET + 4, 0, true);
  return symbols.epoll_ctl(epfd, op, fd, control) === 0 ? 0 : errno();
}

function run(init: WorkerInit): void {
  maxPipes = init.maxPipes;
  const ring = new Int32Array(init.ring);
  const epfd = symbols.epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) throw new Error(`epoll_create1 failed with errno ${errno()}`);
  try {
    epollControl(epfd, EPOLL_CTL_ADD, init.eventFd, WAKE_TOKEN);
    post({ type: "started" });
    loop(epfd, ring, init.eventFd);
  } finally {
    // Also on a crash: fds opened through FFI outlive the Worker unless closed here.
    for (const relay of relays.values()) {
      for (const dir of [relay.aToB, relay.bToA]) {
        if (dir.pipe !== null) releasePipe(dir.pipe, relay.capacity, 1);
      }
    }
    closePool();
    closeFd(epfd);
  }
}

function loop(epfd: number, ring: Int32Array, eventFd: number): void {
  let stopping = false;
  for (;;) {
    now = performance.now();
    // Commands first: new relays, aborts, stop.
    let head = Atomics.load(ring, HEAD);
    const tail = Atomics.load(ring, TAIL);
    while (head !== tail) {
      const base = SLOTS_START + (head & (RING_SLOTS - 1)) * SLOT_INTS;
      const op = ring[base];
      if (op === OP_ADD) {
        addRelay(epfd, ring, base);
      } else if (op === OP_ABORT) {
        const relay = relays.get(ring[base + 1]);
        if (relay) finish(epfd, relay, END_ABORTED);
      } else if (op === OP_STOP) {
        stopping = true;
      }
      head = (head + 1) | 0;
      Atomics.store(ring, HEAD, head);
    }
    flushResults();
    if (stopping && relays.size === 0) break;

    let timeout = -1;
    if (again.size > 0) timeout = 0;
    else if (withTimeout.size > 0) timeout = Math.ceil(idleWait()); // epoll takes whole ms: round up, never spin
    // Announce the sleep, then look at the ring once more: the main thread publishes its
    // command before it reads SLEEPING, so one of the two sides always sees the other.
    Atomics.store(ring, SLEEPING, 1);
    if (Atomics.load(ring, TAIL) !== head) timeout = 0;
    const count = symbols.epoll_wait(epfd, events, MAX_EVENTS, timeout);
    Atomics.store(ring, SLEEPING, 0);
    if (count < 0) {
      const code = errno();
      if (code === EINTR) continue;
      throw new Error(`epoll_wait failed with errno ${code}`);
    }
    now = performance.now();

    for (let i = 0; i < count; i++) {
      const offset = i * EPOLL_EVENT_SIZE;
      const flags = eventsView.getUint32(offset, true);
      const token = eventsView.getUint32(offset + EPOLL_DATA_OFFSET, true);
      if (token === WAKE_TOKEN) {
        symbols.read(eventFd, wakeBuffer, 8n);
        continue;
      }
      const relay = relays.get(token >>> 1);
      if (!relay) continue; // ended earlier in this batch
      const side = (token & 1) === 0 ? relay.a : relay.b;
      if (flags & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) side.readable = true;
      if (flags & (EPOLLOUT | EPOLLHUP | EPOLLERR)) side.writable = true;
      // A side that already sent its FIN is never read again, so a reset after it would go
      // unnoticed; its pending error says so. An open side is left to its next read, which
      // delivers the bytes still queued before reporting the error.
      if ((flags & EPOLLERR) !== 0 && side.state === "eof") pendingError(relay, side);
      service(epfd, relay);
    }
    if (again.size > 0) {
      const turn = [...again];
      again.clear();
      for (const relay of turn) if (relays.has(relay.id)) service(epfd, relay);
    }
    if (withTimeout.size > 0) expireIdle(epfd);
    flushResults();
  }
}

function addRelay(epfd: number, ring: Int32Array, base: number): void {
  const id = ring[base + 1];
  const relay = new Relay(
    id,
    ring[base + 2],
    ring[base + 3],
    ring[base + 4],
    ring[base + 5],
    ring[base + 6],
    now,
  );
  relays.set(id, relay);
  // A socket already readable or writable reports so at registration (edge from "unknown").
  for (const [side, token] of [[relay.a, id * 2], [relay.b, id * 2 + 1]] as const) {
    const code = epollControl(epfd, EPOLL_CTL_ADD, side.fd, token);
    if (code !== 0) {
      failRead(relay, side, code, SYSCALL_EPOLL_CTL);
    }
  }
  if (relay.idleMs > 0) {
    withTimeout.add(relay);
    nextCheck = Math.min(nextCheck, now + relay.idleMs);
  }
  service(epfd, relay);
}

/** Pumps both directions, applies the relay decision, and ends the relay when it says so. */
function service(epfd: number, relay: Relay): void {
  pump(relay, relay.aToB);
  pump(relay, relay.bToA);
  const { a, b } = relay;
  const decision = decideRelay(
    { read: a.state, writable: !a.writeFailed },
    { read: b.state, writable: !b.writeFailed },
    relay.aToB.inFlight(),
    relay.bToA.inFlight(),
  );
  if (decision.shutdownB && !b.shutDown) shutdownSide(b);
  if (decision.shutdownA && !a.shutDown) shutdownSide(a);
  if (!decision.open) {
    finish(epfd, relay, endOf(relay));
  } else if (decision.lingering) {
    // A reset destroys what the reset side's peer has not acknowledged yet. Once its send queue
    // is empty, the reset loses nothing: EPOLLOUT edges as acks arrive bring the relay back
    // here, and the linger timeout bounds the wait (a peer that stopped reading never acks).
    const toReset = decision.resetA ? a : b;
    if (unackedBytes(toReset.fd) === 0 || (relay.lingerUntil !== 0 && now >= relay.lingerUntil)) {
      resetConnection(toReset.fd);
      finish(epfd, relay, endOf(relay));
    } else {
      // Acks raise no epoll event unless a send had filled the buffer: look again shortly.
      if (relay.lingerUntil === 0) relay.lingerUntil = now + LINGER_MS;
      withTimeout.add(relay);
      nextCheck = Math.min(nextCheck, now + LINGER_RECHECK_MS, relay.lingerUntil);
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

const errorValue = new Int32Array(1);
const errorLength = new Uint32Array(1);

function pendingError(relay: Relay, side: Side): void {
  errorLength[0] = 4;
  const ok = symbols.getsockopt(side.fd, SOL_SOCKET, SO_ERROR, errorValue, errorLength) === 0;
  if (ok && errorValue[0] !== 0) failRead(relay, side, errorValue[0], SYSCALL_GETSOCKOPT);
}

/** A read (or the socket itself) failed: nothing more comes from it, nothing goes to it. */
function failRead(relay: Relay, side: Side, code: number, syscall: number): void {
  side.state = "broken";
  record(relay, side, code, syscall);
}

/** A write failed: its peer takes no more bytes, but may still have bytes for us to read. */
function failWrite(relay: Relay, side: Side, code: number, syscall: number): void {
  side.writeFailed = true;
  record(relay, side, code, syscall);
}

/** The first failure is the one reported. */
function record(relay: Relay, side: Side, code: number, syscall: number): void {
  if (relay.brokenSide === -1) {
    relay.brokenSide = side === relay.a ? 0 : 1;
    relay.errno = code;
    relay.syscall = syscall;
  }
}

/** Moves bytes one way until a side would block, the turn ends, or the source finished. */
function pump(relay: Relay, dir: Direction): void {
  const { from, to } = dir;
  if (!to.takesBytes()) {
    dropInFlight(relay, dir);
    // Bytes that can go nowhere are still read, so the source is not closed with unread data.
    if (from.state === "open") discard(relay, from);
    return;
  }
  for (let round = 0;; round++) {
    // Deliver what is in flight before reading more: only an empty pipe is read into, which
    // makes EAGAIN from splice unambiguous (the socket is empty, not the pipe full).
    if (dir.pending > 0) {
      if (!to.writable) return;
      const pipe = dir.pipe!;
      const moved = symbols.splice(
        pipe.readEnd,
        null,
        to.fd,
        null,
        BigInt(dir.pending),
        SPLICE_FLAGS,
      );
      if (moved > 0n) {
        const n = Number(moved);
        dir.pending -= n;
        dir.bytes += n;
        dir.spliced += n;
        relay.lastActive = now;
        if (dir.pending > 0) continue;
      } else {
        const code = moved === 0n ? EPIPE : errno();
        if (code === EAGAIN) {
          to.writable = false;
          return;
        }
        if (code === EINTR) continue;
        return failWrite(relay, to, code, SYSCALL_SPLICE);
      }
    }
    if (dir.leftover !== null) {
      if (!to.writable) return;
      const rest = dir.leftover;
      const written = symbols.write(to.fd, rest, BigInt(rest.byteLength));
      if (written > 0n) {
        const n = Number(written);
        dir.bytes += n;
        relay.lastActive = now;
        dir.leftover = n === rest.byteLength ? null : rest.subarray(n);
        if (dir.leftover !== null) continue;
      } else {
        const code = errno();
        if (code === EAGAIN) {
          to.writable = false;
          return;
        }
        if (code === EINTR) continue;
        return failWrite(relay, to, code, SYSCALL_WRITE);
      }
    }
    // Nothing in flight. A pipe is held only while bytes are in it.
    if (dir.pipe !== null && (!dir.useSplice || !from.readable || from.state !== "open")) {
      releasePipe(dir.pipe, relay.capacity, 0);
      dir.pipe = null;
    }
    if (from.state !== "open" || !from.readable || !to.writable) return;
    if (round >= ROUNDS_PER_TURN) {
      again.add(relay);
      return;
    }
    if (dir.useSplice && dir.pipe === null) {
      dir.pipe = acquirePipe(relay.capacity);
      if (dir.pipe === null) dir.useSplice = false;
    }
    if (dir.useSplice) {
      const pipe = dir.pipe!;
      const moved = symbols.splice(
        from.fd,
        null,
        pipe.writeEnd,
        null,
        BigInt(pipe.capacity),
        SPLICE_FLAGS,
      );
      if (moved > 0n) {
        const n = Number(moved);
        dir.pending = n;
        relay.lastActive = now;
        if (dir.mode === MODE_AUTO) {
          dir.smallSplices = n < SPLICE_SMALL_BYTES ? dir.smallSplices + 1 : 0;
          if (dir.smallSplices >= SPLICE_DEMOTE_AFTER) dir.useSplice = false;
        }
        continue;
      }
      if (moved === 0n) {
        from.state = "eof";
        return;
      }
      const code = errno();
      if (code === EAGAIN) {
        from.readable = false;
        continue; // releases the idle pipe above
      }
      if (code === EINTR) continue;
      return failRead(relay, from, code, SYSCALL_SPLICE);
    }
    const got = symbols.read(from.fd, copyBuffer, copyBufferSize);
    if (got > 0n) {
      const n = Number(got);
      relay.lastActive = now;
      if (dir.mode === MODE_AUTO && n >= SPLICE_PROMOTE_BYTES) dir.useSplice = true;
      const written = symbols.write(to.fd, copyBuffer, got);
      if (written >= 0n) {
        const w = Number(written);
        dir.bytes += w;
        if (w < n) dir.leftover = copyBuffer.slice(w, n);
        continue;
      }
      const code = errno();
      // The bytes read are ours now: keep them until the destination takes them.
      dir.leftover = copyBuffer.slice(0, n);
      if (code === EAGAIN) {
        to.writable = false;
        return;
      }
      if (code === EINTR) continue;
      return failWrite(relay, to, code, SYSCALL_WRITE);
    }
    if (got === 0n) {
      from.state = "eof";
      return;
    }
    const code = errno();
    if (code === EAGAIN) {
      from.readable = false;
      return;
    }
    if (code === EINTR) continue;
    return failRead(relay, from, code, SYSCALL_READ);
  }
}

/** Drops what is in flight toward a side that takes no more bytes; such a pipe is destroyed. */
function dropInFlight(relay: Relay, dir: Direction): void {
  if (dir.pipe !== null) releasePipe(dir.pipe, relay.capacity, dir.pending);
  dir.pipe = null;
  dir.pending = 0;
  dir.leftover = null;
}

/** Reads `side` and drops the bytes, until it would block, ends or fails. */
function discard(relay: Relay, side: Side): void {
  for (let round = 0; side.readable && side.state === "open"; round++) {
    if (round >= ROUNDS_PER_TURN) {
      again.add(relay);
      return;
    }
    const got = symbols.read(side.fd, copyBuffer, copyBufferSize);
    if (got > 0n) continue;
    if (got === 0n) {
      side.state = "eof";
      return;
    }
    const code = errno();
    if (code === EAGAIN) side.readable = false;
    else if (code !== EINTR) failRead(relay, side, code, SYSCALL_READ);
  }
}

function finish(epfd: number, relay: Relay, end: number): void {
  relays.delete(relay.id);
  withTimeout.delete(relay);
  again.delete(relay);
  // Deregister before the main thread learns of the end: it closes the fds right after, and
  // their numbers are reused at once.
  for (const side of [relay.a, relay.b]) {
    symbols.epoll_ctl(epfd, EPOLL_CTL_DEL, side.fd, control);
  }
  for (const dir of [relay.aToB, relay.bToA]) {
    if (dir.pipe !== null) releasePipe(dir.pipe, relay.capacity, dir.pending);
    dir.pipe = null;
  }
  finished.push([
    relay.id,
    relay.aToB.bytes,
    relay.bToA.bytes,
    relay.aToB.spliced,
    relay.bToA.spliced,
    end,
    end === END_RESET || end === END_ERROR ? relay.errno : 0,
    end === END_RESET || end === END_ERROR ? relay.syscall : 0,
    end === END_RESET || end === END_ERROR ? relay.brokenSide : -1,
  ]);
}

function flushResults(): void {
  if (finished.length === 0) return;
  post({ type: "ended", results: finished });
  finished = [];
}

/**
 * When the idle timeouts must next be checked. An estimate from the activity known at the last
 * check: relays active since then only make the check early, and it is simply repeated.
 */
let nextCheck = Infinity;

function idleWait(): number {
  return Math.max(0, Math.min(nextCheck - now, 60_000));
}

function expireIdle(epfd: number): void {
  if (now < nextCheck) return;
  nextCheck = Infinity;
  for (const relay of [...withTimeout]) {
    if (relay.lingerUntil !== 0) {
      service(epfd, relay); // resets and ends it once all is acknowledged, or at the timeout
      if (!relays.has(relay.id)) continue;
      nextCheck = Math.min(nextCheck, now + LINGER_RECHECK_MS);
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
  self.onmessage = null;
  try {
    run(event.data);
    post({ type: "stopped" });
  } catch (error) {
    post({ type: "fatal", message: error instanceof Error ? error.message : String(error) });
  }
  self.close();
};
