/**
 * Memory of a long-lived engine: proxy.ts (relay() in its engine Worker) must not keep memory
 * per finished connection while the engine stays alive (issue 7, item 3). One connection is held
 * open so the engine never stops, and rounds of short connections go through the proxy; the
 * proxy's memory (PSS, its anonymous part) must stay flat after two rounds of warm-up.
 *
 * Needs a C compiler (`cc`, `gcc` or `clang`) for the load tool bench/benchtool.c; .ci/run
 * installs one when missing.
 */
import assert from "node:assert/strict";
import { freePort, waitFor } from "./_helpers.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const PROXY = `${ROOT}proxy.ts`;
const CONFIG = `${ROOT}deno.json`;

/** Rounds of short connections, each connection 1 KiB each way from 8 client threads. */
const ROUNDS = 5;
const PER_ROUND = 10_000;
/**
 * Memory is compared from the end of this round on. The proxy's memory still settles during the
 * first round (a leak-free engine measured 35 to 41 MiB of anonymous memory after it, 41.6 to
 * 43.2 after the second): more than the bound would allow if it were the baseline.
 */
const BASELINE_ROUND = 2;
/**
 * The allowed growth of the proxy's memory from the end of the baseline round to the end of the
 * last, over (ROUNDS - BASELINE_ROUND) * PER_ROUND = 30,000 connections. The leak this guards
 * against keeps about 1 to 1.5 KiB per connection (measured here: 1.0 KiB, 30 MiB over these
 * rounds; the issue saw up to 1.5 KiB, 44 MiB), far above the bound. A leak-free engine measured
 * 0.4 to 3.6 MiB over these rounds (allocator and V8 old-space noise), well under it.
 */
const MAX_GROWTH_KIB = 8 * 1024;

const decoder = new TextDecoder();

/** Compiles bench/benchtool.c into `dir`; fails with a clear message without a C compiler. */
async function buildBenchtool(dir: string): Promise<string> {
  const out = `${dir}/benchtool`;
  for (const cc of ["cc", "gcc", "clang"]) {
    let result: Deno.CommandOutput;
    try {
      result = await new Deno.Command(cc, {
        args: ["-O2", "-pthread", "-o", out, `${ROOT}bench/benchtool.c`],
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) continue;
      throw error;
    }
    if (!result.success) {
      throw new Error(
        `${cc} could not compile bench/benchtool.c:\n${decoder.decode(result.stderr)}`,
      );
    }
    return out;
  }
  throw new Error(
    "No C compiler (cc, gcc or clang) found: this test compiles bench/benchtool.c as its load " +
      "tool. Install one (Debian: apt-get update && apt-get install -y gcc); .ci/run does.",
  );
}

/** A process whose stdout is read up to a line that `ready` accepts, then drained unread. */
interface Started {
  child: Deno.ChildProcess;
  /** Its stdout up to and including the ready line. */
  text: string;
  /** Kills it (SIGKILL if SIGTERM is not enough) and waits for it and its drained stdout. */
  stop(): Promise<void>;
}

async function startReady(
  cmd: string,
  args: string[],
  ready: (line: string) => boolean,
  what: string,
): Promise<Started> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  // A process that never says it is ready is killed, which ends its stdout and the wait below.
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  const reader = child.stdout.getReader();
  let text = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`${what} exited (or took over 20 s) before ready:\n${text}`);
      text += decoder.decode(value, { stream: true });
      if (text.split("\n").slice(0, -1).some(ready)) break;
    }
  } catch (error) {
    clearTimeout(timer);
    reader.releaseLock();
    await child.stdout.cancel().catch(() => {});
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
    throw error;
  }
  clearTimeout(timer);
  reader.releaseLock();
  // Later output (proxy.ts prints an access-log line per connection) is drained as raw bytes so
  // that the pipe never fills and stalls the process.
  const drained = child.stdout.pipeTo(new WritableStream()).catch(() => {});
  return {
    child,
    text,
    async stop(): Promise<void> {
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch {
          // already gone
        }
      }, 5_000);
      try {
        child.kill("SIGTERM");
      } catch {
        // already gone
      }
      await child.status;
      clearTimeout(timer);
      await drained;
    },
  };
}

/** Memory of a process from /proc/PID/smaps_rollup, KiB. */
function memoryKiB(pid: number): { pss: number; pssAnon: number } {
  const text = Deno.readTextFileSync(`/proc/${pid}/smaps_rollup`);
  const field = (name: string): number =>
    Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? NaN);
  return { pss: field("Pss"), pssAnon: field("Pss_Anon") };
}

Deno.test("proxy.ts: the relay engine's memory stays flat over many short connections while one is held", async () => {
  const dir = await Deno.makeTempDir();
  const stops: Array<() => Promise<void>> = [];
  let held: Deno.TcpConn | undefined;
  try {
    const tool = await buildBenchtool(dir);
    const echoPort = freePort();
    const echo = await startReady(
      tool,
      ["echo", String(echoPort)],
      (l) => l === "ready",
      "benchtool echo",
    );
    stops.push(echo.stop);

    const metricsPort = freePort();
    const configPath = `${dir}/proxy.toml`;
    await Deno.writeTextFile(
      configPath,
      `splice_mode = "auto"\ndrain_timeout_ms = 1000\n\n` +
        `[metrics]\naddress = "127.0.0.1:${metricsPort}"\n\n` +
        `[[listeners]]\naddress = "127.0.0.1:0"\n\n[clusters.echo]\n` +
        `frontends = [{ address = "127.0.0.1:0" }]\n` +
        `backends = [{ address = "127.0.0.1:${echoPort}" }]\n`,
    );
    const proxy = await startReady(
      Deno.execPath(),
      [
        "run",
        // V8 grows its young generation under allocation pressure, up to 16 MiB per semi-space,
        // in the main isolate and the engine Worker's: about 30 MiB of growth over the first
        // ~25,000 connections that then stays flat, measured with a leak-free engine. A 1 MiB
        // cap shrinks that warm-up to a few MiB within the first round, so that a short test
        // can tell a leak from it. It changes nothing outside V8's heap, where the leak is.
        "--v8-flags=--max-semi-space-size=1",
        "--config",
        CONFIG,
        "--allow-ffi",
        "--allow-net",
        "--allow-read",
        PROXY,
        "--config",
        configPath,
      ],
      (l) => l === "ready",
      "proxy.ts",
    );
    stops.push(proxy.stop);
    // The engine must be what relays: without FFI the copy loop would serve and prove nothing.
    assert.match(
      proxy.text,
      /^splice proxy \S+: \d+ engines? \(native data plane, splice\)$/m,
      proxy.text,
    );
    const port = Number(/^listening \S+ \(port (\d+)\)$/m.exec(proxy.text)?.[1]);
    assert.ok(port > 0, `no listening line in:\n${proxy.text}`);

    const openConnections = async (): Promise<number> => {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      return Number(/^splice_connections_open (\d+)$/m.exec(text)?.[1] ?? NaN);
    };

    // The held connection keeps the engine alive (it stops a second after its last relay).
    held = await Deno.connect({ hostname: "127.0.0.1", port });
    await held.write(new Uint8Array([7]));
    const byte = new Uint8Array(1);
    assert.equal(await held.read(byte), 1);
    assert.equal(byte[0], 7);

    const series: Array<{ pss: number; pssAnon: number; rate: number }> = [];
    for (let round = 0; round < ROUNDS; round++) {
      const out = await new Deno.Command(tool, {
        args: ["churnn", String(port), "8", String(PER_ROUND), "1024"],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(out.success, `benchtool churnn failed: ${decoder.decode(out.stderr)}`);
      const [rate, failed] = decoder.decode(out.stdout).trim().split(" ").map(Number);
      assert.equal(failed, 0, `round ${round + 1}: ${failed} connections failed`);
      // Every short relay has finished (and been counted) before memory is read.
      await waitFor(
        async () => (await openConnections()) === 1,
        "the proxy to finish the round's relays",
        15_000,
      );
      series.push({ ...memoryKiB(proxy.child.pid), rate: Math.round(rate) });
    }

    // PSS is what the issue reports. The bound is checked on its anonymous part (the heap,
    // where a leak lands): the file-backed part is the deno binary's pages, shared with every
    // other deno process on the machine, so it moves when those start or stop.
    const mib = (kib: number): number => Math.round(kib / 102.4) / 10;
    const report = {
      connectionsPerRound: PER_ROUND,
      pssMiB: series.map((s) => mib(s.pss)),
      pssAnonMiB: series.map((s) => mib(s.pssAnon)),
      connPerSecond: series.map((s) => s.rate),
    };
    // deno-lint-ignore no-console -- the series is the evidence when this fails, or passes
    console.log(JSON.stringify(report));
    const growth = series[ROUNDS - 1].pssAnon - series[BASELINE_ROUND - 1].pssAnon;
    const connections = (ROUNDS - BASELINE_ROUND) * PER_ROUND;
    assert.ok(
      growth < MAX_GROWTH_KIB,
      `the proxy's anonymous memory grew ${mib(growth)} MiB (${
        (growth * 1024 / connections).toFixed(0)
      } bytes per connection) over the ${connections} connections after round ` +
        `${BASELINE_ROUND}, with one held open; allowed ${mib(MAX_GROWTH_KIB)} MiB. ` +
        JSON.stringify(report),
    );
  } finally {
    held?.close();
    for (const stop of stops.reverse()) await stop();
    await Deno.remove(dir, { recursive: true });
  }
});
