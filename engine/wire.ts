/**
 * The wire between the threads: the layout of the command ring the main thread (engine.ts)
 * writes and the Worker (worker.ts) reads, and of the results the Worker posts back. Only those
 * two files read or write it (pump.ts shares its mode and syscall numbers); relay() and
 * everything else see typed values.
 *
 * The ring is a SharedArrayBuffer of Int32s: a header, then fixed-size slots. The Worker reads it
 * synchronously after an eventfd wakes its `epoll_wait`, so a command costs no message and no
 * event-loop turn; results go back as one `postMessage` per loop iteration, batched.
 *
 * @module
 */

import type { PlaneReport } from "./plane_layout.ts";

/** Header: commands consumed, written by the Worker only. */
export const HEAD = 0;
/** Header: commands produced, written by the main thread only. */
export const TAIL = 1;
/** Header: 1 while the Worker is in, or about to enter, `epoll_wait`. */
export const SLEEPING = 2;
/** First Int32 of the slots. */
export const SLOTS_START = 8;
/** Int32s per command. */
export const SLOT_INTS = 8;
/** Commands the ring holds (a power of two: slots are found by masking); more wait in a queue. */
export const RING_SLOTS = 1024;
/** Bytes of the SharedArrayBuffer. */
export const RING_BYTES = (SLOTS_START + SLOT_INTS * RING_SLOTS) * 4;

/** Start relaying: `[OP_ADD, id, fdA, fdB, mode, idleMs, capacity, 0]`. */
export const OP_ADD = 1;
/** End a relay now: `[OP_ABORT, id]`. */
export const OP_ABORT = 2;
/** End the Worker: `[OP_STOP]`. Sent only when no relay runs. */
export const OP_STOP = 3;
/**
 * A message waits (`[OP_MAIL]`): the Worker leaves its loop for its event loop, which delivers
 * the message posted just before this command, and resumes. One command per message.
 */
export const OP_MAIL = 4;

/** Offset within a slot of the relay id (`OP_ADD`, `OP_ABORT`); the op is at 0. */
export const SLOT_ID = 1;
/** Offset of `OP_ADD`'s side a fd. */
export const ADD_FD_A = 2;
/** Offset of side b's fd. */
export const ADD_FD_B = 3;
/** Offset of the mode (`MODE_*`). */
export const ADD_MODE = 4;
/** Offset of the idle timeout in ms (0: none). */
export const ADD_IDLE_MS = 5;
/** Offset of the requested pipe capacity. */
export const ADD_CAPACITY = 6;
/**
 * Offset of the connect timeout in ms: 0 when side b is connected; above 0 when its connect
 * is under way, and the engine waits for it (writability, then `SO_ERROR`) before relaying.
 */
export const ADD_CONNECT_MS = 7;

/** Relay modes as numbers in the ring: `auto` copies small messages and splices bulk. */
export const MODE_AUTO = 0;
/** Always splice (copy only when no pipe can be had). */
export const MODE_SPLICE = 1;
/** Never splice. */
export const MODE_COPY = 2;

/** How a relay ended, as numbers in results: every byte delivered both ways. */
export const END_DONE = 0;
/** A peer reset the connection, or a write found it gone (ECONNRESET, EPIPE). */
export const END_RESET = 1;
/** Another syscall error. */
export const END_ERROR = 2;
/** No byte moved for the idle timeout. */
export const END_IDLE = 3;
/** Ended on request (abort signal). */
export const END_ABORTED = 4;

/**
 * The syscalls a result can name, by number; the one home of these names. Index 0 is "none".
 */
export const SYSCALL_NAMES = [
  "",
  "splice",
  "read",
  "write",
  "shutdown",
  "epoll_ctl",
  "getsockopt",
  "connect",
] as const;

/** A syscall's number in results. */
export type SyscallNumber = number;

/** The number of a syscall in {@linkcode SYSCALL_NAMES}. */
export function syscallNumber(name: typeof SYSCALL_NAMES[number]): SyscallNumber {
  return SYSCALL_NAMES.indexOf(name);
}

/**
 * One finished relay: `[id, aToB, bToA, splicedAToB, splicedBToA, end, errno, syscall, side]`
 * (`side` 0 for a, 1 for b, -1 for none; `errno` and `syscall` 0 unless it ended in a failure).
 */
export type EngineResult = [
  id: number,
  aToB: number,
  bToA: number,
  splicedAToB: number,
  splicedBToA: number,
  end: number,
  errno: number,
  syscall: SyscallNumber,
  side: number,
];

/** Messages from the Worker. */
export type WorkerMessage =
  | { type: "started" }
  | { type: "ended"; results: EngineResult[] }
  | PlaneReport
  | { type: "stopped" }
  | { type: "fatal"; message: string };

/** The Worker's start-up message. */
export interface WorkerInit {
  ring: SharedArrayBuffer;
  eventFd: number;
  /** For an engine of the proxy's data plane: the shared buffer and this engine's number. */
  plane?: { buffer: SharedArrayBuffer; engine: number };
}
