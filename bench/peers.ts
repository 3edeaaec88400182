// deno-lint-ignore-file no-console -- part of a benchmark CLI: printing is its job
/**
 * The benchmark's peers: installing and building them, starting each proxy under test (the
 * module's, HAProxy, Go, the Deno baselines) and reading what a process costs from /proc.
 *
 * @module
 */

export const ROOT = new URL("../", import.meta.url).pathname;
export const BUILD = `${ROOT}bench/.build`;
export const TOOL = `${BUILD}/benchtool`;
export const GOPROXY = `${BUILD}/goproxy`;
/** `proxy` is the module's own proxy (proxy.ts; see PROXY_ENGINES) on one backend. */
export const IMPLS = ["direct", "relay", "proxy", "pipeto", "copy"] as const;
/**
 * The anchors, run in every row they make sense for, so that each run shows where the relay
 * stands against programs people deploy, on the same machine at the same moment:
 * `haproxy1` / `haproxy2` are HAProxy in TCP mode with splice forced both ways, `nbthread 1` (as
 * relay() has one engine thread) and `nbthread 2` (both cores); `go` / `go2` are
 * bench/goproxy.go, io.Copy both ways (splice(2) underneath), with GOMAXPROCS=1 and 2.
 */
export const ANCHORS = ["haproxy1", "haproxy2", "go", "go2"] as const;
/**
 * The stages of issue 10 beside a plain listener, engines=1 against HAProxy nbthread 1: `pp`
 * expects a PROXY v1 header on each connection (`expect_proxy`, HAProxy's `accept-proxy`), `sni`
 * routes by the ClientHello's server name (a frontend `hostname`, HAProxy's `req_ssl_sni`).
 */
export const STAGE_IMPLS = [
  "proxy1pp",
  "proxy1sni",
  "haproxy1pp",
  "haproxy1sni",
] as const;
/** A listener's stage in the stage rows. */
export type Stage = "pp" | "sni";
/** The server name the `sni` rows route by. */
export const BENCH_SERVER_NAME = "bench.example.com";
/**
 * `hold` accepts and connects but moves nothing: Deno's own floor for two open conns.
 * `csplice` is a C proxy, a blocking splice loop per direction (bench/benchtool.c): the
 * kernel's floor for a splice relay on this machine, for the bulk rows. `floor` (ping-pong
 * rows) is no proxy and no echo server either: `benchtool floor`, the machine's floor for a
 * loopback round trip, against which `direct` shows what the client and echo server cost.
 */
export type Impl =
  | typeof IMPLS[number]
  | typeof ANCHORS[number]
  | keyof typeof PROXY_ENGINES
  | typeof STAGE_IMPLS[number]
  | "hold"
  | "csplice"
  | "floor";
/**
 * proxy.ts under each name: the `engines` key its config sets (null: the key left out, so its
 * default) and its `access_log`. The anchors log nothing (HAProxy's config has no `log` line; Go's
 * proxy prints nothing), so the rows that stand beside them run proxy.ts with `access_log = "off"`
 * too; `proxy1log` is `proxy1` with its default access log (a line per connection, to a pipe the
 * harness drains), run in the churn rows, where that line is a measurable share of the work. A
 * variant is one line here; bench/run.ts runs proxy1 and proxy2, `proxy1log` in the churn rows,
 * and `proxy` only with `--default-engines`.
 */
export const PROXY_ENGINES = {
  proxy: { engines: null, accessLog: "off" },
  proxy1: { engines: 1, accessLog: "off" },
  proxy2: { engines: 2, accessLog: "off" },
  proxy1log: { engines: 1, accessLog: "all" },
  proxy1pp: { engines: 1, accessLog: "off", stage: "pp" },
  proxy1sni: { engines: 1, accessLog: "off", stage: "sni" },
} as const;
function isProxyTs(impl: Impl): impl is keyof typeof PROXY_ENGINES {
  return Object.hasOwn(PROXY_ENGINES, impl);
}
/** The variants of `proxy` that bench/run.ts runs in its place, in every row. */
export const ENGINE_IMPLS: Impl[] = ["proxy1", "proxy2"];
/** Clock ticks per second in /proc/PID/stat. */
export const CLOCK_TICKS = 100;
/** How long a process may take to say it is ready, and to exit once told to stop. */
export const START_TIMEOUT_MS = 15_000;
export const STOP_TIMEOUT_MS = 5_000;

export async function run(
  cmd: string,
  args: string[],
  env?: Record<string, string>,
): Promise<string> {
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
export function findCommand(name: string): string | null {
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
 * strace only when asked for (the syscalls row): no other row needs it.
 */
export async function ensureTools(options: { strace?: boolean } = {}): Promise<void> {
  const packages: Array<[command: string, pkg: string]> = [
    ["iperf3", "iperf3"],
    ["haproxy", "haproxy"],
    ["go", "golang-go"],
    ["taskset", "util-linux"],
  ];
  if (options.strace) packages.push(["strace", "strace"]);
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

export interface Proc {
  child: Deno.ChildProcess;
  pid: number;
  stop(): Promise<void>;
}

/**
 * Stops a child: SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_MS, and always
 * waits for its status, so no run leaves a process behind on the two cores of the next one.
 */
export async function stopChild(child: Deno.ChildProcess): Promise<void> {
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
 * A command line that runs `cmd` with every thread it will ever have on `cpus` (a taskset list,
 * "1" or "0,1"); unchanged when `cpus` is undefined. taskset execs the command, so the pid the
 * harness reads /proc with is the program's own.
 */
export function pinned(cpus: string | undefined, cmd: string, args: string[]): [string, string[]] {
  return cpus === undefined ? [cmd, args] : ["taskset", ["-c", cpus, cmd, ...args]];
}

/**
 * Starts a process and waits for it to print "ready" (within START_TIMEOUT_MS, or it is killed).
 * `env` adds to the harness's environment; `cpus` pins it (see pinned()).
 */
export async function start(
  cmd: string,
  args: string[],
  stdin = false,
  env?: Record<string, string>,
  cpus?: string,
): Promise<Proc> {
  const [command, commandArgs] = pinned(cpus, cmd, args);
  const child = new Deno.Command(command, {
    args: commandArgs,
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
export function listeningInode(port: number): string | null {
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
export async function startHaproxy(
  threads: number,
  port: number,
  backendPort: number,
  cpus?: string,
  stage?: Stage,
): Promise<Proc> {
  const config = await Deno.makeTempFile({ suffix: ".cfg" });
  await Deno.writeTextFile(config, haproxyConfig(threads, port, backendPort, stage));
  const [command, args] = pinned(cpus, haproxy, ["-db", "-f", config]);
  const child = new Deno.Command(command, {
    args,
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
export function ownsSocket(pid: number, inode: string): boolean {
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
export function haproxyConfig(
  threads: number,
  port: number,
  backendPort: number,
  stage?: Stage,
): string {
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
    `  bind 127.0.0.1:${port}${stage === "pp" ? " accept-proxy" : ""}`,
    ...(stage === "sni"
      ? [
        // HAProxy's SNI routing: wait for the ClientHello (bounded), route by its name, and
        // close what no rule takes, as proxy.ts does without a default frontend.
        "  tcp-request inspect-delay 3s",
        "  tcp-request content accept if { req_ssl_hello_type 1 }",
        `  use_backend bench if { req_ssl_sni -i ${BENCH_SERVER_NAME} }`,
      ]
      : ["  default_backend bench"]),
    "backend bench",
    `  server backend 127.0.0.1:${backendPort}`,
    "",
  ].join("\n");
}

export function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/**
 * CPU seconds the whole machine has spent busy since boot (every CPU, `/proc/stat`): on
 * loopback a segment's receive work runs in whichever context sends it or finds it queued, so
 * what a proxy causes its peers to spend is seen only here.
 */
export function machineCpuSeconds(): number {
  const fields = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1)
    .map(Number);
  // user nice system idle iowait irq softirq steal ...: all but idle and iowait.
  return (fields.reduce((a, b) => a + b, 0) - fields[3] - fields[4]) / CLOCK_TICKS;
}

export function pssKiB(pid: number, field = "Pss"): number {
  const text = Deno.readTextFileSync(`/proc/${pid}/smaps_rollup`);
  return Number(new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? NaN);
}

/** Sockets a process holds open. */
export function socketCount(pid: number): number {
  let count = 0;
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      if (Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`).startsWith("socket:")) count++;
    } catch { /* closed while listed */ }
  }
  return count;
}

/**
 * The sockets a proxy holds once the count stops moving (10 reads 50 ms apart alike, 12.5 s at
 * most): after a few short connections, the relay's proxy opens sockets of its own within a
 * second of its first relays, not per connection but not there at once either.
 */
export async function settledSocketCount(pid: number): Promise<number> {
  let sockets = socketCount(pid);
  for (let stable = 0, tries = 0; stable < 10 && tries < 250; tries++) {
    await new Promise((r) => setTimeout(r, 50));
    const now = socketCount(pid);
    stable = now === sockets ? stable + 1 : 0;
    sockets = now;
  }
  return sockets;
}

/**
 * Waits (15 s at most) until the proxy holds no more than `sockets`: every short relay has
 * ended and let go of its sockets, so the proxy is done with the connections a client made.
 */
export async function socketsBackTo(pid: number, sockets: number, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (socketCount(pid) > sockets) {
    if (Date.now() > deadline) {
      throw new Error(
        `${what}: the relays did not end (${socketCount(pid)} sockets open, ${sockets} before)`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

let portCounter = 21_000 + Math.floor(Math.random() * 1000) * 10;

/** A loopback port no earlier part of this run used (random base: runs in a row do not clash). */
export function nextPort(): number {
  return portCounter++;
}

/** Runs `body` against `impl` relaying to `backendPort`; `cpus` pins the proxy (see pinned()). */
export async function withProxy<T>(
  impl: Impl,
  backendPort: number,
  body: (port: number, pid: number | null) => Promise<T>,
  cpus?: string,
): Promise<T> {
  if (impl === "direct") return await body(backendPort, null);
  const port = nextPort();
  const proxy = await launch(impl, port, backendPort, cpus);
  try {
    return await body(port, proxy.pid);
  } finally {
    await proxy.stop();
  }
}

/**
 * Starts one implementation's proxy process on `port`, relaying to `backendPort`, pinned to
 * `cpus` when given (see pinned()).
 */
export async function launch(
  impl: Impl,
  port: number,
  backendPort: number,
  cpus?: string,
): Promise<Proc> {
  if (isProxyTs(impl)) {
    const variant: { engines: number | null; accessLog: string; stage?: Stage } =
      PROXY_ENGINES[impl];
    const config = await proxyConfig(
      port,
      backendPort,
      variant.engines,
      variant.accessLog,
      variant.stage,
    );
    const args = ["run", "-A", `${ROOT}proxy.ts`, "--config", config];
    const proc = await start(Deno.execPath(), args, false, undefined, cpus).catch(
      async (error) => {
        await Deno.remove(config).catch(() => {});
        throw error;
      },
    );
    // proxy.ts starts once per row, round and variant: its configs go with it, as HAProxy's do,
    // rather than pile up in the temporary directory.
    return {
      ...proc,
      async stop(): Promise<void> {
        await proc.stop();
        await Deno.remove(config).catch(() => {});
      },
    };
  }
  switch (impl) {
    case "csplice":
      return await start(
        TOOL,
        ["spliceproxy", String(port), String(backendPort)],
        false,
        undefined,
        cpus,
      );
    case "haproxy1":
    case "haproxy2":
      return await startHaproxy(impl === "haproxy1" ? 1 : 2, port, backendPort, cpus);
    case "haproxy1pp":
    case "haproxy1sni":
      return await startHaproxy(1, port, backendPort, cpus, impl === "haproxy1pp" ? "pp" : "sni");
    case "go":
    case "go2":
      // GOMAXPROCS=1 for one thread running Go code, as relay() has one engine thread (the
      // runtime's few helper threads, sysmon and the like, are in the same process's CPU).
      return await start(GOPROXY, [String(port), String(backendPort)], false, {
        GOMAXPROCS: impl === "go" ? "1" : "2",
      }, cpus);
    default:
      return await start(
        Deno.execPath(),
        [
          "run",
          "-A",
          `${ROOT}bench/proxy.ts`,
          impl,
          String(port),
          String(backendPort),
        ],
        false,
        undefined,
        cpus,
      );
  }
}

/**
 * A one-listener, one-backend config for proxy.ts, in a temporary file; `engines` sets the key
 * of that name (null leaves it out, to its default), `accessLog` the `access_log` key.
 */
export async function proxyConfig(
  port: number,
  backendPort: number,
  engines: number | null = null,
  accessLog = "all",
  stage?: Stage,
): Promise<string> {
  const path = await Deno.makeTempFile({ suffix: ".toml" });
  const hostname = stage === "sni" ? `, hostname = "${BENCH_SERVER_NAME}"` : "";
  await Deno.writeTextFile(
    path,
    // Top-level keys come before the first table: TOML puts any later key inside that table.
    `access_log = "${accessLog}"\n` + (engines === null ? "" : `engines = ${engines}\n`) +
      "\n" +
      `[[listeners]]\naddress = "127.0.0.1:${port}"\n` +
      (stage === "pp" ? "expect_proxy = true\n" : "") +
      "\n[clusters.bench]\n" +
      `frontends = [{ address = "127.0.0.1:${port}"${hostname} }]\n` +
      `backends = [{ address = "127.0.0.1:${backendPort}" }]\n`,
  );
  return path;
}
