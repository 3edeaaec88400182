/**
 * The main-thread half of the relay engine: starts the Worker on first use, hands it relays
 * through the shared command ring, wakes it with an eventfd, and settles each relay's promise
 * when the Worker reports its end. The Worker stops when no relay has run for a while, so an
 * application that is done can exit.
 *
 * @module
 */

import { EFD_CLOEXEC, EFD_NONBLOCK } from "../ffi/constants.ts";
import { errno, libc } from "../ffi/libc.ts";
import { closeFd, openPipe } from "../ffi/pipe.ts";
import { leaveDenoReactor } from "./deno_reactor.ts";
import { SyscallError } from "../errors.ts";
import {
  END_FATAL,
  END_NOT_STARTED,
  type EngineResult,
  HEAD,
  OP_ABORT,
  OP_ADD,
  OP_STOP,
  RING_BYTES,
  RING_SLOTS,
  SLEEPING,
  SLOT_INTS,
  SLOTS_START,
  TAIL,
  type WorkerInit,
  type WorkerMessage,
} from "./wire.ts";

/** How long the Worker outlives its last relay: long enough to serve bursts of short ones. */
const LINGER_MS = 1_000;
/** Relay ids stay below 2^30 so that `id * 2 + side` fits the 32-bit epoll token. */
const MAX_ID = 2 ** 30;
/** Default bound of the pipe pool (pipes, two fds each). */
export const DEFAULT_MAX_PIPES = 1024;

/** What the engine needs to start a relay. */
export interface EngineRelay {
  fdA: number;
  fdB: number;
  mode: number;
  idleMs: number;
  capacity: number;
}

type Settle = (result: EngineResult) => void;

const ONE = new BigUint64Array([1n]);
const ONE_BYTES = new Uint8Array(ONE.buffer);

class Engine {
  #worker: Worker;
  #ring: Int32Array;
  #eventFd: number;
  #waiting = new Map<number, Settle>();
  #queue: Int32Array[] = [];
  #nextId = 1;
  #linger: ReturnType<typeof setTimeout> | undefined;
  #stopping = false;
  #onStopped: Array<() => void> = [];
  #released = false;
  #started = false;
  /** fds of Deno conns handed over before the Worker started, to take out of Deno's epoll. */
  #reactorFds: number[] = [];

  constructor(maxPipes: number) {
    const eventFd = libc().eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (eventFd < 0) throw new SyscallError("eventfd", errno());
    this.#eventFd = eventFd;
    const buffer = new SharedArrayBuffer(RING_BYTES);
    this.#ring = new Int32Array(buffer);
    this.#worker = new Worker(WORKER_URL, {
      type: "module",
      name: "splice relay engine",
    });
    this.#worker.onmessage = (event: MessageEvent<WorkerMessage>) => this.#receive(event.data);
    this.#worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      this.#fatal(event.message);
    };
    const init: WorkerInit = { ring: buffer, eventFd, maxPipes };
    this.#worker.postMessage(init);
  }

  /** Whether new relays may still be handed to this engine. */
  get accepting(): boolean {
    return !this.#stopping;
  }

  /**
   * Hands a relay to the Worker; `settle` runs once, when it ends. Returns its id.
   * `denoFds` (the fds of Deno conns) leave Deno's own epoll once the Worker runs: before, a
   * Worker that fails to start must leave the conns usable by the copy loop.
   */
  add(relay: EngineRelay, settle: Settle, denoFds: number[]): number {
    if (this.#started) { for (const fd of denoFds) leaveDenoReactor(fd); }
    else this.#reactorFds.push(...denoFds);
    const id = this.#nextId;
    this.#nextId = this.#nextId >= MAX_ID ? 1 : this.#nextId + 1;
    this.#waiting.set(id, settle);
    if (this.#linger !== undefined) {
      clearTimeout(this.#linger);
      this.#linger = undefined;
    }
    this.#send(
      Int32Array.of(OP_ADD, id, relay.fdA, relay.fdB, relay.mode, relay.idleMs, relay.capacity, 0),
    );
    return id;
  }

  /** Ends a running relay; its promise settles as aborted. Unknown ids are ignored. */
  abort(id: number): void {
    if (this.#waiting.has(id)) this.#send(Int32Array.of(OP_ABORT, id));
  }

  /** Stops the Worker once no relay runs; resolves when it has released everything. */
  stop(): Promise<void> {
    return new Promise((resolve) => {
      this.#onStopped.push(resolve);
      if (!this.#stopping && this.#waiting.size === 0) this.#beginStop();
    });
  }

  /** Resolves when the Worker has stopped and the eventfd is closed. */
  get stopped(): Promise<void> {
    return new Promise((resolve) => {
      if (this.#released) resolve();
      else this.#onStopped.push(resolve);
    });
  }

  #beginStop(): void {
    this.#stopping = true;
    draining.add(this);
    if (current === this) current = null;
    this.#send(Int32Array.of(OP_STOP));
  }

  #send(command: Int32Array): void {
    this.#queue.push(command);
    this.#flush();
  }

  /** Moves queued commands into the ring while it has room, then wakes the Worker. */
  #flush(): void {
    const ring = this.#ring;
    let tail = Atomics.load(ring, TAIL);
    let sent = 0;
    // Counters wrap at 2^31: the difference is taken modulo 2^32, the slot by masking.
    while (this.#queue.length > 0 && ((tail - Atomics.load(ring, HEAD)) | 0) < RING_SLOTS) {
      const command = this.#queue.shift()!;
      ring.set(command, SLOTS_START + (tail & (RING_SLOTS - 1)) * SLOT_INTS);
      tail = (tail + 1) | 0;
      sent++;
    }
    if (sent > 0) {
      Atomics.store(ring, TAIL, tail);
      // Wake only a Worker that is (about to be) asleep; an awake one rereads the ring.
      if (Atomics.load(ring, SLEEPING) === 1) libc().write(this.#eventFd, ONE_BYTES, 8n);
    }
    if (this.#queue.length > 0) setTimeout(() => this.#flush(), 1);
  }

  #receive(message: WorkerMessage): void {
    if (message.type === "started") {
      this.#started = true;
      for (const fd of this.#reactorFds.splice(0)) leaveDenoReactor(fd);
    } else if (message.type === "ended") {
      for (const result of message.results) {
        const settle = this.#waiting.get(result[0]);
        if (!settle) continue;
        this.#waiting.delete(result[0]);
        settle(result);
      }
      if (this.#queue.length > 0) this.#flush();
      if (this.#waiting.size === 0 && !this.#stopping) this.#scheduleStop();
    } else if (message.type === "stopped") {
      this.#release();
    } else {
      this.#fatal(message.message);
    }
  }

  #scheduleStop(): void {
    if (this.#linger !== undefined) clearTimeout(this.#linger);
    this.#linger = setTimeout(() => {
      this.#linger = undefined;
      if (this.#waiting.size === 0 && !this.#stopping) this.#beginStop();
    }, LINGER_MS);
    // The linger must never be what keeps a finished program alive.
    Deno.unrefTimer(Number(this.#linger));
  }

  #fatal(message: string): void {
    if (current === this) current = null;
    this.#stopping = true;
    const failed = [...this.#waiting.values()];
    this.#waiting.clear();
    const end = this.#started ? END_FATAL : END_NOT_STARTED;
    for (const settle of failed) settle([0, 0, 0, 0, 0, end, 0, 0, -1]);
    fatalMessage = message;
    this.#release();
  }

  #release(): void {
    if (this.#released) return;
    this.#released = true;
    draining.delete(this);
    if (this.#linger !== undefined) clearTimeout(this.#linger);
    this.#worker.terminate();
    closeFd(this.#eventFd);
    for (const resolve of this.#onStopped.splice(0)) resolve();
  }
}

let current: Engine | null = null;
/** Engines told to stop whose Worker has not yet released everything. */
const draining = new Set<Engine>();
let fatalMessage = "";
let maxPipesSetting = DEFAULT_MAX_PIPES;

/** fds a new Worker and its engine need at start-up (thread, runtime, module load, epoll). */
const START_FDS = 32;

/**
 * The running engine, started on first use; `null` when it cannot start. Starting a Worker
 * with the fd table full makes Deno panic (a thread that cannot create its runtime), which no
 * caller could catch, so free fds are proved first by opening and closing pipes.
 */
export function engine(): Engine | null {
  if (current !== null && current.accepting) return current;
  if (!workerLoadable()) return null;
  if (!fdsToSpare(START_FDS)) return null;
  try {
    current = new Engine(maxPipesSetting);
  } catch (error) {
    fatalMessage = error instanceof Error ? error.message : String(error);
    return null;
  }
  return current;
}

const WORKER_URL = new URL("./worker.ts", import.meta.url);
let warnedUnreadable = false;

/**
 * A Worker from a local file needs read permission for it; without, it would fail after the
 * relay was handed over. Checked up front (never prompting), and said once.
 */
function workerLoadable(): boolean {
  if (WORKER_URL.protocol !== "file:") return true;
  const state = Deno.permissions.querySync({ name: "read", path: WORKER_URL }).state;
  if (state === "granted") return true;
  if (!warnedUnreadable) {
    warnedUnreadable = true;
    // deno-lint-ignore no-console
    console.warn(
      `splice: the relay engine needs read access to ${WORKER_URL.pathname} (--allow-read); ` +
        "relaying with the userspace copy loop instead.",
    );
  }
  return false;
}

function fdsToSpare(count: number): boolean {
  const opened: number[] = [];
  let ok = true;
  while (opened.length < count) {
    const fds = openPipe();
    if (typeof fds === "number") {
      ok = false;
      break;
    }
    opened.push(fds[0], fds[1]);
  }
  for (const fd of opened) closeFd(fd);
  return ok;
}

/** Sets the pool bound for engines started from now on. */
export function setMaxPipes(count: number): void {
  maxPipesSetting = count;
}

/** Stops the running engine when it is idle; resolves at once when none runs. */
export async function stopEngine(): Promise<void> {
  const running = current;
  await Promise.all([running?.stop(), ...[...draining].map((engine) => engine.stopped)]);
}

/** Why the last engine died, for the error of relays it took with it. */
export function lastFatal(): string {
  return fatalMessage;
}
