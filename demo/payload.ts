/**
 * Test payloads: deterministic pseudo-random bytes, streamed and hashed (SHA-256) at both ends.
 * Used by the demo, the tests and the benchmark.
 *
 * @module
 */

import { createHash } from "node:crypto";

/** Deterministic pseudo-random bytes (xorshift32), fast enough to make hundreds of MiB. */
export function fillPattern(buffer: Uint8Array, seed: number): number {
  const words = new Uint32Array(buffer.buffer, buffer.byteOffset, buffer.byteLength >>> 2);
  let x = seed | 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
  return x;
}

/** Writes `total` pattern bytes to `conn` in chunks; resolves to their SHA-256 (hex). */
export async function sendPattern(
  conn: { write(p: Uint8Array): Promise<number> },
  total: number,
  seed = 1,
  chunkSize = 256 * 1024,
  onProgress?: (sent: number) => void,
): Promise<string> {
  const hash = createHash("sha256");
  const chunk = new Uint8Array(chunkSize);
  let state = seed;
  for (let sent = 0; sent < total;) {
    const size = Math.min(chunkSize, total - sent);
    state = fillPattern(chunk, state);
    const part = chunk.subarray(0, size);
    hash.update(part);
    for (let off = 0; off < size;) off += await conn.write(part.subarray(off));
    sent += size;
    onProgress?.(sent);
  }
  return hash.digest("hex");
}

/** Reads `conn` to end of input; resolves to the byte count and SHA-256 (hex). */
export async function receiveAll(
  conn: { read(p: Uint8Array): Promise<number | null> },
): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(256 * 1024);
  let bytes = 0;
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    hash.update(buffer.subarray(0, n));
    bytes += n;
  }
  return { bytes, sha256: hash.digest("hex") };
}
