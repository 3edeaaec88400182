/**
 * Counting a proxy's syscalls with `strace -c -f`, for the syscalls row of bench/run.ts. strace
 * stops the traced process at every syscall, so what it gives is counts, never times.
 *
 * @module
 */

import { START_TIMEOUT_MS } from "./peers.ts";

/** Syscall name to the number of calls, over every thread of the process. */
export type SyscallCounts = Record<string, number>;

/**
 * Counts the syscalls of every thread of `pid` (those there at the start, and those it starts
 * meanwhile) while `body` runs. Attaching takes a moment per thread, so `body` starts only once
 * each thread's TracerPid is strace: a count that missed the first calls would be too low.
 */
export async function straced(pid: number, body: () => Promise<void>): Promise<SyscallCounts> {
  const out = await Deno.makeTempFile({ suffix: ".strace" });
  const child = new Deno.Command("strace", {
    args: ["-c", "-f", "-o", out, "-p", String(pid)],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  // Read as it comes, so that strace never blocks on a full pipe; kept for the error message.
  const stderr = new Response(child.stderr).text();
  let exited = false;
  child.status.then(() => exited = true);
  try {
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!tracedBy(pid, child.pid)) {
      // An strace that cannot attach (ptrace not permitted here, the process gone) exits.
      if (exited) throw new Error(`strace -p ${pid} failed: ${(await stderr).trim()}`);
      if (Date.now() > deadline) throw new Error(`strace -p ${pid} did not attach in time`);
      await new Promise((r) => setTimeout(r, 20));
    }
    await body();
  } finally {
    // SIGINT makes strace detach and write its summary; anything else would lose the counts.
    try {
      child.kill("SIGINT");
    } catch { /* exited already */ }
    await child.status;
    await stderr;
  }
  try {
    return parseSummary(await Deno.readTextFile(out));
  } finally {
    await Deno.remove(out).catch(() => {});
  }
}

/** Whether every thread of `pid` has `tracer` as its tracer. */
function tracedBy(pid: number, tracer: number): boolean {
  for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const status = Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/status`);
      if (Number(/^TracerPid:\s+(\d+)/m.exec(status)?.[1]) !== tracer) return false;
    } catch { /* the thread ended while listed */ }
  }
  return true;
}

/**
 * The calls column of `strace -c`'s table, by syscall. Its rows are `% time, seconds,
 * usecs/call, calls, [errors], syscall`: the errors column is blank for a syscall that never
 * failed, so calls is the fourth field and the name the last.
 */
export function parseSummary(text: string): SyscallCounts {
  const counts: SyscallCounts = {};
  for (const line of text.split("\n")) {
    const match = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$/.exec(line);
    if (match && match[2] !== "total") counts[match[2]] = Number(match[1]);
  }
  return counts;
}

/** The sum of all counts. */
export function totalCalls(counts: SyscallCounts): number {
  return Object.values(counts).reduce((a, b) => a + b, 0);
}
