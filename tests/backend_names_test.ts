/**
 * Backends given by host name, looked up off the main thread: proxy.ts runs in its own mount
 * namespace (unshare -m) whose /etc/resolv.conf names a DNS server the test holds and never
 * answers. Neither the start, nor a reload, nor the admin endpoint waits for that server; the
 * backends that do resolve serve meanwhile.
 */

import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { echoBackend, echoes, freePort, spawnProxy, waitFor } from "./_helpers.ts";

/** A loopback address nothing else here uses, for the silent DNS server. */
const RESOLVER = "127.0.0.77";
/** How long the resolver waits for that server: far longer than anything asserted below. */
const RESOLVER_TIMEOUT_S = 10;
const TOKEN = "backend-names-test-token-0123456789";

/** A UDP server on RESOLVER:53 that reads queries and never answers; counts them. */
async function silentDns(): Promise<{ queries(): number; close(): void }> {
  // node:dgram: Deno.listenDatagram needs --unstable-net.
  const socket = createSocket("udp4");
  let count = 0;
  socket.on("message", () => count++);
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(53, RESOLVER, () => resolve());
  });
  return { queries: () => count, close: () => socket.close() };
}

async function timed<T>(work: Promise<T>): Promise<{ value: T; ms: number }> {
  const started = performance.now();
  const value = await work;
  return { value, ms: performance.now() - started };
}

Deno.test({
  name:
    "proxy.ts: a backend name whose DNS server never answers stalls neither the start, a reload, nor /metrics",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const dns = await silentDns();
  const backend = echoBackend();
  const dir = await Deno.makeTempDir();
  const port = freePort();
  const admin = freePort();
  const resolvConf = `${dir}/resolv.conf`;
  await Deno.writeTextFile(
    resolvConf,
    `nameserver ${RESOLVER}\noptions timeout:${RESOLVER_TIMEOUT_S} attempts:1\n`,
  );
  const config = `${dir}/proxy.toml`;
  await Deno.writeTextFile(
    config,
    `engines = 1
[metrics]
address = "127.0.0.1:${admin}"
token = "${TOKEN}"

[[listeners]]
address = "127.0.0.1:${port}"

[clusters.app]
load_balancing = "round_robin"
frontends = [{ address = "127.0.0.1:${port}" }]
backends = [{ address = "silent.splice-test:9" }, { address = "127.0.0.1:${backend.port}" }]
`,
  );
  const started = performance.now();
  const proxy = spawnProxy(config, {
    wrap: [
      "unshare",
      "-m",
      "sh",
      "-c",
      'mount --bind "$0" /etc/resolv.conf && exec "$@"',
      resolvConf,
    ],
  });
  try {
    await proxy.output.line(/^splice proxy .*engine/, "the start");
    const startMs = performance.now() - started;
    await proxy.output.line(/^metrics on http:/, "the admin endpoint");
    assert.ok(dns.queries() > 0, "the name was looked up through the silent server");
    assert.ok(
      startMs < RESOLVER_TIMEOUT_S * 1000 / 2,
      `started in ${Math.round(startMs)} ms, while the lookup waits ${RESOLVER_TIMEOUT_S} s`,
    );
    await waitFor(() => echoes(port), "the first echo", 5_000);
    // Round robin takes the unresolved backend in turn; each such connection goes on to the next.
    for (let i = 0; i < 6; i++) assert.ok(await echoes(port), `echo ${i}`);

    const headers = { authorization: `Bearer ${TOKEN}` };
    const asked = dns.queries();
    const reload = timed(
      fetch(`http://127.0.0.1:${admin}/reload`, { method: "POST", headers }).then(async (r) => ({
        status: r.status,
        body: await r.json(),
      })),
    );
    reload.catch(() => {}); // awaited below; not an unhandled rejection meanwhile
    await waitFor(() => dns.queries() > asked, "the reload's lookup", 5_000);
    const metrics = await timed(
      fetch(`http://127.0.0.1:${admin}/metrics`, { headers }).then(async (r) => {
        await r.body?.cancel();
        return r.status;
      }),
    );
    assert.equal(metrics.value, 200);
    assert.ok(metrics.ms < 3_000, `/metrics answered in ${Math.round(metrics.ms)} ms`);
    const reloaded = await reload;
    assert.deepEqual(reloaded.value, { status: 200, body: { reloaded: true } });
    assert.ok(
      reloaded.ms < RESOLVER_TIMEOUT_S * 1000 / 2,
      `reloaded in ${Math.round(reloaded.ms)} ms`,
    );
    for (let i = 0; i < 4; i++) assert.ok(await echoes(port), `echo ${i} after the reload`);
    assert.equal(await proxy.stop("SIGTERM"), 0);
  } finally {
    await proxy.kill();
    await backend.close();
    dns.close();
    await Deno.remove(dir, { recursive: true });
  }
});
