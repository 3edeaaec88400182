/**
 * The proxy's data plane in its engines: engine Workers own the listening sockets (IPv4 and
 * IPv6), accept, pick the backend, connect and relay without the main thread, one per core
 * (`engines`), with their counters in shared memory. Driven through the public API
 * (`startProxy` / `TcpProxy.start` on a parsed config, `reload`, `stats`, `shutdown`) over real
 * loopback sockets, bytes checked by SHA-256 at both ends, fds counted in /proc/self/fd, every
 * wait bounded. Without `--allow-ffi`, proxy.ts keeps relaying through Deno conns and says so
 * once.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { shutdownRelayEngine } from "../mod.ts";
import { parseConfig } from "../config.ts";
import { prometheusText } from "../proxy/metrics.ts";
import { specFromConfig, startProxy, TcpProxy } from "../proxy/mod.ts";
import type { ProxyEvent, ProxyStats } from "../proxy/types.ts";
import { libc } from "../ffi/libc.ts";
import {
  closeQuietly,
  echoBackend,
  fillPattern,
  freePort,
  openFdCount,
  receiveAll,
  sendPattern,
  spawnProxyWithoutFfi,
  waitFor,
} from "./_helpers.ts";
import { engineStoppedAndFdsBack, fdBaseline, within, workerThreads } from "./_relay_helpers.ts";

/** A config file: `engines`, listeners all claimed by cluster `app`, round robin on `backends`. */
function proxyToml(options: {
  engines?: number;
  listeners: string[];
  backends: string[];
  maxConnections?: number;
}): string {
  const lines = ["drain_timeout_ms = 5000", "connect_timeout_ms = 2000"];
  if (options.engines !== undefined) lines.push(`engines = ${options.engines}`);
  for (const address of options.listeners) {
    lines.push("", "[[listeners]]", `address = "${address}"`);
    if (options.maxConnections !== undefined) {
      lines.push(`max_connections = ${options.maxConnections}`);
    }
  }
  const list = (addresses: string[]): string =>
    `[${addresses.map((address) => `{ address = "${address}" }`).join(", ")}]`;
  lines.push(
    "",
    "[clusters.app]",
    'load_balancing = "round_robin"',
    `frontends = ${list(options.listeners)}`,
    `backends = ${list(options.backends)}`,
  );
  return lines.join("\n") + "\n";
}

/**
 * One connection to an echo behind the proxy: `bytes` pattern bytes sent (then a half-close)
 * while the echo is read to its end. Whether what came back is what was sent.
 */
async function echoThrough(hostname: string, port: number, bytes: number): Promise<boolean> {
  const conn = await Deno.connect({ hostname, port });
  try {
    const [sent, received] = await Promise.all([
      sendPattern(conn, bytes, bytes).then(async (sha256) => {
        await conn.closeWrite();
        return sha256;
      }),
      receiveAll(conn),
    ]);
    return received.bytes === bytes && received.sha256 === sent;
  } finally {
    closeQuietly(conn);
  }
}

/** Runs `one(0)` to `one(count - 1)` from `clients` concurrent loops. */
async function fromClients(
  count: number,
  clients: number,
  one: (index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failed = false;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      try {
        while (next < count && !failed) await one(next++);
      } catch (error) {
        failed = true; // the other clients stop too
        throw error;
      }
    }),
  );
}

/** Short echo connections; fails on the first that comes back different. */
async function shortConnections(port: number, count: number, clients: number): Promise<void> {
  await fromClients(count, clients, async (i) => {
    assert.ok(await echoThrough("127.0.0.1", port, 1024), `connection ${i} came back intact`);
  });
}

/** Waits (bounded) until every connection has ended and been counted; then the counters. */
async function settledStats(proxy: TcpProxy): Promise<ProxyStats> {
  await waitFor(() => proxy.stats().connectionsOpen === 0, "every connection to be counted");
  return proxy.stats();
}

/** Both engines took connections, and their counts add up to the proxy's. */
function assertBothEnginesServed(stats: ProxyStats): void {
  assert.equal(stats.engines.length, 2, `engines: ${JSON.stringify(stats.engines)}`);
  assert.ok(stats.engines.every((n) => n > 0), `engines: ${JSON.stringify(stats.engines)}`);
  const sum = stats.engines.reduce((a, b) => a + b, 0);
  assert.equal(sum, stats.connectionsTotal, `engines: ${JSON.stringify(stats.engines)}`);
}

Deno.test("prometheusText: splice_engine_connections_total has a line per engine, no family without engines", () => {
  const stats = (engines: number[]): ProxyStats => ({
    connectionsOpen: 0,
    connectionsTotal: 12,
    connectionsRejected: 0,
    connectionsRefused: {},
    bytesIn: 0,
    bytesOut: 0,
    splicedConnections: 0,
    copiedConnections: 0,
    connectFailures: 0,
    acceptErrors: {},
    localErrors: {},
    internalErrors: 0,
    reloads: 0,
    engines,
    backends: {},
  });
  const lines = prometheusText(stats([7, 0, 5])).split("\n");
  const at = lines.indexOf("# TYPE splice_engine_connections_total counter");
  assert.ok(at > 0, lines.join("\n"));
  assert.match(lines[at - 1], /^# HELP splice_engine_connections_total \S/);
  assert.deepEqual(lines.slice(at + 1, at + 4), [
    'splice_engine_connections_total{engine="0"} 7',
    'splice_engine_connections_total{engine="1"} 0',
    'splice_engine_connections_total{engine="2"} 5',
  ]);
  assert.equal(lines.filter((l) => l.includes("splice_engine_")).length, 5);
  // The Deno-conn path has no engines: no family that would always be empty.
  assert.doesNotMatch(prometheusText(stats([])), /splice_engine_/);
});

Deno.test("TcpProxy (engines = 2): listeners on 127.0.0.1:0 and [::1]:0 relay 4 MiB both ways byte-exact", async () => {
  const backend = echoBackend();
  const proxy = startProxy(parseConfig(proxyToml({
    engines: 2,
    listeners: ["127.0.0.1:0", "[::1]:0"],
    backends: [`127.0.0.1:${backend.port}`],
  })));
  try {
    const ports = proxy.listenerPorts;
    assert.deepEqual(Object.keys(ports).sort(), ["127.0.0.1:0", "[::1]:0"]);
    assert.ok(ports["127.0.0.1:0"] > 0 && ports["[::1]:0"] > 0, JSON.stringify(ports));
    const [v4, v6] = await Promise.all([
      within(echoThrough("127.0.0.1", ports["127.0.0.1:0"], 4 << 20), 20_000, "4 MiB over IPv4"),
      within(echoThrough("::1", ports["[::1]:0"], 4 << 20), 20_000, "4 MiB over IPv6"),
    ]);
    assert.deepEqual({ v4, v6 }, { v4: true, v6: true });
    const stats = await settledStats(proxy);
    assert.equal(stats.connectionsTotal, 2);
    assert.equal(stats.bytesIn, 2 * (4 << 20));
    assert.equal(stats.bytesOut, 2 * (4 << 20));
  } finally {
    await proxy.shutdown();
    await backend.close();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy (engines = 2): a listener whose address is in use fails the start, naming it, and nothing is left half-started", async () => {
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const busyPort = busy.addr.port;
  let proxy: TcpProxy | undefined;
  try {
    // Engines of earlier tests are gone, and Deno's own late fds are in the baseline.
    await waitFor(() => workerThreads() === 0, "earlier Workers to exit");
    const before = await fdBaseline();
    const spec = specFromConfig(parseConfig(proxyToml({
      engines: 2,
      listeners: ["127.0.0.1:0", `127.0.0.1:${busyPort}`],
      backends: [`127.0.0.1:${freePort()}`],
    })));
    let error: unknown;
    try {
      proxy = TcpProxy.start(spec);
    } catch (caught) {
      error = caught;
    }
    assert.ok(error instanceof Error, `TcpProxy.start threw ${error}`);
    assert.ok(
      error.message.startsWith(`Cannot listen on 127.0.0.1:${busyPort}`),
      `message: ${error.message}`,
    );
    // The free listener and any engine it started are closed again, without help.
    let now = openFdCount();
    let threads = workerThreads();
    await waitFor(
      () => (threads = workerThreads()) === 0 && (now = openFdCount()) === before,
      "the failed start to release everything",
    ).catch(() => {
      assert.fail(`after a failed start: ${threads} Worker threads, ${now} fds (${before} before)`);
    });
    // The busy port's owner was not disturbed.
    const [client, server] = await Promise.all([
      Deno.connect({ hostname: "127.0.0.1", port: busyPort }),
      busy.accept(),
    ]);
    client.close();
    server.close();
  } finally {
    busy.close();
    await proxy?.shutdown();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy (engines = 2): 400 short connections from 8 clients spread over both engines, counted per engine and on /metrics", async () => {
  const backend = echoBackend();
  const proxy = startProxy(parseConfig(proxyToml({
    engines: 2,
    listeners: ["127.0.0.1:0"],
    backends: [`127.0.0.1:${backend.port}`],
  })));
  try {
    await within(
      shortConnections(proxy.listenerPorts["127.0.0.1:0"], 400, 8),
      20_000,
      "400 connections",
    );
    const stats = await settledStats(proxy);
    assert.equal(stats.connectionsTotal, 400);
    assertBothEnginesServed(stats);
    const text = prometheusText(stats);
    for (const engine of [0, 1]) {
      const pattern = `^splice_engine_connections_total\\{engine="${engine}"\\} (\\d+)$`;
      const line = new RegExp(pattern, "m").exec(text);
      assert.ok(line, `no line for engine ${engine} in:\n${text}`);
      assert.equal(Number(line[1]), stats.engines[engine]);
    }
  } finally {
    await proxy.shutdown();
    await backend.close();
    await shutdownRelayEngine();
  }
});

/** Connects, offers a byte, and expects the connection closed (or reset) without its echo. */
async function closedWithoutEcho(port: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    try {
      await conn.write(Uint8Array.of(42));
    } catch {
      // Already reset by the proxy: closed, as expected.
    }
    let read: number | null = null;
    try {
      read = await within(conn.read(new Uint8Array(1)), 5_000, "an over-limit connection's end");
    } catch (error) {
      const reset = error instanceof Deno.errors.ConnectionReset ||
        error instanceof Deno.errors.ConnectionAborted;
      if (!reset) throw error;
    }
    assert.equal(read, null, "an over-limit connection got its byte echoed");
  } finally {
    closeQuietly(conn);
  }
}

/** Opens `count` connections, each proved established by a one-byte echo. */
async function holdConnections(port: number, count: number): Promise<Deno.TcpConn[]> {
  const held: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      held.push(conn);
      await conn.write(Uint8Array.of(i));
      const byte = new Uint8Array(1);
      assert.equal(await within(conn.read(byte), 5_000, `held connection ${i}'s echo`), 1);
      assert.equal(byte[0], i);
    }
    return held;
  } catch (error) {
    for (const conn of held) closeQuietly(conn);
    throw error;
  }
}

Deno.test("TcpProxy (engines = 2): max_connections = 10 holds across engines: 20 more are closed unserved, then served once the 10 end", async () => {
  const backend = echoBackend();
  const proxy = startProxy(parseConfig(proxyToml({
    engines: 2,
    listeners: ["127.0.0.1:0"],
    backends: [`127.0.0.1:${backend.port}`],
    maxConnections: 10,
  })));
  const port = proxy.listenerPorts["127.0.0.1:0"];
  let held: Deno.TcpConn[] = [];
  try {
    held = await holdConnections(port, 10);
    await Promise.all(Array.from({ length: 20 }, () => closedWithoutEcho(port)));
    await waitFor(() => proxy.stats().connectionsRejected >= 20, "20 rejections to be counted");
    let stats = proxy.stats();
    assert.equal(stats.connectionsRejected, 20);
    assert.equal(stats.connectionsOpen, 10);
    assert.equal(stats.connectionsTotal, 10);
    // Per engine, connections count as connectionsTotal does: over-limit ones left out.
    assert.equal(stats.engines.length, 2, `engines: ${JSON.stringify(stats.engines)}`);
    assert.equal(stats.engines.reduce((a, b) => a + b, 0), 10, JSON.stringify(stats.engines));
    for (const conn of held) conn.close();
    held = [];
    await settledStats(proxy);
    // The slots are free again, all ten of them.
    held = await holdConnections(port, 10);
    stats = proxy.stats();
    assert.equal(stats.connectionsOpen, 10);
    assert.equal(stats.connectionsRejected, 20);
    assert.equal(stats.connectionsTotal, 20);
  } finally {
    for (const conn of held) closeQuietly(conn);
    await proxy.shutdown();
    await backend.close();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy (engines = 2): passive health is shared: a dead backend is ejected after 3 failures in all, not 3 per engine", async () => {
  const live = echoBackend();
  const deadPort = freePort();
  const dead = `app/127.0.0.1:${deadPort}`;
  // Both engines must serve some of the 60 for this to prove anything: SO_REUSEPORT spreads
  // connections by their ports, where one shared socket may wake the same engine every time
  // at this light load (CI saw all 63 in one engine once).
  Deno.env.set("SPLICE_LISTEN_MODE", "reuseport");
  const proxy = startProxy(parseConfig(proxyToml({
    engines: 2,
    listeners: ["127.0.0.1:0"],
    backends: [`127.0.0.1:${deadPort}`, `127.0.0.1:${live.port}`],
  })));
  Deno.env.delete("SPLICE_LISTEN_MODE");
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    // One at a time until the dead backend is ejected: round robin offers it every other
    // connection, whichever engine accepts; each of its refusals is retried on the live one.
    for (let i = 0; i < 12 && proxy.stats().backends[dead]?.ejected !== true; i++) {
      assert.ok(await echoThrough("127.0.0.1", port, 1024), `connection ${i} served`);
    }
    assert.equal(proxy.stats().backends[dead]?.ejected, true, "ejected within 12 connections");
    assert.equal(proxy.stats().backends[dead].failures, 3);
    // Ejected for 10 s: 60 more from 8 clients go to the live one. An engine that kept its
    // own health would try the dead backend up to 3 more times.
    await within(shortConnections(port, 60, 8), 8_000, "60 connections");
    const stats = await settledStats(proxy);
    assert.equal(stats.backends[dead].ejected, true);
    assert.equal(stats.backends[dead].failures, 3);
    assert.equal(stats.connectFailures, 3);
    assert.equal(stats.backends[`app/127.0.0.1:${live.port}`].connections, stats.connectionsTotal);
    assertBothEnginesServed(stats);
  } finally {
    await proxy.shutdown();
    await live.close();
    await shutdownRelayEngine();
  }
});

/**
 * Streams `total` pattern bytes (a multiple of 512 KiB) in two halves, calling `halfSent` and
 * waiting for `gate` between them, then half-closes; resolves to the SHA-256 of all of them.
 */
async function sendInHalves(
  conn: Deno.TcpConn,
  total: number,
  seed: number,
  halfSent: () => void,
  gate: Promise<void>,
): Promise<string> {
  const hash = createHash("sha256");
  const chunk = new Uint8Array(256 * 1024);
  let state = seed;
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (sent === total / 2) {
      halfSent();
      await gate;
    }
    state = fillPattern(chunk, state);
    hash.update(chunk);
    for (let off = 0; off < chunk.length;) off += await conn.write(chunk.subarray(off));
  }
  await conn.closeWrite();
  return hash.digest("hex");
}

Deno.test("TcpProxy (engines = 2): a reload during 8 transfers of 16 MiB keeps them byte-exact, starts the added listener, closes the removed one", async () => {
  const SIZE = 16 << 20;
  const backend = echoBackend();
  const backends = [`127.0.0.1:${backend.port}`];
  const proxy = startProxy(parseConfig(proxyToml({
    engines: 2,
    listeners: ["127.0.0.1:0", "127.0.0.2:0"],
    backends,
  })));
  const carrying = proxy.listenerPorts["127.0.0.1:0"];
  const idle = proxy.listenerPorts["127.0.0.2:0"];
  let release = (): void => {};
  const gate = new Promise<void>((resolve) => release = resolve);
  let halfway = 0;
  const transfers = Array.from({ length: 8 }, async (_, i) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: carrying });
    try {
      const [sent, received] = await Promise.all([
        sendInHalves(conn, SIZE, i + 1, () => halfway++, gate),
        receiveAll(conn),
      ]);
      return received.bytes === SIZE && received.sha256 === sent;
    } finally {
      closeQuietly(conn);
    }
  });
  // Handled from the start: a transfer that fails early is reported by the checks below.
  const settled = Promise.allSettled(transfers);
  try {
    assert.ok(await echoThrough("127.0.0.2", idle, 1024), "the idle listener serves at first");
    await waitFor(() => halfway === 8, "every transfer to be half sent", 20_000);

    const changed = proxy.reload(specFromConfig(parseConfig(proxyToml({
      engines: 2,
      listeners: ["127.0.0.1:0", "127.0.0.3:0"],
      backends,
    }))));
    assert.deepEqual(changed, {
      added: ["127.0.0.3:0"],
      removed: ["127.0.0.2:0"],
      clusters: ["app"],
    });
    assert.deepEqual(Object.keys(proxy.listenerPorts).sort(), ["127.0.0.1:0", "127.0.0.3:0"]);
    assert.equal(proxy.listenerPorts["127.0.0.1:0"], carrying);

    // While the transfers wait: the added listener serves, the removed one refuses.
    const added = proxy.listenerPorts["127.0.0.3:0"];
    assert.ok(await echoThrough("127.0.0.3", added, 64 * 1024), "the added listener serves");
    await waitFor(
      async () => {
        try {
          closeQuietly(await Deno.connect({ hostname: "127.0.0.2", port: idle }));
          return false;
        } catch (error) {
          if (error instanceof Deno.errors.ConnectionRefused) return true;
          throw error;
        }
      },
      "the removed listener to refuse connects",
      2_000,
    );

    release();
    const intact = await within(Promise.all(transfers), 60_000, "8 transfers of 16 MiB");
    assert.deepEqual(intact, Array(8).fill(true));
    const stats = await settledStats(proxy);
    assert.equal(stats.reloads, 1);
    assert.equal(stats.connectionsTotal, 10);
    assert.equal(stats.bytesIn, 8 * SIZE + 1024 + 64 * 1024);
  } finally {
    release();
    await proxy.shutdown();
    await within(settled, 10_000, "the transfers to end");
    await backend.close();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy (engines = 2): 10,000 short connections leave no fd behind and are all counted", async () => {
  const backend = echoBackend();
  await waitFor(() => workerThreads() === 0, "earlier Workers to exit");
  const before = await fdBaseline();
  const proxy = startProxy(parseConfig(proxyToml({
    engines: 2,
    listeners: ["127.0.0.1:0"],
    backends: [`127.0.0.1:${backend.port}`],
  })));
  let stopped = false;
  try {
    const port = proxy.listenerPorts["127.0.0.1:0"];
    await within(shortConnections(port, 10_000, 8), 20_000, "10,000 connections");
    const stats = await settledStats(proxy);
    assert.equal(stats.connectionsTotal, 10_000);
    assert.equal(stats.connectionsRejected, 0);
    stopped = true;
    await proxy.shutdown();
    await engineStoppedAndFdsBack(before);
  } finally {
    if (!stopped) await proxy.shutdown();
    await backend.close();
    await shutdownRelayEngine();
  }
});

Deno.test("proxy.ts without --allow-ffi: relays through Deno conns byte-exact and says so in one line", async () => {
  const backend = echoBackend();
  const dir = await Deno.makeTempDir();
  const port = freePort();
  const path = `${dir}/proxy.toml`;
  await Deno.writeTextFile(
    path,
    proxyToml({
      engines: 2,
      listeners: [`127.0.0.1:${port}`],
      backends: [`127.0.0.1:${backend.port}`],
    }),
  );
  const proxyProcess = spawnProxyWithoutFfi(path);
  const { child, output } = proxyProcess;
  try {
    // Until it listens, connects are refused: retried, bounded.
    await waitFor(
      () => echoThrough("127.0.0.1", port, 1024).catch(() => false),
      "the proxy to serve",
      15_000,
    ).catch((error) => {
      throw new Error(`${error.message}; the proxy said:\n${output.lines.join("\n")}`);
    });
    assert.ok(await echoThrough("127.0.0.1", port, 1 << 20), "1 MiB echoed intact");
    child.kill("SIGTERM");
    const status = await within(child.status, 15_000, "proxy.ts to exit on SIGTERM");
    await output.done;
    assert.equal(status.code, 0, output.lines.join("\n"));
    const said = output.lines.filter((line) => /--allow-ffi/.test(line));
    assert.equal(said.length, 1, `lines naming --allow-ffi:\n${output.lines.join("\n")}`);
    assert.match(said[0], /Deno/, said[0]);
  } finally {
    await proxyProcess.kill();
    await backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** The fd of this process's socket listening on 127.0.0.1:`port` (from /proc/net/tcp). */
function listeningFd(port: number): number {
  const hexPort = port.toString(16).toUpperCase().padStart(4, "0");
  const inode = Deno.readTextFileSync("/proc/net/tcp").split("\n").map((l) => l.trim().split(/\s+/))
    .find((f) => f[1] === `0100007F:${hexPort}` && f[3] === "0A")?.[9];
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`) === `socket:[${inode}]`) {
        return Number(entry.name);
      }
    } catch {
      // closed while listed (readDirSync's own fd)
    }
  }
  throw new Error(`no fd listens on port ${port}`);
}

/** The epoll fds of this process that watch `fd` (from /proc/self/fdinfo). */
function epollsWatching(fd: number): number[] {
  const found: number[] = [];
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`) !== "anon_inode:[eventpoll]") continue;
      const info = Deno.readTextFileSync(`/proc/self/fdinfo/${entry.name}`);
      if (new RegExp(`^tfd:\\s+${fd}\\s`, "m").test(info)) found.push(Number(entry.name));
    } catch {
      // closed while listed
    }
  }
  return found;
}

Deno.test("TcpProxy (engines = 1): an engine whose epoll fd is closed under it dies, is restarted, and one that dies again soon is restarted after a back-off", async () => {
  const backend = echoBackend();
  const events: ProxyEvent[] = [];
  const proxy = startProxy(
    parseConfig(proxyToml({
      engines: 1,
      listeners: ["127.0.0.1:0"],
      backends: [`127.0.0.1:${backend.port}`],
    })),
    { onEvent: (event) => events.push(event) },
  );
  const port = proxy.listenerPorts["127.0.0.1:0"];
  const died = (): string[] =>
    events.flatMap((e) =>
      e.type === "internal-error" && /^Error: engine 0: /.test(e.error) ? [e.error] : []
    );
  /** Closes the engine's epoll fd (bad luck, or a bug elsewhere in the process). */
  const kill = async (): Promise<void> => {
    const listener = listeningFd(port);
    let engineEpoll: number[] = [];
    await waitFor(
      () => (engineEpoll = epollsWatching(listener)).length === 1,
      "the engine's epoll",
    );
    libc().close(engineEpoll[0]);
    // An engine asleep in epoll_wait keeps the instance alive until it wakes: a connection
    // wakes it, and its next epoll_wait fails. (Served or not, it is not what is checked.)
    await echoThrough("127.0.0.1", port, 16).catch(() => false);
  };
  try {
    assert.ok(await echoThrough("127.0.0.1", port, 4096));
    await kill();
    await waitFor(() => died().length === 1, "the engine's death to be reported", 10_000);
    // It died less than 10 s after its start: restarted after 100 ms, and it serves again.
    assert.match(died()[0], /restarted in 100 ms/);
    await waitFor(() => echoThrough("127.0.0.1", port, 4096), "the restarted engine to serve");
    // Internal errors are reported at most once a second (counted always): the second death
    // must fall in the next second for its report to carry its own text.
    const firstAt = performance.now();
    await waitFor(() => performance.now() - firstAt > 1_100, "the report interval to pass");
    await kill();
    await waitFor(() => died().length === 2, "the second death to be reported", 10_000);
    assert.match(died()[1], /restarted in 200 ms/);
    await waitFor(() => echoThrough("127.0.0.1", port, 4096), "the engine to serve again");
    assert.ok(proxy.stats().internalErrors >= 2);
  } finally {
    await proxy.shutdown();
    await backend.close();
    await shutdownRelayEngine();
  }
});
