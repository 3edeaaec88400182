// deno-lint-ignore-file no-console -- a CLI: printing is its job
/**
 * The L4 TCP proxy on `relay()`:
 *
 *     deno run --allow-ffi --allow-net --allow-read proxy.ts --config proxy.toml
 *     deno task start          # an embedded demo config with a built-in backend
 *
 * Reload: SIGHUP, a change of the config file, or `POST /reload` on the metrics address.
 * SIGTERM or SIGINT stops accepting, drains up to `drain_timeout_ms`, and exits 0.
 * Upgrade: `--takeover ADMIN` starts a new process on the running one's listening sockets
 * (proxy/takeover.ts), which then drains and exits.
 *
 * @module
 */

import denoJson from "./deno.json" with { type: "json" };
import { type Config, configWarnings, formatAddress, loadConfig, parseConfig } from "./config.ts";
import type { TcpProxy } from "./proxy/server.ts";
import { startProxyResolved } from "./proxy/start.ts";
import type { ProxyEvent } from "./proxy/types.ts";
import { specFromConfig } from "./proxy/spec.ts";
import { describeHttpEvent, serveHttp } from "./proxy/http.ts";
import { ADMIN_TOKEN_ENV, adminToken, serveAdmin } from "./proxy/admin.ts";
import {
  finishedHandover,
  finishTakeover,
  receiveListeners,
  sendListeners,
  type TakenOver,
  TakeoverRefused,
} from "./proxy/takeover.ts";
import { closeFd } from "./ffi/pipe.ts";
import { netPermissionProblems } from "./proxy/permissions.ts";
import { shutdownRelayEngine, spliceAvailable } from "./mod.ts";

const VERSION = denoJson.version;
/** After a takeover: how often, and how many times, the admin address is tried (10 s). */
const ADMIN_BIND_RETRY_MS = 50;
const ADMIN_BIND_ATTEMPTS = 200;
/** After a takeover: how long the engines may take to put the sockets in their epoll. */
const SERVING_TIMEOUT_MS = 5_000;

const HELP = `splice proxy ${VERSION}: an L4 TCP proxy that relays with splice(2)

Usage:
  deno run --allow-ffi --allow-net --allow-read proxy.ts [--config FILE]
  deno run --allow-read proxy.ts --check --config FILE
  deno run --allow-ffi --allow-net --allow-read proxy.ts --config FILE --takeover ADMIN

Options:
  --config FILE   the TOML config (without it: an embedded demo with its own backend)
  --check         validate the config, print every problem, exit 1 if any
  --takeover ADMIN
                  take the listening sockets of the proxy whose admin endpoint is ADMIN
                  (host:port), serve them, then have it drain and exit: an upgrade that
                  refuses no connection (both need --allow-ffi)
  --version       print the version
  --help          this text

Reload: SIGHUP, a change of FILE on disk, or POST /reload on the [metrics] address.
Stop:   SIGTERM or SIGINT (drains connections up to drain_timeout_ms, exits 0).
Upgrade: start the new version with --takeover (README: "Upgrades that drop nothing").
`;

/** The embedded default: a demo backend on a free port, the proxy on 127.0.0.1:8080. */
const DEMO_CONFIG = `
[metrics]
address = "127.0.0.1:9901"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:8080"

[clusters.demo]
protocol = "tcp"
load_balancing = "round_robin"
frontends = [{ address = "127.0.0.1:8080" }]
backends = [{ address = "127.0.0.1:BACKEND_PORT", weight = 100 }]
`;

interface Args {
  config?: string;
  takeover?: string;
  check: boolean;
  help: boolean;
  version: boolean;
}

function parseArgs(args: string[]): Args {
  const out: Args = { check: false, help: false, version: false };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--config") {
      out.config = args[++i];
      if (!out.config) {
        throw new TypeError("Cannot parse the arguments: --config needs a FILE (see --help)");
      }
    } else if (arg.startsWith("--config=")) out.config = arg.slice("--config=".length);
    else if (arg === "--takeover") {
      out.takeover = args[++i];
      if (!out.takeover) {
        throw new TypeError("Cannot parse the arguments: --takeover needs an ADMIN address");
      }
    } else if (arg.startsWith("--takeover=")) out.takeover = arg.slice("--takeover=".length);
    else if (arg === "--check") out.check = true;
    else if (arg === "--help" || arg === "-h") out.help = true;
    else if (arg === "--version") out.version = true;
    else throw new TypeError(`Cannot parse the arguments: unknown option "${arg}" (see --help)`);
  }
  if (out.takeover !== undefined && out.config === undefined) {
    throw new TypeError("Cannot parse the arguments: --takeover needs --config FILE");
  }
  return out;
}

/**
 * Access-log lines are written in batches (at most every 50 ms, or 256 lines): one write per
 * connection costs a syscall on the accept path, measurable at thousands of connections per
 * second. Everything else is written at once, after whatever is batched, to keep the order.
 */
const accessLog = {
  lines: [] as string[],
  timer: undefined as ReturnType<typeof setTimeout> | undefined,
  add(line: string): void {
    this.lines.push(line);
    if (this.lines.length >= 256) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), 50);
  },
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.lines.length === 0) return;
    const text = this.lines.join("\n") + "\n";
    this.lines = [];
    const bytes = new TextEncoder().encode(text);
    for (let off = 0; off < bytes.length;) off += Deno.stdout.writeSync(bytes.subarray(off));
  },
};

/** Prints a line after the batched access log. */
function say(line: string): void {
  accessLog.flush();
  console.log(line);
}

function logger(format: Config["logFormat"]): (event: ProxyEvent) => void {
  return (event) => {
    if (format === "json") {
      const line = JSON.stringify({ time: new Date().toISOString(), ...flatten(event) });
      if (event.type === "connection") accessLog.add(line);
      else say(line);
      return;
    }
    if (event.type === "connection") {
      const r = event.record;
      accessLog.add(
        `conn ${r.client} -> ${r.listener} -> ${r.cluster}/${r.backend ?? "-"} ` +
          `in=${r.bytesIn} out=${r.bytesOut} ${r.durationMs}ms mode=${r.mode} end=${r.end}` +
          (r.error ? ` error=${JSON.stringify(r.error)}` : ""),
      );
    } else if (event.type === "dns-change") {
      say(
        `cluster ${event.cluster}: backends found in DNS: ${event.backends.join(", ") || "none"}`,
      );
    } else if (event.type === "dns-error") {
      say(
        `cluster ${event.cluster}: looking up ${event.name} failed, the last good backends stay: ` +
          event.error,
      );
    } else if (event.type === "backend-health") {
      say(
        `backend ${event.cluster}/${event.backend} is ${event.up ? "up" : "down"}: ${event.reason}`,
      );
    } else if (event.type === "backend-ejected") {
      say(`backend ${event.cluster}/${event.backend} ejected: connects keep failing`);
    } else if (event.type === "listening") {
      say(`listening ${event.address} (port ${event.port})`);
    } else if (event.type === "listener-closed") {
      say(`listener ${event.address} closed`);
    } else if (event.type === "listen-failed") {
      say(`listener ${event.address} failed: ${event.error}`);
    } else if (event.type === "accept-error") {
      say(
        `listener ${event.address}: accept failed (${event.code}): ${event.error}; ` +
          `accepting again in ${event.pauseMs} ms or when a connection closes` +
          suppressedNote(event.suppressed),
      );
    } else if (event.type === "connection-refused") {
      say(
        `listener ${event.listener}: refused ${event.client} (${event.reason})` +
          suppressedNote(event.suppressed),
      );
    } else if (event.type === "local-error") {
      say(
        `backend ${event.cluster}/${event.backend}: not tried (${event.code}), not its fault: ` +
          `${event.error}${permissionHint(event.code)}${suppressedNote(event.suppressed)}`,
      );
    } else {
      say(`internal error (please report it): ${event.error}${suppressedNote(event.suppressed)}`);
    }
  };
}

function suppressedNote(count: number): string {
  return count > 0 ? ` (${count} more like it in the last second)` : "";
}

function permissionHint(code: string): string {
  return code === "permission"
    ? " (the proxy's --allow-net must include every backend's host:port)"
    : "";
}

function flatten(event: ProxyEvent): Record<string, unknown> {
  return event.type === "connection" ? { event: "connection", ...event.record } : {
    ...event,
    event: event.type,
    type: undefined,
  };
}

/** Starts a tiny HTTP backend for the demo; returns its port. */
function demoBackend(signal: AbortSignal): number {
  const server = serveHttp(
    {
      hostname: "127.0.0.1",
      port: 0,
      signal,
      onEvent: (event) => say(`demo backend: ${describeHttpEvent(event)}`),
    },
    () => new Response("hello from the splice demo backend\n"),
  );
  return server.addr.port;
}

async function main(): Promise<number> {
  let args: Args;
  try {
    args = parseArgs(Deno.args);
  } catch (error) {
    console.error((error as Error).message);
    return 2;
  }
  if (args.help) {
    say(HELP);
    return 0;
  }
  if (args.version) {
    say(VERSION);
    return 0;
  }
  if (args.check) {
    if (!args.config) {
      console.error("Cannot check: --check needs --config FILE");
      return 2;
    }
    let checked: Config;
    try {
      checked = await loadConfig(args.config);
    } catch (error) {
      console.error(error instanceof Error ? error.message : String(error));
      return 1;
    }
    const net = netPermissionProblems(checked);
    const warnings = warningsOf(checked, net);
    for (const line of warnings) say(`${args.config}: warning: ${line}`);
    if (!net.checked) {
      say(
        `${args.config}: note: network permissions not checked (this --check has no ` +
          "--allow-net for any of its addresses); run it with the proxy's own --allow-net to " +
          "check them too",
      );
    }
    const count = warnings.length;
    say(`${args.config}: ok${count > 0 ? ` (${count} warning${count === 1 ? "" : "s"})` : ""}`);
    return 0;
  }

  const stop = new AbortController();
  let config: Config;
  try {
    if (args.config) {
      config = await loadConfig(args.config);
    } else {
      const port = demoBackend(stop.signal);
      config = parseConfig(DEMO_CONFIG.replace("BACKEND_PORT", String(port)), {
        path: "embedded demo config",
      });
    }
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    stop.abort();
    return 1;
  }
  // The last line of defence: every promise on the connection and accept paths has its own
  // catch (see TcpProxy), so this only runs on a bug elsewhere. Exiting would drop every relay in
  // flight; it is said instead, and the proxy serves on.
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    const reason = event.reason instanceof Error ? event.reason.stack : String(event.reason);
    say(`internal error (please report it): unhandled rejection: ${reason}`);
  });
  // Stop signals are caught before anything listens, so that a stop during start-up drains too.
  let requestStop: (why: "signal" | "takeover") => void = () => {};
  let stopAsked = false;
  const stopRequested = new Promise<"signal" | "takeover">((resolve) => {
    requestStop = (why) => {
      stopAsked = true;
      resolve(why);
    };
    const onStop = (): void => requestStop("signal");
    Deno.addSignalListener("SIGTERM", onStop);
    Deno.addSignalListener("SIGINT", onStop);
  });
  const log = logger(config.logFormat);
  /** The ids of the handovers this process made (`POST /takeover`), for their finish. */
  const handovers = new Set<string>();
  let proxy: TcpProxy;
  for (const line of warningsOf(config)) say(`warning: ${line}`);
  const takeover = args.takeover === undefined
    ? undefined
    : { address: args.takeover, token: adminToken(config.metrics?.token) };
  let taken: TakenOver | undefined;
  if (takeover !== undefined) {
    if (!spliceAvailable()) {
      console.error("Cannot take over: --takeover needs --allow-ffi (sockets pass as fds)");
      stop.abort();
      return 1;
    }
    try {
      taken = await receiveListeners(takeover);
    } catch (error) {
      console.error(`${(error as Error).message}; the running proxy keeps serving`);
      stop.abort();
      return 1;
    }
    say(
      `takeover: received the listening sockets of pid ${taken.pid}: ` +
        `${[...taken.sockets.keys()].join(", ") || "none"}`,
    );
  }
  try {
    // Applies the process-wide settings (the splice pipe capacity), waits for the first DNS
    // answers of backends found through DNS, then listens.
    proxy = await startProxyResolved(config, { onEvent: log, listeningSockets: taken?.sockets });
  } catch (error) {
    // The message names the listener ("Cannot listen on 127.0.0.1:8080: ...").
    console.error(
      (error instanceof Error ? error.message : String(error)) +
        (taken ? "; the running proxy keeps serving" : ""),
    );
    taken?.sockets.forEach((fd) => closeFd(fd));
    stop.abort();
    return 1;
  }
  if (taken !== undefined) {
    // Sockets of listeners this config does not have: the running proxy's to close.
    const used = new Set(config.listeners.map((l) => formatAddress(l.address)));
    for (const [address, fd] of taken.sockets) if (!used.has(address)) closeFd(fd);
  }
  const engines = proxy.stats().engines.length;
  say(
    `splice proxy ${VERSION}: ` +
      (engines > 0
        ? `${engines} engine${engines === 1 ? "" : "s"} (native data plane, splice)`
        : spliceAvailable()
        ? "relaying through Deno conns (the engines could not start)"
        : "relaying through Deno conns with the copy loop (no --allow-ffi)"),
  );

  // Reloads are serialised: a second one waits for the first.
  let reloading: Promise<string | null> = Promise.resolve(null);
  const reload = (why: string): Promise<string | null> => {
    reloading = reloading.then(async () => {
      if (!args.config) return "the embedded demo config cannot be reloaded";
      try {
        const next = await loadConfig(args.config);
        const changed = await proxy.reloadResolved(specFromConfig(next));
        config = next;
        for (const line of warningsOf(next)) say(`reload (${why}): warning: ${line}`);
        say(
          `reload (${why}): applied; listeners +[${changed.added}] -[${changed.removed}], ` +
            `clusters changed [${changed.clusters}]`,
        );
        return null;
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        say(`reload (${why}): refused, the running config keeps serving: ${message}`);
        return message;
      }
    });
    return reloading;
  };

  // A takeover's last step: once every engine accepts, the running proxy lets go. Until it
  // has, the sockets are shared, and stopping this process releases them, never shuts them.
  let finished = false;
  if (taken !== undefined && takeover !== undefined) {
    if (!await proxy.serving(SERVING_TIMEOUT_MS)) {
      console.error(
        `Cannot take over: the engines did not all accept within ${SERVING_TIMEOUT_MS} ms; ` +
          "the running proxy keeps serving",
      );
      await proxy.shutdown();
      stop.abort();
      return 1;
    }
    if (stopAsked) {
      say(`takeover: stopped before it finished; pid ${taken.pid} keeps serving`);
    } else {
      try {
        const { draining } = await finishTakeover(takeover, taken.id);
        proxy.ownListeners();
        finished = true;
        say(`takeover: serving; pid ${taken.pid} drains its ${draining} connections and exits`);
      } catch (error) {
        say(
          `takeover: ${(error as Error).message}; this process serves beside pid ` +
            `${taken.pid}, and either may be stopped (the other serves on)`,
        );
      }
    }
  }
  const adminStop = new AbortController();
  if (config.metrics && !stopAsked) {
    const metrics = config.metrics;
    // After a takeover the running proxy lets go of the address as it starts to drain.
    const attempts = finished ? ADMIN_BIND_ATTEMPTS : 1;
    let serving = false;
    for (let attempt = 1;; attempt++) {
      try {
        serveAdmin(
          metrics.address,
          {
            stats: () => proxy.stats(),
            status: () => proxy.status(),
            reload: () => reload("admin"),
            backend: (cluster, backend) => proxy.backend(cluster, backend),
            setBackend: (cluster, backend, change) => {
              const view = proxy.setBackend(cluster, backend, change);
              if (view !== null) {
                say(
                  `backend ${cluster}/${backend}: set at run time (admin): ` +
                    `${view.state}, weight ${view.weight}`,
                );
              }
              return view;
            },
            takeover: (body) => {
              // Handing out listening sockets is more than a reload: never on an open endpoint.
              if (adminToken(metrics.token) === undefined) {
                throw new TakeoverRefused(
                  403,
                  "Cannot take over: the admin endpoint has no token; set [metrics] token " +
                    `(or ${ADMIN_TOKEN_ENV} with --allow-env) to allow takeovers`,
                );
              }
              const handover = sendListeners((send) => proxy.handOver(send), body);
              handovers.add(handover.id);
              say(
                "takeover: listening sockets sent to a new process: " +
                  handover.listeners.join(", "),
              );
              return handover;
            },
            finishTakeover: (body) => {
              finishedHandover(body, handovers);
              const draining = proxy.stats().connectionsOpen;
              requestStop("takeover");
              return { draining };
            },
          },
          adminStop.signal,
          { token: metrics.token, log: say },
        );
        serving = true;
        break;
      } catch (error) {
        if (error instanceof Deno.errors.AddrInUse && attempt < attempts) {
          await delay(ADMIN_BIND_RETRY_MS);
          continue;
        }
        const reason = error instanceof Error ? error.message : String(error);
        console.error(`Cannot listen on ${formatAddress(metrics.address)} (metrics): ${reason}`);
        if (taken !== undefined) break; // serving already: without an admin endpoint
        await proxy.shutdown();
        stop.abort();
        return 1;
      }
    }
    if (serving) {
      say(`metrics on http://${metrics.address.hostname}:${metrics.address.port}/metrics`);
    }
  }
  if (!args.config) {
    say("Try:  curl http://127.0.0.1:8080/   (Ctrl-C stops)");
  }

  Deno.addSignalListener("SIGHUP", () => void reload("SIGHUP"));
  if (args.config) watchConfig(args.config, () => void reload("file changed"), stop.signal);
  say("ready");

  const why = await stopRequested;
  // shutdown() closes the listeners before its first await: say "draining" once they are.
  // After a handover it releases them instead: the new process serves them on.
  const drained = proxy.shutdown();
  if (why === "takeover") {
    // The new process binds the admin address once this one lets go of it.
    adminStop.abort();
    say(
      `takeover: the new process serves the listeners; draining (up to ${config.drainTimeoutMs} ms)`,
    );
  } else {
    say(`draining (up to ${config.drainTimeoutMs} ms)`);
  }
  await drained;
  adminStop.abort();
  stop.abort();
  await shutdownRelayEngine();
  say("stopped");
  return 0;
}

/**
 * What a config gets right but almost certainly does not mean (a cluster that can take no
 * connection), and the addresses this process's `--allow-net` would refuse.
 */
function warningsOf(config: Config, net = netPermissionProblems(config)): string[] {
  return [...configWarnings(config).map((issue) => issue.message), ...net.problems];
}

/**
 * Calls `onChange` after the file settles (editors write in several steps). The directory is
 * watched, not the file: editors that save by writing a new file and renaming it over the old
 * one would otherwise end the watch at the first save.
 */
function watchConfig(path: string, onChange: () => void, signal: AbortSignal): void {
  const file = Deno.realPathSync(path);
  const dir = file.slice(0, file.lastIndexOf("/")) || "/";
  let watcher: Deno.FsWatcher;
  try {
    watcher = Deno.watchFs(dir, { recursive: false });
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    say(`Cannot watch "${path}" for changes: ${reason}; reload with SIGHUP or the admin endpoint`);
    return;
  }
  signal.addEventListener("abort", () => watcher.close(), { once: true });
  let timer: ReturnType<typeof setTimeout> | undefined;
  (async () => {
    for await (const event of watcher) {
      if (event.kind === "access" || !event.paths.includes(file)) continue;
      clearTimeout(timer);
      timer = setTimeout(onChange, 100);
    }
  })().catch(() => {});
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

if (import.meta.main) Deno.exit(await main());
