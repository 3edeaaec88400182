/**
 * Active health checks, backups and source_hash through the proxy's engines: backends that
 * stop and start listening on their port, a protocol probe (`send` / `expect`), a backup that
 * serves only while the others are down, and clients that keep their backend by address.
 * Checks run once per proxy: with two engines, each backend sees one check per interval.
 */

import assert from "node:assert/strict";
import net from "node:net";
import { shutdownRelayEngine } from "../mod.ts";
import { parseConfig } from "../config.ts";
import { prometheusText } from "../proxy/metrics.ts";
import { startProxy } from "../proxy/mod.ts";
import type { ProxyEvent } from "../proxy/types.ts";
import { closeQuietly, freePort, serveEach, spawnProxyWithoutFfi, waitFor } from "./_helpers.ts";
import { within } from "./_relay_helpers.ts";

/**
 * A backend on 127.0.0.1:`port` that can be stopped and started again on the same port. Each
 * connection's first bytes: `PING` is answered with `pong` (a probe), anything else with the
 * backend's name once the client has sent all it will. `checks` counts the connections that
 * sent nothing or a probe (the health checks).
 */
function backend(name: string, pong = "PONG\r\n"): {
  port: number;
  served: () => number;
  checks: () => number;
  start(): void;
  stop(): Promise<void>;
} {
  const port = freePort();
  let served = 0;
  let checks = 0;
  let running: { close(): Promise<void> } | null = null;
  const start = (): void => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port });
    running = serveEach(listener, async (conn) => {
      try {
        const buffer = new Uint8Array(1024);
        const n = await conn.read(buffer);
        const text = n === null ? "" : new TextDecoder().decode(buffer.subarray(0, n));
        if (n === null || text.startsWith("PING")) {
          checks++;
          if (text.startsWith("PING")) await conn.write(new TextEncoder().encode(pong));
          return;
        }
        while (await conn.read(buffer) !== null);
        served++;
        await conn.write(new TextEncoder().encode(name));
      } catch {
        // the client went away
      } finally {
        closeQuietly(conn);
      }
    });
  };
  start();
  return {
    port,
    served: () => served,
    checks: () => checks,
    start,
    async stop(): Promise<void> {
      await running?.close();
      running = null;
    },
  };
}

/** One connection through the proxy: the name of the backend that served it. */
async function via(port: number, localAddress = "127.0.0.1"): Promise<string> {
  const socket = net.connect({ host: "127.0.0.1", port, localAddress });
  return await within(
    new Promise<string>((resolve, reject) => {
      let text = "";
      socket.on("data", (chunk: Uint8Array) => text += new TextDecoder().decode(chunk));
      socket.once("end", () => resolve(text));
      socket.once("error", reject);
      socket.end("hello");
    }),
    5_000,
    "an answer through the proxy",
  ).finally(() => socket.destroy());
}

function healthEvents(events: ProxyEvent[]): string[] {
  return events.flatMap((e) =>
    e.type === "backend-health" ? [`${e.backend.split(":")[1]} ${e.up ? "up" : "down"}`] : []
  );
}

Deno.test("health checks (engines = 2): a backend that stops listening goes down after fall checks and takes no connection, comes back after rise; one check per interval, not per engine", async () => {
  const a = backend("a");
  const b = backend("b");
  const events: ProxyEvent[] = [];
  const proxy = startProxy(
    parseConfig(`
engines = 2

[[listeners]]
address = "127.0.0.1:0"

[clusters.app]
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ address = "127.0.0.1:${a.port}" }, { address = "127.0.0.1:${b.port}" }]
health_check = { interval_ms = 200, timeout_ms = 200, rise = 2, fall = 2 }
`),
    { onEvent: (e) => events.push(e) },
  );
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    const first = new Set<string>();
    for (let i = 0; i < 4; i++) first.add(await via(port));
    assert.deepEqual([...first].sort(), ["a", "b"]);
    // One check per interval: after ~1 s, about 5 per backend, not 10 (two engines).
    const checksBefore = a.checks();
    await new Promise((r) => setTimeout(r, 1000));
    const checked = a.checks() - checksBefore;
    assert.ok(checked >= 3 && checked <= 7, `${checked} checks of a in 1 s at 200 ms`);

    await a.stop();
    await waitFor(() => healthEvents(events).includes(`${a.port} down`), "a to go down", 5_000);
    const failuresAtDown = proxy.stats().connectFailures;
    for (let i = 0; i < 6; i++) assert.equal(await via(port), "b");
    assert.equal(proxy.stats().connectFailures, failuresAtDown, "no connect tried to a");
    const key = `app/127.0.0.1:${a.port}`;
    assert.equal(proxy.stats().backends[key].up, false);
    assert.match(
      prometheusText(proxy.stats()),
      new RegExp(
        `^splice_backend_up\\{cluster="app",backend="127\\.0\\.0\\.1:${a.port}"\\} 0$`,
        "m",
      ),
    );

    a.start();
    await waitFor(() => healthEvents(events).includes(`${a.port} up`), "a to come back", 5_000);
    const after = new Set<string>();
    for (let i = 0; i < 4; i++) after.add(await via(port));
    assert.ok(after.has("a"), "a serves again");
    assert.equal(proxy.stats().backends[key].up, true);
    const down = events.find((e) => e.type === "backend-health" && !e.up);
    assert.match(
      down?.type === "backend-health" ? down.reason : "",
      /^2 checks in a row failed, the last: connect: /,
    );
  } finally {
    await proxy.shutdown();
    await a.stop();
    await b.stop();
    await shutdownRelayEngine();
  }
});

Deno.test("health checks: send and expect make a protocol probe; a wrong answer takes the backend down", async () => {
  const good = backend("good", "+PONG\r\n");
  const wrong = backend("wrong", "-ERR not ready\r\n");
  const events: ProxyEvent[] = [];
  const proxy = startProxy(
    parseConfig(`
engines = 1

[[listeners]]
address = "127.0.0.1:0"

[clusters.app]
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ address = "127.0.0.1:${good.port}" }, { address = "127.0.0.1:${wrong.port}" }]

[clusters.app.health_check]
interval_ms = 100
timeout_ms = 300
fall = 2
send = "PING\\r\\n"
expect = "+PONG"
`),
    { onEvent: (e) => events.push(e) },
  );
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    await waitFor(() => healthEvents(events).includes(`${wrong.port} down`), "wrong to go down");
    assert.deepEqual(healthEvents(events), [`${wrong.port} down`], "good stays up");
    for (let i = 0; i < 4; i++) assert.equal(await via(port), "good");
    const down = events.find((e) => e.type === "backend-health");
    assert.match(
      down?.type === "backend-health" ? down.reason : "",
      /the last: the answer has no "\+PONG"/,
    );
  } finally {
    await proxy.shutdown();
    await good.stop();
    await wrong.stop();
    await shutdownRelayEngine();
  }
});

Deno.test("backup = true serves only while no other backend is up; source_hash keeps each client on its backend", async () => {
  const main = backend("main");
  const spare = backend("spare");
  const events: ProxyEvent[] = [];
  const hashed = [backend("h1"), backend("h2"), backend("h3")];
  const hashPort = freePort();
  const proxy = startProxy(
    parseConfig(`
engines = 2

[[listeners]]
address = "127.0.0.1:0"

[[listeners]]
address = "127.0.0.1:${hashPort}"

[clusters.app]
frontends = [{ address = "127.0.0.1:0" }]
backends = [
  { address = "127.0.0.1:${main.port}" },
  { address = "127.0.0.1:${spare.port}", backup = true },
]
health_check = { interval_ms = 100, timeout_ms = 200, rise = 1, fall = 1 }

[clusters.hashed]
load_balancing = "source_hash"
frontends = [{ address = "127.0.0.1:${hashPort}" }]
backends = [${hashed.map((h) => `{ address = "127.0.0.1:${h.port}" }`).join(", ")}]
`),
    { onEvent: (e) => events.push(e) },
  );
  const appPort = proxy.listenerPorts["127.0.0.1:0"];
  try {
    for (let i = 0; i < 4; i++) assert.equal(await via(appPort), "main");
    await main.stop();
    await waitFor(() => healthEvents(events).includes(`${main.port} down`), "main to go down");
    for (let i = 0; i < 4; i++) assert.equal(await via(appPort), "spare");
    main.start();
    await waitFor(() => healthEvents(events).includes(`${main.port} up`), "main to come back");
    for (let i = 0; i < 4; i++) assert.equal(await via(appPort), "main");

    for (const address of ["127.0.0.1", "127.0.0.2", "127.0.0.3"]) {
      const names = new Set<string>();
      for (let i = 0; i < 6; i++) names.add(await via(hashPort, address));
      assert.equal(names.size, 1, `${address} went to ${[...names]}`);
    }
  } finally {
    await proxy.shutdown();
    await main.stop();
    await spare.stop();
    for (const h of hashed) await h.stop();
    await shutdownRelayEngine();
  }
});

Deno.test("proxy.ts without --allow-ffi: health checks take a backend out and bring it back, and a backup serves meanwhile", async () => {
  const main = backend("main");
  const spare = backend("spare");
  const port = freePort();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/proxy.toml`;
  await Deno.writeTextFile(
    path,
    `
drain_timeout_ms = 1000

[[listeners]]
address = "127.0.0.1:${port}"

[clusters.app]
frontends = [{ address = "127.0.0.1:${port}" }]
backends = [
  { address = "127.0.0.1:${main.port}" },
  { address = "127.0.0.1:${spare.port}", backup = true },
]
health_check = { interval_ms = 100, timeout_ms = 200, rise = 1, fall = 1 }
`,
  );
  const proxyProcess = spawnProxyWithoutFfi(path);
  const { child, output } = proxyProcess;
  try {
    await output.line(/^ready$/, "the proxy to start");
    for (let i = 0; i < 3; i++) assert.equal(await via(port), "main");
    await main.stop();
    await output.line(
      new RegExp(`^backend app/127\\.0\\.0\\.1:${main.port} is down: 1 check failed`),
      "main to go down",
    );
    for (let i = 0; i < 3; i++) assert.equal(await via(port), "spare");
    main.start();
    await output.line(
      new RegExp(`^backend app/127\\.0\\.0\\.1:${main.port} is up: 1 check passed`),
      "main to come back",
    );
    for (let i = 0; i < 3; i++) assert.equal(await via(port), "main");
    child.kill("SIGTERM");
    assert.equal((await within(child.status, 15_000, "proxy.ts to exit")).code, 0);
  } finally {
    await proxyProcess.kill();
    await main.stop();
    await spare.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
