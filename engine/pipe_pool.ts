/**
 * The engine's pipe pool. A relay direction holds a pipe only while bytes are in it, so a few
 * pipes serve many idle connections; a pipe that comes back empty is kept for the next splice,
 * because creating and resizing one costs three syscalls and freeing it two more.
 *
 * Used by the Worker's thread only; not shared.
 *
 * @module
 */

import { PIPE_DEFAULT_CAPACITY } from "../ffi/constants.ts";
import { closeFd, openPipe, resizePipe } from "../ffi/pipe.ts";

/** Pipes (two fds each) out and pooled at most; past it, traffic copies instead of splicing. */
export const MAX_PIPES = 1024;

/** A kernel pipe from the pool. */
export interface Pipe {
  readEnd: number;
  writeEnd: number;
  /** What the kernel granted, which may differ from what was asked. */
  capacity: number;
}

/** Pipes by requested capacity. */
export class PipePool {
  #free = new Map<number, Pipe[]>();
  #pooled = 0;
  #out = 0;

  /**
   * A pipe of `capacity`, from the pool or new; `null` when the pool is at its bound or the
   * kernel refuses (EMFILE, ENFILE, ENOMEM): that traffic is copied instead.
   */
  acquire(capacity: number): Pipe | null {
    const reused = this.#free.get(capacity)?.pop();
    if (reused) {
      this.#pooled--;
      this.#out++;
      return reused;
    }
    if (this.#out + this.#pooled >= MAX_PIPES) return null;
    const fds = openPipe();
    if (typeof fds === "number") return null;
    const granted = resizePipe(fds[0], capacity);
    this.#out++;
    // Pooled by the requested size, so a refused resize is not retried on every acquire.
    return {
      readEnd: fds[0],
      writeEnd: fds[1],
      capacity: granted > 0 ? granted : PIPE_DEFAULT_CAPACITY,
    };
  }

  /**
   * Takes back a pipe acquired for `requested` bytes. One that still holds bytes (`pending`) is
   * destroyed: those bytes belong to a relay that ended, and must never reach another.
   */
  release(pipe: Pipe, requested: number, pending: number): void {
    this.#out--;
    if (pending !== 0) {
      closeFd(pipe.readEnd);
      closeFd(pipe.writeEnd);
      return;
    }
    let list = this.#free.get(requested);
    if (!list) this.#free.set(requested, list = []);
    list.push(pipe);
    this.#pooled++;
  }

  /** Closes every pooled pipe; pipes still out are the caller's to release first. */
  close(): void {
    for (const list of this.#free.values()) {
      for (const pipe of list) {
        closeFd(pipe.readEnd);
        closeFd(pipe.writeEnd);
      }
    }
    this.#free.clear();
    this.#pooled = 0;
  }
}
