/**
 * `access_log`: which finished connections become `"connection"` events (the access log), on
 * both data planes: the engines (which then build no record at all) and the Deno-conn path of
 * proxy.ts without `--allow-ffi`. Counters and metrics count every connection either way.
 */

import assert from "node:assert/strict";
import { shutdownRelayEngine } from "../mod.ts";
import { parseConfig } from "../config.ts";
import { specFromConfig, TcpProxy } from "../proxy/mod.ts";
import type { ProxyEvent, ProxySpec } from "../proxy/types.ts";
import {
  closeQuietly,
  echoBackend,
  freePort,
  receiveAll,
  sendPattern,
  spawnProxyWithoutFfi,
  waitFor,
} from "./_helpers.ts";
import { within } from "./_relay_helpers.ts";

/**
 * Two listeners: `good` relays to the echo at `echoPort`; `bad` to `deadPort`, where nothing
 * listens, so each of its connections ends `"no-backend"`.
 */
function twoListeners(
  accessLog: string,
  good: number,
  bad: number,
  echoPort: number,
  deadPort: number,
): string {
  return `
access_log = "${accessLog}"
engines = 1
drain_timeout_ms = 5000

[[listeners]]
address = "127.0.0.1:${good}"

[[listeners]]
address = "127.0.0.1:${bad}"

[clusters.good]
frontends = [{ address = "127.0.0.1:${good}" }]
backends = [{ address = "127.0.0.1:${echoPort}" }]

[clusters.bad]
frontends = [{ address = "127.0.0.1:${bad}" }]
backends = [{ address = "127.0.0.1:${deadPort}" }]
`;
}

/** 1 KiB through the echo behind `port`, checked by SHA-256. */
async function echoed(port: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const [sent, received] = await Promise.all([
      sendPattern(conn, 1024, 7).then(async (sha256) => {
        await conn.closeWrite();
        return sha256;
      }),
      receiveAll(conn),
    ]);
    assert.equal(received.sha256, sent, "the echo came back intact");
  } finally {
    closeQuietly(conn);
  }
}

/** A connection to a listener whose backend is down: closed by the proxy without a byte. */
async function refused(port: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    assert.equal((await receiveAll(conn)).bytes, 0);
  } finally {
    closeQuietly(conn);
  }
}

Deno.test('TcpProxy (engines): access_log "errors" reports only what did not end cleanly, "off" nothing; a reload switches it; every connection is counted', async () => {
  const echo = echoBackend();
  const [good, bad, dead] = [freePort(), freePort(), freePort()];
  const specOf = (accessLog: string): ProxySpec =>
    specFromConfig(parseConfig(twoListeners(accessLog, good, bad, echo.port, dead)));
  const events: ProxyEvent[] = [];
  const proxy = TcpProxy.start(specOf("errors"), { onEvent: (e) => events.push(e) });
  const records = () => events.flatMap((e) => e.type === "connection" ? [e.record] : []);
  try {
    await echoed(good);
    await echoed(good);
    await refused(bad);
    await waitFor(() => records().length === 1, "the failed connection's record");
    proxy.reload(specOf("off"));
    await echoed(good);
    await refused(bad);
    proxy.reload(specOf("all"));
    await echoed(good);
    // Records leave an engine in the order the connections ended, and a reload reaches it
    // before any later connection: once the last one's record is in, no other can follow.
    await waitFor(() => records().length === 2, "the last clean connection's record");
    assert.deepEqual(
      records().map((r) => [r.listener, r.end]),
      [[`127.0.0.1:${bad}`, "no-backend"], [`127.0.0.1:${good}`, "done"]],
    );
    await waitFor(() => proxy.stats().connectionsOpen === 0, "every connection to be counted");
    assert.equal(proxy.stats().connectionsTotal, 6);
  } finally {
    await proxy.shutdown();
    await echo.close();
    await shutdownRelayEngine();
  }
});

Deno.test('proxy.ts without --allow-ffi: access_log = "errors" logs the failed connection, not the clean ones', async () => {
  const echo = echoBackend();
  const [good, bad, dead] = [freePort(), freePort(), freePort()];
  const dir = await Deno.makeTempDir();
  const path = `${dir}/proxy.toml`;
  await Deno.writeTextFile(path, twoListeners("errors", good, bad, echo.port, dead));
  const proxyProcess = spawnProxyWithoutFfi(path);
  const { child, output } = proxyProcess;
  try {
    // Until it listens, connects are refused: retried, bounded.
    await waitFor(
      () => echoed(good).then(() => true, () => false),
      "the proxy to serve",
      15_000,
    );
    await echoed(good);
    await refused(bad);
    child.kill("SIGTERM");
    const status = await within(child.status, 15_000, "proxy.ts to exit on SIGTERM");
    await output.done;
    assert.equal(status.code, 0, output.lines.join("\n"));
    // Exit flushes the access log: every line it would write is here.
    const logged = output.lines.filter((line) => line.startsWith("conn "));
    assert.equal(logged.length, 1, output.lines.join("\n"));
    assert.match(logged[0], new RegExp(`-> 127\\.0\\.0\\.1:${bad} -> bad/- .* end=no-backend`));
  } finally {
    await proxyProcess.kill();
    await echo.close();
    await Deno.remove(dir, { recursive: true });
  }
});
