/**
 * `relay(a, { hostname, port })`: side b is a target the relay connects to itself. With FFI the
 * engine makes the connection (a non-blocking connect it finishes); without FFI, or with
 * `initialData.toB`, the relay connects with Deno.connect. Real sockets on loopback, bytes
 * checked with SHA-256, fds counted before and after, every wait bounded.
 *
 * The topology is client -> relay(a, target) -> backend: `a` is the relay's accepted conn.
 */

import assert from "node:assert/strict";
import {
  relay,
  type RelayOptions,
  type RelayResult,
  type RelayTarget,
  shutdownRelayEngine,
  SyscallError,
} from "../mod.ts";
import {
  acceptEach,
  closeQuietly,
  echoBackend,
  fillPattern,
  receiveAll,
  runDeno,
  sendPattern,
  tcpPair,
  waitFor,
} from "./_helpers.ts";
import { assertHalfClose, halfCloseExchange, readOutcome, type Stream } from "./_relay_exchange.ts";
import { engineStoppedAndFdsBack, fdBaseline, within } from "./_relay_helpers.ts";
import { blackhole } from "./_sockets.ts";

const MiB = 1024 * 1024;
const encode = (text: string): Uint8Array => new TextEncoder().encode(text);
/** The two ways a target is connected: by the engine, and by Deno.connect (`toB` forces it). */
const PATHS: Array<{ path: string; initialData?: RelayOptions["initialData"] }> = [
  { path: "engine" },
  { path: "Deno.connect", initialData: { toB: encode("HEAD") } },
];

// --- helpers -----------------------------------------------------------------------------------

/** A client and the relay's side `a`, the conn accepted from it. */
async function front(): Promise<{ client: Deno.TcpConn; a: Deno.TcpConn }> {
  const pair = await tcpPair();
  return { client: pair.client, a: pair.server };
}

/** A port on 127.0.0.1 that nothing listens on. */
function refusedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}

/** Reads to end of input (bounded by the caller's `within`). */
async function readToEnd(conn: Stream): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (let n; (n = await conn.read(buffer)) !== null;) parts.push(buffer.slice(0, n));
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.byteLength, 0));
  parts.reduce((offset, part) => (out.set(part, offset), offset + part.byteLength), 0);
  return out;
}

/** TCP sockets this process holds (Deno's Worker start-up adds a Unix socket pair). */
function tcpSocketFds(): number {
  const inodes = new Set<string>();
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of Deno.readTextFileSync(table).split("\n").slice(1)) {
      const inode = line.trim().split(/\s+/)[9];
      if (inode) inodes.add(`socket:[${inode}]`);
    }
  }
  let count = 0;
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (inodes.has(Deno.readLinkSync(`/proc/self/fd/${entry.name}`))) count++;
    } catch {
      // closed while listed (the listing's own fd)
    }
  }
  return count;
}

/** Connects in SYN_SENT to 127.0.0.1:`port` in this network namespace (/proc/net/tcp). */
function connectsUnderWay(port: number): number {
  const remote = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  return Deno.readTextFileSync("/proc/net/tcp").split("\n").slice(1).filter((line) => {
    const fields = line.trim().split(/\s+/);
    return fields[2] === remote && fields[3] === "02";
  }).length;
}

/** Waits (1 s) until the process holds `sockets` TCP sockets and `syns` connects to `port`. */
async function relaySocketsClosed(
  path: string,
  sockets: number,
  syns: number,
  port: number,
): Promise<void> {
  await waitFor(
    () => tcpSocketFds() === sockets && connectsUnderWay(port) === syns,
    `${path}: the relay's sockets to be closed`,
    1_000,
  ).catch((error) => {
    const now = `TCP sockets ${tcpSocketFds()} (expected ${sockets}), SYN_SENT ${
      connectsUnderWay(port)
    } (expected ${syns})`;
    throw new Error(`${error.message}: ${now}`);
  });
}

/** The relay ended before a byte moved because side b's connect failed with `code`. */
function assertConnectFailed(result: RelayResult, code: string, path: string): void {
  const error = result.error as (Error & { code?: unknown }) | undefined;
  assert.equal(result.end, "error", `${path}: end (error: ${error})`);
  assert.equal(result.side, "b", `${path}: side`);
  assert.equal(result.aToB + result.bToA, 0, `${path}: no byte moved`);
  assert.ok(error instanceof Error, `${path}: an error, got ${error}`);
  assert.equal(error.code, code, `${path}: error code (error: ${error.name}: ${error.message})`);
  if (path === "engine") {
    assert.ok(error instanceof SyscallError, `${path}: a SyscallError, got ${error.name}`);
    assert.equal(error.syscall, "connect");
    assert.ok(Number.isInteger(error.errno) && error.errno > 0, `errno ${error.errno}`);
  }
}

/** relay(a, target) with a listener as the backend: a half-close exchange both ways round. */
async function exchangeWith(
  listener: Deno.TcpListener,
  target: RelayTarget,
  bytes: number,
): Promise<void> {
  for (const finisherIs of ["client", "server"] as const) {
    const { client, a } = await front();
    let server: Deno.TcpConn | undefined;
    try {
      const relayed = relay(a, target);
      server = await within(listener.accept(), 5_000, `the relay's connect to ${target.hostname}`);
      // The relay's socket is of the listener's family (::1 connects from ::1).
      assert.equal(server.remoteAddr.hostname, listener.addr.hostname);
      const [finisher, talker] = finisherIs === "client" ? [client, server] : [server, client];
      const outcome = await within(
        halfCloseExchange(finisher, talker, bytes, bytes),
        30_000,
        `the half-close exchange via ${target.hostname}, the ${finisherIs} finishing first`,
      );
      assertHalfClose(outcome, bytes, bytes);
      const result = await within(relayed, 5_000, "the relay to end");
      assert.equal(result.end, "done", `${target.hostname}: ${result.error}`);
      assert.deepEqual([result.aToB, result.bToA], [bytes, bytes]);
      assert.notEqual(result.mode, "fallback");
      assert.equal(result.error, undefined);
      // The relay closed both of its sockets: nothing more arrives at either end.
      assert.equal(await within(readOutcome(client), 5_000, "client EOF"), null);
      assert.equal(await within(readOutcome(server), 5_000, "server EOF"), null);
    } finally {
      closeQuietly(client);
      if (server) closeQuietly(server);
    }
  }
}

// --- 1. bulk both ways and half-close ----------------------------------------------------------

Deno.test("relay (target): 8 MiB each way through an echo backend, SHA-256 equal, FIN both ways, done", async () => {
  const before = await fdBaseline();
  const echo = echoBackend();
  const { client, a } = await front();
  try {
    const relayed = relay(a, { hostname: "127.0.0.1", port: echo.port });
    const [sent, got, result] = await within(
      Promise.all([
        sendPattern(client, 8 * MiB, 7).then(async (hash) => {
          await client.closeWrite();
          return hash;
        }),
        // Ends only at the backend's FIN, sent once it has read the client's.
        receiveAll(client),
        relayed,
      ]),
      30_000,
      "8 MiB there and back",
    );
    assert.equal(got.bytes, 8 * MiB);
    assert.equal(got.sha256, sent);
    assert.equal(result.end, "done");
    assert.deepEqual([result.aToB, result.bToA], [8 * MiB, 8 * MiB]);
    assert.equal(result.mode, "splice", "the engine relayed a bulk transfer");
    assert.equal(result.error, undefined);
    assert.equal(result.side, undefined);
  } finally {
    closeQuietly(client);
    await echo.close();
    await engineStoppedAndFdsBack(before);
  }
});

Deno.test("relay (target): half-close with 8 MiB in flight, either side finishing first", async () => {
  const before = await fdBaseline();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    await exchangeWith(listener, { hostname: "127.0.0.1", port: listener.addr.port }, 8 * MiB);
  } finally {
    listener.close();
    await engineStoppedAndFdsBack(before);
  }
});

// --- 2. address families and names -------------------------------------------------------------

Deno.test("relay (target): an IPv6 target (::1) and the name localhost", async () => {
  const before = await fdBaseline();
  try {
    for (const hostname of ["::1", "localhost"]) {
      const listener = Deno.listen({ hostname, port: 0 });
      try {
        await exchangeWith(listener, { hostname, port: listener.addr.port }, MiB);
      } finally {
        listener.close();
      }
    }
  } finally {
    await engineStoppedAndFdsBack(before);
  }
});

// --- 3. and 4. connect failures ----------------------------------------------------------------

Deno.test("relay (target): a refused port ends the relay as ECONNREFUSED of side b; the client sees EOF", async () => {
  const before = await fdBaseline();
  try {
    for (const { path, initialData } of PATHS) {
      const { client, a } = await front();
      try {
        const target = { hostname: "127.0.0.1", port: refusedPort() };
        const result = await within(relay(a, target, { initialData }), 5_000, "the relay to end");
        assertConnectFailed(result, "ECONNREFUSED", path);
        assert.equal(await within(readOutcome(client), 5_000, "client EOF"), null, path);
      } finally {
        closeQuietly(client);
      }
    }
  } finally {
    await engineStoppedAndFdsBack(before);
  }
});

Deno.test("relay (target): connectTimeout 200 to a blackhole ends as ETIMEDOUT of side b, socket closed at once", async () => {
  const before = await fdBaseline();
  const hole = blackhole();
  const target = { hostname: "127.0.0.1", port: hole.port };
  try {
    for (const { path, initialData } of PATHS) {
      const sockets = tcpSocketFds();
      const syns = connectsUnderWay(hole.port);
      const { client, a } = await front();
      try {
        const started = Date.now();
        const relayed = relay(a, target, { connectTimeout: 200, initialData });
        await waitFor(() => connectsUnderWay(hole.port) > syns, `${path}: the connect to start`);
        const result = await within(relayed, 3_000, `${path}: the connect to time out`);
        const took = Date.now() - started;
        assertConnectFailed(result, "ETIMEDOUT", path);
        assert.ok(took >= 150, `${path}: gave up after ${took} ms, before the 200 ms timeout`);
        assert.equal(await within(readOutcome(client), 5_000, "client EOF"), null, path);
        // `a` and the half-open socket are closed now, not when the kernel gives up (~2 min).
        await relaySocketsClosed(path, sockets + 1, syns, hole.port);
      } finally {
        closeQuietly(client);
      }
    }
  } finally {
    hole.close();
    await engineStoppedAndFdsBack(before);
  }
});

// --- 5. initialData ----------------------------------------------------------------------------

Deno.test("relay (target): initialData toA and toB arrive first on both sides, in order", async () => {
  const before = await fdBaseline();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const target = { hostname: "127.0.0.1", port: listener.addr.port };
  const decode = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);
  try {
    const cases = [
      { toA: encode("220 ready\r\n") },
      { toA: encode("220 ready\r\n"), toB: encode("GET / HTTP/1.1\r\n\r\n") },
    ];
    for (const initialData of cases) {
      const { client, a } = await front();
      let server: Deno.TcpConn | undefined;
      try {
        // The client's bytes wait in `a` before the relay even starts.
        await client.write(encode("from client"));
        await client.closeWrite();
        const relayed = relay(a, target, { initialData });
        server = await within(listener.accept(), 5_000, "the relay's connect");
        await server.write(encode("from server"));
        await server.closeWrite();
        const [atServer, atClient, result] = await within(
          Promise.all([readToEnd(server), readToEnd(client), relayed]),
          5_000,
          "both sides to read to end of input",
        );
        const toB = initialData.toB ? decode(initialData.toB) : "";
        assert.equal(decode(atServer), `${toB}from client`);
        assert.equal(decode(atClient), "220 ready\r\nfrom server");
        assert.equal(result.end, "done", `${result.error}`);
        // As for two conns: bytes already read are not counted as relayed.
        assert.deepEqual([result.aToB, result.bToA], [11, 11]);
      } finally {
        closeQuietly(client);
        if (server) closeQuietly(server);
      }
    }
  } finally {
    listener.close();
    await engineStoppedAndFdsBack(before);
  }
});

// --- 6. abort during the connect ---------------------------------------------------------------

Deno.test("relay (target): an abort during the connect ends the relay as aborted, sockets closed", async () => {
  const before = await fdBaseline();
  const hole = blackhole();
  const target = { hostname: "127.0.0.1", port: hole.port };
  const pending: Promise<unknown>[] = [];
  try {
    for (const { path, initialData } of PATHS) {
      const sockets = tcpSocketFds();
      const syns = connectsUnderWay(hole.port);
      const { client, a } = await front();
      try {
        const controller = new AbortController();
        const relayed = relay(a, target, { signal: controller.signal, initialData });
        pending.push(relayed.catch(() => {}));
        await waitFor(() => connectsUnderWay(hole.port) > syns, `${path}: the connect to start`);
        controller.abort();
        const result = await within(relayed, 3_000, `${path}: the aborted relay to end`);
        assert.equal(result.end, "aborted", `${path}: ${result.error}`);
        assert.equal(result.aToB + result.bToA, 0);
        assert.equal(await within(readOutcome(client), 5_000, "client EOF"), null, path);
        await relaySocketsClosed(path, sockets + 1, syns, hole.port);
      } finally {
        closeQuietly(client);
      }
    }
  } finally {
    // A relay that ignored the abort fails its connect at the next SYN once the port is closed.
    hole.close();
    await within(Promise.all(pending), 20_000, "every relay to end").catch(() => {});
    await engineStoppedAndFdsBack(before);
  }
});

// --- 7. misuse ---------------------------------------------------------------------------------

Deno.test("relay (target): bad port, hostname or connectTimeout reject and close a", async () => {
  const before = await fdBaseline();
  const cases: Array<[string, RelayTarget, RelayOptions | undefined, ErrorConstructor]> = [
    ["port 0", { hostname: "127.0.0.1", port: 0 }, undefined, RangeError],
    ["port 70000", { hostname: "127.0.0.1", port: 70_000 }, undefined, RangeError],
    ["port 1.5", { hostname: "127.0.0.1", port: 1.5 }, undefined, RangeError],
    ["port NaN", { hostname: "127.0.0.1", port: NaN }, undefined, RangeError],
    ["hostname empty", { hostname: "", port: 80 }, undefined, TypeError],
    ["connectTimeout -1", { hostname: "127.0.0.1", port: 80 }, { connectTimeout: -1 }, RangeError],
    [
      "connectTimeout 0.5",
      { hostname: "127.0.0.1", port: 80 },
      { connectTimeout: 0.5 },
      RangeError,
    ],
  ];
  try {
    for (const [what, target, options, kind] of cases) {
      const { client, a } = await front();
      try {
        await assert.rejects(relay(a, target, options), kind, what);
        assert.equal(await within(readOutcome(client), 5_000, `${what}: client EOF`), null, what);
      } finally {
        closeQuietly(client);
      }
    }
  } finally {
    await engineStoppedAndFdsBack(before);
  }
});

// --- 8. and 9. permissions (subprocesses) ------------------------------------------------------

Deno.test("relay (target): without --allow-ffi, relays byte-exact with Deno.connect, mode fallback", async () => {
  const result = await runDeno(
    `
      import { relay } from "ROOT/mod.ts";
      import { echoBackend, receiveAll, sendPattern, tcpPair } from "ROOT/tests/_helpers.ts";
      import { within } from "ROOT/tests/_relay_helpers.ts";
      const echo = echoBackend();
      const report = {};
      {
        const { client, server: a } = await tcpPair();
        const [sent, got, result] = await within(Promise.all([
          sendPattern(client, 4_000_000, 5).then(async (h) => { await client.closeWrite(); return h; }),
          receiveAll(client),
          relay(a, { hostname: "127.0.0.1", port: echo.port }),
        ]), 30_000, "the echo exchange");
        client.close();
        report.echo = { intact: got.bytes === 4_000_000 && got.sha256 === sent, ...result };
      }
      {
        const { client, server: a } = await tcpPair();
        const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
        const port = listener.addr.port;
        listener.close();
        const result = await within(relay(a, { hostname: "127.0.0.1", port }), 5_000, "refused");
        report.refused = { ...result, code: result.error?.code, eof: await client.read(new Uint8Array(1)) };
        client.close();
      }
      await echo.close();
      console.log(JSON.stringify(report));
    `,
    ["--allow-net=127.0.0.1"],
  );
  assert.equal(result.code, 0, result.stderr);
  const { echo, refused } = JSON.parse(result.stdout);
  assert.equal(echo.intact, true, result.stdout);
  assert.equal(echo.mode, "fallback");
  assert.equal(echo.end, "done");
  assert.deepEqual([echo.aToB, echo.bToA], [4_000_000, 4_000_000]);
  assert.equal(refused.end, "error", result.stdout);
  assert.equal(refused.side, "b");
  assert.equal(refused.code, "ECONNREFUSED");
  assert.equal(refused.mode, "fallback");
  assert.equal(refused.eof, null, "the client's connection was closed");
  await shutdownRelayEngine();
});

Deno.test("relay (target): --allow-net limited to 127.0.0.1, a target on 127.0.0.2 rejects NotCapable, a closed", async () => {
  const root = new URL("../", import.meta.url).pathname;
  const result = await runDeno(
    `
      import { relay, shutdownRelayEngine } from "ROOT/mod.ts";
      import { echoBackend, tcpPair } from "ROOT/tests/_helpers.ts";
      import { readExactly } from "ROOT/tests/_relay_exchange.ts";
      import { within } from "ROOT/tests/_relay_helpers.ts";
      const echo = echoBackend();
      const report = [];
      {
        // The allowed host relays, in the engine.
        const { client, server: a } = await tcpPair();
        const relayed = relay(a, { hostname: "127.0.0.1", port: echo.port });
        await client.write(new TextEncoder().encode("ping"));
        await client.closeWrite();
        const back = new TextDecoder().decode(await within(readExactly(client, 4), 5_000, "echo"));
        const { mode, end } = await within(relayed, 5_000, "the allowed relay");
        report.push({ back, mode, end });
        client.close();
      }
      for (const initialData of [undefined, { toB: new Uint8Array([1]) }]) {
        const { client, server: a } = await tcpPair();
        let outcome;
        try {
          outcome = await within(relay(a, { hostname: "127.0.0.2", port: echo.port }, { initialData }),
            5_000, "the refused relay");
        } catch (error) {
          outcome = { name: error.name, notCapable: error instanceof Deno.errors.NotCapable };
        }
        const eof = await within(client.read(new Uint8Array(1)), 5_000, "client EOF")
          .catch((error) => error.name);
        report.push({ toB: !!initialData, outcome, eof });
        client.close();
      }
      await echo.close();
      await shutdownRelayEngine();
      console.log(JSON.stringify(report));
    `,
    ["--allow-ffi", "--allow-net=127.0.0.1", `--allow-read=${root}`],
  );
  assert.equal(result.code, 0, result.stderr);
  const [allowed, ...refused] = JSON.parse(result.stdout);
  assert.deepEqual(allowed, { back: "ping", mode: "copy", end: "done" });
  for (const one of refused) {
    assert.deepEqual(one.outcome, { name: "NotCapable", notCapable: true }, JSON.stringify(one));
    assert.equal(one.eof, null, `the client's connection was closed (toB: ${one.toB})`);
  }
  await shutdownRelayEngine();
});

// --- 10. many short connections ----------------------------------------------------------------

Deno.test("relay (target): 2,000 short connections through a listen loop, each echoed byte-exact; no fd growth", async () => {
  const before = await fdBaseline();
  const echo = echoBackend();
  const proxy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const target = { hostname: "127.0.0.1", port: echo.port };
  const relays: Promise<RelayResult>[] = [];
  const serving = acceptEach(proxy, (conn) => relays.push(relay(conn, target)));
  const count = 2_000;
  let next = 0;
  let intact = 0;
  const client = async (): Promise<void> => {
    for (let i = next++; i < count; i = next++) {
      const payload = new Uint8Array(64 + (i % 512));
      fillPattern(payload, 1 + i);
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.addr.port });
      try {
        await conn.write(payload);
        await conn.closeWrite();
        const back = await readToEnd(conn);
        if (back.byteLength === payload.byteLength && back.every((b, j) => b === payload[j])) {
          intact++;
        }
      } finally {
        conn.close();
      }
    }
  };
  try {
    await within(Promise.all(Array.from({ length: 16 }, client)), 120_000, "2,000 connections");
    assert.equal(intact, count, "every connection echoed intact");
    const results = await within(Promise.all(relays), 10_000, "every relay to end");
    assert.equal(results.length, count);
    const done = results.filter((r) => r.end === "done" && r.aToB === r.bToA && r.aToB >= 64);
    assert.equal(done.length, count, JSON.stringify(results.find((r) => !done.includes(r))));
  } finally {
    proxy.close();
    await serving;
    await echo.close();
    await engineStoppedAndFdsBack(before);
  }
});
