/**
 * Open connections per (listener, client address), shared by every engine, for
 * `max_connections_per_ip`: a hash table in a SharedArrayBuffer behind a spin lock.
 *
 * Invariants:
 * - the lock is held only for a probe and an update (no syscall, no allocation), so an engine
 *   never waits on another for more than a few hundred nanoseconds;
 * - an entry exists exactly while its count is above zero: a release that reaches zero removes
 *   it by backward-shift deletion, so probes never cross a tombstone and the table never fills
 *   with dead keys;
 * - the table has at least twice as many entries as the process may hold fds (up to its cap),
 *   and each counted connection holds one, so it is at most half full; `acquire` still
 *   refuses when a probe finds no room, rather than loop.
 *
 * @module
 */

/** Int32s per entry: listener slot + 1 (0: empty), the address as four words, the count. */
const FIELDS = 6;
const LOCK = 0;
/**
 * A random word the hash starts from, drawn when the table is made: with a fixed hash, a client
 * that chooses its addresses (IPv6 gives it plenty) could put them all in one run of entries and
 * make every probe under the shared lock walk it.
 */
const SEED = 1;
/** Int32s before the first entry (the lock and the seed). */
const HEADER = 2;

/** What {@linkcode IpTable.acquire} says. */
export const ACQUIRED = 0;
/** The address is at its limit on that listener. */
export const AT_LIMIT = 1;
/** No room in the table (more addresses than it was sized for). */
export const TABLE_FULL = 2;

/**
 * Bytes of a table with room for `connections` open connections, at most 2^17 entries
 * (3 MiB): more distinct addresses at once than that are refused as TABLE_FULL.
 */
export function ipTableBytes(connections: number): number {
  let entries = 1024;
  while (entries < connections * 2 && entries < 1 << 17) entries *= 2;
  return (HEADER + entries * FIELDS) * 4;
}

/** A new, empty table for {@linkcode ipTableBytes}`(connections)`, with its own seed. */
export function newIpTable(connections: number): SharedArrayBuffer {
  const buffer = new SharedArrayBuffer(ipTableBytes(connections));
  crypto.getRandomValues(new Int32Array(buffer, SEED * 4, 1));
  return buffer;
}

/** One engine's view of the shared table. */
export class IpTable {
  #ints: Int32Array;
  #mask: number;
  /** The key being looked up: the address as four words (IPv4 mapped into IPv6). */
  #key = new Int32Array(4);

  constructor(buffer: SharedArrayBuffer) {
    this.#ints = new Int32Array(buffer);
    this.#mask = (this.#ints.length - HEADER) / FIELDS - 1;
  }

  /**
   * Counts a connection from `ip` (4 or 16 bytes) on `slot` unless that address already has
   * `limit` open there.
   */
  acquire(slot: number, ip: Uint8Array, limit: number): number {
    this.#setKey(ip);
    this.#lock();
    try {
      const ints = this.#ints;
      let i = this.#home(slot);
      for (let probes = 0; probes <= this.#mask; probes++, i = (i + 1) & this.#mask) {
        const at = HEADER + i * FIELDS;
        if (ints[at] === 0) {
          ints[at] = slot + 1;
          ints.set(this.#key, at + 1);
          ints[at + 5] = 1;
          return ACQUIRED;
        }
        if (this.#matches(at, slot)) {
          if (ints[at + 5] >= limit) return AT_LIMIT;
          ints[at + 5]++;
          return ACQUIRED;
        }
      }
      return TABLE_FULL;
    } finally {
      Atomics.store(this.#ints, LOCK, 0);
    }
  }

  /** Gives back one connection counted by {@linkcode acquire} for the same `slot` and `ip`. */
  release(slot: number, ip: Uint8Array): void {
    this.#setKey(ip);
    this.#lock();
    try {
      const ints = this.#ints;
      let i = this.#home(slot);
      for (let probes = 0; probes <= this.#mask; probes++, i = (i + 1) & this.#mask) {
        const at = HEADER + i * FIELDS;
        if (ints[at] === 0) return; // not counted: nothing to give back
        if (!this.#matches(at, slot)) continue;
        if (--ints[at + 5] > 0) return;
        this.#remove(i);
        return;
      }
    } finally {
      Atomics.store(this.#ints, LOCK, 0);
    }
  }

  /** How many connections `ip` has open on `slot` (for tests and stats). */
  count(slot: number, ip: Uint8Array): number {
    this.#setKey(ip);
    this.#lock();
    try {
      let i = this.#home(slot);
      for (let probes = 0; probes <= this.#mask; probes++, i = (i + 1) & this.#mask) {
        const at = HEADER + i * FIELDS;
        if (this.#ints[at] === 0) return 0;
        if (this.#matches(at, slot)) return this.#ints[at + 5];
      }
      return 0;
    } finally {
      Atomics.store(this.#ints, LOCK, 0);
    }
  }

  #lock(): void {
    while (Atomics.compareExchange(this.#ints, LOCK, 0, 1) !== 0) {
      // Held for a probe by another engine: spin, it is never held across a syscall.
    }
  }

  #setKey(ip: Uint8Array): void {
    const key = this.#key;
    if (ip.length === 4) {
      // IPv4 as its IPv4-mapped IPv6 form, so one client counts once however it is written.
      key[0] = 0;
      key[1] = 0;
      key[2] = 0xffff;
      key[3] = (ip[0] << 24) | (ip[1] << 16) | (ip[2] << 8) | ip[3];
      return;
    }
    for (let w = 0; w < 4; w++) {
      const b = w * 4;
      key[w] = (ip[b] << 24) | (ip[b + 1] << 16) | (ip[b + 2] << 8) | ip[b + 3];
    }
  }

  #home(slot: number): number {
    return this.#hash(slot, this.#key, 0);
  }

  #hash(slot: number, words: Int32Array, offset: number): number {
    let h = Math.imul((slot + 1) ^ this.#ints[SEED], 0x9e3779b1);
    for (let w = 0; w < 4; w++) h = Math.imul(h ^ words[offset + w], 0x85ebca6b) ^ (h >>> 13);
    return (h ^ (h >>> 16)) & this.#mask;
  }

  #matches(at: number, slot: number): boolean {
    const ints = this.#ints;
    const key = this.#key;
    return ints[at] === slot + 1 && ints[at + 1] === key[0] && ints[at + 2] === key[1] &&
      ints[at + 3] === key[2] && ints[at + 4] === key[3];
  }

  /** Empties entry `i` and moves back later entries of its run whose home allows it. */
  #remove(i: number): void {
    const ints = this.#ints;
    const mask = this.#mask;
    let hole = i;
    let j = i;
    // Bounded by one lap: a full table (TABLE_FULL) has no empty entry to stop at.
    for (let step = 0; step < mask; step++) {
      j = (j + 1) & mask;
      const at = HEADER + j * FIELDS;
      if (ints[at] === 0) break;
      const home = this.#homeOf(at);
      // The entry at j may fill the hole when its home is not in (hole, j] (cyclically).
      const between = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (between) continue;
      ints.copyWithin(HEADER + hole * FIELDS, at, at + FIELDS);
      hole = j;
    }
    ints.fill(0, HEADER + hole * FIELDS, HEADER + hole * FIELDS + FIELDS);
  }

  #homeOf(at: number): number {
    return this.#hash(this.#ints[at] - 1, this.#ints, at + 1);
  }
}
