/**
 * `relay()` when its engine cannot run: without `--allow-ffi`, and without read access to the
 * engine's module. The copy loop stands in for it; the bytes, the half-close and the signal must
 * behave as with the engine. Each case runs in a subprocess with the permissions it needs.
 */

import assert from "node:assert/strict";
import { runDeno } from "./_helpers.ts";
import { assertHalfClose } from "./_relay_exchange.ts";

// --- 1. without FFI ----------------------------------------------------------------------------

Deno.test("relay: without --allow-ffi, copies in userspace, mode fallback, half-close works", async () => {
  const result = await runDeno(
    `
      import { relay } from "ROOT/mod.ts";
      import { tcpPair } from "ROOT/tests/_helpers.ts";
      import { halfCloseExchange } from "ROOT/tests/_relay_exchange.ts";
      import { within } from "ROOT/tests/_relay_helpers.ts";
      const report = {};
      for (const finisherIs of ["client", "server"]) {
        const left = await tcpPair();
        const right = await tcpPair();
        const relayed = relay(left.server, right.client);
        const [finisher, talker] = finisherIs === "client"
          ? [left.client, right.server]
          : [right.server, left.client];
        const outcome = await within(
          halfCloseExchange(finisher, talker, 1_000_000, 8_000_000), 30_000, "exchange");
        report[finisherIs] = { outcome, result: await within(relayed, 5_000, "relay") };
        left.client.close();
        right.server.close();
      }
      {
        const left = await tcpPair();
        const right = await tcpPair();
        const relayed = relay(left.server, right.client, {
          initialData: { toB: new TextEncoder().encode("HEAD"), toA: new TextEncoder().encode("hi") },
        });
        await left.client.write(new TextEncoder().encode("body"));
        await left.client.closeWrite();
        await right.server.closeWrite();
        const toServer = new Uint8Array(16);
        const toClient = new Uint8Array(16);
        let s = 0, c = 0;
        for (let i = 0; i < 16; i++) { const n = await right.server.read(toServer.subarray(s)); if (n === null) break; s += n; }
        for (let i = 0; i < 16; i++) { const n = await left.client.read(toClient.subarray(c)); if (n === null) break; c += n; }
        report.initial = {
          server: new TextDecoder().decode(toServer.subarray(0, s)),
          client: new TextDecoder().decode(toClient.subarray(0, c)),
          result: await within(relayed, 5_000, "relay"),
        };
        left.client.close();
        right.server.close();
      }
      console.log(JSON.stringify(report));
    `,
    ["--allow-net=127.0.0.1"],
  );
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, "");
  const report = JSON.parse(result.stdout);
  for (const finisherIs of ["client", "server"]) {
    const { outcome, result: relayed } = report[finisherIs];
    assertHalfClose(outcome, 1_000_000, 8_000_000);
    assert.equal(relayed.mode, "fallback");
    assert.equal(relayed.end, "done");
    assert.equal(relayed.splicedBytes, 0);
    const expected = finisherIs === "client" ? [1_000_000, 8_000_000] : [8_000_000, 1_000_000];
    assert.deepEqual([relayed.aToB, relayed.bToA], expected, finisherIs);
  }
  assert.equal(report.initial.server, "HEADbody");
  assert.equal(report.initial.client, "hi");
  assert.equal(report.initial.result.end, "done");
  assert.equal(report.initial.result.mode, "fallback");
  assert.deepEqual([report.initial.result.aToB, report.initial.result.bToA], [4, 0]);
});

Deno.test({
  name: "relay: without --allow-ffi, an already aborted signal ends the relay as aborted",
}, async () => {
  const result = await runDeno(
    `
      import { relay } from "ROOT/mod.ts";
      import { tcpPair } from "ROOT/tests/_helpers.ts";
      import { within } from "ROOT/tests/_relay_helpers.ts";
      const left = await tcpPair();
      const right = await tcpPair();
      const relayed = relay(left.server, right.client, { signal: AbortSignal.abort() });
      let outcome;
      try {
        outcome = await within(relayed, 3_000, "the relay to end");
      } catch (error) {
        outcome = String(error);
      }
      // Ends a relay that ignored the signal (both ends finish), so the process can exit.
      await left.client.closeWrite();
      await right.server.closeWrite();
      const late = await within(relayed, 3_000, "the relay to end once both sides finished");
      console.log(JSON.stringify({ outcome, late }));
      left.client.close();
      right.server.close();
    `,
    ["--allow-net=127.0.0.1"],
  );
  assert.equal(result.code, 0, result.stderr);
  const { outcome, late } = JSON.parse(result.stdout);
  assert.notEqual(
    typeof outcome,
    "string",
    `BUG: the fallback relay ignores an already aborted signal: ${outcome}; it ended only ` +
      `when both sides finished, as ${JSON.stringify(late)}`,
  );
  assert.equal(outcome.end, "aborted");
  assert.equal(outcome.mode, "fallback");
});

// --- 2. without read access to the engine's module ---------------------------------------------

Deno.test("relay: without read access to the engine's module, one warning, the copy loop relays intact", async () => {
  const result = await runDeno(
    `
      import { relay } from "ROOT/mod.ts";
      import { receiveAll, sendPattern, tcpPair } from "ROOT/tests/_helpers.ts";
      const results = [];
      for (let i = 0; i < 2; i++) {
        const left = await tcpPair();
        const right = await tcpPair();
        const relayed = relay(left.server, right.client);
        const [sent, got, r] = await Promise.all([
          sendPattern(left.client, 1_000_000, 4).then(async (h) => { await left.client.closeWrite(); return h; }),
          right.server.closeWrite().then(() => receiveAll(right.server)),
          relayed,
        ]);
        left.client.close();
        right.server.close();
        results.push({ intact: got.sha256 === sent && got.bytes === 1_000_000, mode: r.mode, end: r.end });
      }
      console.log(JSON.stringify(results));
    `,
    // Read access everywhere but the engine's own module file.
    [
      "--allow-ffi",
      "--allow-net=127.0.0.1",
      "--allow-read",
      `--deny-read=${new URL("../engine/worker.ts", import.meta.url).pathname}`,
    ],
  );
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(JSON.parse(result.stdout), [
    { intact: true, mode: "fallback", end: "done" },
    { intact: true, mode: "fallback", end: "done" },
  ]);
  const warnings = result.stderr.trim().split("\n").filter((line) => line.includes("relay engine"));
  assert.equal(warnings.length, 1, result.stderr);
  assert.match(warnings[0], /--allow-read/);
});
