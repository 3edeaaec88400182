// deno-lint-ignore-file no-console -- a benchmark CLI: printing is its job
/**
 * The benchmark: the relay proxy against a direct connection, Deno `readable.pipeTo` and a
 * Deno read/write loop, interleaved in one run, as ratios, with real proxies outside Deno as
 * anchors (HAProxy with forced splice, and Go's io.Copy). External load generators (iperf3,
 * bench/benchtool.c) so that JS is not the bottleneck of the measurement.
 *
 *     deno task bench [--rounds N] [--only ROW,...] [--default-engines]
 *
 * The rows: bulk1, bulk8, pingpong, pingpong2, churn1 (one client), churn (8 clients), stages1
 * and stages (churn from 1 and 8 clients through a listener with `expect_proxy`, one that routes
 * by SNI, and a plain one, proxy.ts and HAProxy at one thread each), idle,
 * memory (the default set), and syscalls, which runs only when --only names it: it needs strace
 * and ptrace, which a container may not allow, takes about 8 s per implementation, and counts
 * what does not change from run to run unless the code does.
 *
 * Ping-pong runs twice because on this kind of machine (a VM whose idle vCPUs halt: no guest halt
 * polling) waking a thread on the other CPU costs about 20 us, more than a loopback round trip's
 * own work (about 14 us), and where the scheduler puts the client and the echo server changes with
 * whatever else runs: unpinned, direct measured 14 or 53 us by that alone. `pingpong` pins the
 * client, its echo server and the proxy to one CPU, so that direct is the machine's floor and a
 * ratio is the proxy's work per round trip (there, haproxy2, go2 and proxy2 have their threads on
 * one CPU, and proxy.ts's default engine count, one per CPU it may run on, is one). `pingpong2`
 * puts the client and the echo server on different CPUs, as two hosts would be, and leaves the
 * proxy where the scheduler puts it: direct then pays one cross-CPU wakeup each way, and a proxy at
 * least as many, plus those of its own threads' hops. Both rows also run `floor`: benchtool's own
 * pair of processes on the same CPUs, no server, which `direct` should match if the client and the
 * echo server add nothing.
 *
 * proxy.ts runs as `proxy1` and `proxy2`, with `engines = 1` and `engines = 2`, set against
 * HAProxy's `nbthread 1` and `nbthread 2`; `--default-engines` runs it once more as `proxy`, its
 * config without the key (one engine per CPU it may run on). Like the anchors they log nothing
 * (`access_log = "off"`); `proxy1log`, in the churn, memory and syscalls rows, is `proxy1` with
 * its default access log.
 *
 * Needs root for `apt-get install iperf3 haproxy golang-go` (and strace for the syscalls row)
 * when they are missing, and `cc`.
 *
 * @module
 */

import { encodeProxyHeader } from "../mod.ts";
import {
  ANCHORS,
  BENCH_SERVER_NAME,
  cpuSeconds,
  ENGINE_IMPLS,
  ensureTools,
  type Impl,
  IMPLS,
  machineCpuSeconds,
  nextPort,
  pinned,
  pssKiB,
  run,
  settledSocketCount,
  socketsBackTo,
  type Stage,
  STAGE_IMPLS,
  start,
  stopChild,
  TOOL,
  withProxy,
} from "./peers.ts";
import { straced, type SyscallCounts, totalCalls } from "./syscalls.ts";
import { clientHello } from "../demo/client_hello.ts";

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i === -1 ? fallback : Deno.args[i + 1];
}
const ROUNDS = Number(arg("--rounds", "3"));
const ONLY = arg(
  "--only",
  "bulk1,bulk8,pingpong,pingpong2,churn1,churn,stages1,stages,idle,memory",
).split(",");
const DEFAULT_ENGINES = Deno.args.includes("--default-engines");

/** A row's list with proxy.ts as its engine variants (and as `proxy` when asked). */
function withEngines(list: Impl[]): Impl[] {
  return list.flatMap((i) =>
    i === "proxy" ? [...(DEFAULT_ENGINES ? [i] : []), ...ENGINE_IMPLS] : [i]
  );
}

const BULK_IMPLS = withEngines([...IMPLS, "csplice", ...ANCHORS]);
const ROW_IMPLS = withEngines([...IMPLS, ...ANCHORS]);
/** The churn rows add `proxy1log`: what proxy.ts's default access log costs per connection. */
const CHURN_IMPLS: Impl[] = [...ROW_IMPLS, "proxy1log"];
/** The stage rows: each stage beside the plain listener, proxy.ts and HAProxy at one thread. */
const STAGE_ROW_IMPLS: Impl[] = ["proxy1", "haproxy1", ...STAGE_IMPLS];
const PINGPONG_IMPLS: Impl[] = ["floor", ...ROW_IMPLS];
/**
 * `go2` is left out here: an idle connection costs a goroutine pair and two sockets whatever
 * GOMAXPROCS is, so it would repeat `go` at the cost of another 1,000-connection run.
 */
const IDLE_IMPLS = withEngines([
  "hold",
  "relay",
  "proxy",
  "pipeto",
  "copy",
  "haproxy1",
  "haproxy2",
  "go",
]);
/** The idle row's connections, each proved relayed by a 1-byte echo before it is held. */
const IDLE_CONNS = 1000;
/**
 * `direct` has no proxy process to measure; `copy` is the control that does not leak. The
 * anchors are left out: the row asks whether a Deno process keeps memory per connection, and
 * `copy` answers what Deno alone does; a Go heap's or HAProxy's pools' trend over 200,000
 * connections says nothing about that, and would add about 30 s per anchor to the run.
 */
const MEMORY_IMPLS = withEngines(["relay", "proxy", "proxy1log", "copy"]);
/** The memory row: rounds of short connections, 1 KiB each way from 8 clients, one held. */
const MEMORY_ROUNDS = 4;
const MEMORY_PER_ROUND = 50_000;
/**
 * The syscalls row: the module's two ways and one anchor of each kind at one thread, as the
 * relay has one engine thread. `direct` has no proxy to trace.
 */
const SYSCALL_IMPLS = withEngines(["relay", "proxy", "proxy1log", "haproxy1", "go"]);
/** Connections counted, one client, 1 KiB each way: enough that a stray call is noise. */
const SYSCALL_CONNS = 2000;
/**
 * The CPU of the ping-pong rows' echo server, the one `pingpong` pins everything to: the last,
 * as CPU 0 tends to take the machine's interrupts and timers. `pingpong2`'s client is on CPU 0.
 */
const PIN_CPU = String(navigator.hardwareConcurrency - 1);
const CLIENT2_CPU = "0";

interface Sample {
  value: number;
  cpuPerGiB?: number;
  /** Bulk rows: the whole machine's CPU seconds per GiB (client, server and proxy). */
  machinePerGiB?: number;
  extra?: number[];
  /** The memory row: PSS in MiB after each round. */
  series?: number[];
  /** The syscalls row: calls per connection, by syscall. */
  calls?: SyscallCounts;
}

async function bulk(impl: Impl, iperfPort: number, streams: number): Promise<Sample> {
  return await withProxy(impl, iperfPort, async (port, pid) => {
    const cpu0 = pid ? cpuSeconds(pid) : 0;
    const machine0 = machineCpuSeconds();
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
    const machine = machineCpuSeconds() - machine0;
    const cpu = pid ? cpuSeconds(pid) - cpu0 : 0;
    const received = json.end.sum_received;
    const gib = received.bytes / 2 ** 30;
    return {
      value: received.bits_per_second / 8 / 2 ** 20,
      cpuPerGiB: pid ? cpu / gib : undefined,
      machinePerGiB: machine / gib,
    };
  });
}

/**
 * 20,000 round trips of 64 B on one connection, the client on `clientCpu` and the proxy (every
 * thread) on `proxyCpu` (unpinned without it), against the echo server on PIN_CPU.
 */
async function pingpong(
  impl: Impl,
  echoPort: number,
  clientCpu: string,
  proxyCpu?: string,
): Promise<Sample> {
  const parse = (out: string): Sample => {
    const [p50, p99, p999] = out.trim().split(" ").map(Number);
    return { value: p50, extra: [p99, p999] };
  };
  const args = (port: number | string): string[] => [String(port), "20000", "64"];
  if (impl === "floor") return parse(await run(TOOL, ["floor", clientCpu, ...args(PIN_CPU)]));
  return await withProxy(
    impl,
    echoPort,
    async (port) => parse(await run(...pinned(clientCpu, TOOL, ["pingpong", ...args(port)]))),
    proxyCpu,
  );
}

/**
 * Short connections (1 KiB each way) for 3 s from `clients` clients, each one at a time, after
 * 1 s of the same that is not counted: every proxy is measured in its steady state, not in the
 * first second after its start (a JIT runtime compiles its hot paths then, and its process is
 * still loading; measured here, proxy.ts's first 3 s ran 4-6% below the next 3 s, HAProxy's 1-4%).
 * `prefix`: benchtool's arguments for what each connection sends first (see stagePrefix).
 */
async function churn(
  impl: Impl,
  echoPort: number,
  clients: number,
  prefix: string[] = [],
): Promise<Sample> {
  return await withProxy(impl, echoPort, async (port) => {
    await run(TOOL, ["churn", String(port), String(clients), "1", "1024", ...prefix]);
    const args = ["churn", String(port), String(clients), "3", "1024", ...prefix];
    const [rate, failed] = (await run(TOOL, args)).trim().split(" ").map(Number);
    return { value: rate, extra: [failed] };
  });
}

/**
 * What a connection of the stage rows sends first: a PROXY v1 header (taken off by the proxy)
 * or a ClientHello naming BENCH_SERVER_NAME (relayed, so the echo sends it back). In files
 * written once per run, for benchtool.
 */
async function stagePrefixes(): Promise<Record<Stage, string[]>> {
  const header = encodeProxyHeader(
    1,
    { hostname: "192.0.2.10", port: 40000 },
    { hostname: "127.0.0.1", port: 8080 },
  );
  const pp = await Deno.makeTempFile({ suffix: ".pp" });
  await Deno.writeFile(pp, header);
  const sni = await Deno.makeTempFile({ suffix: ".hello" });
  await Deno.writeFile(sni, clientHello(BENCH_SERVER_NAME));
  return { pp: [pp], sni: [sni, "echoed"] };
}

/** The stage of a stage row's implementation; undefined for the plain ones. */
function stageOf(impl: Impl): Stage | undefined {
  return impl.endsWith("pp") ? "pp" : impl.endsWith("sni") ? "sni" : undefined;
}

/**
 * PSS growth per connection while IDLE_CONNS relayed idle connections are held, after 10 idle
 * ones: the value, and with it what a process pays once as its load first grows (a JIT
 * compiling the hot paths and the binary's pages that takes, heaps growing a step). Then
 * IDLE_CONNS more are held beside them, and their growth is the marginal cost of an idle
 * connection, with every earlier one still open (no memory freed by others to reuse). extra
 * holds the CPU while idle, the first growth's anonymous part, and the marginal growth and its
 * anonymous part (the file-backed rest is the deno binary's pages, shared with every deno
 * process on the machine).
 */
async function idle(impl: Impl, echoPort: number): Promise<Sample> {
  return await withProxy(impl, echoPort, async (port, pid) => {
    if (!pid) return { value: 0 };
    const echo = impl === "hold" ? ["noecho"] : [];
    const warm = await start(TOOL, ["idle", String(port), "10", ...echo], true);
    await warm.stop();
    await new Promise((r) => setTimeout(r, 300));
    const base = [pssKiB(pid), pssKiB(pid, "Pss_Anon")];
    const holders = [await start(TOOL, ["idle", String(port), String(IDLE_CONNS), ...echo], true)];
    try {
      await new Promise((r) => setTimeout(r, 500));
      const cpu0 = cpuSeconds(pid);
      await new Promise((r) => setTimeout(r, 3000));
      const cpu = (cpuSeconds(pid) - cpu0) / 3 * 100;
      const first = [pssKiB(pid), pssKiB(pid, "Pss_Anon")];
      holders.push(await start(TOOL, ["idle", String(port), String(IDLE_CONNS), ...echo], true));
      await new Promise((r) => setTimeout(r, 500));
      const second = [pssKiB(pid), pssKiB(pid, "Pss_Anon")];
      const per = (to: number[], from: number[], i: number) => (to[i] - from[i]) / IDLE_CONNS;
      return {
        value: per(first, base, 0),
        extra: [cpu, per(first, base, 1), per(second, first, 0), per(second, first, 1)],
      };
    } finally {
      for (const holder of holders) await holder.stop();
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
      // through.
      await run(TOOL, ["churnn", String(port), "8", "1000", "1024"]);
      const sockets = await settledSocketCount(pid);
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
        await socketsBackTo(pid, sockets, impl);
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

/**
 * Syscalls per connection: SYSCALL_CONNS short connections from one client (1 KiB each way),
 * counted with strace over every thread of the proxy from before the first connect until the
 * proxy holds no socket of theirs. A few connections go through first, so that what starts once
 * (an engine Worker, a pipe pool) is not spread over the count. Then strace stays attached for
 * as long again with no traffic: the calls that come with time and not with connections (timers,
 * Go's sysmon), which the count carries too; extra holds them per connection, and the failures.
 */
async function syscalls(impl: Impl, echoPort: number): Promise<Sample> {
  return await withProxy(impl, echoPort, async (port, pid) => {
    if (!pid) throw new Error("the syscalls row needs a proxy process");
    const churnn = (count: number): Promise<string> =>
      run(TOOL, ["churnn", String(port), "1", String(count), "1024"]);
    await churnn(50);
    const sockets = await settledSocketCount(pid);
    let failed = 0;
    let elapsed = 0;
    const counts = await straced(pid, async () => {
      const t0 = Date.now();
      failed = Number((await churnn(SYSCALL_CONNS)).trim().split(" ")[1]);
      await socketsBackTo(pid, sockets, impl);
      elapsed = Date.now() - t0;
    });
    const background = await straced(pid, () => new Promise((r) => setTimeout(r, elapsed)));
    const calls: SyscallCounts = {};
    for (const [name, n] of Object.entries(counts)) calls[name] = n / SYSCALL_CONNS;
    return {
      value: totalCalls(counts) / SYSCALL_CONNS,
      extra: [totalCalls(background) / SYSCALL_CONNS, failed],
      calls,
    };
  });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * Holds a PM QoS request for no CPU exit latency while the run lasts (the kernel drops it when
 * the fd closes). On this VM an idle vCPU halts, and waking it costs about 20 us: without the
 * request every cross-CPU hand-off pays that, which swamps per-hop costs and compresses every
 * ratio (a direct 64 B round trip: 53 us, 18 us with it). `--no-pmqos` measures without.
 */
function holdPmQos(): Deno.FsFile | null {
  if (Deno.args.includes("--no-pmqos")) return null;
  try {
    const file = Deno.openSync("/dev/cpu_dma_latency", { write: true });
    file.writeSync(new Uint8Array(new Int32Array([0]).buffer));
    return file;
  } catch {
    return null;
  }
}

async function main(): Promise<void> {
  const pmQos = holdPmQos();
  console.log(pmQos ? "PM QoS held: cpu_dma_latency 0" : "PM QoS not held: idle vCPUs halt");
  await ensureTools({ strace: ONLY.includes("syscalls") });
  const echoPort = nextPort();
  const pinnedEchoPort = nextPort();
  const iperfPort = nextPort();
  const echo = await start(TOOL, ["echo", String(echoPort)]);
  const prefixes: Record<string, string[]> = await stagePrefixes();
  // The ping-pong rows' own echo server: its connection threads inherit its CPU.
  const pinnedEcho = await start(TOOL, ["echo", String(pinnedEchoPort)], false, undefined, PIN_CPU);
  const iperf = new Deno.Command("iperf3", {
    args: ["-s", "-p", String(iperfPort)],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const results: Record<string, Record<Impl, Sample[]>> = {};
  const rows: Array<[string, (impl: Impl) => Promise<Sample>]> = [
    ["bulk1", (impl) => bulk(impl, iperfPort, 1)],
    ["bulk8", (impl) => bulk(impl, iperfPort, 8)],
    ["pingpong", (impl) => pingpong(impl, pinnedEchoPort, PIN_CPU, PIN_CPU)],
    ["pingpong2", (impl) => pingpong(impl, pinnedEchoPort, CLIENT2_CPU)],
    ["churn1", (impl) => churn(impl, echoPort, 1)],
    ["churn", (impl) => churn(impl, echoPort, 8)],
    ["stages1", (impl) => churn(impl, echoPort, 1, prefixes[stageOf(impl) ?? "none"] ?? [])],
    ["stages", (impl) => churn(impl, echoPort, 8, prefixes[stageOf(impl) ?? "none"] ?? [])],
    ["idle", (impl) => idle(impl, echoPort)],
    ["memory", (impl) => memory(impl, echoPort)],
    ["syscalls", (impl) => syscalls(impl, echoPort)],
  ];
  try {
    await new Promise((r) => setTimeout(r, 300));
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, measure] of rows) {
        if (!ONLY.includes(name)) continue;
        // One repetition of the memory row, whatever --rounds says: it takes 200,000
        // connections per implementation (about 30 s each here), and it measures a trend
        // within one process, not a rate that a noisy moment could skew. The same for the
        // syscalls row: a count, which a noisy moment does not move.
        if ((name === "memory" || name === "syscalls") && round > 0) continue;
        results[name] ??= {} as Record<Impl, Sample[]>;
        const impls = name === "idle"
          ? IDLE_IMPLS
          : name === "memory"
          ? MEMORY_IMPLS
          : name === "syscalls"
          ? SYSCALL_IMPLS
          : name.startsWith("pingpong")
          ? PINGPONG_IMPLS
          : name.startsWith("bulk")
          ? BULK_IMPLS
          : name.startsWith("churn")
          ? CHURN_IMPLS
          : name.startsWith("stages")
          ? STAGE_ROW_IMPLS
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
    await pinnedEcho.stop();
    for (const [path] of Object.values(prefixes)) await Deno.remove(path).catch(() => {});
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
      // What the proxy adds to the machine's CPU per GiB, over iperf3's own (direct).
      const added = med(name, impl, (s) => s.machinePerGiB) -
        med(name, "direct", (s) => s.machinePerGiB);
      lines.push(
        `${name} ${impl.padEnd(8)} ${mib.toFixed(0).padStart(6)} MiB/s  ${
          (mib / direct).toFixed(2)
        }x direct` +
          (impl === "direct"
            ? `  machine ${med(name, impl, (s) => s.machinePerGiB).toFixed(3)} s/GiB`
            : `  CPU ${cpu.toFixed(3)} s/GiB = ${(cpu / cpuPipe).toFixed(2)}x pipeTo  machine ` +
              `${med(name, impl, (s) => s.machinePerGiB).toFixed(3)} s/GiB ` +
              `(${added >= 0 ? "+" : ""}${added.toFixed(3)} over direct)`),
      );
    }
  }
  for (const name of ["pingpong", "pingpong2"]) {
    if (!results[name]) continue;
    lines.push(
      name === "pingpong"
        ? `pingpong: client, echo server and proxy on CPU ${PIN_CPU}`
        : `pingpong2: client on CPU ${CLIENT2_CPU}, echo server on CPU ${PIN_CPU}, ` +
          "proxy where the scheduler puts it",
    );
    const d = [0, 1, 2].map((i) => med(name, "direct", (s) => i === 0 ? s.value : s.extra![i - 1]));
    for (const impl of ran(name, PINGPONG_IMPLS)) {
      const v = [0, 1, 2].map((i) => med(name, impl, (s) => i === 0 ? s.value : s.extra![i - 1]));
      lines.push(
        `${name} ${impl.padEnd(8)} p50 ${v[0].toFixed(1)} us (${(v[0] / d[0]).toFixed(2)}x)  ` +
          `p99 ${v[1].toFixed(1)} us (${(v[1] / d[1]).toFixed(2)}x)  p99.9 ${v[2].toFixed(1)} us`,
      );
    }
  }
  for (const name of ["stages1", "stages"]) {
    if (!results[name]) continue;
    lines.push(
      `${name}: ${name === "stages" ? 8 : 1} client(s), 1 KiB each way; pp: a PROXY v1 header ` +
        "first, sni: a ClientHello routed by its server name",
    );
    for (const impl of ran(name, STAGE_ROW_IMPLS)) {
      const rate = med(name, impl, (s) => s.value);
      const plain = med(name, impl.startsWith("haproxy") ? "haproxy1" : "proxy1", (s) => s.value);
      lines.push(
        `${name} ${impl.padEnd(11)} ${rate.toFixed(0).padStart(6)} conn/s  ${
          (rate / plain).toFixed(2)
        }x its plain listener`,
      );
    }
  }
  for (const name of ["churn1", "churn"]) {
    if (!results[name]) continue;
    const direct = med(name, "direct", (s) => s.value);
    for (const impl of ran(name, CHURN_IMPLS)) {
      const rate = med(name, impl, (s) => s.value);
      lines.push(
        `${name} ${impl.padEnd(9)} ${rate.toFixed(0).padStart(6)} conn/s  ${
          (rate / direct).toFixed(2)
        }x direct`,
      );
    }
  }
  if (results.idle) {
    lines.push(
      `idle: PSS growth per connection, ${IDLE_CONNS} relayed idle connections held, then ` +
        `${IDLE_CONNS} more beside them (all of it, and its anonymous part)`,
    );
    for (const impl of ran("idle", IDLE_IMPLS)) {
      const [kib, cpu, anon, next, nextAnon] = [0, 1, 2, 3, 4].map((i) =>
        med("idle", impl, (s) => i === 0 ? s.value : s.extra?.[i - 1])
      );
      lines.push(
        `idle ${impl.padEnd(8)} first ${kib.toFixed(1)} KiB/conn (anon ${anon.toFixed(1)})  ` +
          `next ${next.toFixed(1)} (anon ${nextAnon.toFixed(1)})  CPU ${cpu.toFixed(2)}%`,
      );
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
        `memory ${impl.padEnd(9)} ${series} MiB  round 1 -> ${MEMORY_ROUNDS}: ` +
          `${signed(sample.value)} (${perConn.toFixed(0)} B/conn; anon ${signed(anon)})  ` +
          `${rate.toFixed(0)} conn/s, ${failed} failed`,
      );
    }
  }
  if (results.syscalls) {
    lines.push(
      `syscalls: per connection, ${SYSCALL_CONNS} connections (1 client, 1 KiB each way), ` +
        "all threads, strace -c -f (a count: strace slows the proxy)",
    );
    for (const impl of SYSCALL_IMPLS) {
      const sample = results.syscalls[impl]?.[0];
      if (!sample) continue;
      const [background, failed] = sample.extra!;
      const top = Object.entries(sample.calls!).sort((a, b) => b[1] - a[1]).slice(0, 8)
        .map(([call, n]) => `${call} ${n.toFixed(2)}`).join(", ");
      lines.push(
        `syscalls ${impl.padEnd(9)} ${sample.value.toFixed(1)}/conn (idle for as long: ` +
          `${background.toFixed(2)}/conn; ${failed} failed)  ${top}`,
      );
    }
  }
  console.log("\n" + lines.join("\n"));
}

if (import.meta.main) await main();
