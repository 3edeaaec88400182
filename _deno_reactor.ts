/**
 * Takes relayed sockets out of Deno's own reactor. Deno registers every socket it creates with
 * its tokio epoll instance, edge-triggered; while the engine relays a socket, each arriving
 * segment would still wake the main thread for an event nobody waits for (measured: about 15%
 * of a bulk relay's CPU). Nobody reads the conn through Deno during a relay, so the socket is
 * removed from every epoll instance that existed before the engine's first start; tokio ignores
 * the failed deregistration when the conn is closed later.
 *
 * @module
 */

import { EPOLL_CTL_DEL } from "./ffi/constants.ts";
import { libc } from "./ffi/libc.ts";

const encoder = new TextEncoder();
const EVENTPOLL = encoder.encode("anon_inode:[eventpoll]");
/** Where fds are looked for: the reactor is created at start-up, among the lowest numbers. */
const SCAN_LIMIT = 64;

let reactors: number[] | null = null;
const linkBuffer = new Uint8Array(64);
const dummyEvent = new Uint8Array(16);

/** Records the epoll fds that exist now. Call before the engine creates its own. */
export function findDenoReactors(): void {
  if (reactors !== null) return;
  reactors = [];
  const symbols = libc();
  for (let fd = 0; fd < SCAN_LIMIT; fd++) {
    const path = encoder.encode(`/proc/self/fd/${fd}\0`);
    const length = Number(symbols.readlink(path, linkBuffer, BigInt(linkBuffer.byteLength)));
    if (length !== EVENTPOLL.byteLength) continue;
    if (linkBuffer.subarray(0, length).every((byte, i) => byte === EVENTPOLL[i])) {
      reactors.push(fd);
    }
  }
}

/** Removes `fd` from the reactors found; ENOENT (not registered there) is the common answer. */
export function leaveDenoReactor(fd: number): void {
  if (reactors === null) return;
  const symbols = libc();
  for (const epfd of reactors) symbols.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, dummyEvent);
}
