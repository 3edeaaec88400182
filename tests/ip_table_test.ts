/**
 * engine/ip_table.ts, the per-address counts behind `max_connections_per_ip`: checked against
 * a plain Map over a long random run in a small table (runs of collisions, so that removal's
 * backward shift is exercised), the limit, IPv4 against its IPv4-mapped IPv6 form, and a full
 * table refusing rather than looping; and the reason the engine gives for each refusal.
 */

import assert from "node:assert/strict";
import {
  ACQUIRED,
  AT_LIMIT,
  IpTable,
  ipTableBytes,
  newIpTable,
  TABLE_FULL,
} from "../engine/ip_table.ts";
import { Gate } from "../engine/plane_gate.ts";
import { ReportQueue } from "../engine/plane_report.ts";
import type { Stages } from "../engine/plane_stages.ts";

/** A seeded generator (xorshift32): the same run every time. */
function random(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function ipv4(n: number): Uint8Array {
  return Uint8Array.of(10, (n >> 16) & 255, (n >> 8) & 255, n & 255);
}

Deno.test("IpTable: 200,000 random acquires and releases in a 1,024-entry table agree with a Map, limit included", () => {
  const table = new IpTable(newIpTable(1));
  const model = new Map<string, number>();
  const next = random(12345);
  const limit = 3;
  for (let step = 0; step < 200_000; step++) {
    // 300 addresses on 2 listeners: up to 600 live entries in 1,024, so runs are long.
    const n = Math.floor(next() * 300);
    const slot = next() < 0.5 ? 0 : 1;
    const ip = ipv4(n);
    const key = `${slot} ${n}`;
    const held = model.get(key) ?? 0;
    if (next() < 0.55) {
      const result = table.acquire(slot, ip, limit);
      assert.equal(result, held < limit ? ACQUIRED : AT_LIMIT, `step ${step}: acquire ${key}`);
      if (held < limit) model.set(key, held + 1);
    } else if (held > 0) {
      table.release(slot, ip);
      if (held === 1) model.delete(key);
      else model.set(key, held - 1);
    }
    if (step % 1000 === 0) {
      for (let m = 0; m < 300; m++) {
        for (const s of [0, 1]) {
          assert.equal(table.count(s, ipv4(m)), model.get(`${s} ${m}`) ?? 0, `step ${step}`);
        }
      }
    }
  }
  // Everything given back: the table is empty again.
  for (const [key, held] of model) {
    const [slot, n] = key.split(" ").map(Number);
    for (let i = 0; i < held; i++) table.release(slot, ipv4(n));
  }
  for (let m = 0; m < 300; m++) assert.equal(table.count(0, ipv4(m)) + table.count(1, ipv4(m)), 0);
});

Deno.test("IpTable: an IPv4 address and its IPv4-mapped IPv6 form count as one client", () => {
  const table = new IpTable(new SharedArrayBuffer(ipTableBytes(1)));
  const mapped = new Uint8Array(16);
  mapped.set([0xff, 0xff, 192, 0, 2, 1], 10);
  assert.equal(table.acquire(0, Uint8Array.of(192, 0, 2, 1), 2), ACQUIRED);
  assert.equal(table.acquire(0, mapped, 2), ACQUIRED);
  assert.equal(table.acquire(0, mapped, 2), AT_LIMIT);
  assert.equal(table.count(0, Uint8Array.of(192, 0, 2, 1)), 2);
});

Deno.test("IpTable: a full table refuses (TABLE_FULL) instead of looping, and takes again after a release", () => {
  const table = new IpTable(new SharedArrayBuffer(ipTableBytes(1)));
  for (let n = 0; n < 1024; n++) assert.equal(table.acquire(0, ipv4(n), 1), ACQUIRED);
  assert.equal(table.acquire(0, ipv4(5000), 1), TABLE_FULL);
  table.release(0, ipv4(17));
  // The removal in a table with no empty entry found every other entry where a probe looks.
  for (let n = 0; n < 1024; n++) assert.equal(table.count(0, ipv4(n)), n === 17 ? 0 : 1);
  assert.equal(table.acquire(0, ipv4(5000), 1), ACQUIRED);
  assert.equal(table.count(0, ipv4(5000)), 1);
});

Deno.test("IpTable: each table has its own random seed, which every engine's view of it shares", () => {
  const seeds = new Set(
    Array.from({ length: 4 }, () => new Int32Array(newIpTable(1))[1]),
  );
  assert.equal(seeds.size, 4, "four tables, four seeds");
  const buffer = newIpTable(1);
  const [one, two] = [new IpTable(buffer), new IpTable(buffer)];
  for (let n = 0; n < 300; n++) assert.equal(one.acquire(0, ipv4(n), 1), ACQUIRED);
  for (let n = 0; n < 300; n++) assert.equal(two.acquire(0, ipv4(n), 1), AT_LIMIT);
  for (let n = 0; n < 300; n++) two.release(0, ipv4(n));
  for (let n = 0; n < 300; n++) assert.equal(one.acquire(0, ipv4(n), 1), ACQUIRED);
});

Deno.test("Gate.countAddress: an address at its limit is per_ip_limit, a full table per_ip_table_full", () => {
  const host = {
    now: (): number => 0,
    finishNow(): void {},
    wakeAt(): void {},
    timed: new Set<never>(),
  };
  const gate = new Gate(host, new Float64Array(64), new ReportQueue());
  gate.useTable(newIpTable(1)); // 1,024 entries
  const stages = (n: number): Stages =>
    ({ rules: { maxPerIp: 1 }, ip: mapped(ipv4(n)), counted: null }) as unknown as Stages;
  for (let n = 0; n < 1024; n++) assert.equal(gate.countAddress(0, stages(n)), null);
  assert.equal(gate.countAddress(0, stages(3)), "per_ip_limit");
  assert.equal(gate.countAddress(0, stages(5000)), "per_ip_table_full");
  const held = stages(9);
  held.counted = held.ip;
  gate.release(0, held);
  assert.equal(gate.countAddress(0, stages(5000)), null, "room again after a release");
});

/** `ip` (4 bytes) as IPv4-mapped IPv6, as the engines hold client addresses. */
function mapped(ip: Uint8Array): Uint8Array {
  return Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, ...ip);
}
