/**
 * Runtime backend control: `PUT` / `GET /clusters/{cluster}/backends/{address}` on the admin
 * endpoint, served by a running proxy (engines): drain, maint (health checks paused), ready,
 * weights, the token and the refusals, IPv6 addresses in the path, and what a reload keeps.
 */

import assert from "node:assert/strict";
import { shutdownRelayEngine } from "../mod.ts";
import { parseConfig } from "../config.ts";
import { parseBackendChange } from "../proxy/control.ts";
import { serveAdmin } from "../proxy/admin.ts";
import { specFromConfig, startProxy, type TcpProxy } from "../proxy/mod.ts";
import type { BackendView } from "../proxy/types.ts";
import {
  closeQuietly,
  freePort,
  receiveAll,
  serveEach,
  spawnProxyWithoutFfi,
  waitFor,
} from "./_helpers.ts";

const TOKEN = "a-long-enough-admin-token";

/** A backend that answers each connection with its name (after the client's end of input). */
function named(name: string, hostname = "127.0.0.1"): {
  port: number;
  checks: () => number;
  close(): Promise<void>;
} {
  const listener = Deno.listen({ hostname, port: 0 });
  let checks = 0;
  const served = serveEach(listener, async (conn) => {
    try {
      const got = await receiveAll(conn);
      if (got.bytes === 0) checks++; // a health check: connects and closes
      else await conn.write(new TextEncoder().encode(name));
    } catch {
      // the client went away
    } finally {
      closeQuietly(conn);
    }
  });
  return { port: listener.addr.port, checks: () => checks, close: served.close };
}

async function via(port: number): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(Uint8Array.of(1));
    await conn.closeWrite();
    const buffer = new Uint8Array(64);
    let text = "";
    for (let n; (n = await conn.read(buffer)) !== null;) {
      text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    return text;
  } finally {
    closeQuietly(conn);
  }
}

function toml(a: number, b: number, v6: number, weightB = 100): string {
  return `
engines = 2

[[listeners]]
address = "127.0.0.1:0"

[clusters.app]
frontends = [{ address = "127.0.0.1:0" }]
backends = [
  { address = "127.0.0.1:${a}" },
  { address = "127.0.0.1:${b}", weight = ${weightB} },
  { address = "[::1]:${v6}", weight = 0 },
]
health_check = { interval_ms = 100, timeout_ms = 200 }
`;
}

/** The admin endpoint of `proxy`, with TOKEN, on a free port. */
function admin(proxy: TcpProxy): { url: string; stop(): Promise<void> } {
  const stop = new AbortController();
  const server = serveAdmin(
    { hostname: "127.0.0.1", port: 0 },
    {
      stats: () => proxy.stats(),
      reload: () => Promise.resolve(null),
      backend: (cluster, backend) => proxy.backend(cluster, backend),
      setBackend: (cluster, backend, change) => proxy.setBackend(cluster, backend, change),
    },
    stop.signal,
    { token: TOKEN },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    async stop(): Promise<void> {
      stop.abort();
      await server.finished;
    },
  };
}

async function put(
  url: string,
  body: string,
  token: string | null = TOKEN,
): Promise<{ status: number; view: BackendView | null; text: string }> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token !== null) headers.authorization = `Bearer ${token}`;
  const response = await fetch(url, { method: "PUT", body, headers });
  const text = await response.text();
  return {
    status: response.status,
    view: response.ok ? JSON.parse(text) : null,
    text,
  };
}

Deno.test("runtime control: drain, maint and ready, weights, through PUT and GET on the admin endpoint (engines = 2)", async () => {
  const a = named("a");
  const b = named("b");
  const v6 = named("v6", "::1");
  const proxy = startProxy(parseConfig(toml(a.port, b.port, v6.port)));
  const port = proxy.listenerPorts["127.0.0.1:0"];
  const endpoint = admin(proxy);
  const pathOf = (address: string): string =>
    `${endpoint.url}/clusters/app/backends/${encodeURIComponent(address)}`;
  try {
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) seen.add(await via(port));
    assert.deepEqual([...seen].sort(), ["a", "b"]);

    // drain: no new connections to a.
    const drained = await put(pathOf(`127.0.0.1:${a.port}`), '{"state": "drain"}');
    assert.equal(drained.status, 200, drained.text);
    assert.equal(drained.view?.state, "drain");
    for (let i = 0; i < 6; i++) assert.equal(await via(port), "b");

    // GET shows it, to anyone who passes the Host check.
    const got = await (await fetch(pathOf(`127.0.0.1:${a.port}`))).json() as BackendView;
    assert.deepEqual([got.state, got.weight, got.up], ["drain", 100, true]);

    // maint: no connections either, and no health checks meanwhile.
    await put(pathOf(`127.0.0.1:${a.port}`), '{"state": "maint"}');
    const checksAtMaint = a.checks();
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(a.checks() - checksAtMaint <= 1, `${a.checks() - checksAtMaint} checks in maint`);
    for (let i = 0; i < 4; i++) assert.equal(await via(port), "b");

    // ready: back in turn, and checked again.
    await put(pathOf(`127.0.0.1:${a.port}`), '{"state": "ready"}');
    await waitFor(() => a.checks() > checksAtMaint + 1, "a to be checked again");
    const back = new Set<string>();
    for (let i = 0; i < 4; i++) back.add(await via(port));
    assert.ok(back.has("a"));

    // A weight, on an IPv6 backend named in the path with its brackets encoded.
    const weighted = await put(pathOf(`[::1]:${v6.port}`), '{"weight": 100}');
    assert.equal(weighted.view?.weight, 100, weighted.text);
    const three = new Set<string>();
    for (let i = 0; i < 9; i++) three.add(await via(port));
    assert.deepEqual([...three].sort(), ["a", "b", "v6"]);
    await put(pathOf(`[::1]:${v6.port}`), '{"weight": 0}');
    for (let i = 0; i < 6; i++) assert.notEqual(await via(port), "v6");
  } finally {
    await endpoint.stop();
    await proxy.shutdown();
    for (const backend of [a, b, v6]) await backend.close();
    await shutdownRelayEngine();
  }
});

Deno.test("runtime control: the token, bad bodies and unknown backends are refused with their reasons", async () => {
  const a = named("a");
  const b = named("b");
  const v6 = named("v6", "::1");
  const proxy = startProxy(parseConfig(toml(a.port, b.port, v6.port)));
  const endpoint = admin(proxy);
  const path = `${endpoint.url}/clusters/app/backends/127.0.0.1:${a.port}`;
  try {
    assert.equal((await put(path, '{"state": "drain"}', null)).status, 401);
    assert.equal((await put(path, '{"state": "drain"}', "wrong-token-but-long")).status, 401);
    assert.equal(proxy.backend("app", `127.0.0.1:${a.port}`)?.state, "ready", "unchanged");
    const bad = await put(path, '{"state": "off"}');
    assert.equal(bad.status, 400);
    assert.match(bad.text, /state "off" is not "ready", "drain" or "maint"/);
    assert.equal((await put(path, "{")).status, 400);
    assert.match((await put(path, '{"weight": -1}')).text, /weight -1 is not a whole number/);
    assert.match((await put(path, '{"wieght": 1}')).text, /unknown key "wieght"/);
    const missing = await put(`${endpoint.url}/clusters/app/backends/127.0.0.1:1`, '{"weight": 1}');
    assert.equal(missing.status, 404);
    assert.match(missing.text, /cluster "app" has no backend "127.0.0.1:1"/);
    assert.equal((await fetch(`${endpoint.url}/clusters/nope/backends/x`)).status, 404);
    const post = await fetch(path, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    await post.body?.cancel();
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD, PUT");
  } finally {
    await endpoint.stop();
    await proxy.shutdown();
    for (const backend of [a, b, v6]) await backend.close();
    await shutdownRelayEngine();
  }
});

Deno.test("runtime control: a reload keeps a runtime change when the file left that backend as it was, and drops it when the file changed it", async () => {
  const a = named("a");
  const b = named("b");
  const v6 = named("v6", "::1");
  const proxy = startProxy(parseConfig(toml(a.port, b.port, v6.port)));
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    proxy.setBackend("app", `127.0.0.1:${a.port}`, { state: "drain" });
    proxy.setBackend("app", `127.0.0.1:${b.port}`, { weight: 7 });
    // The same file: both changes stay.
    proxy.reload(specFromConfig(parseConfig(toml(a.port, b.port, v6.port))));
    assert.equal(proxy.backend("app", `127.0.0.1:${a.port}`)?.state, "drain");
    assert.equal(proxy.backend("app", `127.0.0.1:${b.port}`)?.weight, 7);
    for (let i = 0; i < 4; i++) assert.equal(await via(port), "b");
    // The file changes b's weight: b's runtime weight goes, a's drain stays.
    proxy.reload(specFromConfig(parseConfig(toml(a.port, b.port, v6.port, 50))));
    assert.equal(proxy.backend("app", `127.0.0.1:${b.port}`)?.weight, 50);
    assert.equal(proxy.backend("app", `127.0.0.1:${a.port}`)?.state, "drain");
    for (let i = 0; i < 4; i++) assert.equal(await via(port), "b");
  } finally {
    await proxy.shutdown();
    for (const backend of [a, b, v6]) await backend.close();
    await shutdownRelayEngine();
  }
});

Deno.test("parseBackendChange: weight and state, nothing else", () => {
  assert.deepEqual(parseBackendChange('{"weight": 0, "state": "maint"}'), {
    weight: 0,
    state: "maint",
  });
  for (
    const [body, message] of [
      ["[]", /expected an object/],
      ["{}", /expected "weight" or "state"/],
      ['{"weight": 1.5}', /weight 1.5 is not a whole number from 0 to 1000000/],
      ['{"weight": 1000001}', /weight 1000001/],
      ['{"state": 1}', /state 1 is not/],
    ] as const
  ) {
    assert.throws(() => parseBackendChange(body), message);
  }
});

Deno.test("proxy.ts without --allow-ffi: PUT drains a backend and sets a weight on the Deno-conn path, and says so in its log", async () => {
  const a = named("a");
  const b = named("b");
  const port = freePort();
  const adminPort = freePort();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/proxy.toml`;
  await Deno.writeTextFile(
    path,
    `
drain_timeout_ms = 1000

[metrics]
address = "127.0.0.1:${adminPort}"
token = "${TOKEN}"

[[listeners]]
address = "127.0.0.1:${port}"

[clusters.app]
frontends = [{ address = "127.0.0.1:${port}" }]
backends = [{ address = "127.0.0.1:${a.port}" }, { address = "127.0.0.1:${b.port}" }]
`,
  );
  const proxyProcess = spawnProxyWithoutFfi(path);
  try {
    await proxyProcess.output.line(/^ready$/, "the proxy to start");
    const url = `http://127.0.0.1:${adminPort}/clusters/app/backends/127.0.0.1:`;
    const drained = await put(`${url}${a.port}`, '{"state": "drain"}');
    assert.equal(drained.status, 200, drained.text);
    for (let i = 0; i < 4; i++) assert.equal(await via(port), "b");
    await put(`${url}${a.port}`, '{"state": "ready", "weight": 300}');
    const picks = [];
    for (let i = 0; i < 8; i++) picks.push(await via(port));
    assert.equal(picks.filter((p) => p === "a").length, 6, picks.join(" "));
    await proxyProcess.output.line(
      new RegExp(`^backend app/127\\.0\\.0\\.1:${a.port}: set at run time \\(admin\\): drain`),
      "the log line",
    );
  } finally {
    await proxyProcess.kill();
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});
