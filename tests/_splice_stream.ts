/**
 * A one-way splice loop driven by `poll(2)` readiness: socket -> pipe -> socket until end of
 * input. It backs the primitives' tests; the relay engine has its own event loop.
 *
 * @module
 */

import { spliceIn, spliceOut, type SplicePipe } from "../splice_pipe.ts";
import { socketFd, type SocketLike } from "../ffi/socket_fd.ts";

const POLLIN = 0x001;
const POLLOUT = 0x004;

/**
 * `poll` alone, in a binding of this helper's own: the module's libc table has no use for it.
 * `nfds_t` is an unsigned long, a `u64` and therefore a `bigint` in JS.
 */
const POLL_SYMBOLS = {
  poll: {
    parameters: [
      "buffer", // struct pollfd *fds
      "u64", // nfds_t nfds (unsigned long)
      "i32", // int timeout (ms)
    ],
    result: "i32", // int
    // Runs on Deno's blocking thread pool and returns a Promise: a readiness wait that does not
    // stall the event loop. errno cannot be read after it (another thread ran it).
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** Where glibc and musl keep their C library, most common first (as ffi/libc.ts tries them). */
const LIBC_NAMES = ["libc.so.6", "libc.musl-x86_64.so.1", "libc.musl-aarch64.so.1", "libc.so"];

let pollLibrary: Deno.DynamicLibrary<typeof POLL_SYMBOLS> | null = null;

/**
 * `poll(2)`, its library opened on first use rather than at import time (as ffi/libc.ts does):
 * importing this file needs no permission.
 */
function poll(fds: Uint8Array, nfds: bigint, timeoutMs: number): Promise<number> {
  if (pollLibrary === null) {
    let lastError: unknown;
    for (const name of LIBC_NAMES) {
      try {
        pollLibrary = Deno.dlopen(name, POLL_SYMBOLS);
        break;
      } catch (error) {
        lastError = error;
      }
    }
    if (pollLibrary === null) throw lastError;
  }
  return pollLibrary.symbols.poll(fds, nfds, timeoutMs);
}

/** How a {@linkcode spliceStream} ended. */
export interface SpliceStreamResult {
  bytes: number;
  status: "end" | "error";
  errno: number;
}

/**
 * Moves everything `source` sends to `destination` through `pipe.inPipe`. Never spins: when
 * neither side can make progress it waits in `poll` (on the blocking pool) for the side it
 * needs. The destination is not shut down at the end; the caller decides.
 */
export async function spliceStream(
  source: SocketLike,
  destination: SocketLike,
  pipe: SplicePipe,
  options?: { onProgress?: (bytes: number) => void; timeoutMs?: number },
): Promise<SpliceStreamResult> {
  const sourceFd = socketFd(source);
  const destinationFd = socketFd(destination);
  const [readEnd, writeEnd] = pipe.inPipe;
  // Each in-flight nonblocking call needs a buffer of its own; this loop has one at a time.
  const pollFds = new Uint8Array(16);
  const view = new DataView(pollFds.buffer);
  const deadline = Date.now() + (options?.timeoutMs ?? 600_000);
  let bytes = 0;
  let sourceDone = false;
  for (;;) {
    let progressed = false;
    // Only an empty pipe is read into: a pipe fills by segments, not bytes, so "pending below
    // capacity" does not mean there is room, and polling the source then would spin.
    if (!sourceDone && pipe.inPipePending === 0) {
      const [moved, status, errno] = spliceIn(sourceFd, writeEnd, pipe.capacity);
      if (status === "moved") {
        pipe.inPipePending += moved;
        progressed = true;
      } else if (status === "end") {
        sourceDone = true;
      } else if (status === "error") {
        return { bytes, status, errno };
      }
    }
    if (pipe.inPipePending > 0) {
      const [moved, status, errno] = spliceOut(readEnd, destinationFd, pipe.inPipePending);
      if (status === "moved") {
        pipe.inPipePending -= moved;
        bytes += moved;
        progressed = true;
        options?.onProgress?.(bytes);
      } else if (status === "error") {
        return { bytes, status, errno };
      }
    }
    if (sourceDone && pipe.inPipePending === 0) return { bytes, status: "end", errno: 0 };
    if (progressed) continue;
    if (Date.now() > deadline) throw new Error("spliceStream: timed out");
    // struct pollfd { int fd; short events; short revents; } x2
    let count = 0;
    if (!sourceDone && pipe.inPipePending === 0) {
      view.setInt32(count * 8, sourceFd, true);
      view.setInt16(count * 8 + 4, POLLIN, true);
      count++;
    }
    if (pipe.inPipePending > 0) {
      view.setInt32(count * 8, destinationFd, true);
      view.setInt16(count * 8 + 4, POLLOUT, true);
      count++;
    }
    await poll(pollFds, BigInt(count), 100);
  }
}
