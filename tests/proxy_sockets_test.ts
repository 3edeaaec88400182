/**
 * The sockets of a relayed connection on the engines' path: both sides have TCP_NODELAY. The
 * client's side has it from its listener (set once when the listener is made or taken over, not
 * per accepted connection), so a listener handed over without it must get it too.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../config.ts";
import { type ProxySpec, specFromConfig, TcpProxy } from "../proxy/mod.ts";
import { libc } from "../ffi/libc.ts";
import { formatSockaddr, listenSocket, resolveSockaddrs } from "../ffi/net.ts";
import { IPPROTO_TCP, TCP_NODELAY } from "../ffi/constants.ts";
import { closeQuietly, echoBackend, freePort } from "./_helpers.ts";

function spec(listeners: string[], backend: number): ProxySpec {
  const frontends = listeners.map((address) => `{ address = "${address}" }`).join(", ");
  return specFromConfig(parseConfig(
    `engines = 1\naccess_log = "off"\n` +
      listeners.map((address) => `[[listeners]]\naddress = "${address}"\n`).join("") +
      `[clusters.app]\nfrontends = [${frontends}]\n` +
      `backends = [{ address = "127.0.0.1:${backend}" }]\n`,
  ));
}

/** This process's socket fds whose peer is `peer` (formatSockaddr's form). */
function socketsWithPeer(peer: string): number[] {
  const found: number[] = [];
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    const fd = Number(entry.name);
    let target = "";
    try {
      target = Deno.readLinkSync(`/proc/self/fd/${entry.name}`);
    } catch {
      continue; // closed meanwhile (the readDir's own fd)
    }
    if (!target.startsWith("socket:")) continue;
    const bytes = new Uint8Array(128);
    const length = new Uint32Array([128]);
    if (libc().getpeername(fd, bytes, length) !== 0) continue;
    if (formatSockaddr(bytes) === peer) found.push(fd);
  }
  return found;
}

function noDelay(fd: number): number {
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  assert.equal(libc().getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, value, length), 0);
  return value[0];
}

/** Opens a connection through `port` and echoes 3 bytes; the open conn, once relayed. */
async function relayed(hostname: string, port: number): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname, port });
  await conn.write(new Uint8Array([1, 2, 3]));
  const back = new Uint8Array(3);
  for (let got = 0; got < 3;) {
    const n = await conn.read(back.subarray(got));
    assert.ok(n !== null, "the echo ended early");
    got += n;
  }
  return conn;
}

/** The proxy's socket to the client of `conn` and its socket to the backend on `backend`. */
function proxySockets(conn: Deno.TcpConn, backend: number): { client: number; backend: number } {
  const local = conn.localAddr;
  const peer = local.hostname.includes(":")
    ? `[${local.hostname}]:${local.port}`
    : `${local.hostname}:${local.port}`;
  const client = socketsWithPeer(peer);
  assert.equal(client.length, 1, `one proxy socket with peer ${peer}: ${client}`);
  const toBackend = socketsWithPeer(`127.0.0.1:${backend}`);
  assert.equal(toBackend.length, 1, `one proxy socket to the backend: ${toBackend}`);
  return { client: client[0], backend: toBackend[0] };
}

Deno.test({
  name:
    "TcpProxy (engines): both sockets of a relayed connection have TCP_NODELAY, over IPv4 and IPv6",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const backend = echoBackend();
  const proxy = TcpProxy.start(spec(["127.0.0.1:0", "[::1]:0"], backend.port));
  try {
    for (const [listener, hostname] of [["127.0.0.1:0", "127.0.0.1"], ["[::1]:0", "::1"]]) {
      const conn = await relayed(hostname, proxy.listenerPorts[listener]);
      try {
        const sockets = proxySockets(conn, backend.port);
        assert.deepEqual(
          { client: noDelay(sockets.client), backend: noDelay(sockets.backend) },
          { client: 1, backend: 1 },
          listener,
        );
      } finally {
        closeQuietly(conn);
      }
    }
  } finally {
    await proxy.shutdown();
    await backend.close();
  }
});

Deno.test({
  name:
    "TcpProxy (engines): a listening socket taken over without TCP_NODELAY gets it, so its connections have it",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const backend = echoBackend();
  const port = freePort();
  const made = listenSocket(resolveSockaddrs("127.0.0.1", port)[0], {
    reusePort: false,
    backlog: 16,
  });
  assert.ok("fd" in made, JSON.stringify(made));
  const off = new Int32Array([0]);
  assert.equal(libc().setsockopt(made.fd, IPPROTO_TCP, TCP_NODELAY, off, 4), 0);
  assert.equal(noDelay(made.fd), 0, "the socket handed over starts without it");
  const proxy = TcpProxy.start(spec([`127.0.0.1:${port}`], backend.port), {
    listeningSockets: new Map([[`127.0.0.1:${port}`, made.fd]]),
  });
  try {
    proxy.ownListeners();
    const conn = await relayed("127.0.0.1", port);
    try {
      assert.equal(noDelay(proxySockets(conn, backend.port).client), 1);
    } finally {
      closeQuietly(conn);
    }
  } finally {
    await proxy.shutdown();
    await backend.close();
  }
});
