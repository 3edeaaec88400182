import assert from "node:assert/strict";
import { decideRelay, type ReadState, type SideView } from "../_relay_state.ts";

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
          // FIN goes forward only to a side that takes bytes, once the bytes ahead of it are in.
          assert.equal(d.shutdownB, takes(b) && a.read !== "open" && aToB === 0, label);
          assert.equal(d.shutdownA, takes(a) && b.read !== "open" && bToA === 0, label);
          // A side whose bytes can go nowhere is drained, never left unread.
          assert.equal(d.discardA, !takes(b) && a.read === "open", label);
          assert.equal(d.discardB, !takes(a) && b.read === "open", label);
          const delivering = (takes(b) && (a.read === "open" || aToB > 0)) ||
            (takes(a) && (b.read === "open" || bToA > 0));
          assert.equal(d.lingering, !delivering && (d.discardA || d.discardB), label);
          assert.equal(d.open, delivering || d.lingering, label);
          // Never shut down and drain the same way at once, never both deliver and linger.
          assert.ok(!(d.lingering && delivering), label);
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
    lingering: false,
  });
});

Deno.test("decideRelay: a backend that resets keeps delivering its reply, the upload is drained", () => {
  // Writing to b failed (it reset with our upload unread); b still has reply bytes queued.
  const d = decideRelay(OPEN, { read: "open", writable: false }, 0, 4096);
  assert.equal(d.open, true);
  assert.equal(d.discardA, true, "the client's upload is read and dropped");
  assert.equal(d.lingering, false, "the reply is still being delivered");
  // Then b's read reports the reset: deliver the rest, FIN the client, drain it to its end.
  const after = decideRelay(OPEN, { read: "broken", writable: false }, 0, 0);
  assert.equal(after.shutdownA, true);
  assert.equal(after.lingering, true);
  assert.equal(after.open, true);
  // The client closes: nothing is left to do.
  assert.equal(decideRelay(EOF, { read: "broken", writable: false }, 0, 0).open, false);
});
