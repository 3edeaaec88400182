/**
 * The proxy under faults: listeners that never stop accepting (a client that resets before it is
 * accepted, fds that run out), connections that cannot crash the process (a backend that resets
 * on accept, an `onEvent` that throws), connects that time out without keeping their socket, and
 * the proxy's own failures kept apart from its backends'. Real sockets on 127.0.0.1; every wait
 * bounded.
 */

import assert from "node:assert/strict";
import { shutdownRelayEngine } from "../mod.ts";
import { TcpProxy } from "../proxy/server.ts";
import type { ProxyEvent, ProxySpec } from "../proxy/types.ts";
import { acceptEach, echoBackend, openFdCount, receiveAll, runDeno, waitFor } from "./_helpers.ts";
import { within } from "./_relay_helpers.ts";
import { ENGINE_STABLE_MS, engineRestartDelay, nextBackoff, Throttle } from "../proxy/faults.ts";
import { reportable } from "../proxy/plane_reports.ts";
import type { PlaneEvent } from "../engine/plane_layout.ts";
import { blackhole, connectAndReset, resetAndClose } from "./_sockets.ts";

function spec(backendPort: number, extra?: Partial<ProxySpec>): ProxySpec {
  return {
    listeners: [{ address: "127.0.0.1:0", hostname: "127.0.0.1", port: 0, maxConnections: 1000 }],
    clusters: [{
      name: "app",
      loadBalancing: "round_robin",
      frontends: ["127.0.0.1:0"],
      backends: [{
        address: `127.0.0.1:${backendPort}`,
        hostname: "127.0.0.1",
        port: backendPort,
        weight: 100,
      }],
    }],
    connectTimeoutMs: 2_000,
    idleTimeoutMs: 0,
    drainTimeoutMs: 2_000,
    spliceMode: "auto",
    ...extra,
  };
}

/** Sends `text` through the proxy on `port`, half-closes, and returns what came back. */
async function echoThrough(port: number, text: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(text));
    await conn.closeWrite();
    const buffer = new Uint8Array(1024);
    let got = "";
    for (let n; (n = await conn.read(buffer)) !== null;) {
      got += new TextDecoder().decode(buffer.subarray(0, n));
    }
    return got;
  } finally {
    conn.close();
  }
}

Deno.test("TcpProxy: a client that resets before it is accepted is skipped; the listener keeps accepting", async () => {
  const backend = echoBackend();
  const proxy = TcpProxy.start(spec(backend.port));
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    // Queued and reset before the proxy's accept runs: Deno's accept() then fails (ENOTCONN);
    // the engines' accept4() hands the reset socket over, and its relay ends as a reset.
    for (let i = 0; i < 5; i++) connectAndReset(port);
    for (let i = 0; i < 3; i++) {
      assert.equal(await within(echoThrough(port, `hello ${i}`), 5_000, "an echo"), `hello ${i}`);
    }
    const errors = proxy.stats().acceptErrors;
    const skipped = Object.values(errors).reduce((sum, n) => sum + n, 0);
    const native = proxy.stats().engines.length > 0;
    assert.ok(skipped <= 5, `accept errors: ${JSON.stringify(errors)}`);
    if (!native) assert.ok(skipped >= 1, `accept errors: ${JSON.stringify(errors)}`);
  } finally {
    await proxy.shutdown();
    await backend.close();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy: a backend that resets every connection on accept never crashes the proxy (300 connections)", async () => {
  // The backend resets as soon as it accepts: the relay finds a conn whose peer is gone. This
  // crashed the proxy (an unhandled rejection from relay()) within a few hundred connections.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const resetting = acceptEach(listener, resetAndClose);
  const events: ProxyEvent[] = [];
  const proxy = TcpProxy.start(spec(listener.addr.port), { onEvent: (e) => events.push(e) });
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    const one = async (): Promise<void> => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await conn.write(new Uint8Array(100)).catch(() => 0);
        await receiveAll(conn).catch(() => undefined); // a reset or an end: either is an end
      } finally {
        conn.close();
      }
    };
    for (let round = 0; round < 30; round++) {
      await within(Promise.all(Array.from({ length: 10 }, one)), 10_000, "10 connections");
    }
    await waitFor(() => proxy.stats().connectionsOpen === 0, "every connection to end");
    const stats = proxy.stats();
    assert.equal(stats.connectionsTotal, 300);
    assert.equal(stats.internalErrors, 0);
    // Engines send records in batches, after the counters.
    await waitFor(
      () => events.filter((e) => e.type === "connection").length >= 300,
      "every connection's record",
    );
    const records = events.flatMap((e) => e.type === "connection" ? [e.record] : []);
    assert.equal(records.length, 300);
    // Each ended as a reset of the backend, or found it gone before the relay started.
    for (const record of records) {
      assert.ok(["reset", "error", "done"].includes(record.end), JSON.stringify(record));
    }
    // Still accepting: one more connection is counted.
    await within(one(), 5_000, "one more connection");
    await waitFor(() => proxy.stats().connectionsTotal === 301, "the proxy to accept again");
  } finally {
    await proxy.shutdown();
    listener.close();
    await resetting;
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy: an onEvent that throws is counted as an internal error; the connection path goes on", async () => {
  // How no unhandled rejection is possible on the connection path: each connection's promise
  // ends in a catch that counts and reports (TcpProxy #serve, #acceptLoop), and every call into
  // onEvent is wrapped. A throwing onEvent is the one failure a caller can inject, so it stands
  // for any bug there: were any rejection left unhandled, Deno's test runner fails this test.
  const backend = echoBackend();
  let thrown = 0;
  const proxy = TcpProxy.start(spec(backend.port), {
    onEvent: (event) => {
      if (event.type === "connection") {
        thrown++;
        throw new Error("a broken log sink");
      }
    },
  });
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    for (let i = 0; i < 20; i++) {
      assert.equal(await within(echoThrough(port, `ping ${i}`), 5_000, "an echo"), `ping ${i}`);
    }
    await waitFor(() => thrown === 20, "every connection to be logged");
    assert.equal(proxy.stats().internalErrors, 20);
  } finally {
    await proxy.shutdown();
    await backend.close();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy: a connect that times out releases its socket at once", async () => {
  const hole = blackhole();
  const proxy = TcpProxy.start(spec(hole.port, { connectTimeoutMs: 200 }));
  const port = proxy.listenerPorts["127.0.0.1:0"];
  try {
    // One connection through first: the engines' Workers open their own fds as they start.
    const first = await Deno.connect({ hostname: "127.0.0.1", port });
    await within(receiveAll(first), 5_000, "the first client's end");
    first.close();
    await waitFor(() => proxy.stats().connectionsOpen === 0, "the first connection to end");
    const before = openFdCount();
    const clients = await Promise.all(
      Array.from({ length: 6 }, () => Deno.connect({ hostname: "127.0.0.1", port })),
    );
    // Each is closed by the proxy once its connect timed out: no backend.
    await within(Promise.all(clients.map((c) => receiveAll(c))), 5_000, "the clients' ends");
    for (const client of clients) client.close();
    await waitFor(() => proxy.stats().connectionsOpen === 0, "every connection to end");
    // Well before the kernel's SYN retries give up (about two minutes), the fds are back.
    let now = openFdCount();
    await waitFor(() => (now = openFdCount()) <= before, "the connect sockets to close", 2_000)
      .catch(() => assert.fail(`fds: ${before} before, ${now} after the timed-out connects`));
    assert.equal(proxy.stats().connectFailures, 7);
  } finally {
    await proxy.shutdown();
    hole.close();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy: out of fds on its own connect, the proxy blames itself, not the backend", async () => {
  // In a subprocess with room for 64 fds, all but two are taken: the client's connect takes one,
  // the proxy's accept the other, and its connect to the backend fails with EMFILE. Six times:
  // more than the three failures that eject a backend.
  const result = await runDeno(
    `
      import { TcpProxy } from "ROOT/proxy/server.ts";
      const backend = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const proxy = TcpProxy.start({
        listeners: [{ address: "l", hostname: "127.0.0.1", port: 0, maxConnections: 10 }],
        clusters: [{ name: "app", loadBalancing: "round_robin", frontends: ["l"], backends: [
          { address: "b", hostname: "127.0.0.1", port: backend.addr.port, weight: 1 },
        ] }],
        connectTimeoutMs: 1000, idleTimeoutMs: 0, drainTimeoutMs: 1000, spliceMode: "copy",
      }, { onEvent: (e) => { if (e.type === "connection") ends.push(e.record.end); } });
      const ends = [];
      const port = proxy.listenerPorts.l;
      const filler = [];
      try { for (;;) filler.push(Deno.openSync("/dev/null")); } catch { /* EMFILE */ }
      for (let i = 0; i < 6; i++) {
        filler.splice(0, 2).forEach((f) => f.close());
        const client = await Deno.connect({ hostname: "127.0.0.1", port });
        const buffer = new Uint8Array(16);
        while ((await client.read(buffer)) !== null) {}
        client.close();
        while (ends.length <= i) await new Promise((r) => setTimeout(r, 5));
        filler.push(Deno.openSync("/dev/null"), Deno.openSync("/dev/null"));
      }
      for (const f of filler) f.close();
      const stats = proxy.stats();
      await proxy.shutdown();
      backend.close();
      console.log(JSON.stringify({
        ends, local: stats.localErrors, failures: stats.connectFailures,
        backend: stats.backends["app/b"],
      }));
    `,
    ["--allow-net=127.0.0.1", "--allow-read=/dev/null"],
    { prefix: ["bash", "-c", 'ulimit -n 64 && exec "$0" "$@"'] },
  );
  assert.equal(result.code, 0, result.stderr);
  const report = JSON.parse(result.stdout);
  assert.deepEqual(report.ends, Array(6).fill("local-error"));
  assert.deepEqual(report.local, { EMFILE: 6 });
  assert.equal(report.failures, 0);
  assert.equal(report.backend.failures, 0);
  assert.equal(report.backend.ejected, false);
});

Deno.test("engineRestartDelay: at once after a long life; doubling from 100 ms to 30 s after short ones", () => {
  assert.equal(engineRestartDelay(0, ENGINE_STABLE_MS), 0);
  assert.equal(engineRestartDelay(6_400, ENGINE_STABLE_MS + 1), 0);
  const waits: number[] = [];
  let wait = 0;
  for (let i = 0; i < 12; i++) waits.push(wait = engineRestartDelay(wait, 50));
  assert.deepEqual(waits, [
    100,
    200,
    400,
    800,
    1600,
    3200,
    6400,
    12800,
    25600,
    30000,
    30000,
    30000,
  ]);
  // The accept loop's back-off keeps its own bounds.
  assert.equal(nextBackoff(0), 5);
  assert.equal(nextBackoff(800), 1000);
});

Deno.test("reportable: a refusal held back by the proxy's throttle keeps the count its engine held back", async () => {
  const throttle = new Throttle(30);
  const refused = (suppressed: number): PlaneEvent => ({
    type: "refused",
    listener: "127.0.0.1:8080",
    client: "127.0.0.2:40000",
    reason: "denied",
    suppressed,
  });
  const count = (event: ProxyEvent | null): number | null =>
    event?.type === "connection-refused" ? event.suppressed : null;
  // Two engines report the same client, each having held back 5: the proxy reports the first.
  assert.equal(count(reportable(refused(5), throttle)), 5);
  const at = performance.now();
  assert.equal(reportable(refused(5), throttle), null);
  // The next report carries the 6 the held-back one stood for, and its own 2.
  await waitFor(() => performance.now() - at > 40, "the throttle's interval to pass");
  assert.equal(count(reportable(refused(2), throttle)), 8);
});

Deno.test("Throttle: a flood of new keys is reported maxKeys + 1 times an interval, each occurrence counted once", () => {
  const throttle = new Throttle(1_000, 8);
  const flood = (from: number, count: number, now: number): { reports: number; held: number } => {
    let reports = 0;
    let held = 0;
    for (let i = from; i < from + count; i++) {
      const { report, suppressed } = throttle.pass(`source ${i}`, now);
      if (report) reports++;
      held += suppressed;
    }
    return { reports, held };
  };
  // 50,000 sources within one interval: the first 8 each, then one for all the others.
  assert.deepEqual(flood(0, 50_000, 0), { reports: 9, held: 0 });
  // A key still tracked is throttled on its own, as before.
  assert.deepEqual(throttle.pass("source 3", 500), { report: false, suppressed: 0 });
  assert.deepEqual(throttle.pass("source 3", 1_000), { report: true, suppressed: 1 });
  // The next interval: the 7 quiet keys are swept, once ("source 3" was just reported, so it
  // stays); 7 new sources take their places, and the overflow's report carries the 49,991 it
  // held back before.
  const next = flood(100_000, 50_000, 1_001);
  assert.equal(next.reports, 8);
  assert.equal(next.held, 49_991);
  // An existing key gets no share of the overflow's count.
  assert.deepEqual(throttle.pass("source 3", 1_500), { report: false, suppressed: 0 });
});
