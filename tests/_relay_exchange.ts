/**
 * Traffic through a relay, for the relay tests and their subprocess scripts: the client -> relay
 * -> backend topology over TCP, the half-close exchange with bytes in flight and its checks, and
 * bounded reads. The subprocess scripts import this file under `deno run`, so nothing here runs
 * at import time or registers a test.
 *
 * @module
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { relay, type RelayOptions, type RelayResult } from "../mod.ts";
import { closeQuietly, fillPattern, receiveAll, sendPattern, tcpPair } from "./_helpers.ts";

const KiB = 1024;

/** A stream conn as the exchanges below use it. */
export interface Stream {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  closeWrite(): Promise<void>;
}

/** client -> relay(a, b) -> server, over TCP. */
export interface Proxied {
  client: Deno.TcpConn;
  server: Deno.TcpConn;
  relayed: Promise<RelayResult>;
  close(): void;
}

/**
 * Relays two fresh loopback pairs: `a` is the relay's accepted conn (its fd comes from Deno's
 * internal symbol), `b` the relay's conn from `Deno.connect` (its fd is probed).
 */
export async function throughRelay(options?: RelayOptions): Promise<Proxied> {
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

/** Both directions arrived whole, and the talker's second half was sent after the FIN. */
export function assertHalfClose(
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
export async function readExactly(conn: Stream, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let got = 0; got < n;) {
    const read = await conn.read(out.subarray(got));
    if (read === null) throw new Error(`End of input after ${got} of ${n} bytes`);
    got += read;
  }
  return out;
}

/** The next read's outcome: `null` (end of input), a byte count, or the error's name. */
export async function readOutcome(conn: Stream): Promise<number | null | string> {
  try {
    return await conn.read(new Uint8Array(64 * KiB));
  } catch (error) {
    return error instanceof Error ? error.name : String(error);
  }
}
