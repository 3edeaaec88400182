/**
 * The wire between the main thread (`_engine.ts`) and the engine Worker
 * (`_engine_worker.ts`): a command ring in a SharedArrayBuffer, read synchronously by the
 * Worker after an eventfd wakes its `epoll_wait`, and result messages posted back.
 *
 * @module
 */

/** Int32 indexes of the ring header. */
export const HEAD = 0; // commands consumed (written by the Worker)
/** Commands produced (written by the main thread). */
export const TAIL = 1;
/** 1 while the Worker is in, or about to enter, `epoll_wait`. */
export const SLEEPING = 2;
/** First Int32 of the slots. */
export const SLOTS_START = 8;
/** Int32s per command. */
export const SLOT_INTS = 8;
/** Commands the ring holds; more wait in a queue on the main thread. */
export const RING_SLOTS = 1024;
/** Bytes of the SharedArrayBuffer. */
export const RING_BYTES = (SLOTS_START + SLOT_INTS * RING_SLOTS) * 4;

/** Start relaying: `[op, id, fdA, fdB, mode, idleMs, capacity, 0]`. */
export const OP_ADD = 1;
/** End a relay now: `[op, id]`. */
export const OP_ABORT = 2;
/** End the Worker: `[op]`. Sent only when no relay runs. */
export const OP_STOP = 3;

/** Relay modes as numbers in the ring. */
export const MODE_AUTO = 0;
/** Always splice (copy only when no pipe can be had). */
export const MODE_SPLICE = 1;
/** Never splice. */
export const MODE_COPY = 2;

/** How a relay ended, as numbers in result messages. */
export const END_DONE = 0;
/** A peer reset the connection, or a write found it gone (ECONNRESET, EPIPE). */
export const END_RESET = 1;
/** Another syscall error. */
export const END_ERROR = 2;
/** No byte moved for the idle timeout. */
export const END_IDLE = 3;
/** Ended on request (abort signal). */
export const END_ABORTED = 4;
/** The engine died after it started (its Worker failed); reported on the main thread only. */
export const END_FATAL = -1;
/** The engine died before it started: the relay never reached it, nothing was moved. */
export const END_NOT_STARTED = -2;

/** Syscalls named in results. */
export const SYSCALLS = [
  "",
  "splice",
  "read",
  "write",
  "shutdown",
  "epoll_ctl",
  "getsockopt",
] as const;

/**
 * One finished relay: `[id, aToB, bToA, splicedAToB, splicedBToA, end, errno, syscall, side]`
 * (`side` 0 for a, 1 for b, -1 for none).
 */
export type EngineResult = [
  id: number,
  aToB: number,
  bToA: number,
  splicedAToB: number,
  splicedBToA: number,
  end: number,
  errno: number,
  syscall: number,
  side: number,
];

/** Messages from the Worker. */
export type WorkerMessage =
  | { type: "started" }
  | { type: "ended"; results: EngineResult[] }
  | { type: "stopped" }
  | { type: "fatal"; message: string };

/** The Worker's start-up message. */
export interface WorkerInit {
  ring: SharedArrayBuffer;
  eventFd: number;
  maxPipes: number;
}
