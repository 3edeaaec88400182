/**
 * Helpers for the relay tests and their subprocess scripts: bounded waits, the engine Worker's
 * thread, and fd counts that do not blame a relay for Deno's own late start-up.
 *
 * @module
 */

import assert from "node:assert/strict";
import { relay, shutdownRelayEngine } from "../mod.ts";
import { openFdCount, tcpPair, waitFor, within } from "./_helpers.ts";

export { within };

/**
 * Worker threads alive in this process. Deno names them `worker-N`, and a terminated Worker's
 * thread (with its runtime's epoll, eventfd and module files) winds down a few ms after
 * `terminate()`: fd counts are compared only once it is gone. No other Worker runs here.
 */
export function workerThreads(): number {
  let count = 0;
  for (const task of Deno.readDirSync("/proc/self/task")) {
    try {
      if (Deno.readTextFileSync(`/proc/self/task/${task.name}/comm`).startsWith("worker-")) count++;
    } catch {
      // The thread exited while it was listed.
    }
  }
  return count;
}

let warmed = false;

/**
 * The process's fd count, for comparison after a test. Deno keeps a few fds of its own once its
 * first Workers have run (measured on 2.9.6: 50-150 ms after the second Worker's thread exits, a
 * thread and a socket pair appear, once per process), so the first call starts and stops the
 * engine until the count after a cycle is stable (three to eight cycles), then waits until the
 * count has not changed for 500 ms (bounded by 3 s): those fds are then part of the baseline and
 * not blamed on a relay. That wait is for Deno's own late start-up, not a synchronisation.
 */
export async function fdBaseline(): Promise<number> {
  let previous = -1;
  for (let round = 0; !warmed && round < 8; round++) {
    const left = await tcpPair();
    const right = await tcpPair();
    const relayed = relay(left.server, right.client);
    left.client.close();
    right.server.close();
    await within(relayed, 5_000, "a warm-up relay");
    await within(shutdownRelayEngine(), 5_000, "the warm-up engine to stop");
    await waitFor(() => workerThreads() === 0, "the warm-up Worker's thread to exit");
    const count = openFdCount();
    if (round >= 2 && count === previous) break;
    previous = count;
  }
  if (!warmed) {
    let count = openFdCount();
    let since = Date.now();
    await waitFor(
      () => {
        const now = openFdCount();
        if (now !== count) [count, since] = [now, Date.now()];
        return Date.now() - since >= 500;
      },
      "the fd count to settle",
      3_000,
    ).catch(() => undefined);
  }
  warmed = true;
  return openFdCount();
}

/**
 * Stops the engine, then waits (bounded) for its Worker's thread to exit and the process to
 * hold `before` fds again.
 */
export async function engineStoppedAndFdsBack(before: number): Promise<void> {
  await within(shutdownRelayEngine(), 10_000, "the relay engine to stop");
  let now = openFdCount();
  let threads = workerThreads();
  try {
    await waitFor(
      () => (threads = workerThreads()) === 0 && (now = openFdCount()) === before,
      "fds to be released",
      5_000,
    );
  } catch {
    assert.equal(threads, 0, "the engine Worker's thread is gone");
    assert.equal(now, before, `open fds: ${before} before, ${now} after`);
  }
}
