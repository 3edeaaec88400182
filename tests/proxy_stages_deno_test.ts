/**
 * The listener stages on proxy.ts's Deno-conn path (no `--allow-ffi`): the same keys as in the
 * engines, through Deno conns. One proxy.ts subprocess, four listeners: `expect_proxy` with
 * `deny` and `max_connections_per_ip`, `send_proxy` to a backend that reads the header, SNI
 * routing without a default, and `allow` that leaves 127.0.0.1 out. Bytes checked by SHA-256,
 * refusals read from the proxy's log lines.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { encodeProxyHeader, parseProxyHeader, PROXY_V2_MAX_BYTES } from "../mod.ts";
import { clientHello } from "../demo/client_hello.ts";
import {
  closeQuietly,
  echoBackend,
  exchangeBytes,
  freePort,
  serveEach,
  spawnProxyWithoutFfi,
} from "./_helpers.ts";
import { within } from "./_relay_helpers.ts";

/** A backend that reads a PROXY header, answers with its v1 text form, then echoes the rest. */
function headerReader(): { port: number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served = serveEach(listener, async (conn) => {
    try {
      const head = new Uint8Array(PROXY_V2_MAX_BYTES);
      let filled = 0;
      for (;;) {
        const n = await conn.read(head.subarray(filled));
        if (n === null) return;
        filled += n;
        const parsed = parseProxyHeader(head.subarray(0, filled));
        if (parsed.status === "invalid") return;
        if (parsed.status === "incomplete") continue;
        const { source, destination } = parsed.header;
        const line = `${source?.hostname}:${source?.port} ${destination?.hostname}:` +
          `${destination?.port}\n`;
        await conn.write(new TextEncoder().encode(line));
        const rest = head.slice(parsed.header.length, filled);
        if (rest.length > 0) await conn.write(rest);
        const buffer = new Uint8Array(16 * 1024);
        for (let m; (m = await conn.read(buffer)) !== null;) {
          await conn.write(buffer.subarray(0, m));
        }
        await conn.closeWrite();
        return;
      }
    } catch {
      // the client went away
    } finally {
      closeQuietly(conn);
    }
  });
  return { port: listener.addr.port, close: served.close };
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

Deno.test("proxy.ts without --allow-ffi: expect_proxy, deny, max_connections_per_ip, send_proxy, SNI routing and allow work on the Deno-conn path", async () => {
  const echo = echoBackend();
  const reader = headerReader();
  const [pp, sp, sni, only2, ppSni] = [freePort(), freePort(), freePort(), freePort(), freePort()];
  const dir = await Deno.makeTempDir();
  const path = `${dir}/proxy.toml`;
  await Deno.writeTextFile(
    path,
    `
drain_timeout_ms = 2000

[[listeners]]
address = "127.0.0.1:${pp}"
expect_proxy = true
deny = ["192.0.2.66"]
max_connections_per_ip = 1

[[listeners]]
address = "127.0.0.1:${sp}"

[[listeners]]
address = "127.0.0.1:${sni}"

[[listeners]]
address = "127.0.0.1:${only2}"
allow = ["127.0.0.2"]

[[listeners]]
address = "127.0.0.1:${ppSni}"
expect_proxy = true
deny = ["192.0.2.66"]
sni_timeout_ms = 30000

[clusters.pp]
frontends = [{ address = "127.0.0.1:${pp}" }, { address = "127.0.0.1:${only2}" }]
backends = [{ address = "127.0.0.1:${echo.port}" }]

[clusters.sp]
send_proxy = "v1"
frontends = [{ address = "127.0.0.1:${sp}" }]
backends = [{ address = "127.0.0.1:${reader.port}" }]

[clusters.named]
frontends = [
  { address = "127.0.0.1:${sni}", hostname = "*.example.com" },
  { address = "127.0.0.1:${ppSni}", hostname = "*.example.com" },
]
backends = [{ address = "127.0.0.1:${echo.port}" }]
`,
  );
  const proxyProcess = spawnProxyWithoutFfi(path);
  const { child, output } = proxyProcess;
  const payload = Uint8Array.from({ length: 50_000 }, (_, i) => (i * 7) & 255);
  const header = (hostname: string, port: number): Uint8Array =>
    encodeProxyHeader(1, { hostname, port }, { hostname: "127.0.0.1", port: pp });
  try {
    await output.line(/^ready$/, "the proxy to start");
    // expect_proxy: the header is taken off, the rest relayed intact, the header's client logged.
    const back = await exchangeBytes(pp, header("192.0.2.7", 40000), payload);
    assert.equal(sha256(back), sha256(payload));
    // deny, on the header's address.
    assert.equal((await exchangeBytes(pp, header("192.0.2.66", 1), payload)).length, 0);
    // max_connections_per_ip = 1: one held, the next from the same address refused.
    const held = await Deno.connect({ hostname: "127.0.0.1", port: pp });
    await held.write(header("192.0.2.8", 1));
    await held.write(Uint8Array.of(1));
    const one = new Uint8Array(1);
    assert.equal(await held.read(one), 1, "the held connection is relayed");
    assert.equal((await exchangeBytes(pp, header("192.0.2.8", 2), payload)).length, 0);
    // The same address in its IPv4-mapped IPv6 form is the same client.
    assert.equal((await exchangeBytes(pp, header("::ffff:192.0.2.8", 4), payload)).length, 0);
    closeQuietly(held);
    // A bad header: closed.
    assert.equal(
      (await exchangeBytes(pp, new TextEncoder().encode("GET / HTTP/1.0\r\n"), payload)).length,
      0,
    );
    // send_proxy v1: the backend learns the client's address and the listener's.
    const told = new TextDecoder().decode(
      await exchangeBytes(sp, new Uint8Array(0), Uint8Array.of(9)),
    );
    assert.match(told, new RegExp(`^127\\.0\\.0\\.1:\\d+ 127\\.0\\.0\\.1:${sp}\\n\\x09$`));
    // SNI: a name under the wildcard is relayed, ClientHello included; another is closed.
    const hello = clientHello("a.example.com");
    const routed = await exchangeBytes(sni, hello, payload);
    assert.equal(routed.length, hello.length + payload.length);
    assert.equal(sha256(routed.subarray(hello.length)), sha256(payload));
    assert.equal((await exchangeBytes(sni, clientHello("other.org"), payload)).length, 0);
    // A denied header on a listener that routes by SNI: closed at once, not once the (30 s)
    // wait for its ClientHello is over.
    const denied = await Deno.connect({ hostname: "127.0.0.1", port: ppSni });
    try {
      await denied.write(
        encodeProxyHeader(1, { hostname: "192.0.2.66", port: 3 }, {
          hostname: "127.0.0.1",
          port: ppSni,
        }),
      );
      const closed = denied.read(new Uint8Array(1)).catch(() => null);
      assert.equal(await within(closed, 10_000, "the denied client to be closed"), null);
    } finally {
      closeQuietly(denied);
    }
    // allow = ["127.0.0.2"]: 127.0.0.1 is refused.
    assert.equal((await exchangeBytes(only2, new Uint8Array(0), payload)).length, 0);

    await output.line(/refused 192\.0\.2\.66:1 \(denied\)/, "the denial's line");
    await output.line(/refused 192\.0\.2\.8:2 \(per_ip_limit\)/, "the limit's line");
    await output.line(/refused 127\.0\.0\.1:\d+ \(denied\)/, "the allow list's line");
    await output.line(/refused 192\.0\.2\.66:3 \(denied\)/, "the denial before a ClientHello");
    // The bytes read before the relay (the whole ClientHello) are counted in, as the engines do.
    await output.line(
      new RegExp(`-> 127\\.0\\.0\\.1:${sni} -> named/\\S+ in=${hello.length + payload.length} `),
      "the SNI connection's record, its ClientHello counted",
    );
    await output.line(/^conn 192\.0\.2\.7:40000 -> .* end=done/, "the relayed connection's record");
    await output.line(/end=bad-header error="Cannot read the PROXY header: /, "the bad header");
    await output.line(
      /end=no-route error="No frontend for server name \\"other\.org\\""/,
      "no route",
    );
    assert.equal(
      output.lines.filter((l) => /^conn .*192\.0\.2\.66/.test(l)).length,
      0,
      "a refusal by the rules is not access-logged",
    );
    child.kill("SIGTERM");
    const status = await within(child.status, 15_000, "proxy.ts to exit on SIGTERM");
    assert.equal(status.code, 0, output.lines.join("\n"));
  } finally {
    await proxyProcess.kill();
    await echo.close();
    await reader.close();
    await Deno.remove(dir, { recursive: true });
  }
});
