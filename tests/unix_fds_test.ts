/**
 * ffi/unix.ts: fds passed over an abstract Unix socket (SCM_RIGHTS) arrive as working fds of
 * the same open files; more than the reader made room for are closed by the kernel, and
 * nothing is left open either way.
 */

import assert from "node:assert/strict";
import {
  acceptUnix,
  connectAbstract,
  effectiveUid,
  listenAbstract,
  peerCredentials,
  receiveWithFds,
  sendWithFds,
} from "../ffi/unix.ts";
import { closeFd, openPipe } from "../ffi/pipe.ts";
import { libc } from "../ffi/libc.ts";
import { openFdCount } from "./_helpers.ts";

function connected(): { listener: number; client: number; server: number } {
  const name = `splice-unix-test-${Deno.pid}-${crypto.randomUUID()}`;
  const listener = listenAbstract(name);
  assert.equal(typeof listener, "number", JSON.stringify(listener));
  const again = listenAbstract(name);
  assert.equal(typeof again === "number" ? again : again.errno, 98); // EADDRINUSE
  const client = connectAbstract(name);
  assert.equal(typeof client, "number", JSON.stringify(client));
  const server = acceptUnix(listener as number);
  assert.equal(typeof server, "number", JSON.stringify(server));
  return { listener: listener as number, client: client as number, server: server as number };
}

function pipes(count: number): [number, number][] {
  return Array.from({ length: count }, () => {
    const pair = openPipe();
    assert.ok(Array.isArray(pair));
    return pair;
  });
}

Deno.test({
  name: "unix fds: pipe ends sent with SCM_RIGHTS work on the receiving side",
}, () => {
  const before = openFdCount();
  const { listener, client, server } = connected();
  assert.deepEqual(peerCredentials(client), { pid: Deno.pid, uid: effectiveUid() });
  assert.deepEqual(peerCredentials(server), { pid: Deno.pid, uid: effectiveUid() });
  const sent = pipes(3);
  const message = new TextEncoder().encode("three write ends");
  assert.equal(sendWithFds(client, message, sent.map(([, write]) => write)), message.length);
  const buffer = new Uint8Array(64);
  const got = receiveWithFds(server, buffer, 8);
  assert.ok(!("syscall" in got), JSON.stringify(got));
  assert.equal(new TextDecoder().decode(buffer.subarray(0, got.bytes)), "three write ends");
  assert.equal(got.truncated, false);
  assert.equal(got.fds.length, 3);
  // Each received fd is a new number for the same pipe: what is written to it comes out of
  // the original read end.
  got.fds.forEach((fd, i) => {
    assert.ok(!sent.some(([r, w]) => r === fd || w === fd));
    const bytes = new TextEncoder().encode(`pipe ${i}`);
    assert.equal(libc().write(fd, bytes, BigInt(bytes.length)), BigInt(bytes.length));
    const back = new Uint8Array(16);
    const n = Number(libc().read(sent[i][0], back, 16n));
    assert.equal(new TextDecoder().decode(back.subarray(0, n)), `pipe ${i}`);
  });
  // Nothing more queued: a non-blocking read says EAGAIN (11).
  const empty = receiveWithFds(server, buffer, 8);
  assert.ok("syscall" in empty && empty.errno === 11, JSON.stringify(empty));
  [...got.fds, ...sent.flat(), listener, client, server].forEach(closeFd);
  assert.equal(openFdCount(), before);
});

Deno.test({
  name: "unix fds: fds past the reader's room are closed by the kernel, and flagged",
}, () => {
  const before = openFdCount();
  const { listener, client, server } = connected();
  const sent = pipes(4);
  const message = new Uint8Array([1, 2, 3]);
  assert.equal(sendWithFds(client, message, sent.map(([, write]) => write)), 3);
  const got = receiveWithFds(server, new Uint8Array(8), 1);
  assert.ok(!("syscall" in got), JSON.stringify(got));
  assert.equal(got.bytes, 3);
  assert.equal(got.truncated, true);
  // CMSG_SPACE rounds up to 8 bytes: room for 2 fds when 1 was asked for.
  assert.ok(got.fds.length >= 1 && got.fds.length <= 2, String(got.fds));
  [...got.fds, ...sent.flat(), listener, client, server].forEach(closeFd);
  assert.equal(openFdCount(), before);
});
