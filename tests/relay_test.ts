/**
 * `relay()` end to end: real sockets on 127.0.0.1, bytes checked with SHA-256 at both ends,
 * fds counted before and after. Every wait on the network is bounded (`within`, `waitFor`), and
 * every test stops the engine Worker with `shutdownRelayEngine()` before it ends.
 *
 * The topology is client -> relay -> backend: `a` is the relay's accepted conn (its fd comes
 * from Deno's internal symbol), `b` the relay's conn from `Deno.connect` (its fd is probed).
 *
 * Exports `halfCloseExchange` and `within` for the subprocess tests, which import this file
 * under `deno run` (where `Deno.test` registers nothing).
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  relay,
  type RelayEndpoint,
  type RelayMode,
  type RelayOptions,
  type RelayResult,
  SyscallError,
} from "../mod.ts";
import {
  closeQuietly,
  fillPattern,
  openFdCount,
  receiveAll,
  runDeno,
  sendPattern,
  tcpPair,
  waitFor,
} from "./_helpers.ts";
import { engineStoppedAndFdsBack, fdBaseline, within, workerThreads } from "./_relay_helpers.ts";

const KiB = 1024;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const MODES: RelayMode[] = ["auto", "splice", "copy"];

// --- helpers -----------------------------------------------------------------------------------

/** A stream conn as the exchanges below use it. */
interface Stream {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  closeWrite(): Promise<void>;
}

/** client -> relay(a, b) -> server, over TCP. */
interface Proxied {
  client: Deno.TcpConn;
  server: Deno.TcpConn;
  relayed: Promise<RelayResult>;
  close(): void;
}

async function throughRelay(options?: RelayOptions): Promise<Proxied> {
  const left = await tcpPair();
  const right = await tcpPair();
  // a: the accepted conn; b: the Deno.connect conn.
  const relayed = relay(left.server, right.client, options);
  return {
    client: left.client,
    server: right.server,
    relayed,
    close(): void {
      closeQuietly(left.client);
      closeQuietly(right.server);
    },
  };
}

/**
 * Writes `total` pattern bytes (like `sendPattern`; the pause may split a chunk differently),
 * pausing once `pauseAt` bytes are written until `gate` settles. Resolves to the SHA-256 and
 * how many bytes had been written when the gate opened.
 */
async function sendGated(
  conn: Stream,
  total: number,
  seed: number,
  pauseAt: number,
  gate: Promise<unknown>,
): Promise<{ sha256: string; sentBeforeGate: number }> {
  const hash = createHash("sha256");
  const chunkSize = 256 * KiB;
  const chunk = new Uint8Array(chunkSize);
  let state = seed;
  let sentBeforeGate = -1;
  for (let sent = 0; sent < total;) {
    if (sentBeforeGate === -1 && sent >= pauseAt) {
      await gate;
      sentBeforeGate = sent;
    }
    const size = Math.min(chunkSize, total - sent, pauseAt > sent ? pauseAt - sent : chunkSize);
    state = fillPattern(chunk, state);
    const part = chunk.subarray(0, size);
    hash.update(part);
    for (let off = 0; off < size;) off += await conn.write(part.subarray(off));
    sent += size;
  }
  if (sentBeforeGate === -1) {
    await gate;
    sentBeforeGate = total;
  }
  return { sha256: hash.digest("hex"), sentBeforeGate };
}

/** What a half-close exchange saw at both ends. */
export interface HalfCloseOutcome {
  /** The finisher's bytes, as sent and as the talker received them. */
  finisherSent: string;
  talkerGot: { bytes: number; sha256: string };
  /** The talker's bytes, as sent and as the finisher received them. */
  talkerSent: string;
  finisherGot: { bytes: number; sha256: string };
  /** Bytes the talker had written when it saw the finisher's end of input. */
  talkerSentBeforeEof: number;
}

/**
 * Half-close with bytes in flight. `finisher` sends `finisherBytes` and shuts down its sending
 * side at once; `talker` sends the first half of `talkerBytes`, waits until it has read the
 * finisher's end of input (the FIN crossed the relay), then sends the second half and shuts
 * down. Both read to end of input throughout.
 */
export async function halfCloseExchange(
  finisher: Stream,
  talker: Stream,
  finisherBytes: number,
  talkerBytes: number,
): Promise<HalfCloseOutcome> {
  let eofSeen!: () => void;
  const eof = new Promise<void>((resolve) => eofSeen = resolve);
  const talkerReceiving = receiveAll(talker).finally(() => eofSeen());
  const [finisherSent, talkerSent, talkerGot, finisherGot] = await Promise.all([
    sendPattern(finisher, finisherBytes, 101).then(async (hash) => {
      await finisher.closeWrite();
      return hash;
    }),
    sendGated(talker, talkerBytes, 202, Math.floor(talkerBytes / 2), eof).then(async (sent) => {
      await talker.closeWrite();
      return sent;
    }),
    talkerReceiving,
    receiveAll(finisher),
  ]);
  return {
    finisherSent,
    talkerGot,
    talkerSent: talkerSent.sha256,
    finisherGot,
    talkerSentBeforeEof: talkerSent.sentBeforeGate,
  };
}

function assertHalfClose(
  outcome: HalfCloseOutcome,
  finisherBytes: number,
  talkerBytes: number,
): void {
  assert.equal(outcome.talkerGot.bytes, finisherBytes);
  assert.equal(outcome.talkerGot.sha256, outcome.finisherSent);
  assert.equal(outcome.finisherGot.bytes, talkerBytes, "every byte sent after the FIN arrived");
  assert.equal(outcome.finisherGot.sha256, outcome.talkerSent);
  assert.ok(
    outcome.talkerSentBeforeEof < talkerBytes,
    `the talker still had bytes to send when the FIN arrived (${outcome.talkerSentBeforeEof})`,
  );
}

/** Reads exactly `n` bytes (bounded: every read moves at least one byte or ends). */
async function readExactly(conn: Stream, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let got = 0; got < n;) {
    const read = await conn.read(out.subarray(got));
    if (read === null) throw new Error(`End of input after ${got} of ${n} bytes`);
    got += read;
  }
  return out;
}

/** The next read's outcome: `null` (end of input), a byte count, or the error's name. */
async function readOutcome(conn: Stream): Promise<number | null | string> {
  try {
    return await conn.read(new Uint8Array(64 * KiB));
  } catch (error) {
    return error instanceof Error ? error.name : String(error);
  }
}

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

Deno.test("1 GiB each way at the same time: SHA-256 equal both ways, counts exact, spliced", async () => {
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
  Deno.test(`half-close (${mode}): after the client's FIN the backend's 32 MiB all arrive, then EOF`, async () => {
    await halfCloseThroughRelay(mode, "client");
  });
  Deno.test(`half-close (${mode}): after the backend's FIN the client's 32 MiB all arrive, then EOF`, async () => {
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
  Deno.test(`reset (${mode}): the backend resets mid-transfer, the relay ends as reset of b`, async () => {
    await resetMidTransfer(mode, "server");
  });
  Deno.test(`reset (${mode}): the client resets mid-transfer, the relay ends as reset of a`, async () => {
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
  Deno.test(`reset (${mode}): a backend that replies then resets; the client gets every byte relayed`, async () => {
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
  name: "reset after half-close while the backend is idle: the relay still ends",
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

Deno.test("1,000 concurrent relays, each payload verified; no fd growth", async () => {
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

Deno.test("10,000 sequential relays: each payload verified; no fd growth", async () => {
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

Deno.test("abort ends a relay as aborted; both ends are closed and their peers see EOF", async () => {
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

Deno.test("abort mid-transfer ends the relay promptly; nothing hangs", async () => {
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
Deno.test("an already aborted signal: aborted at once, both ends closed", async () => {
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

Deno.test("aborting after the relay ended changes nothing", async () => {
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

Deno.test("idle timeout ends an idle relay within a bounded time; peers see EOF", async () => {
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

// --- engine lifecycle --------------------------------------------------------------------------

Deno.test("engine: stops by itself a second after the last relay and releases its fds", async () => {
  const before = await fdBaseline();
  const proxied = await throughRelay({ mode: "splice" });
  const { client, server } = proxied;
  try {
    await client.write(new Uint8Array(256 * KiB));
    await readExactly(server, 256 * KiB);
    await client.closeWrite();
    await server.closeWrite();
    assert.equal((await within(proxied.relayed, 5_000, "the relay to end")).end, "done");
    proxied.close();
    // The Worker, its epoll, eventfd and pooled pipes all go without shutdownRelayEngine().
    let now = openFdCount();
    await waitFor(
      () => workerThreads() === 0 && (now = openFdCount()) === before,
      "the idle engine to stop",
      5_000,
    ).catch(() => assert.equal(now, before, `open fds: ${before} before, ${now} after`));
  } finally {
    proxied.close();
    await engineStoppedAndFdsBack(before);
  }
});

// --- 6. without FFI ----------------------------------------------------------------------------

Deno.test("without --allow-ffi: relay() copies in userspace, mode fallback, half-close works", async () => {
  const result = await runDeno(
    `
      import { relay } from "ROOT/mod.ts";
      import { tcpPair } from "ROOT/tests/_helpers.ts";
      import { halfCloseExchange } from "ROOT/tests/relay_test.ts";
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
  name: "without --allow-ffi: an already aborted signal ends the relay as aborted",
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

// --- 7. fds run out ----------------------------------------------------------------------------

// Was ignored for a Deno panic: isolated, it happens only when the engine Worker has to start
// while fds are exhausted (the regression test below). Here a keepalive relay starts the engine first.
Deno.test("fds run out (low RLIMIT_NOFILE): every relay still delivers intact, copying without a pipe", async () => {
  const limit = 400;
  const result = await runDeno(
    `
      import { relay, shutdownRelayEngine } from "ROOT/mod.ts";
      import { openFdCount, receiveAll, sendPattern, tcpPair, waitFor } from "ROOT/tests/_helpers.ts";
      import { fdBaseline, within, workerThreads } from "ROOT/tests/_relay_helpers.ts";
      const before = await fdBaseline();
      // A relay that stays open keeps the engine Worker running: it must be started (modules
      // loaded, libc opened, epoll created) before the fds run out.
      const k1 = await tcpPair();
      const k2 = await tcpPair();
      const keep = relay(k1.server, k2.client);
      await k1.client.write(new Uint8Array([7]));
      await within(k2.server.read(new Uint8Array(1)), 5_000, "keepalive");

      /** As many concurrent relays as fit, leaving exactly \`spare\` fds free for pipes. */
      async function phase(spare) {
        const count = Math.floor((${limit} - openFdCount() - spare) / 4);
        const sets = [];
        for (let i = 0; i < count; i++) sets.push([await tcpPair(), await tcpPair()]);
        const padding = [];
        for (let i = 0; i < 8 && ${limit} - openFdCount() > spare; i++) {
          padding.push(Deno.listen({ hostname: "127.0.0.1", port: 0 }));
        }
        const free = ${limit} - openFdCount();
        const size = 1 << 20;
        const runs = sets.map(async ([left, right], i) => {
          const relayed = relay(left.server, right.client, { mode: i % 2 ? "splice" : "auto" });
          const [upSent, downSent, upGot, downGot, r] = await Promise.all([
            sendPattern(left.client, size, 1 + i).then(async (h) => { await left.client.closeWrite(); return h; }),
            sendPattern(right.server, size, 5000 + i).then(async (h) => { await right.server.closeWrite(); return h; }),
            receiveAll(right.server),
            receiveAll(left.client),
            relayed,
          ]);
          left.client.close();
          right.server.close();
          return {
            intact: upGot.sha256 === upSent && downGot.sha256 === downSent &&
              upGot.bytes === size && downGot.bytes === size,
            end: r.end, mode: r.mode, aToB: r.aToB, bToA: r.bToA, spliced: r.splicedBytes,
          };
        });
        const results = await within(Promise.all(runs), 60_000, "relays");
        for (const listener of padding) listener.close();
        return { free, count, results };
      }
      const none = await phase(1);
      const few = await phase(5);

      await k1.client.closeWrite();
      await k2.server.closeWrite();
      await within(keep, 5_000, "keepalive relay");
      k1.client.close();
      k2.server.close();
      await shutdownRelayEngine();
      let after = openFdCount();
      await waitFor(() => workerThreads() === 0 && (after = openFdCount()) === before, "fds back", 5_000)
        .catch(() => {});
      console.log(JSON.stringify({ before, after, none, few }));
    `,
    // Deno reads /proc/self/fd (openFdCount) only with --allow-all.
    ["--allow-all"],
    { prefix: ["bash", "-c", `ulimit -n ${limit} && exec "$@"`, "bash"], timeoutMs: 90_000 },
  );
  assert.equal(result.code, 0, result.stderr);
  const report = JSON.parse(result.stdout);
  type Run = { intact: boolean; end: string; mode: string; aToB: number; bToA: number };
  type Phase = { free: number; count: number; results: Run[] };
  // Phase "none": one fd free, so no pipe (two fds) can be had; phase "few": two pipes at most
  // for all the relays (measured: the engine's quick turnover lets them all splice anyway).
  for (const [name, spare] of [["none", 1], ["few", 5]] as const) {
    const phase: Phase = report[name];
    assert.ok(phase.count >= 50, `${name}: ${phase.count} relays`);
    assert.equal(phase.free, spare, `${name}: fds free for pipes`);
    assert.equal(phase.results.length, phase.count);
    for (const [i, run] of phase.results.entries()) {
      assert.deepEqual(
        { intact: run.intact, end: run.end, aToB: run.aToB, bToA: run.bToA },
        { intact: true, end: "done", aToB: MiB, bToA: MiB },
        `${name}: relay ${i}`,
      );
    }
  }
  // With no pipe to be had, the "splice" mode relays (odd ones) met EMFILE and copied; those
  // that start after others ended (and freed their fds) may get a pipe (measured: 78 of 91
  // relays copied, 13 late ones spliced).
  const none: Phase = report.none;
  const copied = none.results.filter((run, i) => i % 2 === 1 && run.mode === "copy").length;
  assert.ok(copied > 0, "splice-mode relays without a pipe copied");
  assert.equal(report.after, report.before, "fds released");
});

/**
 * Regression test (was a bug). The same shortage, but when no engine runs yet (the first relay, or the first one
 * after the engine stopped on its 1 s linger): `relay()` starts the engine Worker, and Deno
 * needs fds for it (a tokio runtime, module files). Measured on 2.9.6 with 200 fds: with 2 free,
 * Deno panics in thread worker-1 (runtime/tokio_util.rs: "Too many open files") and the whole
 * process dies; with 6 free, the Worker's import of engine/worker.ts fails, the engine goes
 * fatal, and the relay ends as "error" with nothing delivered, where the copy path could have
 * served. Expected: relay() still delivers the bytes (by copy) and the process survives.
 */
Deno.test("fds run out before the engine starts: relay() still delivers, no crash", async () => {
  const limit = 200;
  const outcomes: string[] = [];
  for (const spare of [2, 6]) {
    const result = await runDeno(
      `
        import { relay } from "ROOT/mod.ts";
        import { openFdCount, receiveAll, sendPattern, tcpPair } from "ROOT/tests/_helpers.ts";
        import { within } from "ROOT/tests/_relay_helpers.ts";
        const left = await tcpPair();
        const right = await tcpPair();
        const padding = [];
        for (let i = 0; i < ${limit} && ${limit} - openFdCount() > ${spare}; i++) {
          padding.push(Deno.listen({ hostname: "127.0.0.1", port: 0 }));
        }
        const free = ${limit} - openFdCount();
        const relayed = relay(left.server, right.client);
        const [sent, got, r] = await within(Promise.all([
          sendPattern(left.client, 65_536, 5).then(async (h) => { await left.client.closeWrite(); return h; }),
          right.server.closeWrite().then(() => receiveAll(right.server)),
          relayed,
        ]), 10_000, "the relay");
        for (const listener of padding) listener.close();
        left.client.close();
        right.server.close();
        console.log(JSON.stringify({
          free,
          intact: got.sha256 === sent && got.bytes === 65_536,
          end: r.end,
          mode: r.mode,
          error: r.error?.message,
        }));
      `,
      ["--allow-all"],
      { prefix: ["bash", "-c", `ulimit -n ${limit} && exec "$@"`, "bash"], timeoutMs: 30_000 },
    );
    if (result.code !== 0) {
      const panic = result.stderr.match(/panicked at [^\n]*\n[^\n]*/)?.[0] ?? result.stderr;
      outcomes.push(`${spare} fds free: exit code ${result.code}: ${panic.trim()}`);
      continue;
    }
    const report = JSON.parse(result.stdout);
    assert.equal(report.free, spare);
    if (!report.intact || report.end !== "done") {
      outcomes.push(`${spare} fds free: ${result.stdout.trim()}`);
    }
  }
  assert.deepEqual(outcomes, [], `BUG: relay() under fd exhaustion:\n${outcomes.join("\n")}`);
});

// --- 8. endpoint kinds -------------------------------------------------------------------------

/** Runs a half-close exchange through `relay(a, b)` and checks both ends and the result. */
async function exchangeThrough(
  client: Stream & { close(): void },
  a: RelayEndpoint,
  b: RelayEndpoint,
  server: Stream & { close(): void },
): Promise<void> {
  const relayed = relay(a, b);
  try {
    const outcome = await within(
      halfCloseExchange(client, server, 1 * MiB, 4 * MiB),
      30_000,
      "the exchange",
    );
    assertHalfClose(outcome, 1 * MiB, 4 * MiB);
    const result = await within(relayed, 5_000, "the relay to end");
    assert.equal(result.end, "done");
    assert.equal(result.aToB, 1 * MiB);
    assert.equal(result.bToA, 4 * MiB);
    assert.equal(result.mode, "splice");
  } finally {
    closeQuietly(client);
    closeQuietly(server);
  }
}

async function unixPair(path: string): Promise<{ client: Deno.UnixConn; server: Deno.UnixConn }> {
  using listener = Deno.listen({ transport: "unix", path });
  const [client, server] = await Promise.all([
    Deno.connect({ transport: "unix", path }),
    listener.accept(),
  ]);
  return { client, server };
}

Deno.test("endpoints: accepted and connected conns either way round, TCP and Unix mixed", async () => {
  const before = await fdBaseline();
  const dir = await Deno.makeTempDir();
  try {
    {
      // a from Deno.connect, b from accept (the reverse of the other tests).
      const left = await tcpPair();
      const right = await tcpPair();
      await exchangeThrough(left.server, left.client, right.server, right.client);
    }
    {
      // Unix to Unix: a accepted, b connected.
      const left = await unixPair(`${dir}/left.sock`);
      const right = await unixPair(`${dir}/right.sock`);
      await exchangeThrough(left.client, left.server, right.client, right.server);
    }
    {
      // TCP accepted to Unix connected.
      const left = await tcpPair();
      const right = await unixPair(`${dir}/mixed1.sock`);
      await exchangeThrough(left.client, left.server, right.client, right.server);
    }
    {
      // Unix connected to TCP accepted.
      const left = await unixPair(`${dir}/mixed2.sock`);
      const right = await tcpPair();
      await exchangeThrough(left.server, left.client, right.server, right.client);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await engineStoppedAndFdsBack(before);
  }
});

const LIBC_NAMES = ["libc.so.6", "libc.musl-x86_64.so.1", "libc.musl-aarch64.so.1", "libc.so"];

/** A raw fd: `socket()` + blocking `connect()` to 127.0.0.1:`port`, made through FFI. */
function connectRawFd(port: number): number {
  const symbols = {
    socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
    connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
  } as const;
  let lastError: unknown;
  for (const name of LIBC_NAMES) {
    let library: Deno.DynamicLibrary<typeof symbols>;
    try {
      library = Deno.dlopen(name, symbols);
    } catch (error) {
      lastError = error;
      continue;
    }
    try {
      const AF_INET = 2;
      const SOCK_STREAM_CLOEXEC = 1 | 0o2000000;
      const fd = library.symbols.socket(AF_INET, SOCK_STREAM_CLOEXEC, 0);
      assert.ok(fd >= 0, "socket()");
      const address = new Uint8Array(16);
      const view = new DataView(address.buffer);
      view.setUint16(0, AF_INET, true);
      view.setUint16(2, port, false);
      address.set([127, 0, 0, 1], 4);
      if (library.symbols.connect(fd, address, address.byteLength) !== 0) {
        library.symbols.close(fd);
        throw new Error("connect() failed");
      }
      return fd;
    } finally {
      library.close();
    }
  }
  throw lastError;
}

Deno.test("endpoints: a raw connected socket fd, closed by the relay", async () => {
  const before = await fdBaseline();
  const right = await tcpPair();
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  // The kernel completes a loopback connect to a listening socket at once; accept it after.
  const rawFd = connectRawFd(listener.addr.port);
  const client = await listener.accept();
  listener.close();
  // client <-> rawFd (a) ... b (right.client) <-> right.server
  await exchangeThrough(client, rawFd, right.client, right.server);
  await engineStoppedAndFdsBack(before);
});

Deno.test("endpoints: a Unix client conn that cannot be told apart is relayed by the copy loop", async () => {
  const before = await fdBaseline();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/twins.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  const first = await Promise.all([Deno.connect({ transport: "unix", path }), listener.accept()]);
  const second = await Promise.all([Deno.connect({ transport: "unix", path }), listener.accept()]);
  const other = await tcpPair();
  try {
    // second[0] shares both addresses with first[0]: its fd cannot be found, so the bytes go
    // through the userspace loop instead of a TypeError.
    const relayed = relay(second[0], other.client);
    const outcome = await within(
      halfCloseExchange(second[1], other.server, 64 * KiB, 256 * KiB),
      30_000,
      "the exchange",
    );
    assertHalfClose(outcome, 64 * KiB, 256 * KiB);
    const result = await within(relayed, 5_000, "the relay to end");
    assert.equal(result.mode, "fallback");
    assert.equal(result.end, "done");
  } finally {
    for (const conn of [...first, ...second]) closeQuietly(conn);
    other.close();
    listener.close();
    await Deno.remove(dir, { recursive: true });
    await engineStoppedAndFdsBack(before);
  }
});

// --- 9. initialData ----------------------------------------------------------------------------

for (const mode of MODES) {
  Deno.test(`initialData (${mode}): toB reaches b before the relayed bytes, toA reaches a`, async () => {
    const before = await fdBaseline();
    const head = new TextEncoder().encode("GET / HTTP/1.1\r\nHost: example\r\n\r\n");
    const greeting = new TextEncoder().encode("220 ready\r\n");
    const proxied = await throughRelay({ mode, initialData: { toB: head, toA: greeting } });
    const { client, server } = proxied;
    try {
      const [bodySent, replySent, atServer, atClient] = await within(
        Promise.all([
          sendPattern(client, 2 * MiB, 77).then(async (h) => {
            await client.closeWrite();
            return h;
          }),
          sendPattern(server, 1 * MiB, 88).then(async (h) => {
            await server.closeWrite();
            return h;
          }),
          (async () => ({
            head: await readExactly(server, head.length),
            rest: await receiveAll(server),
          }))(),
          (async () => ({
            head: await readExactly(client, greeting.length),
            rest: await receiveAll(client),
          }))(),
        ]),
        30_000,
        "the exchange",
      );
      assert.deepEqual(atServer.head, head);
      assert.equal(atServer.rest.bytes, 2 * MiB);
      assert.equal(atServer.rest.sha256, bodySent);
      assert.deepEqual(atClient.head, greeting);
      assert.equal(atClient.rest.bytes, 1 * MiB);
      assert.equal(atClient.rest.sha256, replySent);
      const result = await within(proxied.relayed, 5_000, "the relay to end");
      assert.equal(result.end, "done");
      assert.equal(result.aToB, 2 * MiB, "initialData is not counted");
      assert.equal(result.bToA, 1 * MiB);
    } finally {
      proxied.close();
      await engineStoppedAndFdsBack(before);
    }
  });
}

// --- 10. misuse --------------------------------------------------------------------------------

Deno.test("misuse: same conn twice, bad mode, bad idleTimeout, bad pipeCapacity throw", async () => {
  const before = await fdBaseline();
  const pair = await tcpPair();
  try {
    await assert.rejects(relay(pair.server, pair.server), TypeError);
    await assert.rejects(relay(7, 7), TypeError);
    await assert.rejects(
      relay(pair.server, pair.client, { mode: "zerocopy" as RelayMode }),
      (error: unknown) => error instanceof TypeError && error.message.includes("zerocopy"),
    );
    for (const idleTimeout of [-1, 1.5, Number.NaN, 2 ** 31, Number.POSITIVE_INFINITY]) {
      await assert.rejects(
        relay(pair.server, pair.client, { idleTimeout }),
        RangeError,
        `idleTimeout ${idleTimeout}`,
      );
    }
    for (const pipeCapacity of [-1, 1.5, 2 ** 31]) {
      await assert.rejects(
        relay(pair.server, pair.client, { pipeCapacity }),
        RangeError,
        `pipeCapacity ${pipeCapacity}`,
      );
    }
    // Misuse is caught before anything is taken over: the conns still work.
    await pair.client.write(new Uint8Array([42]));
    assert.deepEqual(await readExactly(pair.server, 1), new Uint8Array([42]));
  } finally {
    pair.close();
    await engineStoppedAndFdsBack(before);
  }
});

/**
 * Regression test (was a bug). relay.ts validates `mode` with `mode in MODES`, and `in` also sees the members
 * of Object.prototype: "toString", "constructor" and "__proto__" pass, and the engine gets
 * `MODES[mode]`, a function or an object, which the command ring turns into 0 ("auto").
 */
Deno.test("misuse: a mode named after an Object.prototype member is refused", async () => {
  const before = await fdBaseline();
  const accepted: string[] = [];
  try {
    for (const mode of ["toString", "constructor", "__proto__"]) {
      const left = await tcpPair();
      const right = await tcpPair();
      try {
        const relayed = relay(left.server, right.client, { mode: mode as RelayMode });
        // Lets a relay that was (wrongly) accepted end at once.
        left.client.close();
        right.server.close();
        const outcome = await within(
          relayed.then((r) => `accepted, ended ${r.end}`, (e) => e.name),
          5_000,
          `relay() with mode "${mode}"`,
        );
        if (outcome !== "TypeError") accepted.push(`"${mode}": ${outcome}`);
      } finally {
        left.close();
        right.close();
      }
    }
  } finally {
    await engineStoppedAndFdsBack(before);
  }
  assert.deepEqual(accepted, [], `BUG: invalid modes accepted: ${accepted.join("; ")}`);
});

Deno.test("misuse: a raw fd with initialData is refused with TypeError and both ends closed", async () => {
  const before = await fdBaseline();
  const pair = await tcpPair();
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const rawFd = connectRawFd(listener.addr.port);
  const peer = await listener.accept();
  listener.close();
  try {
    await assert.rejects(
      relay(rawFd, pair.server, { initialData: { toA: new Uint8Array([1]) } }),
      TypeError,
    );
    assert.equal(await within(readOutcome(peer), 5_000, "raw fd closed"), null);
    assert.equal(await within(readOutcome(pair.client), 5_000, "conn closed"), null);
  } finally {
    closeQuietly(peer);
    pair.close();
    await engineStoppedAndFdsBack(before);
  }
});

Deno.test("without read access to the engine's module: one warning, the copy loop relays intact", async () => {
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
