/**
 * Takes relayed sockets out of Deno's own reactor, and puts them back before Deno closes them.
 *
 * Deno registers every socket it creates with its tokio epoll instance, edge-triggered; while the
 * engine relays a socket, each arriving segment would still wake the main thread for an event
 * nobody waits for (measured: about 15% of a bulk relay's CPU). Nobody reads the conn through
 * Deno during a relay, so the socket is removed from every epoll instance that existed before the
 * engine's first start.
 *
 * It must be back before Deno closes the conn: tokio removes a closed socket from its epoll and
 * frees its bookkeeping for it only when that removal succeeds, so a socket Deno finds missing
 * leaks that bookkeeping (measured: about 1.5 KiB per relayed connection, never freed). It is
 * put back under tokio's wake-up token (0), which tokio's driver treats as "wake up and look
 * again" and never as a pointer to its per-socket state; registered for no events and
 * edge-triggered, it raises at most one such spurious wake-up (on a hang-up or error).
 *
 * @module
 */

import {
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_DATA_OFFSET,
  EPOLL_EVENT_SIZE,
  EPOLLET,
} from "../ffi/constants.ts";
import { libc } from "../ffi/libc.ts";

const encoder = new TextEncoder();
const EVENTPOLL = encoder.encode("anon_inode:[eventpoll]");
/** Where fds are looked for: the reactor is created at start-up, among the lowest numbers. */
const SCAN_LIMIT = 64;
/** tokio's `TOKEN_WAKEUP`: events carrying it only end the driver's wait. */
const TOKIO_WAKEUP_TOKEN = 0;

let reactors: number[] | null = null;
const linkBuffer = new Uint8Array(64);
/** `struct epoll_event` for DEL (ignored by the kernel) and for the return (no events). */
const parkedEvent = new Uint8Array(EPOLL_EVENT_SIZE);
const parkedView = new DataView(parkedEvent.buffer);
parkedView.setUint32(0, EPOLLET, true);
parkedView.setBigUint64(EPOLL_DATA_OFFSET, BigInt(TOKIO_WAKEUP_TOKEN), true);

/** For each socket taken out, the reactors it was taken out of. */
const removed = new Map<number, number[]>();

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

/**
 * Removes `fd` from the reactors found, remembering which ones had it; ENOENT (not registered
 * there, e.g. another Worker's reactor) is the common answer.
 */
export function leaveDenoReactor(fd: number): void {
  if (reactors === null) return;
  const symbols = libc();
  let from: number[] | undefined;
  for (const epfd of reactors) {
    if (symbols.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, parkedEvent) === 0) (from ??= []).push(epfd);
  }
  if (from !== undefined) removed.set(fd, from);
}

/**
 * Puts `fd` back into the reactors it left, so that Deno's close finds it there. Call after the
 * engine let go of it and before the conn is closed; a no-op for an fd that never left.
 */
export function returnToDenoReactor(fd: number): void {
  const from = removed.get(fd);
  if (from === undefined) return;
  removed.delete(fd);
  const symbols = libc();
  for (const epfd of from) symbols.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, parkedEvent);
}
