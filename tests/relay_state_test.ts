import assert from "node:assert/strict";
import { decideRelay, type SideState } from "../_relay_state.ts";

const STATES: SideState[] = ["open", "eof", "broken"];
const IN_FLIGHT = [0, 1];

Deno.test("decideRelay: every combination of side states and bytes in flight", () => {
  let cases = 0;
  for (const a of STATES) {
    for (const b of STATES) {
      for (const aToB of IN_FLIGHT) {
        for (const bToA of IN_FLIGHT) {
          const decision = decideRelay(a, b, aToB, bToA);
          const label = `a=${a} b=${b} aToB=${aToB} bToA=${bToA}`;
          cases++;
          if (a === "broken" || b === "broken") {
            // A failed side ends the relay now, and nothing is shut down gracefully.
            assert.deepEqual(decision, { open: false, shutdownA: false, shutdownB: false }, label);
            continue;
          }
          // FIN goes forward only once the bytes ahead of it are delivered.
          assert.equal(decision.shutdownB, a === "eof" && aToB === 0, label);
          assert.equal(decision.shutdownA, b === "eof" && bToA === 0, label);
          // Open while any direction still has a sender or bytes to deliver.
          const finished = a === "eof" && b === "eof" && aToB === 0 && bToA === 0;
          assert.equal(decision.open, !finished, label);
        }
      }
    }
  }
  assert.equal(cases, 36);
});

Deno.test("decideRelay: bytes in flight keep a half-closed relay open", () => {
  assert.deepEqual(decideRelay("eof", "eof", 65_536, 0), {
    open: true,
    shutdownA: true,
    shutdownB: false,
  });
  assert.deepEqual(decideRelay("eof", "open", 0, 10), {
    open: true,
    shutdownA: false,
    shutdownB: true,
  });
});
