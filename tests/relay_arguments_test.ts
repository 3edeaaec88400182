/**
 * What `relay()` takes: endpoint kinds (accepted and connected conns, TCP and Unix, raw fds),
 * `initialData`, and arguments it must refuse before it takes anything over. Real sockets on
 * 127.0.0.1, bytes checked with SHA-256, fds counted before and after.
 */

import assert from "node:assert/strict";
import { relay, type RelayEndpoint, type RelayMode } from "../mod.ts";
import { closeQuietly, receiveAll, sendPattern, tcpPair } from "./_helpers.ts";
import {
  assertHalfClose,
  halfCloseExchange,
  readExactly,
  readOutcome,
  type Stream,
  throughRelay,
} from "./_relay_exchange.ts";
import { engineStoppedAndFdsBack, fdBaseline, within } from "./_relay_helpers.ts";
import { connectRawFd } from "./_sockets.ts";

const KiB = 1024;
const MiB = 1024 * 1024;
const MODES: RelayMode[] = ["auto", "splice", "copy"];

// --- 1. endpoint kinds -------------------------------------------------------------------------

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

Deno.test("relay: accepted and connected conns either way round as endpoints, TCP and Unix mixed", async () => {
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

Deno.test("relay: a raw connected socket fd as an endpoint, closed by the relay", async () => {
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

Deno.test("relay: a Unix client conn that cannot be told apart is relayed by the copy loop", async () => {
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

// --- 2. initialData ----------------------------------------------------------------------------

for (const mode of MODES) {
  Deno.test(`relay (${mode}): initialData.toB reaches b before the relayed bytes, initialData.toA reaches a`, async () => {
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

// --- 3. misuse ---------------------------------------------------------------------------------

Deno.test("relay: misuse throws (same conn twice, bad mode, bad idleTimeout, bad pipeCapacity)", async () => {
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
 * Regression test (was a bug). relay.ts once validated `mode` with `mode in MODES`, and `in` also
 * sees the members of Object.prototype: "toString", "constructor" and "__proto__" passed, and
 * the engine got `MODES[mode]`, a function or an object, which the command ring turned into 0
 * ("auto").
 */
Deno.test("relay: a mode named after an Object.prototype member is refused", async () => {
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

Deno.test("relay: a raw fd with initialData is refused with TypeError and both ends closed", async () => {
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
