import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { shutdownRelayEngine } from "../mod.ts";
import { TcpProxy } from "../proxy/server.ts";
import type { ProxyEvent, ProxySpec } from "../proxy/types.ts";
import { receiveAll, sendPattern, serveEach, waitFor } from "./_helpers.ts";

/**
 * A backend that reads the request to its end, then answers with its name and the request's
 * SHA-256, then `replyBytes` pattern bytes, then closes.
 */
function backend(name: string, replyBytes = 0): {
  port: number;
  address: string;
  seen: string[];
  close(): Promise<void>;
} {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const seen: string[] = [];
  const served = serveEach(listener, async (conn) => {
    try {
      const request = await receiveAll(conn);
      seen.push(request.sha256);
      await conn.write(new TextEncoder().encode(`${name} ${request.sha256}\n`));
      if (replyBytes > 0) await sendPattern(conn, replyBytes, 11);
    } catch {
      // the client went away
    } finally {
      conn.close();
    }
  });
  const port = listener.addr.port;
  return {
    port,
    address: `127.0.0.1:${port}`,
    seen,
    close: served.close,
  };
}

function spec(
  backends: Array<{ address: string; port: number }>,
  extra?: Partial<ProxySpec>,
): ProxySpec {
  return {
    listeners: [{ address: "127.0.0.1:0", hostname: "127.0.0.1", port: 0, maxConnections: 100 }],
    clusters: [{
      name: "app",
      loadBalancing: "round_robin",
      frontends: ["127.0.0.1:0"],
      backends: backends.map((b) => ({
        address: b.address,
        hostname: "127.0.0.1",
        port: b.port,
        weight: 100,
      })),
    }],
    connectTimeoutMs: 1_000,
    idleTimeoutMs: 0,
    drainTimeoutMs: 5_000,
    spliceMode: "auto",
    ...extra,
  };
}

/** One request through the proxy: returns the backend's name, whether the hash matched, reply. */
async function request(
  port: number,
  bytes: number,
): Promise<{ name: string; intact: boolean; replyBytes: number }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const hash = await sendPattern(conn, bytes, bytes);
    await conn.closeWrite();
    const buffer = new Uint8Array(256 * 1024);
    let text = "";
    let replyBytes = 0;
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      replyBytes += n;
      if (!text.includes("\n")) text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const [name, echoed] = text.split("\n")[0].split(" ");
    return { name, intact: echoed === hash, replyBytes };
  } finally {
    conn.close();
  }
}

Deno.test("TcpProxy: bytes intact both ways; round robin spreads over the backends", async () => {
  const one = backend("one");
  const two = backend("two");
  const events: ProxyEvent[] = [];
  const proxy = TcpProxy.start(spec([one, two]), { onEvent: (e) => events.push(e) });
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await request(port, 1_000_000 + i));
    assert.ok(results.every((r) => r.intact), JSON.stringify(results));
    assert.deepEqual(results.map((r) => r.name), ["one", "two", "one", "two"]);
    // The client can see the end before the proxy has counted the relay: wait for the count.
    await waitFor(() => proxy.stats().connectionsOpen === 0, "every relay to be counted");
    const stats = proxy.stats();
    assert.equal(stats.connectionsTotal, 4);
    // Request bytes up, the answer lines down: the counters match what went through.
    assert.equal(stats.bytesIn, 4_000_000 + 0 + 1 + 2 + 3);
    const lines = results.reduce((sum, r) => sum + r.replyBytes, 0);
    assert.equal(stats.bytesOut, lines);
    // Engines report records in batches, after the counters.
    await waitFor(
      () => events.filter((e) => e.type === "connection").length === 4,
      "the four records",
    );
    const logged = events.filter((e) => e.type === "connection");
    assert.equal(logged.length, 4);
  } finally {
    await proxy.shutdown();
    await one.close();
    await two.close();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy: a dead backend is skipped and ejected; connections still succeed", async () => {
  const live = backend("live");
  const gone = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = gone.addr.port;
  gone.close(); // nothing listens there now: connects are refused
  const events: ProxyEvent[] = [];
  const proxy = TcpProxy.start(
    spec([{ address: `127.0.0.1:${deadPort}`, port: deadPort }, live]),
    { onEvent: (e) => events.push(e) },
  );
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    for (let i = 0; i < 6; i++) {
      const r = await request(port, 1000);
      assert.equal(r.name, "live");
      assert.equal(r.intact, true);
    }
    const stats = proxy.stats();
    assert.ok(stats.connectFailures >= 3, `failures ${stats.connectFailures}`);
    assert.ok(events.some((e) => e.type === "backend-ejected"));
    assert.equal(stats.backends[`app/127.0.0.1:${deadPort}`].ejected, true);
  } finally {
    await proxy.shutdown();
    await live.close();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy: a reload during a long transfer keeps it intact; new connections use the new backend", async () => {
  const before = backend("before", 64 * 1024 * 1024);
  const after = backend("after");
  const proxy = TcpProxy.start(spec([before]));
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(new TextEncoder().encode("long"));
    await conn.closeWrite();
    const reading = receiveAfterLine(conn);
    const changed = proxy.reload(spec([after]));
    assert.deepEqual(changed.clusters, ["app"]);
    const fresh = await request(port, 5000);
    assert.equal(fresh.name, "after");
    const long = await reading;
    conn.close();
    assert.equal(long.line, `before ${sha("long")}`);
    assert.equal(long.bytes, 64 * 1024 * 1024);
    assert.equal(long.sha256, await patternHash(64 * 1024 * 1024));
    assert.equal(proxy.stats().reloads, 1);
  } finally {
    await proxy.shutdown();
    await before.close();
    await after.close();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy: shutdown lets in-flight transfers finish and refuses new connections", async () => {
  const slow = backend("slow", 32 * 1024 * 1024);
  const proxy = TcpProxy.start(spec([slow]));
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(new Uint8Array(10));
    await conn.closeWrite();
    // The relay is running once the first answer byte is here.
    const first = new Uint8Array(1);
    assert.equal(await conn.read(first), 1);
    const stopping = proxy.shutdown();
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port }));
    const rest = await receiveAfterLine(conn);
    conn.close();
    await stopping;
    assert.equal("s" + rest.line, `slow ${sha10()}`);
    assert.equal(rest.bytes, 32 * 1024 * 1024);
    assert.equal(rest.sha256, await patternHash(32 * 1024 * 1024));
    assert.equal(proxy.stats().connectionsOpen, 0);
  } finally {
    await proxy.shutdown();
    await slow.close();
    await shutdownRelayEngine();
  }
});

function sha(text: string): string {
  return createHash("sha256").update(new TextEncoder().encode(text)).digest("hex");
}

function sha10(): string {
  return createHash("sha256").update(new Uint8Array(10)).digest("hex");
}

/** The SHA-256 of the pattern a backend sends after its answer line. */
function patternHash(bytes: number): Promise<string> {
  return sendPattern({ write: (p) => Promise.resolve(p.byteLength) }, bytes, 11);
}

/** Reads to the end: the first line as text, the rest hashed. */
async function receiveAfterLine(
  conn: Deno.TcpConn,
): Promise<{ line: string; bytes: number; sha256: string }> {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(256 * 1024);
  let head = new Uint8Array(0);
  let line: string | null = null;
  let bytes = 0;
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    let chunk = buffer.subarray(0, n);
    if (line === null) {
      const joined = new Uint8Array(head.length + chunk.length);
      joined.set(head);
      joined.set(chunk, head.length);
      const newline = joined.indexOf(10);
      if (newline === -1) {
        head = joined;
        continue;
      }
      line = new TextDecoder().decode(joined.subarray(0, newline));
      chunk = joined.subarray(newline + 1);
    }
    hash.update(chunk);
    bytes += chunk.length;
  }
  return { line: line ?? "", bytes, sha256: hash.digest("hex") };
}

Deno.test("TcpProxy: the connect timeout is honoured; the next backend serves", async () => {
  // A backend whose accept queue is full: the kernel drops further SYNs, so connects hang.
  const stuck = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const filler: Deno.TcpConn[] = [];
  let hung: Promise<Deno.TcpConn> | null = null;
  for (let i = 0; i < 4096 && hung === null; i++) {
    const attempt = Deno.connect({ hostname: "127.0.0.1", port: stuck.addr.port });
    const won = await Promise.race([
      attempt,
      new Promise<null>((r) => setTimeout(() => r(null), 200)),
    ]);
    if (won === null) hung = attempt;
    else filler.push(won);
  }
  assert.ok(hung, "the accept queue filled up");
  const live = backend("live");
  const stuckAddress = `127.0.0.1:${stuck.addr.port}`;
  const proxy = TcpProxy.start(
    spec([{ address: stuckAddress, port: stuck.addr.port }, live], { connectTimeoutMs: 300 }),
  );
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    const started = Date.now();
    const r = await request(port, 1000);
    const took = Date.now() - started;
    assert.deepEqual([r.name, r.intact], ["live", true]);
    assert.ok(took >= 290 && took < 3_000, `took ${took} ms`);
    assert.equal(proxy.stats().connectFailures, 1);
    assert.equal(proxy.stats().backends[`app/${stuckAddress}`].failures, 1);
  } finally {
    await proxy.shutdown();
    await live.close();
    for (const conn of filler) conn.close();
    stuck.close();
    // The hung connect ends once the listener is gone (refused or reset).
    await hung?.then((conn) => conn.close(), () => {});
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy: a listener at max_connections closes new connections at once and says so", async () => {
  const slow = backend("slow", 8 * 1024 * 1024);
  const events: ProxyEvent[] = [];
  const base = spec([slow]);
  const proxy = TcpProxy.start(
    { ...base, listeners: [{ ...base.listeners[0], maxConnections: 1 }] },
    { onEvent: (e) => events.push(e) },
  );
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    const held = await Deno.connect({ hostname: "127.0.0.1", port });
    await waitFor(() => proxy.stats().connectionsOpen === 1, "the first connection");
    const extra = await Deno.connect({ hostname: "127.0.0.1", port });
    assert.equal(await extra.read(new Uint8Array(1)), null, "closed without a byte");
    extra.close();
    assert.equal(proxy.stats().connectionsRejected, 1);
    // Engines report records in batches, after the close the client saw.
    await waitFor(
      () => events.some((e) => e.type === "connection" && e.record.end === "over-limit"),
      "the over-limit record",
    );
    held.close();
  } finally {
    await proxy.shutdown();
    await slow.close();
    await shutdownRelayEngine();
  }
});
