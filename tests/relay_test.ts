/**
 * `relay()` end to end, its core behaviour: bulk both ways, half-close, peer resets, many relays,
 * abort and idle timeout. Real sockets on 127.0.0.1, bytes checked with SHA-256 at both ends, fds
 * counted before and after. Every wait on the network is bounded (`within`, `waitFor`), and every
 * test stops the engine Worker with `shutdownRelayEngine()` before it ends.
 *
 * The topology is client -> relay -> backend (`throughRelay`, tests/_relay_exchange.ts): `a` is
 * the relay's accepted conn, `b` the relay's conn from `Deno.connect`.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { relay, type RelayMode, type RelayResult, SyscallError } from "../mod.ts";
import { closeQuietly, openFdCount, receiveAll, sendPattern, tcpPair } from "./_helpers.ts";
import {
  assertHalfClose,
  halfCloseExchange,
  readExactly,
  readOutcome,
  type Stream,
  throughRelay,
} from "./_relay_exchange.ts";
import { engineStoppedAndFdsBack, fdBaseline, within } from "./_relay_helpers.ts";

const KiB = 1024;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const MODES: RelayMode[] = ["auto", "splice", "copy"];

// --- helpers -----------------------------------------------------------------------------------

/** Reads until end of input or an error, discarding; bounded by `limit` bytes. */
async function drain(conn: Stream, limit: number): Promise<string> {
  const buffer = new Uint8Array(256 * KiB);
  try {
    for (let total = 0; total <= limit;) {
      const n = await conn.read(buffer);
      if (n === null) return "eof";
      total += n;
    }
    return "limit";
  } catch (error) {
    return error instanceof Error ? error.name : String(error);
  }
}

/** The relay ended on a failure that names its errno, code and syscall. */
function assertSyscallError(result: RelayResult): void {
  const error = result.error;
  assert.ok(error instanceof SyscallError, `a SyscallError, got ${error}`);
  assert.ok(Number.isInteger(error.errno) && error.errno > 0, `errno ${error.errno}`);
  assert.match(error.code, /^E[A-Z]+$/);
  assert.ok(
    ["splice", "read", "write", "shutdown", "epoll_ctl", "getsockopt"].includes(error.syscall),
    `syscall ${error.syscall}`,
  );
}

// --- 1. bulk both ways -------------------------------------------------------------------------

Deno.test("relay: 1 GiB each way at the same time, SHA-256 equal both ways, counts exact, spliced", async () => {
  const before = await fdBaseline();
  const proxied = await throughRelay();
  const { client, server } = proxied;
  try {
    const [upSent, downSent, upGot, downGot, result] = await within(
      Promise.all([
        sendPattern(client, GiB, 11).then(async (hash) => {
          await client.closeWrite();
          return hash;
        }),
        // The backend sends its own 1 GiB while it reads the client's.
        sendPattern(server, GiB, 22).then(async (hash) => {
          await server.closeWrite();
          return hash;
        }),
        receiveAll(server),
        receiveAll(client),
        proxied.relayed,
      ]),
      120_000,
      "1 GiB each way",
    );
    assert.equal(upGot.bytes, GiB);
    assert.equal(upGot.sha256, upSent);
    assert.equal(downGot.bytes, GiB);
    assert.equal(downGot.sha256, downSent);
    assert.equal(result.aToB, GiB);
    assert.equal(result.bToA, GiB);
    assert.equal(result.end, "done");
    assert.equal(result.mode, "splice");
    assert.ok(result.splicedBytes > GiB, `most bytes spliced: ${result.splicedBytes}`);
    assert.equal(result.error, undefined);
  } finally {
    proxied.close();
    await engineStoppedAndFdsBack(before);
  }
});

// --- 2. half-close -----------------------------------------------------------------------------

async function halfCloseThroughRelay(
  mode: RelayMode,
  finisherIs: "client" | "server",
): Promise<void> {
  const before = await fdBaseline();
  const proxied = await throughRelay({ mode });
  const { client, server } = proxied;
  const finisherBytes = 1 * MiB;
  const talkerBytes = 32 * MiB;
  try {
    const [finisher, talker] = finisherIs === "client" ? [client, server] : [server, client];
    const outcome = await within(
      halfCloseExchange(finisher, talker, finisherBytes, talkerBytes),
      30_000,
      "the half-close exchange",
    );
    assertHalfClose(outcome, finisherBytes, talkerBytes);
    const result = await within(proxied.relayed, 5_000, "the relay to end");
    assert.equal(result.end, "done");
    const [aToB, bToA] = finisherIs === "client"
      ? [finisherBytes, talkerBytes]
      : [talkerBytes, finisherBytes];
    assert.equal(result.aToB, aToB);
    assert.equal(result.bToA, bToA);
    if (mode === "copy") {
      assert.equal(result.mode, "copy");
      assert.equal(result.splicedBytes, 0);
    } else if (mode === "splice") {
      assert.equal(result.mode, "splice");
      assert.equal(result.splicedBytes, aToB + bToA, "splice mode splices every byte");
    } else {
      assert.equal(result.mode, "splice", "auto splices a bulk transfer");
      assert.ok(result.splicedBytes > 0);
    }
    // The relay closed both conns: nothing more arrives.
    assert.equal(await within(readOutcome(client), 5_000, "client EOF"), null);
    assert.equal(await within(readOutcome(server), 5_000, "server EOF"), null);
  } finally {
    proxied.close();
    await engineStoppedAndFdsBack(before);
  }
}

for (const mode of MODES) {
  Deno.test(`relay (${mode}): half-close, after the client's FIN the backend's 32 MiB all arrive, then EOF`, async () => {
    await halfCloseThroughRelay(mode, "client");
  });
  Deno.test(`relay (${mode}): half-close, after the backend's FIN the client's 32 MiB all arrive, then EOF`, async () => {
    await halfCloseThroughRelay(mode, "server");
  });
}

// --- 3. peer reset -----------------------------------------------------------------------------

/**
 * One peer streams; the other reads 1 MiB and closes with data still unread, which makes the
 * kernel answer with RST (Deno has no SO_LINGER 0). The relay must end promptly as a reset of
 * the closing side and close the streaming peer's conn too.
 */
async function resetMidTransfer(
  mode: RelayMode,
  resetter: "client" | "server",
): Promise<void> {
  const before = await fdBaseline();
  const proxied = await throughRelay({ mode });
  const { client, server } = proxied;
  const [closer, streamer] = resetter === "client" ? [client, server] : [server, client];
  try {
    const streaming = sendPattern(streamer, 512 * MiB, 3).then(() => "sent all", (e) => e.name);
    await within(readExactly(closer, 1 * MiB), 10_000, "the first MiB");
    const closedAt = Date.now();
    closer.close();
    const result = await within(proxied.relayed, 10_000, "the relay to end after a reset");
    const took = Date.now() - closedAt;
    assert.ok(took < 5_000, `ended ${took} ms after the reset`);
    assert.ok(result.end === "reset" || result.end === "error", `end ${result.end}`);
    assert.equal(result.side, resetter === "client" ? "a" : "b");
    assertSyscallError(result);
    const moved = resetter === "client" ? result.bToA : result.aToB;
    assert.ok(moved >= 1 * MiB && moved < 512 * MiB, `moved ${moved}`);
    // The streaming peer is cut off too (its conn was closed by the relay): its writes fail.
    assert.notEqual(await within(streaming, 10_000, "the streamer to stop"), "sent all");
    const last = await within(drain(streamer, 64 * MiB), 10_000, "the streamer's reads to end");
    assert.ok(last === "eof" || last === "ConnectionReset", `streamer read: ${last}`);
  } finally {
    proxied.close();
    await engineStoppedAndFdsBack(before);
  }
}

for (const mode of MODES) {
  Deno.test(`relay (${mode}): the backend resets mid-transfer, the relay ends as reset of b`, async () => {
    await resetMidTransfer(mode, "server");
  });
  Deno.test(`relay (${mode}): the client resets mid-transfer, the relay ends as reset of a`, async () => {
    await resetMidTransfer(mode, "client");
  });
}

/**
 * The backend answers before reading the whole upload and closes, so its kernel resets the
 * connection. The reply it sent before must still reach the client in full: the relay keeps
 * delivering it, drains the client's upload instead of closing on it (which would reset the
 * client and destroy the reply bytes still in flight), and closes once the client has
 * acknowledged everything.
 */
for (const mode of MODES) {
  Deno.test(`relay (${mode}): a backend that replies then resets; the client gets every byte relayed`, async () => {
    const before = await fdBaseline();
    const proxied = await throughRelay({ mode });
    const { client, server } = proxied;
    try {
      // Small enough to sit in socket buffers while the client does not read yet.
      const REPLY = 1 * MiB;
      // An upload the backend never reads, still going when it resets.
      const upload = sendPattern(client, 64 * MiB, 8).then(() => "sent", (e) => e.name);
      await within(readExactly(server, 1), 5_000, "the upload to start");
      const replyHash = await within(sendPattern(server, REPLY, 21), 10_000, "the reply");
      server.close(); // unread upload: the kernel sends RST
      const hash = createHash("sha256");
      let received = 0;
      const buffer = new Uint8Array(64 * KiB);
      const readAll = (async () => {
        try {
          for (;;) {
            const n = await client.read(buffer);
            if (n === null) return "eof";
            hash.update(buffer.subarray(0, n));
            received += n;
          }
        } catch (error) {
          return (error as Error).name;
        }
      })();
      const result = await within(proxied.relayed, 10_000, "the relay to end");
      await within(readAll, 10_000, "the client's reads to end");
      assert.ok(result.end === "reset" || result.end === "error", `end ${result.end}`);
      assert.equal(result.side, "b");
      assert.ok(result.bToA > 0, "some reply was relayed");
      assert.equal(received, result.bToA, "every reply byte the relay counted reached the client");
      if (result.bToA === REPLY) assert.equal(hash.digest("hex"), replyHash);
      await within(upload, 10_000, "the upload to stop");
    } finally {
      proxied.close();
      await engineStoppedAndFdsBack(before);
    }
  });
}

/**
 * Regression test (was a bug). The client sends a request and half-closes; the backend answers 64 KiB and then
 * stays idle with the connection open (keep-alive). The client closes without reading the
 * answer, so its kernel sends RST. The relay's `a` socket is now dead (EPOLLERR/EPOLLHUP), but
 * no byte is owed to it. Without an idle timeout, the relay should still end and release the
 * backend connection; it must not wait for the backend to send again.
 */
Deno.test({
  name: "relay: a reset after half-close while the backend is idle still ends the relay",
}, async () => {
  const before = await fdBaseline();
  const proxied = await throughRelay({ mode: "auto" });
  const { client, server } = proxied;
  try {
    await client.write(new TextEncoder().encode("GET /"));
    await client.closeWrite();
    assert.equal((await within(receiveAll(server), 5_000, "the request")).bytes, 5);
    await server.write(new Uint8Array(64 * KiB));
    // Read one byte of the answer and close: the kernel answers with RST, at once for bytes
    // unread in the receive buffer, or on arrival for bytes still on their way.
    await within(readExactly(client, 1), 5_000, "the first byte of the answer");
    client.close();
    let result: RelayResult | string;
    try {
      result = await within(proxied.relayed, 3_000, "the relay to notice the client's RST");
    } catch (error) {
      // Let the backend finish: only then does the relay end, and its result is reported.
      closeQuietly(server);
      const late = await within(proxied.relayed, 5_000, "the relay once the backend closed");
      result = `${error}; the relay ended only when the backend closed, as ` +
        `${JSON.stringify({ ...late, error: late.error?.message })}`;
    }
    assert.notEqual(typeof result, "string", `BUG: the client's RST went unnoticed: ${result}`);
    const ended = result as RelayResult;
    assert.ok(ended.end === "reset" || ended.end === "error", `end ${ended.end}`);
    assert.equal(ended.side, "a");
    assertSyscallError(ended);
  } finally {
    proxied.close();
    await engineStoppedAndFdsBack(before);
  }
});

// --- 4. many relays ----------------------------------------------------------------------------

Deno.test("relay: 1,000 concurrent relays, each payload verified; no fd growth", async () => {
  const before = await fdBaseline();
  const count = 1_000;
  const size = 4 * KiB;
  const sets: Array<{ left: Awaited<ReturnType<typeof tcpPair>>; right: typeof sets[0]["left"] }> =
    [];
  try {
    for (let i = 0; i < count; i += 50) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(50, count - i) }, async () => ({
          left: await tcpPair(),
          right: await tcpPair(),
        })),
      );
      sets.push(...batch);
    }
    const runs = sets.map(async ({ left, right }, i) => {
      const relayed = relay(left.server, right.client);
      const [upSent, downSent, upGot, downGot, result] = await Promise.all([
        sendPattern(left.client, size, 1 + i).then(async (h) => {
          await left.client.closeWrite();
          return h;
        }),
        sendPattern(right.server, size, 100_000 + i).then(async (h) => {
          await right.server.closeWrite();
          return h;
        }),
        receiveAll(right.server),
        receiveAll(left.client),
        relayed,
      ]);
      left.client.close();
      right.server.close();
      return upGot.sha256 === upSent && downGot.sha256 === downSent && upGot.bytes === size &&
        downGot.bytes === size && result.end === "done" && result.aToB === size &&
        result.bToA === size;
    });
    const outcomes = await within(Promise.all(runs), 60_000, "1,000 concurrent relays");
    assert.equal(outcomes.filter((ok) => ok).length, count, "every relay intact and done");
  } finally {
    for (const { left, right } of sets) {
      left.close();
      right.close();
    }
    await engineStoppedAndFdsBack(before);
  }
});

Deno.test("relay: 10,000 sequential relays, each payload verified; no fd growth", async () => {
  const before = await fdBaseline();
  const count = 10_000;
  const deadline = Date.now() + 120_000;
  const proxyListener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const backendListener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const up = new Uint8Array(100);
  const down = new Uint8Array(200);
  let done = 0;
  let early = 0;
  try {
    for (let i = 0; i < count; i++) {
      assert.ok(Date.now() < deadline, `only ${i} relays in 120 s`);
      up.fill(i & 0xff);
      down.fill((i * 7) & 0xff);
      const [client, a] = await Promise.all([
        Deno.connect({ hostname: "127.0.0.1", port: proxyListener.addr.port }),
        proxyListener.accept(),
      ]);
      const [b, server] = await Promise.all([
        Deno.connect({ hostname: "127.0.0.1", port: backendListener.addr.port }),
        backendListener.accept(),
      ]);
      try {
        const relayed = relay(a, b);
        await client.write(up);
        await client.closeWrite();
        await server.write(down);
        await server.closeWrite();
        const [got, back, result] = await within(
          Promise.all([readExactly(server, up.length), readExactly(client, down.length), relayed]),
          10_000,
          `relay ${i}`,
        );
        // 100 and 200 bytes: compared whole rather than hashed.
        assert.deepEqual(got, up);
        assert.deepEqual(back, down);
        assert.equal(await server.read(new Uint8Array(1)), null);
        assert.equal(await client.read(new Uint8Array(1)), null);
        assert.equal(result.end, "done");
        assert.deepEqual([result.aToB, result.bToA], [up.length, down.length]);
      } finally {
        client.close();
        server.close();
      }
      done++;
      if (i === 99) early = openFdCount();
    }
    assert.equal(done, count);
    // With the engine still running, 9,900 more relays added no fd.
    const late = openFdCount();
    assert.ok(late <= early, `fds: ${early} after 100 relays, ${late} after ${count}`);
  } finally {
    proxyListener.close();
    backendListener.close();
    await engineStoppedAndFdsBack(before);
  }
});

// --- 5. abort and idle timeout -----------------------------------------------------------------

Deno.test("relay: abort ends a relay as aborted; both ends are closed and their peers see EOF", async () => {
  const before = await fdBaseline();
  const controller = new AbortController();
  const proxied = await throughRelay({ signal: controller.signal });
  const { client, server } = proxied;
  try {
    await client.write(new TextEncoder().encode("ping"));
    assert.equal(new TextDecoder().decode(await readExactly(server, 4)), "ping");
    await server.write(new TextEncoder().encode("pong!"));
    assert.equal(new TextDecoder().decode(await readExactly(client, 5)), "pong!");
    controller.abort();
    const result = await within(proxied.relayed, 5_000, "the aborted relay to end");
    assert.equal(result.end, "aborted");
    assert.equal(result.aToB, 4);
    assert.equal(result.bToA, 5);
    assert.equal(result.error, undefined);
    assert.equal(await within(readOutcome(client), 5_000, "client EOF"), null);
    assert.equal(await within(readOutcome(server), 5_000, "server EOF"), null);
  } finally {
    proxied.close();
    await engineStoppedAndFdsBack(before);
  }
});

Deno.test("relay: abort mid-transfer ends the relay promptly; nothing hangs", async () => {
  const before = await fdBaseline();
  const controller = new AbortController();
  const proxied = await throughRelay({ signal: controller.signal, mode: "splice" });
  const { client, server } = proxied;
  try {
    const streaming = sendPattern(client, 512 * MiB, 9).then(() => "sent all", (e) => e.name);
    await within(readExactly(server, 1 * MiB), 10_000, "the first MiB");
    controller.abort();
    const result = await within(proxied.relayed, 5_000, "the aborted relay to end");
    assert.equal(result.end, "aborted");
    assert.ok(result.aToB >= 1 * MiB && result.aToB < 512 * MiB);
    assert.notEqual(await within(streaming, 10_000, "the client's writes to stop"), "sent all");
    const last = await within(drain(server, 512 * MiB), 10_000, "the backend to see the end");
    assert.equal(last, "eof");
  } finally {
    proxied.close();
    await engineStoppedAndFdsBack(before);
  }
});

// Was ignored for a disturbed fd count: that was Deno winding down the previous test's Worker
// thread, which engineStoppedAndFdsBack() now waits for.
Deno.test("relay: an already aborted signal ends it as aborted at once, both ends closed", async () => {
  const before = await fdBaseline();
  const proxied = await throughRelay({ signal: AbortSignal.abort() });
  try {
    const result = await within(proxied.relayed, 5_000, "the relay to end");
    assert.equal(result.end, "aborted");
    assert.equal(result.aToB + result.bToA, 0);
    assert.equal(await within(readOutcome(proxied.client), 5_000, "client EOF"), null);
    assert.equal(await within(readOutcome(proxied.server), 5_000, "server EOF"), null);
  } finally {
    proxied.close();
    await engineStoppedAndFdsBack(before);
  }
});

Deno.test("relay: aborting after the relay ended changes nothing", async () => {
  const before = await fdBaseline();
  const controller = new AbortController();
  const proxied = await throughRelay({ signal: controller.signal });
  try {
    await proxied.client.closeWrite();
    await proxied.server.closeWrite();
    const result = await within(proxied.relayed, 5_000, "the relay to end");
    controller.abort();
    assert.equal(result.end, "done");
  } finally {
    proxied.close();
    await engineStoppedAndFdsBack(before);
  }
});

Deno.test("relay: idle timeout ends an idle relay within a bounded time; peers see EOF", async () => {
  const before = await fdBaseline();
  const idleTimeout = 300;
  const proxied = await throughRelay({ idleTimeout });
  const { client, server } = proxied;
  try {
    // Traffic with pauses shorter than the timeout keeps the relay open. The pauses are the
    // point of this part (idle gaps), not a synchronisation: each round trip is awaited.
    const started = Date.now();
    let lastActivity = started;
    for (let round = 0; round < 8; round++) {
      if (round > 0) await new Promise((resolve) => setTimeout(resolve, idleTimeout / 4));
      // The relay moves this byte after this instant: its idle clock restarts no earlier.
      lastActivity = Date.now();
      await client.write(new Uint8Array([round]));
      assert.equal((await readExactly(server, 1))[0], round);
    }
    assert.ok(Date.now() - started > idleTimeout, "the traffic outlasted one timeout");
    let settled = false;
    proxied.relayed.then(() => settled = true);
    await Promise.resolve();
    assert.equal(settled, false, "active traffic kept the relay open");

    // Now idle.
    const result = await within(proxied.relayed, idleTimeout + 3_000, "the idle timeout");
    const idled = Date.now() - lastActivity;
    assert.equal(result.end, "idle-timeout");
    assert.ok(idled >= idleTimeout - 5, `ended after ${idled} ms idle, before the timeout`);
    assert.ok(idled < idleTimeout + 2_000, `ended after ${idled} ms idle`);
    assert.equal(result.aToB, 8);
    assert.equal(await within(readOutcome(client), 5_000, "client EOF"), null);
    assert.equal(await within(readOutcome(server), 5_000, "server EOF"), null);
  } finally {
    proxied.close();
    await engineStoppedAndFdsBack(before);
  }
});
