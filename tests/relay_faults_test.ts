/**
 * `relay()` under peer faults: a reset is passed on as a reset (never as a FIN that would make a
 * truncated stream look complete), and a conn whose peer is gone before the relay starts ends
 * the relay as a reset instead of throwing. Real sockets on 127.0.0.1, bytes checked with
 * SHA-256, fds counted; resets made with the test's own libc binding (tests/_sockets.ts).
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { relay, type RelayMode, type RelayResult } from "../mod.ts";
import { closeQuietly, fillPattern, runDeno, sendPattern, tcpPair, waitFor } from "./_helpers.ts";
import { engineStoppedAndFdsBack, fdBaseline, within } from "./_relay_helpers.ts";
import { fdOf, peerGone, resetAndClose } from "./_sockets.ts";

const MiB = 1024 * 1024;
const MODES: RelayMode[] = ["auto", "splice", "copy"];

/** SHA-256 of the first `bytes` bytes `sendPattern(conn, total, seed)` writes. */
function patternPrefixHash(bytes: number, seed: number): string {
  const hash = createHash("sha256");
  const chunk = new Uint8Array(256 * 1024); // sendPattern's chunk size: the same stream
  let state = seed;
  for (let done = 0; done < bytes;) {
    state = fillPattern(chunk, state);
    const size = Math.min(chunk.byteLength, bytes - done);
    hash.update(chunk.subarray(0, size));
    done += size;
  }
  return hash.digest("hex");
}

/** Reads to the end; says how it ended: "eof" or the error's name. */
async function readToEnd(
  conn: Deno.TcpConn,
): Promise<{ bytes: number; sha256: string; end: string }> {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(256 * 1024);
  let bytes = 0;
  try {
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) return { bytes, sha256: hash.digest("hex"), end: "eof" };
      hash.update(buffer.subarray(0, n));
      bytes += n;
    }
  } catch (error) {
    return { bytes, sha256: hash.digest("hex"), end: (error as Error).name };
  }
}

/**
 * `sender` streams 40 MiB toward `receiver` through the relay and resets its connection at the
 * end (what a peer that crashes with unread data does). The receiver must get a prefix of the
 * stream, exactly the bytes the relay counted, and then a reset: a FIN would pass the cut-short
 * stream off as complete.
 */
async function resetPassedOn(
  mode: RelayMode,
  from: "backend" | "client",
): Promise<void> {
  const before = await fdBaseline();
  const left = await tcpPair(); // client <-> a
  const right = await tcpPair(); // b <-> backend
  const relayed = relay(left.server, right.client, { mode });
  const [sender, receiver] = from === "backend"
    ? [right.server, left.client]
    : [left.client, right.server];
  try {
    const reading = readToEnd(receiver);
    await within(sendPattern(sender, 40 * MiB, 7), 30_000, "40 MiB written");
    resetAndClose(sender);
    const got = await within(reading, 10_000, "the receiver's reads to end");
    const result: RelayResult = await within(relayed, 10_000, "the relay to end");
    assert.equal(got.end, "ConnectionReset", `the receiver saw ${got.end}, not the reset`);
    assert.equal(result.end, "reset");
    assert.equal(result.side, from === "backend" ? "b" : "a");
    const relayedBytes = from === "backend" ? result.bToA : result.aToB;
    assert.equal(got.bytes, relayedBytes, "every byte the relay counted reached the receiver");
    assert.ok(got.bytes > 0 && got.bytes <= 40 * MiB, `received ${got.bytes}`);
    assert.equal(got.sha256, patternPrefixHash(got.bytes, 7), "the bytes are the stream's prefix");
  } finally {
    left.close();
    right.close();
    await engineStoppedAndFdsBack(before);
  }
}

for (const mode of MODES) {
  Deno.test(`relay (${mode}): a backend reset mid-response reaches the client as a reset`, async () => {
    await resetPassedOn(mode, "backend");
  });
  Deno.test(`relay (${mode}): a client reset mid-upload reaches the backend as a reset`, async () => {
    await resetPassedOn(mode, "client");
  });
}

Deno.test("relay: the copy loop that stands in for the engine passes a reset on too", async () => {
  // Without read access to its module the engine does not start: the userspace loop relays,
  // and with --allow-ffi it can still send the reset.
  const result = await runDeno(
    `
      import { relay } from "ROOT/mod.ts";
      import { sendPattern, tcpPair } from "ROOT/tests/_helpers.ts";
      import { resetAndClose } from "ROOT/tests/_sockets.ts";
      const left = await tcpPair();
      const right = await tcpPair();
      const relayed = relay(left.server, right.client);
      let end = "eof";
      const reading = (async () => {
        const buffer = new Uint8Array(65536);
        try {
          while ((await left.client.read(buffer)) !== null) {}
        } catch (error) {
          end = error.name;
        }
      })();
      await sendPattern(right.server, 8 * 1024 * 1024, 3);
      resetAndClose(right.server);
      await reading;
      const r = await relayed;
      left.client.close();
      console.log(JSON.stringify({ end, mode: r.mode, relayEnd: r.end, side: r.side }));
    `,
    [
      "--allow-ffi",
      "--allow-net=127.0.0.1",
      "--allow-read",
      `--deny-read=${new URL("../engine/worker.ts", import.meta.url).pathname}`,
    ],
  );
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(JSON.parse(result.stdout), {
    end: "ConnectionReset",
    mode: "fallback",
    relayEnd: "reset",
    side: "b",
  });
});

/**
 * A backend that resets right after accepting: by the time relay() looks for the fd of the
 * `Deno.connect` conn, the socket has no peer address left to match. This used to throw
 * "Cannot find the file descriptor" (and crash a proxy whose promise had no catch).
 */
for (const mode of MODES) {
  Deno.test(`relay (${mode}): a conn whose peer reset before the relay ends as a reset, never a throw`, async () => {
    const before = await fdBaseline();
    const left = await tcpPair(); // client <-> a
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const [b, accepted] = await Promise.all([
        Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
        listener.accept(),
      ]);
      const fdB = fdOf(b);
      resetAndClose(accepted);
      await waitFor(() => peerGone(fdB), "the reset to reach b");
      const result = await within(relay(left.server, b, { mode }), 10_000, "the relay to end");
      assert.equal(result.end, "reset");
      assert.equal(result.side, "b");
      assert.equal(result.aToB + result.bToA, 0);
      // The client is told the same way: a reset, not an end of input.
      assert.equal(
        (await within(readToEnd(left.client), 5_000, "the client's read")).end,
        "ConnectionReset",
      );
    } finally {
      left.close();
      listener.close();
      await engineStoppedAndFdsBack(before);
    }
  });
}

Deno.test("relay: a peer gone before initialData is written ends as a reset, never a throw", async () => {
  const before = await fdBaseline();
  const left = await tcpPair();
  const right = await tcpPair();
  try {
    const fdB = fdOf(right.client);
    resetAndClose(right.server);
    await waitFor(() => peerGone(fdB), "the reset to reach b");
    const result = await within(
      relay(left.server, right.client, { initialData: { toB: new Uint8Array(4 * MiB) } }),
      10_000,
      "the relay to end",
    );
    assert.equal(result.end, "reset");
    assert.equal(result.side, "b");
  } finally {
    left.close();
    closeQuietly(right.client);
    await engineStoppedAndFdsBack(before);
  }
});
