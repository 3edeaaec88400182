import assert from "node:assert/strict";
import { Balancer, hashText, OUT_DOWN } from "../proxy/balancer.ts";

const A = { address: "127.0.0.1:9000", weight: 100 };
const B = { address: "127.0.0.1:9001", weight: 100 };
const C = { address: "127.0.0.1:9002", weight: 300 };

function counts(picks: Array<string | undefined>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const pick of picks) if (pick) out[pick] = (out[pick] ?? 0) + 1;
  return out;
}

Deno.test("Balancer: round robin alternates equal weights and honours ratios without bursts", () => {
  const equal = new Balancer([A, B], "round_robin");
  const picks = Array.from({ length: 6 }, () => equal.pick(0)?.address);
  assert.deepEqual(picks, [A.address, B.address, A.address, B.address, A.address, B.address]);

  const weighted = new Balancer([A, B, C], "round_robin");
  const run = Array.from({ length: 500 }, () => weighted.pick(0)?.address);
  assert.deepEqual(counts(run), { [A.address]: 100, [B.address]: 100, [C.address]: 300 });
  // Smooth: the heavy backend never takes more than 3 of any 5 consecutive picks.
  for (let i = 0; i + 5 <= run.length; i++) {
    assert.ok(run.slice(i, i + 5).filter((p) => p === C.address).length <= 3, `window ${i}`);
  }
});

Deno.test("Balancer: weight 0 takes no connections; an all-zero cluster has none to give", () => {
  const drained = new Balancer([{ ...A, weight: 0 }, B], "round_robin");
  for (let i = 0; i < 10; i++) assert.equal(drained.pick(0)?.address, B.address);
  assert.equal(new Balancer([{ ...A, weight: 0 }], "random").pick(0), null);
});

Deno.test("Balancer: least connections prefers the least loaded per unit of weight", () => {
  const balancer = new Balancer([A, C], "least_connections");
  // C has three times the weight: it takes three connections for each of A's.
  const picks: string[] = [];
  for (let i = 0; i < 8; i++) {
    const pick = balancer.pick(0)!;
    balancer.connected(pick.address);
    picks.push(pick.address);
  }
  assert.deepEqual(counts(picks), { [A.address]: 2, [C.address]: 6 });
  // Releasing A's connections makes A the choice again.
  balancer.released(A.address);
  balancer.released(A.address);
  assert.equal(balancer.pick(0)?.address, A.address);
});

Deno.test("Balancer: random follows the weights (deterministic source)", () => {
  let seed = 7;
  const random = (): number => {
    seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const balancer = new Balancer([A, C], "random", { random });
  const picks = counts(Array.from({ length: 4000 }, () => balancer.pick(0)?.address));
  const shareC = picks[C.address] / 4000;
  assert.ok(shareC > 0.7 && shareC < 0.8, `C took ${shareC}`);
});

Deno.test("Balancer: a backend that keeps failing is ejected for a while, then tried again", () => {
  const balancer = new Balancer([A, B], "round_robin", { failuresToEject: 2, ejectMs: 1000 });
  assert.equal(balancer.failed(A.address, 0), false);
  assert.equal(balancer.failed(A.address, 0), true, "the second failure ejects");
  assert.equal(balancer.failed(A.address, 10), false, "reported once");
  for (let i = 0; i < 4; i++) assert.equal(balancer.pick(100)?.address, B.address);
  assert.deepEqual(balancer.snapshot(100).map((s) => s.ejected), [true, false]);
  // After the ejection ends, A is back in rotation; a success forgives its failures.
  const after = counts(Array.from({ length: 4 }, () => balancer.pick(1001)?.address));
  assert.equal(after[A.address], 2);
  balancer.connected(A.address);
  assert.equal(balancer.failed(A.address, 1002), false);
});

Deno.test("Balancer: exclusion skips backends already tried; all ejected still yields one", () => {
  const balancer = new Balancer([A, B], "round_robin", { failuresToEject: 1, ejectMs: 1000 });
  assert.equal(balancer.pick(0, new Set([A.address]))?.address, B.address);
  assert.equal(balancer.pick(0, new Set([A.address, B.address])), null);
  balancer.failed(A.address, 0);
  balancer.failed(B.address, 5);
  // Both ejected: the one whose ejection ends first is tried rather than refusing.
  assert.equal(balancer.pick(10)?.address, A.address);
});

Deno.test("Balancer: a backend taken out (setOut) gets nothing until it is back; none left: null", () => {
  const balancer = new Balancer([A, B], "round_robin");
  balancer.setOut(A.address, OUT_DOWN);
  for (let i = 0; i < 6; i++) assert.equal(balancer.pick(0)?.address, B.address);
  assert.deepEqual(balancer.snapshot(0).map((s) => s.up), [false, true]);
  balancer.setOut(B.address, OUT_DOWN);
  assert.equal(balancer.pick(0), null, "down is not tried, unlike ejected");
  balancer.setOut(A.address, 0);
  assert.equal(balancer.pick(0)?.address, A.address);
});

Deno.test("Balancer: backups serve only while no other backend is up, in every policy", () => {
  const backup = { address: "127.0.0.1:9009", weight: 100, backup: true };
  for (const policy of ["round_robin", "least_connections", "random", "source_hash"] as const) {
    const balancer = new Balancer([A, B, backup], policy);
    for (let i = 0; i < 20; i++) {
      assert.notEqual(balancer.pick(0, undefined, i)?.address, backup.address, policy);
    }
    balancer.setOut(A.address, OUT_DOWN);
    assert.equal(balancer.pick(0, new Set([B.address]), 1)?.address, backup.address, policy);
    for (let i = 0; i < 3; i++) balancer.failed(B.address, 0); // B ejected too
    assert.equal(balancer.pick(1, undefined, 2)?.address, backup.address, policy);
    balancer.setOut(A.address, 0);
    assert.equal(balancer.pick(1, undefined, 3)?.address, A.address, policy);
  }
});

Deno.test("Balancer: source_hash sends a client to the same backend, follows weights, and a removal moves only the removed backend's clients", () => {
  const D = { address: "127.0.0.1:9003", weight: 100 };
  const four = new Balancer([A, B, C, D], "source_hash");
  const clients = Array.from({ length: 6000 }, (_, i) => hashText(`10.0.${i >> 8}.${i & 255}`));
  const before = clients.map((h) => four.pick(0, undefined, h)!.address);
  assert.deepEqual(clients.map((h) => four.pick(0, undefined, h)!.address), before, "stable");
  // Weights 100/100/300/100: C takes half, the others a sixth each (within 10%).
  const share = counts(before);
  assert.ok(Math.abs(share[C.address] / 3000 - 1) < 0.1, JSON.stringify(share));
  for (const b of [A, B, D]) assert.ok(Math.abs(share[b.address] / 1000 - 1) < 0.1);
  // D removed: its clients move, nobody else's does.
  const three = new Balancer([A, B, C], "source_hash");
  const after = clients.map((h) => three.pick(0, undefined, h)!.address);
  for (let i = 0; i < clients.length; i++) {
    if (before[i] !== D.address) assert.equal(after[i], before[i], `client ${i} moved`);
  }
  // A backend down is skipped for its clients only, and they come back with it.
  four.setOut(A.address, OUT_DOWN);
  const down = clients.map((h) => four.pick(0, undefined, h)!.address);
  for (let i = 0; i < clients.length; i++) {
    if (before[i] !== A.address) assert.equal(down[i], before[i]);
    else assert.notEqual(down[i], A.address);
  }
});
