/**
 * The main-thread half of the relay engine: starts the Worker on first use, hands it relays
 * through the shared command ring, wakes it with an eventfd, and settles each relay's promise
 * when the Worker reports its end. The Worker stops when no relay has run for a while, so an
 * application that is done can exit.
 *
 * On this thread it is the only module that reads or writes the wire (wire.ts): callers pass a
 * typed job and get a {@linkcode RelayResult}.
 *
 * @module
 */

import { EFD_CLOEXEC, EFD_NONBLOCK } from "../ffi/constants.ts";
import { errno, libc } from "../ffi/libc.ts";
import { closeFd, openPipe } from "../ffi/pipe.ts";
import { SyscallError } from "../errors.ts";
import { findDenoReactors, leaveDenoReactor, returnToDenoReactor } from "./deno_reactor.ts";
import type { RelayEnd, RelayMode, RelayResult } from "./types.ts";
import type { PlaneMail, PlaneReport } from "./plane_layout.ts";
import {
  ADD_CAPACITY,
  ADD_CONNECT_MS,
  ADD_FD_A,
  ADD_FD_B,
  ADD_IDLE_MS,
  ADD_MODE,
  END_ABORTED,
  END_DONE,
  END_IDLE,
  END_RESET,
  type EngineResult,
  HEAD,
  MODE_AUTO,
  MODE_COPY,
  MODE_SPLICE,
  OP_ABORT,
  OP_ADD,
  OP_MAIL,
  OP_STOP,
  RING_BYTES,
  RING_SLOTS,
  SLEEPING,
  SLOT_ID,
  SLOT_INTS,
  SLOTS_START,
  SYSCALL_NAMES,
  TAIL,
  type WorkerInit,
  type WorkerMessage,
} from "./wire.ts";

/** How long the Worker outlives its last relay: long enough to serve bursts of short ones. */
const WORKER_LINGER_MS = 1_000;
/** Relay ids stay below 2^30 so that `id * 2 + side` fits the 32-bit epoll token. */
const MAX_ID = 2 ** 30;
/** A relay as the Worker takes it. */
interface EngineRelay {
  fdA: number;
  fdB: number;
  mode: number;
  idleMs: number;
  capacity: number;
  connectMs: number;
}

/**
 * How a relay handed to the engine ends: the Worker's result, or the engine's death after it
 * started (`"died"`: byte counts unknown) or before (`"not-started"`: the relay never reached it).
 */
type Outcome = EngineResult | "died" | "not-started";
type Settle = (outcome: Outcome) => void;

const ONE = new BigUint64Array([1n]);
const ONE_BYTES = new Uint8Array(ONE.buffer);

/** How an engine of the proxy's data plane is started. */
export interface PlaneEngineOptions {
  /** The proxy's shared buffer (plane_layout.ts) and this engine's number. */
  plane: { buffer: SharedArrayBuffer; engine: number };
  /** Receives the engine's batched records and events. */
  onReport: (report: PlaneReport) => void;
  /** Receives the reason when the engine dies. */
  onFatal: (message: string) => void;
}

/** A relay engine: one Worker and its loop. */
export class Engine {
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

  #plane: PlaneEngineOptions | undefined;

  constructor(plane?: PlaneEngineOptions) {
    this.#plane = plane;
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
    const init: WorkerInit = { ring: buffer, eventFd };
    if (plane) init.plane = plane.plane;
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
    const command = new Int32Array(SLOT_INTS);
    command[0] = OP_ADD;
    command[SLOT_ID] = id;
    command[ADD_FD_A] = relay.fdA;
    command[ADD_FD_B] = relay.fdB;
    command[ADD_MODE] = relay.mode;
    command[ADD_IDLE_MS] = relay.idleMs;
    command[ADD_CAPACITY] = relay.capacity;
    command[ADD_CONNECT_MS] = relay.connectMs;
    this.#send(command);
    return id;
  }

  /** Ends a running relay; its promise settles as aborted. Unknown ids are ignored. */
  abort(id: number): void {
    if (this.#waiting.has(id)) this.#send(Int32Array.of(OP_ABORT, id));
  }

  /** Stops the Worker once no relay runs; resolves when it has released everything. */
  stop(): Promise<void> {
    return new Promise((resolve) => {
      // An engine that already died has released everything: nothing will resolve it later.
      if (this.#released) return resolve();
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
    // A released engine's eventfd is closed and its number may be another file's by now.
    if (this.#released) return;
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

  /**
   * Sends the data plane a message: posted first, then announced in the ring, so that the
   * Worker, which reads the ring without its event loop, knows to go and take it.
   */
  mail(message: PlaneMail): void {
    if (this.#released) return; // a dead engine takes no mail (and its Worker is gone)
    this.#worker.postMessage(message);
    this.#send(Int32Array.of(OP_MAIL));
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
      // A data-plane engine lives as long as its proxy, which stops it.
      if (this.#waiting.size === 0 && !this.#stopping && !this.#plane) this.#scheduleStop();
    } else if (message.type === "plane") {
      this.#plane?.onReport(message);
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
    }, WORKER_LINGER_MS);
    // The linger must never be what keeps a finished program alive.
    Deno.unrefTimer(Number(this.#linger));
  }

  #fatal(message: string): void {
    this.#plane?.onFatal(message);
    if (current === this) current = null;
    this.#stopping = true;
    const failed = [...this.#waiting.values()];
    this.#waiting.clear();
    const outcome = this.#started ? "died" : "not-started";
    for (const settle of failed) settle(outcome);
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

/** fds a new Worker and its engine need at start-up (thread, runtime, module load, epoll). */
const START_FDS = 32;

/**
 * The running engine, started on first use; `null` when it cannot start. Starting a Worker
 * with the fd table full makes Deno panic (a thread that cannot create its runtime), which no
 * caller could catch, so free fds are proved first by opening and closing pipes.
 */
/**
 * Starts an engine for the proxy's data plane, or returns `null` when none can start (see
 * {@linkcode engine}): the caller serves through Deno conns instead.
 */
export function startPlaneEngine(options: PlaneEngineOptions): Engine | null {
  if (!workerLoadable()) return null;
  if (!fdsToSpare(START_FDS)) return null;
  try {
    return new Engine(options);
  } catch (error) {
    fatalMessage = error instanceof Error ? error.message : String(error);
    return null;
  }
}

function engine(): Engine | null {
  if (current !== null && current.accepting) return current;
  if (!workerLoadable()) return null;
  if (!fdsToSpare(START_FDS)) return null;
  try {
    current = new Engine();
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
      `splice: Cannot start the relay engine without read access to ${WORKER_URL.pathname} ` +
        "(--allow-read); relaying with the userspace copy loop instead.",
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

/** Stops the running engine when it is idle; resolves at once when none runs. */
export async function stopEngine(): Promise<void> {
  const running = current;
  await Promise.all([running?.stop(), ...[...draining].map((engine) => engine.stopped)]);
}

/** A relay for the engine: two connected sockets and how to move their bytes. */
export interface EngineJob {
  fdA: number;
  fdB: number;
  /** Of those, the fds of Deno conns: they leave Deno's reactor while the engine has them. */
  denoFds: number[];
  mode: RelayMode;
  idleMs: number;
  capacity: number;
  /** Above 0: `fdB`'s connect is under way, and is given up after this many ms. */
  connectMs?: number;
  signal?: AbortSignal;
}

const MODES: Record<RelayMode, number> = {
  auto: MODE_AUTO,
  splice: MODE_SPLICE,
  copy: MODE_COPY,
};
const ENDS: Record<number, RelayEnd> = {
  [END_DONE]: "done",
  [END_RESET]: "reset",
  [END_IDLE]: "idle-timeout",
  [END_ABORTED]: "aborted",
};

/**
 * Relays `job` in the engine and resolves with how it ended, once the Worker let go of both fds
 * and the Deno conns among them are back in Deno's reactor: the caller closes them next.
 * Resolves to `"unavailable"`, with both sockets untouched, when the engine cannot start (too
 * few free fds, its module unreadable) or died before taking the relay.
 */
export function relayInEngine(job: EngineJob): Promise<RelayResult | "unavailable"> {
  // Deno's reactors are the epoll instances that exist before the engine makes its own.
  findDenoReactors();
  const running = engine();
  if (running === null) return Promise.resolve("unavailable");
  const { signal, denoFds } = job;
  let onAbort: (() => void) | undefined;
  // Chained rather than awaited: while the relay runs, the closures below are all it holds.
  return new Promise<Outcome>((resolve) => {
    const id = running.add(
      {
        fdA: job.fdA,
        fdB: job.fdB,
        mode: MODES[job.mode],
        idleMs: job.idleMs,
        capacity: job.capacity,
        connectMs: job.connectMs ?? 0,
      },
      resolve,
      denoFds,
    );
    if (signal) {
      onAbort = () => running.abort(id);
      signal.addEventListener("abort", onAbort, { once: true });
    }
  }).then((outcome) => {
    if (onAbort) signal?.removeEventListener("abort", onAbort);
    if (outcome === "not-started") return "unavailable";
    for (const fd of denoFds) returnToDenoReactor(fd);
    return toRelayResult(outcome);
  });
}

function toRelayResult(outcome: EngineResult | "died"): RelayResult {
  if (outcome === "died") {
    return {
      aToB: 0,
      bToA: 0,
      splicedBytes: 0,
      mode: "copy",
      end: "error",
      error: new Error(
        `Cannot finish the relay: the relay engine stopped unexpectedly (${fatalMessage}); ` +
          "the byte counts are unknown",
      ),
    };
  }
  const [, aToB, bToA, splicedAToB, splicedBToA, endCode, code, syscall, side] = outcome;
  const splicedBytes = splicedAToB + splicedBToA;
  const result: RelayResult = {
    aToB,
    bToA,
    splicedBytes,
    mode: splicedBytes > 0 ? "splice" : "copy",
    end: ENDS[endCode] ?? "error",
  };
  if (result.end === "reset" || result.end === "error") {
    if (side !== -1) result.side = side === 0 ? "a" : "b";
    // A failure the Worker recorded always carries the errno it read; 0 would mean errno was
    // lost, and a SyscallError would then name "success".
    result.error = code !== 0
      ? new SyscallError(SYSCALL_NAMES[syscall] || "relay", code, {
        detail: `side ${result.side ?? "?"}`,
      })
      : new Error(`Cannot tell why the relay failed on side ${result.side ?? "?"}: no errno`);
  }
  return result;
}

/** Why the last engine died, or could not start; empty when none did. */
export function lastFatal(): string {
  return fatalMessage;
}
