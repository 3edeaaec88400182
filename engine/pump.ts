/**
 * One relay's state in the Worker and the pump that moves its bytes one way.
 *
 * Sockets are registered edge-triggered, so a readiness edge is reported once: each side keeps
 * the readiness it has not used up (`readable`, `writable`), and only EAGAIN clears it. The pump
 * therefore runs until the kernel says EAGAIN, the source ends or fails, or its turn is over;
 * stopping early for any other reason would strand bytes until an edge that never comes.
 *
 * The engine calls `splice(2)` through the libc binding directly, not through `spliceIn` and
 * `spliceOut`: those take Deno conns, find their fds and return a fresh result per call, while
 * here the fds are raw, the Worker owns no Deno resource, and each call is one FFI fast-path
 * call returning a bigint, with errno read right after it on this thread.
 *
 * @module
 */

import { errno, libc } from "../ffi/libc.ts";
import { SPLICE_FLAGS } from "../ffi/constants.ts";
import { EAGAIN, EINTR, EPIPE } from "../ffi/errno.ts";
import { COPY_BUFFER_SIZE } from "../copy.ts";
import type { ReadState } from "./decision.ts";
import type { Pipe, PipePool } from "./pipe_pool.ts";
import { MODE_AUTO, MODE_SPLICE, syscallNumber } from "./wire.ts";
import type { ClusterRoute } from "./plane_layout.ts";
import type { Stages } from "./plane_stages.ts";

/** A read at least this large switches an `auto` direction to splice: bulk traffic. */
const SPLICE_PROMOTE_BYTES = 16 * 1024;
/** Below this a splice costs more than a copy (HAProxy skips splice under 4 kB). */
const SPLICE_SMALL_BYTES = 4 * 1024;
/** Consecutive small splices after which an `auto` direction returns to copying. */
const SPLICE_DEMOTE_AFTER = 2;
/** Chunks a direction may move before other relays get a turn. */
const ROUNDS_PER_TURN = 32;

const SPLICE = syscallNumber("splice");
const READ = syscallNumber("read");
const WRITE = syscallNumber("write");

/** Side flags, in one field: a relay's state is held per connection, for as long as it lasts. */
const WRITE_FAILED = 1;
const READABLE = 2;
const HANG_UP = 4;
const WRITABLE = 8;
const SHUT_DOWN = 16;

/** One connection of a relay. */
export class Side {
  /** What reading this side has given. */
  state: ReadState = "open";
  #flags = 0;
  /** -1 until a proxied connection's backend socket exists. */
  constructor(public fd: number) {}

  /** Set when a write to it failed: its peer takes no more bytes. */
  get writeFailed(): boolean {
    return (this.#flags & WRITE_FAILED) !== 0;
  }
  set writeFailed(on: boolean) {
    this.#flags = flagged(this.#flags, WRITE_FAILED, on);
  }
  /**
   * Edge-triggered readiness not yet used up. EAGAIN clears it, and so does a short copy-path
   * read while no hang-up was reported: a stream read returns all that is queued, and bytes
   * arriving later raise a new edge.
   */
  get readable(): boolean {
    return (this.#flags & READABLE) !== 0;
  }
  set readable(on: boolean) {
    this.#flags = flagged(this.#flags, READABLE, on);
  }
  /** A hang-up or error was reported: it is read until EAGAIN or the end, never cut short. */
  get hangUp(): boolean {
    return (this.#flags & HANG_UP) !== 0;
  }
  set hangUp(on: boolean) {
    this.#flags = flagged(this.#flags, HANG_UP, on);
  }
  /** Edge-triggered readiness not yet used up; only EAGAIN clears it. */
  get writable(): boolean {
    return (this.#flags & WRITABLE) !== 0;
  }
  set writable(on: boolean) {
    this.#flags = flagged(this.#flags, WRITABLE, on);
  }
  /** Whether its sending half was shut down (FIN sent). */
  get shutDown(): boolean {
    return (this.#flags & SHUT_DOWN) !== 0;
  }
  set shutDown(on: boolean) {
    this.#flags = flagged(this.#flags, SHUT_DOWN, on);
  }
}

/**
 * `flags` with `flag` set or cleared. A function rather than a private method: a class with a
 * private method gives each instance a brand field, 8 more bytes per side.
 */
function flagged(flags: number, flag: number, on: boolean): number {
  return on ? flags | flag : flags & ~flag;
}

/** One way of a relay. */
export class Direction {
  /**
   * Held while bytes may be in it; an empty one is kept only while the source may still have
   * more right away (it is readable, or the turn ended) or the destination is not writable yet.
   */
  pipe: Pipe | null = null;
  /** Bytes in the pipe, not yet spliced to the destination. */
  pending = 0;
  /** Bytes read on the copy path that the destination has not taken yet. */
  leftover: Uint8Array | null = null;
  /** Bytes delivered to the destination. */
  bytes = 0;
  /** Of those, the bytes spliced. */
  spliced = 0;
  /** `auto` starts on the copy path and earns splice with a large read; `splice` starts there. */
  useSplice: boolean;
  /** Small splices in a row, for `auto`'s return to copying. */
  smallSplices = 0;
  constructor(readonly from: Side, readonly to: Side, readonly mode: number) {
    this.useSplice = mode === MODE_SPLICE;
  }
  /** Bytes taken from the source and not yet delivered. */
  inFlight(): number {
    return this.pending + (this.leftover?.byteLength ?? 0);
  }
}

/** What the proxy's data plane keeps of a connection it accepted (see plane.ts). */
export interface Proxied {
  /** Backend slots tried for this connection before the current one (`backendSlot`). */
  tried: number[];
  listenerSlot: number;
  listener: string;
  /**
   * The cluster as routed when it was accepted: a reload does not change where a connection
   * already accepted goes, nor its connect timeout.
   */
  cluster: ClusterRoute | null;
  connectTimeoutMs: number;
  backendSlot: number;
  backend: string | null;
  client: string;
  startedAt: number;
  /** The last connect failure, reported when no backend is left. */
  errno: number;
  syscall: string;
  /** The proxy's own failure ("local-error") rather than the backends'. */
  local: boolean;
  /** Why the last connect could not be made, when no errno says it. */
  reason: string;
  /** Its listener's stages (engine/plane_stages.ts); null on a listener without any. */
  stages: Stages | null;
}

/** A relay: two sides, both ways, and how it failed first. */
export class Relay {
  readonly a: Side;
  readonly b: Side;
  readonly aToB: Direction;
  readonly bToA: Direction;
  /** When a byte last moved either way (the Worker's clock). */
  lastActive: number;
  /** The first failure: its errno, syscall number and side (0 a, 1 b, -1 none yet). */
  errno = 0;
  syscall = 0;
  brokenSide = -1;
  /** When a lingering relay (waiting to pass a failure on as a reset) ends anyway; 0: not yet. */
  lingerUntil = 0;
  /**
   * A connection the engine accepted itself (the proxy's data plane), or null for one handed
   * over by relay(). Such a relay is the engine's to close, and pumps nothing while connecting.
   */
  proxied: Proxied | null = null;
  /** Set while side b's connect is under way: nothing is pumped until it ends. */
  connecting = false;
  /** When that connect is given up (the loop's clock). */
  connectDeadline = 0;
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

// The thread's scratch buffer: a copy-path read is written out before the next read, and bytes
// the destination refuses are copied out of it into `leftover`.
const copyBuffer = new Uint8Array(COPY_BUFFER_SIZE);
const copyBufferSize = BigInt(COPY_BUFFER_SIZE);

/**
 * Moves bytes one way until a side would block, the source ends or fails, or the turn is over.
 * Returns `true` when it stopped only because the turn was over: the caller must run it again
 * soon, since no new edge will say so.
 *
 * Invariants:
 * - bytes in flight (in the pipe, or `leftover`) are delivered before anything more is read, so
 *   only an empty pipe is read into, and EAGAIN from a splice into the pipe means the socket is
 *   empty, never that the pipe is full;
 * - a direction owns a pipe only while bytes may be in it; an empty one goes back to the pool
 *   when the source has nothing more for now, so idle relays hold no pipe;
 * - bytes whose destination is gone are still read and dropped, so the source is never closed
 *   with unread data (which would make its kernel send a reset to a peer still reading).
 */
export function pump(relay: Relay, dir: Direction, pool: PipePool, now: number): boolean {
  const { from, to } = dir;
  const symbols = libc();
  if (to.writeFailed || to.state === "broken") {
    dropInFlight(relay, dir, pool);
    return from.state === "open" && discard(relay, from);
  }
  for (let round = 0;; round++) {
    if (dir.pending > 0) {
      if (!to.writable) return false;
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
        // 0 from a pipe that holds bytes: the destination is gone.
        const code = moved === 0n ? EPIPE : errno();
        if (code === EAGAIN) {
          to.writable = false;
          return false;
        }
        if (code === EINTR) continue;
        failWrite(relay, to, code, SPLICE);
        return false;
      }
    }
    if (dir.leftover !== null) {
      if (!to.writable) return false;
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
          return false;
        }
        if (code === EINTR) continue;
        failWrite(relay, to, code, WRITE);
        return false;
      }
    }
    // Nothing in flight from here on.
    if (dir.pipe !== null && (!dir.useSplice || !from.readable || from.state !== "open")) {
      pool.release(dir.pipe, relay.capacity, 0);
      dir.pipe = null;
    }
    if (from.state !== "open" || !from.readable || !to.writable) return false;
    if (round >= ROUNDS_PER_TURN) return true;
    if (dir.useSplice && dir.pipe === null) {
      dir.pipe = pool.acquire(relay.capacity);
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
        return false;
      }
      const code = errno();
      if (code === EAGAIN) {
        from.readable = false;
        continue; // the empty pipe goes back to the pool at the top
      }
      if (code === EINTR) continue;
      failRead(relay, from, code, SPLICE);
      return false;
    }
    const got = symbols.read(from.fd, copyBuffer, copyBufferSize);
    if (got > 0n) {
      const n = Number(got);
      relay.lastActive = now;
      if (dir.mode === MODE_AUTO && n >= SPLICE_PROMOTE_BYTES) dir.useSplice = true;
      // Short of the buffer: the socket is empty now (see Side.readable), which saves the read
      // that would only say EAGAIN.
      if (n < COPY_BUFFER_SIZE && !from.hangUp) from.readable = false;
      const written = symbols.write(to.fd, copyBuffer, got);
      if (written >= 0n) {
        const w = Number(written);
        dir.bytes += w;
        if (w < n) dir.leftover = copyBuffer.slice(w, n);
        continue;
      }
      const code = errno();
      // The bytes read are the relay's now: kept until the destination takes them.
      dir.leftover = copyBuffer.slice(0, n);
      if (code === EAGAIN) {
        to.writable = false;
        return false;
      }
      if (code === EINTR) continue;
      failWrite(relay, to, code, WRITE);
      return false;
    }
    if (got === 0n) {
      from.state = "eof";
      return false;
    }
    const code = errno();
    if (code === EAGAIN) {
      from.readable = false;
      return false;
    }
    if (code === EINTR) continue;
    failRead(relay, from, code, READ);
    return false;
  }
}

/** Drops what is in flight toward a side that takes no more bytes; such a pipe is destroyed. */
function dropInFlight(relay: Relay, dir: Direction, pool: PipePool): void {
  if (dir.pipe !== null) pool.release(dir.pipe, relay.capacity, dir.pending);
  dir.pipe = null;
  dir.pending = 0;
  dir.leftover = null;
}

/**
 * Reads `side` and drops the bytes, until it would block, ends or fails. Returns `true` when
 * the turn ended first (see {@linkcode pump}).
 */
function discard(relay: Relay, side: Side): boolean {
  const symbols = libc();
  for (let round = 0; side.readable && side.state === "open"; round++) {
    if (round >= ROUNDS_PER_TURN) return true;
    const got = symbols.read(side.fd, copyBuffer, copyBufferSize);
    if (got > 0n) continue;
    if (got === 0n) {
      side.state = "eof";
      return false;
    }
    const code = errno();
    if (code === EAGAIN) side.readable = false;
    else if (code !== EINTR) failRead(relay, side, code, READ);
  }
  return false;
}

/** A read (or the socket itself) failed: nothing more comes from it, nothing goes to it. */
export function failRead(relay: Relay, side: Side, code: number, syscall: number): void {
  side.state = "broken";
  record(relay, side, code, syscall);
}

/** A write failed: its peer takes no more bytes, but may still have bytes for us to read. */
function failWrite(relay: Relay, side: Side, code: number, syscall: number): void {
  side.writeFailed = true;
  record(relay, side, code, syscall);
}

/** The first failure is the one reported: what follows it is a consequence. */
function record(relay: Relay, side: Side, code: number, syscall: number): void {
  if (relay.brokenSide === -1) {
    relay.brokenSide = side === relay.a ? 0 : 1;
    relay.errno = code;
    relay.syscall = syscall;
  }
}
