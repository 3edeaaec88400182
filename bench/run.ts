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

const ROOT = new URL("../", import.meta.url).pathname;
const BUILD = `${ROOT}bench/.build`;
const TOOL = `${BUILD}/benchtool`;
const GOPROXY = `${BUILD}/goproxy`;
/** `proxy` is the module's own proxy (proxy.ts, text access log to a pipe) on one backend. */
const IMPLS = ["direct", "relay", "proxy", "pipeto", "copy"] as const;
/**
 * The anchors, run in every row they make sense for, so that each run shows where the relay
 * stands against programs people deploy, on the same machine at the same moment:
 * `haproxy1` / `haproxy2` are HAProxy in TCP mode with splice forced both ways, `nbthread 1` (as
 * relay() has one engine thread) and `nbthread 2` (both cores); `go` / `go2` are
 * bench/goproxy.go, io.Copy both ways (splice(2) underneath), with GOMAXPROCS=1 and 2.
 */
const ANCHORS = ["haproxy1", "haproxy2", "go", "go2"] as const;
/**
 * `hold` accepts and connects but moves nothing: Deno's own floor for two open conns.
 * `csplice` is a C proxy, a blocking splice loop per direction (bench/benchtool.c): the
 * kernel's floor for a splice relay on this machine, for the bulk rows.
 */
type Impl = typeof IMPLS[number] | typeof ANCHORS[number] | "hold" | "csplice";
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
const CLOCK_TICKS = 100;
/** How long a process may take to say it is ready, and to exit once told to stop. */
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i === -1 ? fallback : Deno.args[i + 1];
}
const ROUNDS = Number(arg("--rounds", "3"));
const ONLY = arg("--only", "bulk1,bulk8,pingpong,churn,idle,memory").split(",");

async function run(cmd: string, args: string[], env?: Record<string, string>): Promise<string> {
  const out = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/**
 * A command's path: on PATH, or in /usr/sbin (Debian's haproxy is there, and a PATH without
 * the sbin directories is common outside a root login shell). Null when it is nowhere.
 */
function findCommand(name: string): string | null {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":").filter(Boolean), "/usr/sbin", "/sbin"];
  for (const dir of dirs) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
    } catch { /* not here */ }
  }
  return null;
}

/** The HAProxy binary, found by ensureTools(). */
let haproxy = "haproxy";

/**
 * Installs the peers the rows run (Debian packages, as root) when missing, and builds the two
 * programs of this folder: the anchors are real programs, installed here, never assumed present.
 */
async function ensureTools(): Promise<void> {
  const packages: Array<[command: string, pkg: string]> = [
    ["iperf3", "iperf3"],
    ["haproxy", "haproxy"],
    ["go", "golang-go"],
  ];
  const missing = packages.filter(([command]) => !findCommand(command)).map(([, pkg]) => pkg);
  if (missing.length > 0) {
    // The package lists first, once: a fresh machine may have none, or stale ones.
    console.log(`installing ${missing.join(", ")} (apt-get)`);
    const env = { DEBIAN_FRONTEND: "noninteractive" };
    await run("apt-get", ["update"], env);
    await run("apt-get", ["install", "-y", ...missing], env);
  }
  haproxy = findCommand("haproxy") ?? "haproxy";
  await Deno.mkdir(BUILD, { recursive: true });
  await run("cc", ["-O2", "-pthread", "-o", TOOL, `${ROOT}bench/benchtool.c`]);
  // A single-file main package of the standard library: no module, nothing to download. Go's
  // home and caches stay under bench/.build, so the build works as root with any HOME (CI's
  // may be unset or read-only), and GOTOOLCHAIN=local forbids fetching a newer toolchain.
  const goHome = `${BUILD}/go`;
  await run(findCommand("go") ?? "go", ["build", "-o", GOPROXY, `${ROOT}bench/goproxy.go`], {
    HOME: goHome,
    GOCACHE: `${goHome}/cache`,
    GOPATH: `${goHome}/path`,
    GOFLAGS: "",
    GOTOOLCHAIN: "local",
    GO111MODULE: "auto",
  });
}

interface Proc {
  child: Deno.ChildProcess;
  pid: number;
  stop(): Promise<void>;
}

/**
 * Stops a child: SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_MS, and always
 * waits for its status, so no run leaves a process behind on the two cores of the next one.
 */
async function stopChild(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) => {
    timer = setTimeout(() => resolve("late"), STOP_TIMEOUT_MS);
  });
  try {
    if (await Promise.race([child.status, late]) === "late") {
      try {
        child.kill("SIGKILL");
      } catch { /* gone just now */ }
    }
    await child.status;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Starts a process and waits for it to print "ready" (within START_TIMEOUT_MS, or it is killed).
 * `env` adds to the harness's environment.
 */
async function start(
  cmd: string,
  args: string[],
  stdin = false,
  env?: Record<string, string>,
): Promise<Proc> {
  const child = new Deno.Command(cmd, {
    args,
    env,
    stdout: "piped",
    stderr: "inherit",
    stdin: stdin ? "piped" : "null",
  }).spawn();
  const reader = child.stdout.getReader();
  const decoder = new TextDecoder();
  let seen = "";
  // A process that neither prints nor exits would hold a read forever: killing it at the
  // deadline ends its stdout, and so the read.
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, START_TIMEOUT_MS);
  try {
    while (!seen.includes("ready")) {
      const { value, done } = await reader.read();
      if (done) {
        throw new Error(
          `${cmd} ${
            timedOut ? `did not start within ${START_TIMEOUT_MS} ms` : "exited before ready"
          }`,
        );
      }
      seen += decoder.decode(value, { stream: true });
    }
  } catch (error) {
    reader.releaseLock();
    await child.stdout.cancel().catch(() => {});
    if (stdin) await child.stdin.close().catch(() => {});
    await stopChild(child);
    throw error;
  } finally {
    clearTimeout(timer);
  }
  // Later output (access logs) goes to /dev/null as raw bytes: decoding it here would spend
  // this harness's CPU on the same two cores as the proxy being measured.
  reader.releaseLock();
  const sink = await Deno.open("/dev/null", { write: true });
  child.stdout.pipeTo(sink.writable).catch(() => {});
  return {
    child,
    pid: child.pid,
    async stop(): Promise<void> {
      if (stdin) await child.stdin.close().catch(() => {});
      await stopChild(child);
    },
  };
}

/**
 * The inode of the socket listening on 127.0.0.1:port, from /proc/net/tcp; null if none is.
 * Lets the harness see that a program which prints nothing (HAProxy) is up without connecting
 * to it: a probe connection would be relayed to the backend, and iperf3's server takes every
 * connection for a test's control channel.
 */
function listeningInode(port: number): string | null {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  for (const line of Deno.readTextFileSync("/proc/net/tcp").split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields[1] === local && fields[3] === "0A") return fields[9];
  }
  return null;
}

/**
 * HAProxy in the foreground (`-db`: no daemon, no master process), so the child is the one
 * process that holds every thread and its /proc CPU and PSS are HAProxy's whole cost. It says
 * nothing when up: ready is when its own socket listens on `port` (bounded by
 * START_TIMEOUT_MS).
 */
async function startHaproxy(threads: number, port: number, backendPort: number): Promise<Proc> {
  const config = await Deno.makeTempFile({ suffix: ".cfg" });
  await Deno.writeTextFile(config, haproxyConfig(threads, port, backendPort));
  const child = new Deno.Command(haproxy, {
    args: ["-db", "-f", config],
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const stop = async (): Promise<void> => {
    await stopChild(child);
    await Deno.remove(config).catch(() => {});
  };
  try {
    let exited = false;
    child.status.then(() => exited = true);
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (exited) throw new Error("haproxy exited before listening");
      const inode = listeningInode(port);
      if (inode && ownsSocket(child.pid, inode)) break;
      if (Date.now() > deadline) {
        throw new Error(`haproxy did not listen within ${START_TIMEOUT_MS} ms`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { child, pid: child.pid, stop };
}

/** Whether the process holds the socket with this inode (and not some other program). */
function ownsSocket(pid: number, inode: string): boolean {
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      if (Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`) === `socket:[${inode}]`) return true;
    } catch { /* closed while listed */ }
  }
  return false;
}

/**
 * HAProxy as a plain L4 proxy to one backend, splicing both ways whatever the traffic looks
 * like (`splice-auto` would decide per stream; the anchor is the splice path itself). No `log`
 * line: HAProxy then logs nothing, where proxy.ts writes an access log line per connection.
 */
function haproxyConfig(threads: number, port: number, backendPort: number): string {
  return [
    "global",
    `  nbthread ${threads}`,
    // The idle row holds 1,000 connections (2,000 sockets) and churn has more closing at once.
    // HAProxy sizes its fd limit from this (about 2 per connection, and 2 per pipe, a quarter
    // of maxconn) and refuses to start if it cannot raise it: 5,000 fits under a hard limit of
    // 20,000, as on these machines.
    "  maxconn 5000",
    // 1 MiB pipes, as relay() and csplice use by default: the same bytes per splice call, so
    // CPU per GiB compares the programs, not pipe sizes (HAProxy's default is the system's,
    // 64 KiB, at which the relay measured about twice the CPU per GiB).
    "  tune.pipesize 1048576",
    "defaults",
    "  mode tcp",
    "  maxconn 5000",
    "  timeout connect 5s",
    // Longer than any row: an idle connection is never cut while it is measured.
    "  timeout client 1h",
    "  timeout server 1h",
    "  option splice-request",
    "  option splice-response",
    "  no option splice-auto",
    "frontend bench",
    `  bind 127.0.0.1:${port}`,
    "  default_backend bench",
    "backend bench",
    `  server backend 127.0.0.1:${backendPort}`,
    "",
  ].join("\n");
}

function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

function pssKiB(pid: number, field = "Pss"): number {
  const text = Deno.readTextFileSync(`/proc/${pid}/smaps_rollup`);
  return Number(new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? NaN);
}

/** Sockets a process holds open. */
function socketCount(pid: number): number {
  let count = 0;
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      if (Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`).startsWith("socket:")) count++;
    } catch { /* closed while listed */ }
  }
  return count;
}

let nextPort = 21_000 + Math.floor(Math.random() * 1000) * 10;

async function withProxy<T>(
  impl: Impl,
  backendPort: number,
  body: (port: number, pid: number | null) => Promise<T>,
): Promise<T> {
  if (impl === "direct") return await body(backendPort, null);
  const port = nextPort++;
  const proxy = await launch(impl, port, backendPort);
  try {
    return await body(port, proxy.pid);
  } finally {
    await proxy.stop();
  }
}

/** Starts one implementation's proxy process on `port`, relaying to `backendPort`. */
async function launch(impl: Impl, port: number, backendPort: number): Promise<Proc> {
  switch (impl) {
    case "csplice":
      return await start(TOOL, ["spliceproxy", String(port), String(backendPort)]);
    case "haproxy1":
    case "haproxy2":
      return await startHaproxy(impl === "haproxy1" ? 1 : 2, port, backendPort);
    case "go":
    case "go2":
      // GOMAXPROCS=1 for one thread running Go code, as relay() has one engine thread (the
      // runtime's few helper threads, sysmon and the like, are in the same process's CPU).
      return await start(GOPROXY, [String(port), String(backendPort)], false, {
        GOMAXPROCS: impl === "go" ? "1" : "2",
      });
    case "proxy":
      return await start(Deno.execPath(), [
        "run",
        "-A",
        `${ROOT}proxy.ts`,
        "--config",
        await proxyConfig(port, backendPort),
      ]);
    default:
      return await start(Deno.execPath(), [
        "run",
        "-A",
        `${ROOT}bench/proxy.ts`,
        impl,
        String(port),
        String(backendPort),
      ]);
  }
}

/** A one-listener, one-backend config for proxy.ts, in a temporary file. */
async function proxyConfig(port: number, backendPort: number): Promise<string> {
  const path = await Deno.makeTempFile({ suffix: ".toml" });
  await Deno.writeTextFile(
    path,
    `[[listeners]]\naddress = "127.0.0.1:${port}"\n\n[clusters.bench]\n` +
      `frontends = [{ address = "127.0.0.1:${port}" }]\n` +
      `backends = [{ address = "127.0.0.1:${backendPort}" }]\n`,
  );
  return path;
}

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
  const echoPort = nextPort++;
  const iperfPort = nextPort++;
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
