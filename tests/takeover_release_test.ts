/**
 * The release semantics under a takeover, in one process: two proxies on the same listening
 * socket (the second receives it as a new fd over a Unix socket, as a new process would).
 * Until the second owns it, stopping either leaves the other serving; after, stopping the
 * owner stops the socket.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../config.ts";
import { type ProxySpec, specFromConfig, TcpProxy } from "../proxy/mod.ts";
import {
  acceptUnix,
  connectAbstract,
  listenAbstract,
  receiveWithFds,
  sendWithFds,
} from "../ffi/unix.ts";
import { closeFd } from "../ffi/pipe.ts";
import { echoBackend, echoes, freePort } from "./_helpers.ts";

/** New fds for `fds`, as another process would get them (SCM_RIGHTS over a socket pair). */
function passed(fds: number[]): number[] {
  const name = `splice-release-test-${Deno.pid}-${crypto.randomUUID()}`;
  const listener = listenAbstract(name) as number;
  const client = connectAbstract(name) as number;
  const server = acceptUnix(listener) as number;
  try {
    assert.equal(sendWithFds(client, new Uint8Array([1]), fds), 1);
    const got = receiveWithFds(server, new Uint8Array(4), fds.length);
    assert.ok(!("syscall" in got) && got.fds.length === fds.length);
    return got.fds;
  } finally {
    [listener, client, server].forEach(closeFd);
  }
}

function spec(listen: number, backend: number): ProxySpec {
  return specFromConfig(parseConfig(`
engines = 1
access_log = "off"
[[listeners]]
address = "127.0.0.1:${listen}"
[clusters.app]
frontends = [{ address = "127.0.0.1:${listen}" }]
backends = [{ address = "127.0.0.1:${backend}" }]
`));
}

/** Starts `first`, hands its socket to a second proxy; returns both. */
function pair(listen: number, backend: number): { first: TcpProxy; second: TcpProxy } {
  const first = TcpProxy.start(spec(listen, backend));
  let fds: number[] = [];
  first.handOver((sockets) => {
    assert.deepEqual(sockets.map((s) => [s.address, s.port]), [[`127.0.0.1:${listen}`, listen]]);
    fds = passed(sockets.map((s) => s.fd));
  });
  const second = TcpProxy.start(spec(listen, backend), {
    listeningSockets: new Map([[`127.0.0.1:${listen}`, fds[0]]]),
  });
  return { first, second };
}

Deno.test({
  name: "takeover release: before ownListeners, stopping either proxy leaves the other serving",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const backend = echoBackend();
  try {
    const listen = freePort();
    // The new process is stopped before the takeover finished: the old one serves on.
    const a = pair(listen, backend.port);
    assert.ok(await a.second.serving(5_000));
    await a.second.shutdown();
    for (let i = 0; i < 20; i++) assert.ok(await echoes(listen), "the first proxy serves on");
    // The old process is stopped after handing over: the new one serves on.
    const b = pair(freePort(), backend.port);
    const port = Object.values(b.second.listenerPorts)[0];
    await a.first.shutdown();
    await b.first.shutdown();
    for (let i = 0; i < 20; i++) assert.ok(await echoes(port), "the second proxy serves on");
    // Once the second owns the socket, its shutdown stops it: connects are refused.
    b.second.ownListeners();
    await b.second.shutdown();
    assert.equal(await echoes(port), false);
  } finally {
    await backend.close();
  }
});

Deno.test({
  name: "takeover release: a socket bound to another address is refused for a listener",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const backend = echoBackend();
  const first = TcpProxy.start(specFromConfig(parseConfig(`
engines = 1
[[listeners]]
address = "127.0.0.2:0"
`)));
  try {
    let fds: number[] = [];
    first.handOver((sockets) => (fds = passed(sockets.map((s) => s.fd))));
    const port = Object.values(first.listenerPorts)[0];
    // Same port, another address: not this listener's socket. It stays the caller's.
    assert.throws(
      () =>
        TcpProxy.start(spec(port, backend.port), {
          listeningSockets: new Map([[`127.0.0.1:${port}`, fds[0]]]),
        }),
      /Cannot take over 127\.0\.0\.1:\d+: the socket handed over is bound to 127\.0\.0\.2:\d+/,
    );
    closeFd(fds[0]);
  } finally {
    first.ownListeners();
    await first.shutdown();
    await backend.close();
  }
});
