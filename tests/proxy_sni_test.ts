/**
 * SNI routing in the engines at its edges: a ClientHello fragmented over several TLS records,
 * one that does not come whole within `sni_timeout_ms`, one announcing more than 16 KiB, and a
 * listener with both `expect_proxy` and SNI routing (the PROXY header first, then the
 * ClientHello, both in one segment). Bytes checked end to end through an echo backend, each
 * refusal in the counters and the access records.
 */

import assert from "node:assert/strict";
import { encodeProxyHeader, shutdownRelayEngine } from "../mod.ts";
import { parseConfig } from "../config.ts";
import { startProxy } from "../proxy/mod.ts";
import type { ConnectionRecord, ProxyEvent } from "../proxy/types.ts";
import { clientHello } from "../demo/client_hello.ts";
import {
  closeQuietly,
  concat,
  echoBackend,
  exchangeBytes,
  freePort,
  receiveAll,
  waitFor,
} from "./_helpers.ts";
import { within } from "./_relay_helpers.ts";

/** `hello` (one record) re-framed as records of at most `size` handshake bytes each. */
function inRecords(hello: Uint8Array, size: number): Uint8Array {
  const message = hello.subarray(5);
  const out: number[] = [];
  for (let at = 0; at < message.length; at += size) {
    const part = message.subarray(at, Math.min(at + size, message.length));
    out.push(22, 3, 1, part.length >> 8, part.length & 255, ...part);
  }
  return Uint8Array.from(out);
}

Deno.test({
  name:
    "proxy SNI (engines): fragmented ClientHellos route, slow and oversized ones are closed and counted, and a PROXY header may come first",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const echo = echoBackend();
  const events: ProxyEvent[] = [];
  const [sni, both] = [freePort(), freePort()];
  const proxy = startProxy(
    parseConfig(`
engines = 1

[[listeners]]
address = "127.0.0.1:${sni}"
sni_timeout_ms = 300

[[listeners]]
address = "127.0.0.1:${both}"
expect_proxy = true

[clusters.named]
frontends = [
  { address = "127.0.0.1:${sni}", hostname = "a.example.com" },
  { address = "127.0.0.1:${both}", hostname = "*.example.com" },
]
backends = [{ address = "127.0.0.1:${echo.port}" }]
`),
    { onEvent: (event) => events.push(event) },
  );
  const records = (): ConnectionRecord[] =>
    events.flatMap((e) => e.type === "connection" ? [e.record] : []);
  const payload = Uint8Array.from({ length: 20_000 }, (_, i) => (i * 13) & 255);
  try {
    // Fragmented over records of 7 handshake bytes, and of 1: routed, relayed untouched.
    const hello = clientHello("a.example.com");
    for (const size of [7, 1]) {
      const sent = concat(inRecords(hello, size), payload);
      const back = await exchangeBytes(sni, sent);
      assert.deepEqual(back, sent, `records of ${size} bytes`);
    }
    // Not whole within sni_timeout_ms: closed once it is over, counted.
    const slow = await Deno.connect({ hostname: "127.0.0.1", port: sni });
    try {
      const started = performance.now();
      await slow.write(hello.subarray(0, 20));
      const got = await within(receiveAll(slow).catch(() => ({ bytes: 0 })), 10_000, "a close");
      assert.equal(got.bytes, 0);
      assert.ok(performance.now() - started >= 250, "closed by the deadline, not before");
    } finally {
      closeQuietly(slow);
    }
    // A handshake of 20,000 bytes cannot be whole within 16 KiB: closed as soon as it says so.
    const huge = Uint8Array.of(22, 3, 1, 0x3e, 0x80, 1, 0, 0x4e, 0x20, 3, 3);
    assert.equal((await exchangeBytes(sni, huge)).length, 0);
    await waitFor(
      () => proxy.stats().connectionsRefused.client_hello_invalid === 1,
      "the oversized ClientHello counted",
    );
    assert.equal(proxy.stats().connectionsRefused.client_hello_timeout, 1);
    await waitFor(() => records().length >= 4, "the records");
    assert.deepEqual(
      records().slice(0, 4).map((r) => r.end),
      ["done", "done", "header-timeout", "bad-header"],
    );
    assert.match(records()[3].error ?? "", /client hello over 16384 bytes/);

    // The PROXY header first, then a ClientHello, then the client's bytes, in one segment: the
    // header is taken off, the ClientHello routes, and the rest arrives untouched.
    const header = encodeProxyHeader(1, { hostname: "192.0.2.44", port: 5000 }, {
      hostname: "127.0.0.1",
      port: both,
    });
    const routed = concat(clientHello("b.example.com"), payload);
    assert.deepEqual(await exchangeBytes(both, concat(header, routed)), routed);
    await waitFor(() => records().length === 5, "its record");
    const last = records()[4];
    assert.deepEqual(
      [last.client, last.cluster, last.end, last.bytesIn],
      ["192.0.2.44:5000", "named", "done", routed.length],
    );
  } finally {
    await proxy.shutdown();
    await echo.close();
    await shutdownRelayEngine();
  }
});
