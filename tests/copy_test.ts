import { createHash } from "node:crypto";
import assert from "node:assert/strict";
import { copy, copyBidirectional } from "../mod.ts";
import { closeQuietly, receiveAll, runDeno, sendPattern, tcpPair } from "./_helpers.ts";

/**
 * client -> proxy (copyBidirectional) -> backend. The backend reads the whole request to EOF,
 * then answers; the answer must survive the client's half-close.
 */
async function halfCloseThroughCopy(requestBytes: number, replyBytes: number): Promise<void> {
  using backendListener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using proxyListener = Deno.listen({ hostname: "127.0.0.1", port: 0 });

  const backend = (async () => {
    const conn = await backendListener.accept();
    try {
      const request = await receiveAll(conn);
      const replyHash = await sendPattern(conn, replyBytes, 99);
      return { request, replyHash };
    } finally {
      conn.close();
    }
  })();
  const proxy = (async () => {
    const client = await proxyListener.accept();
    const upstream = await Deno.connect({ hostname: "127.0.0.1", port: backendListener.addr.port });
    return await copyBidirectional(client, upstream);
  })();

  const client = await Deno.connect({ hostname: "127.0.0.1", port: proxyListener.addr.port });
  try {
    const requestHash = await sendPattern(client, requestBytes, 5);
    await client.closeWrite();
    const reply = await receiveAll(client);
    const server = await backend;
    const relayed = await proxy;

    assert.equal(server.request.bytes, requestBytes);
    assert.equal(server.request.sha256, requestHash);
    assert.equal(reply.bytes, replyBytes);
    assert.equal(reply.sha256, server.replyHash);
    assert.deepEqual(relayed.aToB, { bytes: requestBytes, status: "end" });
    assert.deepEqual(relayed.bToA, { bytes: replyBytes, status: "end" });
    assert.equal(relayed.aborted, false);
  } finally {
    client.close();
  }
}

Deno.test("copyBidirectional: relays a half-close, the reply after the client's FIN all arrives", async () => {
  await halfCloseThroughCopy(4 * 1024 * 1024, 16 * 1024 * 1024);
});

Deno.test("copyBidirectional: relays an empty request and an empty reply", async () => {
  await halfCloseThroughCopy(0, 0);
});

Deno.test("copy: reports a failed write with the bytes delivered before it", async () => {
  const from = await tcpPair();
  const to = await tcpPair();
  try {
    to.server.close();
    const writer = sendPattern(from.client, 8 * 1024 * 1024).catch(() => "");
    const result = await copy(from.server, to.client);
    assert.equal(result.status, "error");
    assert.ok(result.error instanceof Error);
    assert.ok(result.bytes < 8 * 1024 * 1024);
    from.close();
    await writer;
  } finally {
    from.close();
    to.close();
  }
});

Deno.test("copyBidirectional: ends on abort and closes both conns", async () => {
  const left = await tcpPair();
  const right = await tcpPair();
  const controller = new AbortController();
  const running = copyBidirectional(left.server, right.client, { signal: controller.signal });
  await left.client.write(new Uint8Array([1, 2, 3]));
  const got = new Uint8Array(3);
  assert.equal(await right.server.read(got), 3);
  controller.abort();
  const result = await running;
  assert.equal(result.aborted, true);
  // Both relayed conns are closed: their peers see end of input.
  assert.equal(await left.client.read(new Uint8Array(1)), null);
  assert.equal(await right.server.read(new Uint8Array(1)), null);
  closeQuietly(left.client);
  closeQuietly(right.server);
});

Deno.test("copyBidirectional: rejects a bad buffer size", async () => {
  const pair = await tcpPair();
  try {
    await assert.rejects(
      copyBidirectional(pair.client, pair.server, { bufferSize: 0 }),
      RangeError,
    );
  } finally {
    pair.close();
  }
});

Deno.test("mod.ts: without --allow-ffi it imports, nothing prompts, the copy loop moves data intact", async () => {
  const result = await runDeno(
    `
      import { copyBidirectional, SplicePipe, spliceAvailable, spliceIn } from "ROOT/mod.ts";
      import { receiveAll, sendPattern } from "ROOT/tests/_helpers.ts";
      const report = {};
      report.available = spliceAvailable();
      report.pipe = SplicePipe.create();
      try { spliceIn(0, 1, 1); } catch (e) { report.spliceIn = e.name + ": " + e.message; }
      report.permission = Deno.permissions.querySync({ name: "ffi" }).state;

      using backendListener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      using proxyListener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const backend = (async () => {
        const conn = await backendListener.accept();
        const request = await receiveAll(conn);
        const reply = await sendPattern(conn, 3_000_000, 3);
        conn.close();
        return { request, reply };
      })();
      const proxy = (async () => {
        const client = await proxyListener.accept();
        const up = await Deno.connect({ hostname: "127.0.0.1", port: backendListener.addr.port });
        return await copyBidirectional(client, up);
      })();
      const client = await Deno.connect({ hostname: "127.0.0.1", port: proxyListener.addr.port });
      const sent = await sendPattern(client, 2_000_000, 2);
      await client.closeWrite();
      const reply = await receiveAll(client);
      client.close();
      const server = await backend;
      const relayed = await proxy;
      report.requestIntact = server.request.sha256 === sent && server.request.bytes === 2_000_000;
      report.replyIntact = reply.sha256 === server.reply && reply.bytes === 3_000_000;
      report.counted = [relayed.aToB.bytes, relayed.bToA.bytes];
      console.log(JSON.stringify(report));
    `,
    ["--allow-net=127.0.0.1"],
  );
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, "", "nothing printed, no prompt");
  const report = JSON.parse(result.stdout);
  assert.equal(report.available, false);
  assert.equal(report.pipe, null);
  assert.match(report.spliceIn, /^TypeError: .*--allow-ffi/);
  assert.equal(report.permission, "prompt");
  assert.equal(report.requestIntact, true);
  assert.equal(report.replyIntact, true);
  assert.deepEqual(report.counted, [2_000_000, 3_000_000]);
});

Deno.test("copyBidirectional: a backend that replies then resets; the client gets every byte copied", async () => {
  const left = await tcpPair(); // client <-> proxy's a
  const right = await tcpPair(); // proxy's b <-> backend
  const relayed = copyBidirectional(left.server, right.client);
  const client = left.client;
  const backend = right.server;
  try {
    const upload = sendPattern(client, 64 * 1024 * 1024, 8).catch(() => "");
    const first = new Uint8Array(1);
    assert.equal(await backend.read(first), 1);
    const replyHash = await sendPattern(backend, 1024 * 1024, 21);
    backend.close(); // the upload is unread: the kernel resets the connection
    const reply = await receiveAllTolerant(client);
    const result = await relayed;
    assert.equal(result.aToB.status, "error");
    assert.equal(result.aToB.failedOn, "write");
    assert.ok(result.bToA.bytes > 0);
    assert.equal(reply.bytes, result.bToA.bytes, "every byte copied reached the client");
    if (reply.bytes === 1024 * 1024) assert.equal(reply.sha256, replyHash);
    await upload;
  } finally {
    closeQuietly(client);
    closeQuietly(backend);
  }
});

/** Like receiveAll, but a reset after the data ends the read instead of failing it. */
async function receiveAllTolerant(
  conn: Deno.TcpConn,
): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(64 * 1024);
  let bytes = 0;
  try {
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      hash.update(buffer.subarray(0, n));
      bytes += n;
    }
  } catch {
    // reset after the last byte: what arrived is what counts
  }
  return { bytes, sha256: hash.digest("hex") };
}
