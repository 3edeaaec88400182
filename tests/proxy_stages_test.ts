/**
 * The stages a connection passes in the engines before its relay: `allow` / `deny`,
 * `max_connections_per_ip` (across two engines), and `expect_proxy` with good, malformed,
 * oversized and slow PROXY headers. Clients from 127.0.0.1 and 127.0.0.2 (both loopback; the
 * second through node:net's `localAddress`), bytes checked by SHA-256, every refusal checked
 * in the counters, and the proxy checked to keep serving after each.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import net from "node:net";
import { encodeProxyHeader, shutdownRelayEngine } from "../mod.ts";
import { parseConfig } from "../config.ts";
import { specFromConfig, startProxy, type TcpProxy } from "../proxy/mod.ts";
import { prometheusText } from "../proxy/metrics.ts";
import type { ConnectionRecord, ProxyEvent } from "../proxy/types.ts";
import { closeQuietly, echoBackend, receiveAll, waitFor } from "./_helpers.ts";
import { within } from "./_relay_helpers.ts";
import { resetAndClose } from "./_sockets.ts";

/** A proxy on 127.0.0.1:0 with `listenerKeys` in its listener, to `echoPort`. */
function proxyWith(
  listenerKeys: string,
  echoPort: number,
  events: ProxyEvent[],
  engines = 1,
): { proxy: TcpProxy; port: number } {
  const proxy = startProxy(
    parseConfig(`
engines = ${engines}

[[listeners]]
address = "127.0.0.1:0"
${listenerKeys}

[clusters.app]
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ address = "127.0.0.1:${echoPort}" }]
`),
    { onEvent: (e) => events.push(e) },
  );
  return { proxy, port: proxy.listenerPorts["127.0.0.1:0"] };
}

/** A connection from `localAddress` (a loopback address) to 127.0.0.1:`port`. */
async function connectFrom(
  localAddress: string,
  port: number,
): Promise<{ socket: net.Socket; localPort: number }> {
  const socket = net.connect({ host: "127.0.0.1", port, localAddress });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  return { socket, localPort: socket.localPort! };
}

/**
 * Sends `bytes` then half-closes, and collects what comes back until the end: the bytes, or
 * `null` when the proxy closed or reset without a byte.
 */
function exchange(socket: net.Socket, bytes: Uint8Array): Promise<Uint8Array | null> {
  return within(
    new Promise((resolve) => {
      const chunks: Uint8Array[] = [];
      socket.on("data", (chunk: Uint8Array) => chunks.push(chunk));
      const done = (): void => {
        const total = chunks.reduce((n, c) => n + c.length, 0);
        if (total === 0) return resolve(null);
        const out = new Uint8Array(total);
        let off = 0;
        for (const c of chunks) {
          out.set(c, off);
          off += c.length;
        }
        resolve(out);
      };
      socket.once("end", done);
      socket.once("error", done);
      socket.once("close", done);
      socket.end(bytes);
    }),
    10_000,
    "the exchange to end",
  );
}

function pattern(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Echo of `n` pattern bytes from `localAddress`, checked by SHA-256. */
async function echoedFrom(localAddress: string, port: number, n = 4096): Promise<boolean> {
  const { socket } = await connectFrom(localAddress, port);
  try {
    const sent = pattern(n, n);
    const back = await exchange(socket, sent);
    return back !== null && sha256(back) === sha256(sent);
  } finally {
    socket.destroy();
  }
}

function records(events: ProxyEvent[]): ConnectionRecord[] {
  return events.flatMap((e) => e.type === "connection" ? [e.record] : []);
}

Deno.test("proxy stages: deny wins over allow; a denied client never reaches a backend, is counted, and reported at most once a second", async () => {
  const echo = echoBackend();
  const events: ProxyEvent[] = [];
  const { proxy, port } = proxyWith(
    'allow = ["127.0.0.0/8"]\ndeny = ["127.0.0.2/32"]',
    echo.port,
    events,
  );
  try {
    assert.ok(await echoedFrom("127.0.0.1", port), "127.0.0.1 is served");
    const started = performance.now();
    for (let i = 0; i < 5; i++) {
      const { socket } = await connectFrom("127.0.0.2", port);
      assert.equal(await exchange(socket, pattern(100, i)), null, "closed without a byte");
      socket.destroy();
    }
    const elapsed = performance.now() - started;
    await waitFor(() => (proxy.stats().connectionsRefused.denied ?? 0) === 5, "5 refusals");
    assert.equal(echo.accepted(), 1, "only the allowed client reached the backend");
    assert.ok(await echoedFrom("127.0.0.1", port), "the proxy keeps serving");
    const reported = events.filter((e) => e.type === "connection-refused");
    assert.ok(reported.length >= 1, "the refusal is reported");
    assert.ok(
      reported.length <= Math.ceil(elapsed / 1000) + 1,
      `${reported.length} reports in ${elapsed.toFixed(0)} ms`,
    );
    const first = reported[0] as Extract<ProxyEvent, { type: "connection-refused" }>;
    assert.equal(first.reason, "denied");
    assert.match(first.client, /^127\.0\.0\.2:\d+$/);
    // Refusals by the rules are not access-logged one by one.
    assert.ok(records(events).every((r) => !r.client.startsWith("127.0.0.2:")));
  } finally {
    await proxy.shutdown();
    await echo.close();
    await shutdownRelayEngine();
  }
});

Deno.test("proxy stages: max_connections_per_ip = 2 holds across two engines, per address, and frees with each close", async () => {
  const echo = echoBackend();
  const events: ProxyEvent[] = [];
  // SO_REUSEPORT spreads connections by their ports, so both engines can be made to hold one
  // (one shared socket may wake the same engine every time); the table of counts is shared
  // the same way in both modes.
  Deno.env.set("SPLICE_LISTEN_MODE", "reuseport");
  const { proxy, port } = proxyWith("max_connections_per_ip = 2", echo.port, events, 2);
  Deno.env.delete("SPLICE_LISTEN_MODE");
  const held: net.Socket[] = [];
  /** A held connection from 127.0.0.1, once relayed; the engine that accepted it. */
  const hold = async (): Promise<{ socket: net.Socket; engine: number }> => {
    const before = proxy.stats().engines;
    const { socket } = await connectFrom("127.0.0.1", port);
    socket.write(Uint8Array.of(1));
    await within(new Promise((resolve) => socket.once("data", resolve)), 10_000, "an echo");
    const after = proxy.stats().engines;
    return { socket, engine: after.findIndex((n, e) => n > before[e]) };
  };
  try {
    const first = await hold();
    held.push(first.socket);
    // The second held connection must be in the other engine: a per-engine count would then
    // let both engines take 2 more.
    for (let attempt = 0;; attempt++) {
      assert.ok(attempt < 64, "no connection landed in the other engine in 64 tries");
      const second = await hold();
      if (second.engine !== first.engine) {
        held.push(second.socket);
        break;
      }
      const open = proxy.stats().connectionsOpen;
      second.socket.destroy();
      await waitFor(() => proxy.stats().connectionsOpen === open - 1, "a retry to close");
    }
    assert.deepEqual(proxy.stats().engines.map((n) => n > 0), [true, true]);
    await waitFor(() => proxy.stats().connectionsOpen === 2, "the two held connections");
    const accepted = echo.accepted();
    for (let i = 0; i < 8; i++) {
      const { socket } = await connectFrom("127.0.0.1", port);
      assert.equal(await exchange(socket, pattern(10, i)), null, `extra ${i} closed`);
      socket.destroy();
    }
    assert.equal(proxy.stats().connectionsRefused.per_ip_limit, 8);
    assert.equal(echo.accepted(), accepted, "no extra connection reached the backend");
    // Another address has its own count.
    assert.ok(await echoedFrom("127.0.0.2", port), "127.0.0.2 is served");
    held.pop()!.destroy();
    await waitFor(() => proxy.stats().connectionsOpen === 1, "one held connection to end");
    assert.ok(await echoedFrom("127.0.0.1", port), "a slot is free again");
  } finally {
    for (const socket of held) socket.destroy();
    await proxy.shutdown();
    await echo.close();
    await shutdownRelayEngine();
  }
});

/** Sends raw `bytes` (no half-close), waits for the proxy to close; how long that took. */
async function sentThenClosed(port: number, bytes: Uint8Array): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const started = performance.now();
  try {
    if (bytes.length > 0) await conn.write(bytes);
    const got = await within(receiveAll(conn).catch(() => ({ bytes: 0 })), 10_000, "a close");
    assert.equal(got.bytes, 0, "nothing came back");
    return performance.now() - started;
  } finally {
    closeQuietly(conn);
  }
}

Deno.test("proxy stages: expect_proxy takes v1 and v2 headers (LOCAL keeps the socket's address); malformed, oversized, truncated and slow ones are closed, counted and never reach a backend", async () => {
  const echo = echoBackend();
  const events: ProxyEvent[] = [];
  const { proxy, port } = proxyWith(
    "expect_proxy = true\nproxy_header_timeout_ms = 300",
    echo.port,
    events,
  );
  const source = { hostname: "192.0.2.7", port: 40000 };
  const destination = { hostname: "198.51.100.1", port: 443 };
  try {
    for (const version of [1, 2] as const) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        const payload = pattern(70_000, version);
        const header = encodeProxyHeader(version, source, destination);
        await conn.write(header);
        const [, back] = await Promise.all([
          (async () => {
            for (let off = 0; off < payload.length;) off += await conn.write(payload.subarray(off));
            await conn.closeWrite();
          })(),
          receiveAll(conn),
        ]);
        assert.equal(back.bytes, payload.length, `v${version}: the payload, not the header`);
        assert.equal(back.sha256, sha256(payload), `v${version}: intact`);
      } finally {
        closeQuietly(conn);
      }
    }
    // v2 LOCAL: a balancer's health check; the socket's own address is the client.
    const local = Uint8Array.from([
      0x0d,
      0x0a,
      0x0d,
      0x0a,
      0x00,
      0x0d,
      0x0a,
      0x51,
      0x55,
      0x49,
      0x54,
      0x0a,
      0x20,
      0x00,
      0,
      0,
    ]);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(local);
    await conn.write(Uint8Array.of(1, 2, 3));
    await conn.closeWrite();
    assert.equal((await receiveAll(conn)).bytes, 3, "LOCAL: relayed");
    closeQuietly(conn);
    await waitFor(() => records(events).length === 3, "three records");
    const clients = records(events).map((r) => r.client);
    assert.deepEqual(clients.slice(0, 2), ["192.0.2.7:40000", "192.0.2.7:40000"]);
    assert.match(clients[2], /^127\.0\.0\.1:\d+$/);
    assert.equal(echo.accepted(), 3);

    const encoder = new TextEncoder();
    const bad: Array<[string, Uint8Array]> = [
      ["wrong signature", encoder.encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n")],
      ["v1 without CRLF in 107 bytes", encoder.encode("PROXY TCP4 " + "1".repeat(120))],
      ["v1 bad address", encoder.encode("PROXY TCP4 300.1.1.1 1.1.1.1 1 2\r\n")],
      [
        "v2 length over the limit",
        Uint8Array.from([...local.subarray(0, 12), 0x21, 0x11, 0xff, 0xff]),
      ],
    ];
    for (const [, bytes] of bad) await sentThenClosed(port, bytes);
    // Truncated: half a header, then the client's FIN.
    const truncated = await Deno.connect({ hostname: "127.0.0.1", port });
    await truncated.write(encoder.encode("PROXY TCP4 192.0.2.7"));
    await truncated.closeWrite();
    assert.equal((await receiveAll(truncated).catch(() => ({ bytes: 0 }))).bytes, 0);
    closeQuietly(truncated);
    await waitFor(
      () => proxy.stats().connectionsRefused.proxy_header_invalid === bad.length + 1,
      "the malformed headers to be counted",
    );
    // Slow: a partial header and nothing more is closed at the deadline.
    const waited = await sentThenClosed(port, encoder.encode("PROXY TCP4 192.0"));
    assert.ok(waited >= 250, `closed after ${waited.toFixed(0)} ms, not before the deadline`);
    // A client that sends nothing at all is closed at the deadline too.
    await sentThenClosed(port, new Uint8Array(0));
    assert.equal(proxy.stats().connectionsRefused.proxy_header_timeout, 2);
    assert.equal(echo.accepted(), 3, "no refused connection reached the backend");
    await waitFor(
      () => records(events).filter((r) => r.end === "header-timeout").length === 2,
      "the timeout records",
    );
    const badRecord = records(events).find((r) => r.end === "bad-header");
    assert.match(badRecord?.error ?? "", /^Cannot read the PROXY header: /);
    // And it keeps serving.
    const again = await Deno.connect({ hostname: "127.0.0.1", port });
    await again.write(encodeProxyHeader(2, source, destination));
    await again.write(Uint8Array.of(9));
    await again.closeWrite();
    assert.equal((await receiveAll(again)).bytes, 1);
    closeQuietly(again);
  } finally {
    await proxy.shutdown();
    await echo.close();
    await shutdownRelayEngine();
  }
});

Deno.test("proxy stages: with expect_proxy the rules see the header's address, not the socket's", async () => {
  const echo = echoBackend();
  const events: ProxyEvent[] = [];
  const { proxy, port } = proxyWith(
    'expect_proxy = true\ndeny = ["192.0.2.0/24"]\nmax_connections_per_ip = 1',
    echo.port,
    events,
  );
  try {
    const send = async (hostname: string): Promise<number> => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await conn.write(
          encodeProxyHeader(1, { hostname, port: 1234 }, { hostname: "127.0.0.1", port }),
        );
        await conn.write(Uint8Array.of(7, 7));
        await conn.closeWrite();
        return (await receiveAll(conn).catch(() => ({ bytes: 0 }))).bytes;
      } finally {
        closeQuietly(conn);
      }
    };
    assert.equal(await send("192.0.2.9"), 0, "denied by the header's address");
    assert.equal(await send("203.0.113.5"), 2, "another address is served");
    assert.equal(proxy.stats().connectionsRefused.denied, 1);
    assert.equal(echo.accepted(), 1);
    // max_connections_per_ip = 1 counts the header's address: with one held for 203.0.113.5,
    // all from 127.0.0.1, another header address is served and the same one is refused.
    const held = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      await held.write(
        encodeProxyHeader(1, { hostname: "203.0.113.5", port: 1 }, { hostname: "127.0.0.1", port }),
      );
      await held.write(Uint8Array.of(1));
      assert.equal(await held.read(new Uint8Array(1)), 1, "the held connection is relayed");
      assert.equal(await send("203.0.113.6"), 2, "another header address is served");
      assert.equal(await send("203.0.113.5"), 0, "the held header address is at its limit");
      assert.equal(proxy.stats().connectionsRefused.per_ip_limit, 1);
    } finally {
      closeQuietly(held);
    }
  } finally {
    await proxy.shutdown();
    await echo.close();
    await shutdownRelayEngine();
  }
});

Deno.test("proxy stages: a client that resets in the middle of its PROXY header or ClientHello is closed, recorded, never reaches a backend, and the listeners keep serving", async () => {
  const echo = echoBackend();
  const events: ProxyEvent[] = [];
  const proxy = startProxy(
    parseConfig(`
engines = 1

[[listeners]]
address = "127.0.0.1:0"
expect_proxy = true

[[listeners]]
address = "127.0.0.2:0"

[clusters.pp]
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ address = "127.0.0.1:${echo.port}" }]

[clusters.sni]
frontends = [{ address = "127.0.0.2:0", hostname = "a.example.com" }]
backends = [{ address = "127.0.0.1:${echo.port}" }]
`),
    { onEvent: (e) => events.push(e) },
  );
  const ports = proxy.listenerPorts;
  const encoder = new TextEncoder();
  // A ClientHello's first record header promising more than is sent.
  const partialHello = Uint8Array.of(22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3);
  try {
    const cases: Array<[string, number, Uint8Array]> = [
      ["127.0.0.1", ports["127.0.0.1:0"], encoder.encode("PROXY TCP4 192.0.2.1 ")],
      ["127.0.0.1", ports["127.0.0.1:0"], new Uint8Array(0)],
      ["127.0.0.2", ports["127.0.0.2:0"], partialHello],
      ["127.0.0.2", ports["127.0.0.2:0"], new Uint8Array(0)],
    ];
    for (const [hostname, port, bytes] of cases) {
      const conn = await Deno.connect({ hostname, port });
      if (bytes.length > 0) await conn.write(bytes);
      resetAndClose(conn);
    }
    await waitFor(() => records(events).length === cases.length, "a record for each reset");
    const ends = records(events).map((r) => r.end);
    // A reset that arrives with bytes queued is seen as one; with none queued, as a close
    // before the header was whole. Either way: closed, recorded, never relayed.
    assert.ok(ends.every((end) => end === "reset" || end === "bad-header"), ends.join(", "));
    assert.ok(records(events).every((r) => r.backend === null));
    assert.equal(echo.accepted(), 0, "no reset connection reached the backend");
    await waitFor(() => proxy.stats().connectionsOpen === 0, "every connection to end");
    // Both listeners still serve.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: ports["127.0.0.1:0"] });
    await conn.write(encodeProxyHeader(2, { hostname: "192.0.2.1", port: 1 }, {
      hostname: "127.0.0.1",
      port: 1,
    }));
    await conn.write(Uint8Array.of(5));
    await conn.closeWrite();
    assert.equal((await receiveAll(conn)).bytes, 1);
    closeQuietly(conn);
    assert.equal(echo.accepted(), 1);
  } finally {
    await proxy.shutdown();
    await echo.close();
    await shutdownRelayEngine();
  }
});

Deno.test("proxy stages: a reload adds and removes rules for new connections, and /metrics counts refusals by reason", async () => {
  const echo = echoBackend();
  const events: ProxyEvent[] = [];
  const toml = (keys: string): string => `
engines = 1

[[listeners]]
address = "127.0.0.1:0"
${keys}

[clusters.app]
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ address = "127.0.0.1:${echo.port}" }]
`;
  const proxy = startProxy(parseConfig(toml("")), { onEvent: (e) => events.push(e) });
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    assert.ok(await echoedFrom("127.0.0.2", port), "served before the rule");
    proxy.reload(specFromConfig(parseConfig(toml('deny = ["127.0.0.2"]'))));
    const { socket } = await connectFrom("127.0.0.2", port);
    assert.equal(await exchange(socket, pattern(10, 1)), null, "denied after the reload");
    socket.destroy();
    assert.ok(await echoedFrom("127.0.0.1", port), "another address is still served");
    proxy.reload(specFromConfig(parseConfig(toml(""))));
    assert.ok(await echoedFrom("127.0.0.2", port), "served again once the rule is gone");
    const text = prometheusText(proxy.stats());
    assert.match(text, /^# TYPE splice_connections_refused_total counter$/m);
    assert.match(text, /^splice_connections_refused_total\{reason="denied"\} 1$/m);
    assert.match(text, /^splice_connections_refused_total\{reason="no_route"\} 0$/m);
  } finally {
    await proxy.shutdown();
    await echo.close();
    await shutdownRelayEngine();
  }
});
