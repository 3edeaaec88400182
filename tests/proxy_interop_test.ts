/**
 * The proxy's PROXY protocol and SNI routing against real programs: HAProxy sends PROXY headers
 * to it (`expect_proxy`) and takes its own (`send_proxy`, HAProxy's `accept-proxy`), and openssl
 * speaks TLS through it to backends chosen by server name (`hostname` frontends), the handshake
 * relayed untouched. Over real loopback sockets, IPv4 and IPv6, bytes checked by SHA-256, every
 * wait bounded, every child killed in `finally`. Skipped, saying why, only when HAProxy or
 * openssl is missing and cannot be installed.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  parseProxyHeader,
  PROXY_V2_MAX_BYTES,
  type ProxyHeader,
  shutdownRelayEngine,
} from "../mod.ts";
import { parseConfig } from "../config.ts";
import { startProxy } from "../proxy/mod.ts";
import type { ConnectionRecord, ProxyEvent } from "../proxy/types.ts";
import {
  closeQuietly,
  concat,
  echoBackend,
  receiveAll,
  sendPattern,
  serveEach,
  waitFor,
} from "./_helpers.ts";
import { within } from "./_relay_helpers.ts";
import {
  captureClientHello,
  type Certificate,
  ensurePeers,
  freePortOn,
  haproxyTcpConfig,
  type Peers,
  selfSigned,
  startHaproxy,
  tlsClient,
} from "./_peers.ts";

const PEERS = await ensurePeers();
const SKIP = typeof PEERS === "string";
if (typeof PEERS === "string") {
  // deno-lint-ignore no-console
  console.log(`proxy_interop_test: skipped, HAProxy and openssl are needed: ${PEERS}`);
}
/** Read only by tests that run, which is when both were found. */
const tools = PEERS as Peers;

/** A test with real peers, bounded as a whole; ignored when the peers are missing. */
function interop(name: string, body: () => Promise<void>): void {
  Deno.test({ name, ignore: SKIP, fn: () => within(body(), 20_000, name) });
}

/** `host:port` as the proxy writes a client address: IPv6 in brackets. */
function endpoint(address: { hostname: string; port: number }): string {
  return address.hostname.includes(":")
    ? `[${address.hostname}]:${address.port}`
    : `${address.hostname}:${address.port}`;
}

/** A proxy started from `toml` on the engines, with its events collected. */
function proxyFrom(toml: string): {
  proxy: ReturnType<typeof startProxy>;
  records: () => ConnectionRecord[];
} {
  const events: ProxyEvent[] = [];
  const proxy = startProxy(parseConfig(toml), { onEvent: (event) => events.push(event) });
  const records = (): ConnectionRecord[] =>
    events.flatMap((event) => event.type === "connection" ? [event.record] : []);
  return { proxy, records };
}

/** The one record whose client is `client`, once it is in (bounded). */
async function recordOf(
  records: () => ConnectionRecord[],
  client: string,
): Promise<ConnectionRecord> {
  await waitFor(
    () => records().some((record) => record.client === client),
    `the record of client ${client}`,
  );
  const found = records().filter((record) => record.client === client);
  assert.equal(found.length, 1, JSON.stringify(found));
  return found[0];
}

/**
 * 16 KiB from a client on `hostname` to `port` there, echoed back and checked by SHA-256;
 * resolves to the client's own address as the proxy formats it.
 */
async function echoThrough(hostname: string, port: number, seed: number): Promise<string> {
  const conn = await Deno.connect({ hostname, port });
  try {
    const [sent, received] = await Promise.all([
      sendPattern(conn, 16 * 1024, seed).then(async (sha256) => {
        await conn.closeWrite();
        return sha256;
      }),
      receiveAll(conn),
    ]);
    assert.equal(received.bytes, 16 * 1024, `the echo through ${hostname}:${port} came back`);
    assert.equal(received.sha256, sent, `the echo through ${hostname}:${port} came back intact`);
    return endpoint(conn.localAddr as Deno.NetAddr);
  } finally {
    closeQuietly(conn);
  }
}

/** What a {@linkcode headerEcho} saw on one connection. */
interface Received {
  header: ProxyHeader;
  payloadBytes: number;
  payloadSha256: string;
}

/**
 * A backend on 127.0.0.1 that reads a PROXY header at the start of each connection (any other
 * start fails that connection), then echoes the rest until end of input, recording the header
 * and the payload's SHA-256.
 */
function headerEcho(): { port: number; received: Received[]; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const received: Received[] = [];
  const served = serveEach(listener, async (conn) => {
    try {
      const head = new Uint8Array(PROXY_V2_MAX_BYTES);
      let filled = 0;
      let header: ProxyHeader | undefined;
      while (header === undefined) {
        const n = await conn.read(head.subarray(filled));
        if (n === null) return;
        filled += n;
        const parse = parseProxyHeader(head.subarray(0, filled));
        if (parse.status === "invalid") throw new Error(`bad PROXY header: ${parse.reason}`);
        if (parse.status === "complete") header = parse.header;
      }
      const hash = createHash("sha256");
      let bytes = 0;
      const echo = async (chunk: Uint8Array): Promise<void> => {
        hash.update(chunk);
        bytes += chunk.length;
        for (let off = 0; off < chunk.length;) off += await conn.write(chunk.subarray(off));
      };
      await echo(head.subarray(header.length, filled));
      const buffer = new Uint8Array(64 * 1024);
      for (let n; (n = await conn.read(buffer)) !== null;) await echo(buffer.subarray(0, n));
      received.push({ header, payloadBytes: bytes, payloadSha256: hash.digest("hex") });
      await conn.closeWrite();
    } catch {
      // the client went away, or sent no header: no record
    } finally {
      closeQuietly(conn);
    }
  });
  return {
    port: listener.addr.port,
    received,
    close: served.close,
  };
}

/**
 * A plain TCP backend on 127.0.0.1 that keeps what each connection sends until its end of
 * input, answers nothing, and closes.
 */
function recorder(): { port: number; received: Uint8Array[]; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const received: Uint8Array[] = [];
  const served = serveEach(listener, async (conn) => {
    const parts: Uint8Array[] = [];
    try {
      const buffer = new Uint8Array(64 * 1024);
      for (let n; (n = await conn.read(buffer)) !== null;) parts.push(buffer.slice(0, n));
    } catch {
      // reset: what came is kept
    } finally {
      received.push(concat(...parts));
      closeQuietly(conn);
    }
  });
  return {
    port: listener.addr.port,
    received,
    close: served.close,
  };
}

/**
 * A TLS backend on 127.0.0.1 with `certificate`: each connection's first line is answered with
 * `<name> <line>`, then the backend ends its side (close_notify) and closes once the client has
 * ended its own. `accepted` counts connections.
 */
function tlsBackend(
  name: string,
  certificate: Certificate,
): { port: number; accepted: () => number; close(): Promise<void> } {
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: certificate.cert,
    key: certificate.key,
  });
  const served = serveEach(listener, async (conn) => {
    try {
      let line = "";
      const buffer = new Uint8Array(1024);
      while (!line.includes("\n") && line.length < 1024) {
        const n = await conn.read(buffer);
        if (n === null) break;
        line += new TextDecoder().decode(buffer.subarray(0, n));
      }
      const answer = new TextEncoder().encode(`${name} ${line.split("\n")[0]}\n`);
      for (let off = 0; off < answer.length;) off += await conn.write(answer.subarray(off));
      await conn.closeWrite();
      // Until the client's own close: closing first would make its close_notify meet a
      // closed socket, and the proxy would rightly report a reset.
      while (await conn.read(buffer) !== null);
    } catch {
      // the handshake failed, or the client went away
    } finally {
      closeQuietly(conn);
    }
  });
  return {
    port: listener.addr.port,
    accepted: served.accepted,
    close: served.close,
  };
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

// --- expect_proxy: HAProxy sends PROXY headers to the proxy ---------------------------------

for (const option of ["send-proxy", "send-proxy-v2"] as const) {
  interop(
    `HAProxy ${option} -> expect_proxy: the record's client is the real client, IPv4 and IPv6`,
    async () => {
      const echo = echoBackend();
      const { proxy, records } = proxyFrom(`
engines = 1
drain_timeout_ms = 2000

[[listeners]]
address = "127.0.0.1:0"
expect_proxy = true

[clusters.app]
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ address = "127.0.0.1:${echo.port}" }]
`);
      const proxyPort = proxy.listenerPorts["127.0.0.1:0"];
      const [port4, port6] = [freePortOn("127.0.0.1"), freePortOn("::1")];
      let haproxy: Awaited<ReturnType<typeof startHaproxy>> | undefined;
      try {
        haproxy = await startHaproxy(
          tools.haproxy,
          haproxyTcpConfig(
            [`127.0.0.1:${port4}`, `[::1]:${port6}`],
            `127.0.0.1:${proxyPort} ${option}`,
          ),
          port6,
        );
        for (
          const [hostname, port, seed] of [["127.0.0.1", port4, 1], ["::1", port6, 2]] as const
        ) {
          const client = await echoThrough(hostname, port, seed);
          const record = await recordOf(records, client);
          assert.equal(record.end, "done", JSON.stringify(record));
          assert.equal(record.cluster, "app");
          assert.equal(record.bytesIn, 16 * 1024);
          assert.equal(record.bytesOut, 16 * 1024);
        }
        assert.equal(records().length, 2, JSON.stringify(records()));
        assert.deepEqual(proxy.stats().connectionsRefused, {});
      } finally {
        await haproxy?.stop();
        await proxy.shutdown();
        await echo.close();
        await shutdownRelayEngine();
      }
    },
  );
}

// --- send_proxy: the proxy sends PROXY headers to HAProxy (accept-proxy) --------------------

interop(
  "send_proxy v1/v2 -> HAProxy accept-proxy: it takes the header, the client's address passes on",
  async () => {
    const sink = headerEcho();
    // HAProxy re-sends (v1) the addresses it took from proxy.ts's header: only a header it
    // accepted can tell it the test client's port.
    const haproxyPort = freePortOn("127.0.0.1");
    const listeners = {
      v1: [`127.0.0.1:${freePortOn("127.0.0.1")}`, `[::1]:${freePortOn("::1")}`],
      v2: [`127.0.0.1:${freePortOn("127.0.0.1")}`, `[::1]:${freePortOn("::1")}`],
    };
    const cluster = (version: "v1" | "v2"): string =>
      [
        `[clusters.${version}]`,
        `send_proxy = "${version}"`,
        `frontends = [${listeners[version].map((a) => `{ address = "${a}" }`).join(", ")}]`,
        `backends = [{ address = "127.0.0.1:${haproxyPort}" }]`,
      ].join("\n");
    let haproxy: Awaited<ReturnType<typeof startHaproxy>> | undefined;
    let running: ReturnType<typeof proxyFrom> | undefined;
    try {
      haproxy = await startHaproxy(
        tools.haproxy,
        haproxyTcpConfig(
          [`127.0.0.1:${haproxyPort} accept-proxy`],
          `127.0.0.1:${sink.port} send-proxy`,
        ),
        haproxyPort,
      );
      running = proxyFrom([
        "engines = 1",
        "drain_timeout_ms = 2000",
        ...[...listeners.v1, ...listeners.v2].map((a) => `\n[[listeners]]\naddress = "${a}"`),
        "",
        cluster("v1"),
        "",
        cluster("v2"),
        "",
      ].join("\n"));
      let served = 0;
      for (const version of ["v1", "v2"] as const) {
        for (const listener of listeners[version]) {
          const [, host, port] = listener.match(/^\[?([^\]]+)\]?:(\d+)$/)!;
          const client = await echoThrough(host, Number(port), 10 + served++);
          await waitFor(() => sink.received.length === served, `the header from ${client}`);
          const got = sink.received[served - 1];
          const what = `${version} from ${client} via ${listener}: ${JSON.stringify(got.header)}`;
          assert.equal(got.header.command, "proxy", what);
          assert.equal(got.header.source && endpoint(got.header.source), client, what);
          assert.equal(got.header.destination && endpoint(got.header.destination), listener, what);
          assert.equal(got.payloadBytes, 16 * 1024, what);
          const record = await recordOf(running.records, client);
          assert.equal(record.cluster, version);
          assert.equal(record.end, "done", JSON.stringify(record));
        }
      }
    } finally {
      await haproxy?.stop();
      await running?.proxy.shutdown();
      await sink.close();
      await shutdownRelayEngine();
    }
  },
);

interop(
  "HAProxy send-proxy-v2 -> expect_proxy + send_proxy v1: the original client's address arrives",
  async () => {
    const sink = headerEcho();
    const { proxy, records } = proxyFrom(`
engines = 1
drain_timeout_ms = 2000

[[listeners]]
address = "127.0.0.1:0"
expect_proxy = true

[clusters.chained]
send_proxy = "v1"
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ address = "127.0.0.1:${sink.port}" }]
`);
    const proxyPort = proxy.listenerPorts["127.0.0.1:0"];
    const fronts = [`127.0.0.1:${freePortOn("127.0.0.1")}`, `[::1]:${freePortOn("::1")}`];
    let haproxy: Awaited<ReturnType<typeof startHaproxy>> | undefined;
    try {
      haproxy = await startHaproxy(
        tools.haproxy,
        haproxyTcpConfig(fronts, `127.0.0.1:${proxyPort} send-proxy-v2`),
        Number(fronts[0].split(":")[1]),
      );
      for (const [i, front] of fronts.entries()) {
        const [, host, port] = front.match(/^\[?([^\]]+)\]?:(\d+)$/)!;
        const client = await echoThrough(host, Number(port), 20 + i);
        await waitFor(() => sink.received.length === i + 1, `the header from ${client}`);
        const got = sink.received[i];
        const what = `from ${client} via ${front}: ${JSON.stringify(got.header)}`;
        assert.equal(got.header.version, 1, what);
        assert.equal(got.header.source && endpoint(got.header.source), client, what);
        // Where the client connected: HAProxy's frontend, as its v2 header said.
        assert.equal(got.header.destination && endpoint(got.header.destination), front, what);
        assert.equal(got.payloadBytes, 16 * 1024, what);
        const record = await recordOf(records, client);
        assert.equal(record.end, "done", JSON.stringify(record));
      }
    } finally {
      await haproxy?.stop();
      await proxy.shutdown();
      await sink.close();
      await shutdownRelayEngine();
    }
  },
);

// --- SNI routing: openssl through the proxy to backends chosen by server name ---------------

const CN = { a: "a.example.com", w: "*.example.com", d: "default.example.org" } as const;

/** The SNI config: one listener; `a` exact, `w` wildcard, `d` the default when `withDefault`. */
function sniToml(ports: { a: number; w: number; d: number }, withDefault: boolean): string {
  return [
    "engines = 1",
    "drain_timeout_ms = 2000",
    "",
    "[[listeners]]",
    'address = "127.0.0.1:0"',
    "sni_timeout_ms = 5000",
    "",
    "[clusters.a]",
    'frontends = [{ address = "127.0.0.1:0", hostname = "a.example.com" }]',
    `backends = [{ address = "127.0.0.1:${ports.a}" }]`,
    "",
    "[clusters.w]",
    'frontends = [{ address = "127.0.0.1:0", hostname = "*.example.com" }]',
    `backends = [{ address = "127.0.0.1:${ports.w}" }]`,
    ...(withDefault
      ? [
        "",
        "[clusters.d]",
        'frontends = [{ address = "127.0.0.1:0" }]',
        `backends = [{ address = "127.0.0.1:${ports.d}" }]`,
      ]
      : []),
    "",
  ].join("\n");
}

/** Three TLS backends, with certificates made in a temp dir that `close()` removes. */
async function tlsBackends(): Promise<{
  a: ReturnType<typeof tlsBackend>;
  w: ReturnType<typeof tlsBackend>;
  d: ReturnType<typeof tlsBackend>;
  close(): Promise<void>;
}> {
  const dir = await Deno.makeTempDir({ prefix: "interop-certs-" });
  try {
    const [a, w, d] = await Promise.all(
      (["a", "w", "d"] as const).map((tag) => selfSigned(tools.openssl, dir, tag, CN[tag])),
    );
    const backends = { a: tlsBackend("a", a), w: tlsBackend("w", w), d: tlsBackend("d", d) };
    return {
      ...backends,
      async close(): Promise<void> {
        await Promise.all(Object.values(backends).map((backend) => backend.close()));
        await Deno.remove(dir, { recursive: true });
      },
    };
  } catch (error) {
    await Deno.remove(dir, { recursive: true });
    throw error;
  }
}

/**
 * openssl s_client through the proxy on `port` with `serverName`: the handshake completes with
 * the backend of `cluster` (its certificate's CN in the verification output, its name in the
 * answer), and the connection's record names that cluster.
 */
async function routedTo(
  port: number,
  serverName: string | null,
  cluster: "a" | "w" | "d",
  records: () => ConnectionRecord[],
): Promise<void> {
  const before = records().length;
  const line = `hello ${serverName ?? "(no sni)"}`;
  const result = await tlsClient(tools.openssl, port, serverName, `${line}\n`);
  const what = `-servername ${serverName}: exit ${result.code}\n${result.stdout}\n${result.stderr}`;
  assert.equal(result.stdout.trim(), `${cluster} ${line}`, what);
  assert.match(
    result.stderr,
    new RegExp(`depth=0 CN = ${CN[cluster].replace(/[.*]/g, "\\$&")}\n`),
    what,
  );
  await waitFor(() => records().length === before + 1, `the record of ${serverName}`);
  const record = records()[before];
  assert.equal(record.cluster, cluster, JSON.stringify(record));
  assert.equal(record.end, "done", JSON.stringify(record));
}

interop(
  "SNI, openssl s_client: exact name, then wildcard, then default; TLS handshakes pass through",
  async () => {
    const backends = await tlsBackends();
    const { proxy, records } = proxyFrom(
      sniToml({ a: backends.a.port, w: backends.w.port, d: backends.d.port }, true),
    );
    const port = proxy.listenerPorts["127.0.0.1:0"];
    try {
      await routedTo(port, "a.example.com", "a", records);
      await routedTo(port, "A.Example.COM", "a", records);
      await routedTo(port, "b.example.com", "w", records);
      await routedTo(port, "x.y.example.com", "w", records);
      await routedTo(port, null, "d", records);
      await routedTo(port, "other.org", "d", records);
      // A wildcard covers the names under its domain, not the domain itself.
      await routedTo(port, "example.com", "d", records);
      assert.deepEqual(
        [backends.a.accepted(), backends.w.accepted(), backends.d.accepted()],
        [2, 2, 3],
      );
      assert.deepEqual(proxy.stats().connectionsRefused, {});
    } finally {
      await proxy.shutdown();
      await backends.close();
      await shutdownRelayEngine();
    }
  },
);

interop(
  'SNI without a default: a name no frontend takes is closed, end "no-route", counted as no_route',
  async () => {
    const backends = await tlsBackends();
    const { proxy, records } = proxyFrom(
      sniToml({ a: backends.a.port, w: backends.w.port, d: backends.d.port }, false),
    );
    const port = proxy.listenerPorts["127.0.0.1:0"];
    try {
      for (const serverName of ["other.org", null]) {
        const before = records().length;
        const result = await tlsClient(tools.openssl, port, serverName, "hello\n");
        const what =
          `-servername ${serverName}: exit ${result.code}\n${result.stdout}\n${result.stderr}`;
        assert.notEqual(result.code, 0, what);
        assert.equal(result.stdout, "", what);
        assert.doesNotMatch(result.stderr, /depth=0/, what);
        await waitFor(() => records().length === before + 1, `the record of ${serverName}`);
        const record = records()[before];
        assert.equal(record.end, "no-route", JSON.stringify(record));
        assert.equal(record.backend, null, JSON.stringify(record));
      }
      assert.equal(proxy.stats().connectionsRefused.no_route, 2);
      assert.deepEqual([backends.a.accepted(), backends.w.accepted(), backends.d.accepted()], [
        0,
        0,
        0,
      ]);
      // The names it has still route.
      await routedTo(port, "a.example.com", "a", records);
      await routedTo(port, "z.example.com", "w", records);
    } finally {
      await proxy.shutdown();
      await backends.close();
      await shutdownRelayEngine();
    }
  },
);

interop(
  "SNI: a real ClientHello in 1-byte TCP segments is routed by its name and relayed byte for byte",
  async () => {
    const hello = await captureClientHello(tools.openssl, "a.example.com");
    const [a, w, d] = [recorder(), recorder(), recorder()];
    const { proxy, records } = proxyFrom(sniToml({ a: a.port, w: w.port, d: d.port }, true));
    const port = proxy.listenerPorts["127.0.0.1:0"];
    try {
      assert.equal(hello[0], 0x16, "a TLS handshake record");
      assert.equal(hello[5], 0x01, "a ClientHello");
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        conn.setNoDelay(true);
        for (let i = 0; i < hello.length; i++) {
          assert.equal(await conn.write(hello.subarray(i, i + 1)), 1);
          // Pacing, so that each byte leaves in a segment of its own: not a synchronisation.
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
        await conn.closeWrite();
        assert.equal((await receiveAll(conn)).bytes, 0);
      } finally {
        closeQuietly(conn);
      }
      await waitFor(() => a.received.length === 1, "backend a to get the connection");
      assert.equal(a.received[0].length, hello.length);
      assert.equal(sha256(a.received[0]), sha256(hello), "the ClientHello arrived byte for byte");
      await waitFor(() => records().length === 1, "the record");
      assert.equal(records()[0].cluster, "a", JSON.stringify(records()[0]));
      assert.equal(records()[0].bytesIn, hello.length, JSON.stringify(records()[0]));
      assert.deepEqual([w.received.length, d.received.length], [0, 0]);
    } finally {
      await proxy.shutdown();
      await Promise.all([a.close(), w.close(), d.close()]);
      await shutdownRelayEngine();
    }
  },
);

interop(
  'SNI: not a ClientHello: closed before any backend, end "bad-header"; the proxy serves on',
  async () => {
    const backends = await tlsBackends();
    const { proxy, records } = proxyFrom(
      sniToml({ a: backends.a.port, w: backends.w.port, d: backends.d.port }, true),
    );
    const port = proxy.listenerPorts["127.0.0.1:0"];
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"));
        // Closed by the proxy: end of input, or a reset if it closed with the request unread.
        const got = await receiveAll(conn).catch((error: Error) => ({ bytes: 0, error }));
        assert.equal(got.bytes, 0);
      } finally {
        closeQuietly(conn);
      }
      await waitFor(() => records().length === 1, "the record");
      const record = records()[0];
      assert.equal(record.end, "bad-header", JSON.stringify(record));
      assert.equal(record.backend, null, JSON.stringify(record));
      assert.equal(proxy.stats().connectionsRefused.client_hello_invalid, 1);
      assert.deepEqual([backends.a.accepted(), backends.w.accepted(), backends.d.accepted()], [
        0,
        0,
        0,
      ]);
      await routedTo(port, "a.example.com", "a", records);
    } finally {
      await proxy.shutdown();
      await backends.close();
      await shutdownRelayEngine();
    }
  },
);
