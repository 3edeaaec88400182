import assert from "node:assert/strict";
import { decideRelay, type ReadState, type SideView } from "../engine/decision.ts";

const READS: ReadState[] = ["open", "eof", "broken"];
const SIDES: SideView[] = READS.flatMap((read) => [
  { read, writable: true },
  { read, writable: false },
]);
const IN_FLIGHT = [0, 1];

/** Can this side still take bytes? */
function takes(side: SideView): boolean {
  return side.writable && side.read !== "broken";
}

Deno.test("decideRelay: every combination of side states and bytes in flight", () => {
  let cases = 0;
  for (const a of SIDES) {
    for (const b of SIDES) {
      for (const aToB of IN_FLIGHT) {
        for (const bToA of IN_FLIGHT) {
          cases++;
          const d = decideRelay(a, b, aToB, bToA);
          const label = `a=${JSON.stringify(a)} b=${JSON.stringify(b)} aToB=${aToB} bToA=${bToA}`;
          // FIN goes forward only between two sides that have not failed, once the bytes ahead
          // of it are in: a failure is never forwarded as a FIN.
          assert.equal(d.shutdownB, takes(a) && takes(b) && a.read !== "open" && aToB === 0, label);
          assert.equal(d.shutdownA, takes(a) && takes(b) && b.read !== "open" && bToA === 0, label);
          // A side whose bytes can go nowhere is drained, never left unread.
          assert.equal(d.discardA, !takes(b) && a.read === "open", label);
          assert.equal(d.discardB, !takes(a) && b.read === "open", label);
          const deliveringAToB = takes(b) && (a.read === "open" || aToB > 0);
          const deliveringBToA = takes(a) && (b.read === "open" || bToA > 0);
          // A failure is passed on as a reset of the survivor, once what the failed side sent
          // has been handed over; two failed sides have nobody to tell.
          assert.equal(d.resetA, takes(a) && !takes(b) && !deliveringBToA, label);
          assert.equal(d.resetB, takes(b) && !takes(a) && !deliveringAToB, label);
          assert.ok(!(d.resetA && d.resetB), label);
          const delivering = deliveringAToB || deliveringBToA;
          assert.equal(d.lingering, !delivering && (d.resetA || d.resetB), label);
          assert.equal(d.open, delivering || d.lingering, label);
          // Never both deliver and linger; never FIN a side that is to be reset.
          assert.ok(!(d.lingering && delivering), label);
          assert.ok(!(d.shutdownA && d.resetA) && !(d.shutdownB && d.resetB), label);
        }
      }
    }
  }
  assert.equal(cases, 144);
});

const OPEN: SideView = { read: "open", writable: true };
const EOF: SideView = { read: "eof", writable: true };

Deno.test("decideRelay: bytes in flight keep a half-closed relay open", () => {
  const d = decideRelay(EOF, EOF, 65_536, 0);
  assert.equal(d.open, true);
  assert.equal(d.shutdownA, true);
  assert.equal(d.shutdownB, false);
});

Deno.test("decideRelay: both sides finished and drained ends the relay cleanly", () => {
  const d = decideRelay(EOF, EOF, 0, 0);
  assert.deepEqual(d, {
    open: false,
    shutdownA: true,
    shutdownB: true,
    discardA: false,
    discardB: false,
    resetA: false,
    resetB: false,
    lingering: false,
  });
});

Deno.test("decideRelay: a backend that resets keeps delivering its reply, then the client is reset", () => {
  // Writing to b failed (it reset with our upload unread); b still has reply bytes queued.
  const d = decideRelay(OPEN, { read: "open", writable: false }, 0, 4096);
  assert.equal(d.open, true);
  assert.equal(d.discardA, true, "the client's upload is read and dropped");
  assert.equal(d.lingering, false, "the reply is still being delivered");
  assert.equal(d.resetA, false, "not while the reply is on its way");
  // Then b's read reports the reset: the reply is delivered, the client gets a reset, no FIN.
  const after = decideRelay(OPEN, { read: "broken", writable: false }, 0, 0);
  assert.equal(after.shutdownA, false);
  assert.equal(after.resetA, true);
  assert.equal(after.lingering, true);
  assert.equal(after.open, true);
  // A write failure whose read then sees the end of input is a failure all the same.
  assert.equal(decideRelay(OPEN, { read: "eof", writable: false }, 0, 0).resetA, true);
  // The client is gone too: nothing is left to do.
  assert.equal(
    decideRelay({ read: "broken", writable: true }, { read: "broken", writable: false }, 0, 0).open,
    false,
  );
});

Deno.test("decideRelay: a client that resets mid-upload is passed on as a reset of the backend", () => {
  const d = decideRelay({ read: "broken", writable: true }, OPEN, 0, 0);
  assert.equal(d.shutdownB, false, "no FIN: the upload was cut short");
  assert.equal(d.resetB, true);
  assert.equal(d.discardB, true, "the backend's reply is drained while its acks are awaited");
  assert.equal(d.lingering, true);
});
