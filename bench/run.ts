// deno-lint-ignore-file no-console -- a benchmark CLI: printing is its job
/**
 * The benchmark: the relay proxy against a direct connection, Deno `readable.pipeTo` and a
 * Deno read/write loop, interleaved in one run, as ratios, with real proxies outside Deno as
 * anchors (HAProxy with forced splice, and Go's io.Copy). External load generators (iperf3,
 * bench/benchtool.c) so that JS is not the bottleneck of the measurement.
 *
 *     deno task bench [--rounds N] [--only bulk1,bulk8,pingpong,churn,idle,memory]
 *
 * Needs root for `apt-get install iperf3 haproxy golang-go` when they are missing, and `cc`.
 *
 * @module
 */

import {
  ANCHORS,
  cpuSeconds,
  ensureTools,
  type Impl,
  IMPLS,
  nextPort,
  pssKiB,
  run,
  socketCount,
  start,
  stopChild,
  TOOL,
  withProxy,
} from "./peers.ts";

const BULK_IMPLS: Impl[] = [...IMPLS, "csplice", ...ANCHORS];
const ROW_IMPLS: Impl[] = [...IMPLS, ...ANCHORS];
/**
 * `go2` is left out here: an idle connection costs a goroutine pair and two sockets whatever
 * GOMAXPROCS is, so it would repeat `go` at the cost of another 1,000-connection run.
 */
const IDLE_IMPLS: Impl[] = [
  "hold",
  "relay",
  "proxy",
  "pipeto",
  "copy",
  "haproxy1",
  "haproxy2",
  "go",
];
/**
 * `direct` has no proxy process to measure; `copy` is the control that does not leak. The
 * anchors are left out: the row asks whether a Deno process keeps memory per connection, and
 * `copy` answers what Deno alone does; a Go heap's or HAProxy's pools' trend over 200,000
 * connections says nothing about that, and would add about 30 s per anchor to the run.
 */
const MEMORY_IMPLS: Impl[] = ["relay", "proxy", "copy"];
/** The memory row: rounds of short connections, 1 KiB each way from 8 clients, one held. */
const MEMORY_ROUNDS = 4;
const MEMORY_PER_ROUND = 50_000;

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i === -1 ? fallback : Deno.args[i + 1];
}
const ROUNDS = Number(arg("--rounds", "3"));
const ONLY = arg("--only", "bulk1,bulk8,pingpong,churn,idle,memory").split(",");

interface Sample {
  value: number;
  cpuPerGiB?: number;
  extra?: number[];
  /** The memory row: PSS in MiB after each round. */
  series?: number[];
}

async function bulk(impl: Impl, iperfPort: number, streams: number): Promise<Sample> {
  return await withProxy(impl, iperfPort, async (port, pid) => {
    const cpu0 = pid ? cpuSeconds(pid) : 0;
    const json = JSON.parse(
      await run("iperf3", [
        "-c",
        "127.0.0.1",
        "-p",
        String(port),
        "-t",
        "4",
        "-P",
        String(streams),
        "-J",
      ]),
    );
    const cpu = pid ? cpuSeconds(pid) - cpu0 : 0;
    const received = json.end.sum_received;
    return {
      value: received.bits_per_second / 8 / 2 ** 20,
      cpuPerGiB: pid ? cpu / (received.bytes / 2 ** 30) : undefined,
    };
  });
}

async function pingpong(impl: Impl, echoPort: number): Promise<Sample> {
  return await withProxy(impl, echoPort, async (port) => {
    const [p50, p99, p999] = (await run(TOOL, ["pingpong", String(port), "20000", "64"]))
      .trim().split(" ").map(Number);
    return { value: p50, extra: [p99, p999] };
  });
}

async function churn(impl: Impl, echoPort: number): Promise<Sample> {
  return await withProxy(impl, echoPort, async (port) => {
    const [rate, failed] = (await run(TOOL, ["churn", String(port), "8", "3", "1024"]))
      .trim().split(" ").map(Number);
    return { value: rate, extra: [failed] };
  });
}

async function idle(impl: Impl, echoPort: number): Promise<Sample> {
  return await withProxy(impl, echoPort, async (port, pid) => {
    if (!pid) return { value: 0 };
    // Warm up the proxy's paths (engine Worker, pools) before the baseline.
    const echo = impl === "hold" ? ["noecho"] : [];
    const warm = await start(TOOL, ["idle", String(port), "10", ...echo], true);
    await warm.stop();
    await new Promise((r) => setTimeout(r, 300));
    const before = pssKiB(pid);
    const holder = await start(TOOL, ["idle", String(port), "1000", ...echo], true);
    try {
      await new Promise((r) => setTimeout(r, 500));
      const cpu0 = cpuSeconds(pid);
      await new Promise((r) => setTimeout(r, 3000));
      const cpu = cpuSeconds(pid) - cpu0;
      const after = pssKiB(pid);
      return { value: (after - before) / 1000, extra: [cpu / 3 * 100] };
    } finally {
      await holder.stop();
    }
  });
}

/**
 * Memory over many short connections while one is held open, so that the relay engine never
 * stops: PSS after each of MEMORY_ROUNDS rounds of MEMORY_PER_ROUND connections, and its growth
 * from the first round's end to the last's (issue 7, item 3). A round's 50,000 connections are
 * past the proxy's warm-up (V8 grows its young generation over the first ~25,000), so the
 * growth after it is what stays per connection. The value is the PSS growth in MiB; extra holds
 * the growth of its anonymous part (the heap: the file-backed part is the deno binary's pages,
 * shared with any other deno process, so it moves when they start or stop), the failed
 * connections and the median rate.
 */
async function memory(impl: Impl, echoPort: number): Promise<Sample> {
  return await withProxy(impl, echoPort, async (port, pid) => {
    if (!pid) throw new Error("the memory row needs a proxy process");
    const holder = await start(TOOL, ["idle", String(port), "1"], true);
    try {
      // The baseline: sockets with the held connection alone, once a few short ones have gone
      // through and the count has stopped moving (the relay's proxy opens a few sockets of its
      // own in the second after its first relays: not per connection, but not there at once).
      await run(TOOL, ["churnn", String(port), "8", "1000", "1024"]);
      let sockets = socketCount(pid);
      for (let stable = 0, tries = 0; stable < 10 && tries < 250; tries++) {
        await new Promise((r) => setTimeout(r, 50));
        const now = socketCount(pid);
        stable = now === sockets ? stable + 1 : 0;
        sockets = now;
      }
      const pss: number[] = [];
      const anon: number[] = [];
      const rates: number[] = [];
      let failures = 0;
      for (let round = 0; round < MEMORY_ROUNDS; round++) {
        const [rate, failed] = (await run(TOOL, [
          "churnn",
          String(port),
          "8",
          String(MEMORY_PER_ROUND),
          "1024",
        ])).trim().split(" ").map(Number);
        rates.push(rate);
        failures += failed;
        // The proxy is done with the round once it holds no more sockets than with the held
        // connection alone: every short relay has ended and let go of its sockets.
        const deadline = Date.now() + 15_000;
        while (socketCount(pid) > sockets) {
          if (Date.now() > deadline) {
            throw new Error(
              `${impl}: the round's relays did not end (${
                socketCount(pid)
              } sockets open, ${sockets} before)`,
            );
          }
          await new Promise((r) => setTimeout(r, 20));
        }
        pss.push(pssKiB(pid) / 1024);
        anon.push(pssKiB(pid, "Pss_Anon") / 1024);
      }
      return {
        value: pss[pss.length - 1] - pss[0],
        extra: [anon[anon.length - 1] - anon[0], failures, median(rates)],
        series: pss,
      };
    } finally {
      await holder.stop();
    }
  });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function main(): Promise<void> {
  await ensureTools();
  const echoPort = nextPort();
  const iperfPort = nextPort();
  const echo = await start(TOOL, ["echo", String(echoPort)]);
  const iperf = new Deno.Command("iperf3", {
    args: ["-s", "-p", String(iperfPort)],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const results: Record<string, Record<Impl, Sample[]>> = {};
  const rows: Array<[string, (impl: Impl) => Promise<Sample>]> = [
    ["bulk1", (impl) => bulk(impl, iperfPort, 1)],
    ["bulk8", (impl) => bulk(impl, iperfPort, 8)],
    ["pingpong", (impl) => pingpong(impl, echoPort)],
    ["churn", (impl) => churn(impl, echoPort)],
    ["idle", (impl) => idle(impl, echoPort)],
    ["memory", (impl) => memory(impl, echoPort)],
  ];
  try {
    await new Promise((r) => setTimeout(r, 300));
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, measure] of rows) {
        if (!ONLY.includes(name)) continue;
        // One repetition of the memory row, whatever --rounds says: it takes 200,000
        // connections per implementation (about 30 s each here), and it measures a trend
        // within one process, not a rate that a noisy moment could skew.
        if (name === "memory" && round > 0) continue;
        results[name] ??= {} as Record<Impl, Sample[]>;
        const impls = name === "idle"
          ? IDLE_IMPLS
          : name === "memory"
          ? MEMORY_IMPLS
          : name.startsWith("bulk")
          ? BULK_IMPLS
          : ROW_IMPLS;
        for (const impl of impls) {
          const sample = await measure(impl);
          (results[name][impl] ??= []).push(sample);
          console.log(`round ${round + 1} ${name} ${impl}: ${JSON.stringify(sample)}`);
        }
      }
    }
  } finally {
    await echo.stop();
    await stopChild(iperf);
  }
  report(results);
}

function report(results: Record<string, Record<Impl, Sample[]>>): void {
  const med = (name: string, impl: Impl, pick: (s: Sample) => number | undefined): number =>
    median(results[name][impl].map(pick).filter((v): v is number => v !== undefined));
  /** The implementations a row measured, in the order of `list`. */
  const ran = (name: string, list: Impl[]): Impl[] =>
    list.filter((impl) => results[name][impl]?.length);
  const lines: string[] = [];
  lines.push(`Medians of ${ROUNDS} interleaved rounds; x = ratio to direct (or to pipeTo).`);
  for (const name of ["bulk1", "bulk8"]) {
    if (!results[name]) continue;
    const direct = med(name, "direct", (s) => s.value);
    for (const impl of ran(name, BULK_IMPLS)) {
      const mib = med(name, impl, (s) => s.value);
      const cpu = impl === "direct" ? NaN : med(name, impl, (s) => s.cpuPerGiB);
      const cpuPipe = med(name, "pipeto", (s) => s.cpuPerGiB);
      lines.push(
        `${name} ${impl.padEnd(8)} ${mib.toFixed(0).padStart(6)} MiB/s  ${
          (mib / direct).toFixed(2)
        }x direct` +
          (impl === "direct"
            ? ""
            : `  CPU ${cpu.toFixed(3)} s/GiB = ${(cpu / cpuPipe).toFixed(2)}x pipeTo`),
      );
    }
  }
  if (results.pingpong) {
    const d = [0, 1, 2].map((i) =>
      med("pingpong", "direct", (s) => i === 0 ? s.value : s.extra![i - 1])
    );
    for (const impl of ran("pingpong", ROW_IMPLS)) {
      const v = [0, 1, 2].map((i) =>
        med("pingpong", impl, (s) => i === 0 ? s.value : s.extra![i - 1])
      );
      lines.push(
        `pingpong ${impl.padEnd(8)} p50 ${v[0].toFixed(1)} us (${(v[0] / d[0]).toFixed(2)}x)  ` +
          `p99 ${v[1].toFixed(1)} us (${(v[1] / d[1]).toFixed(2)}x)  p99.9 ${v[2].toFixed(1)} us`,
      );
    }
  }
  if (results.churn) {
    const direct = med("churn", "direct", (s) => s.value);
    for (const impl of ran("churn", ROW_IMPLS)) {
      const rate = med("churn", impl, (s) => s.value);
      lines.push(
        `churn ${impl.padEnd(8)} ${rate.toFixed(0).padStart(6)} conn/s  ${
          (rate / direct).toFixed(2)
        }x direct`,
      );
    }
  }
  if (results.idle) {
    for (const impl of ran("idle", IDLE_IMPLS)) {
      const kib = med("idle", impl, (s) => s.value);
      const cpu = med("idle", impl, (s) => s.extra?.[0]);
      lines.push(`idle ${impl.padEnd(8)} ${kib.toFixed(1)} KiB PSS/conn  CPU ${cpu.toFixed(2)}%`);
    }
  }
  if (results.memory) {
    // One sample per implementation (the row runs once): its own numbers, no median.
    const total = MEMORY_ROUNDS * MEMORY_PER_ROUND;
    lines.push(
      `memory: PSS after each of ${MEMORY_ROUNDS} rounds of ${MEMORY_PER_ROUND} connections ` +
        `(8 clients, 1 KiB each way), one held open`,
    );
    for (const impl of MEMORY_IMPLS) {
      const sample = results.memory[impl]?.[0];
      if (!sample) continue;
      const [anon, failed, rate] = sample.extra!;
      const perConn = sample.value * 2 ** 20 / (total - MEMORY_PER_ROUND);
      const signed = (mib: number): string => `${mib >= 0 ? "+" : ""}${mib.toFixed(1)} MiB`;
      const series = sample.series!.map((v) => v.toFixed(0)).join(" -> ");
      lines.push(
        `memory ${impl.padEnd(6)} ${series} MiB  round 1 -> ${MEMORY_ROUNDS}: ` +
          `${signed(sample.value)} (${perConn.toFixed(0)} B/conn; anon ${signed(anon)})  ` +
          `${rate.toFixed(0)} conn/s, ${failed} failed`,
      );
    }
  }
  console.log("\n" + lines.join("\n"));
}

if (import.meta.main) await main();
