/**
 * DNS service discovery against a real DNS server the test starts: dnsmasq (Debian's
 * dnsmasq-base, installed here when missing; skipped, saying why, only where it cannot be) on
 * a loopback port, its records from its config, restarted to change them. Backends named by a
 * host and port (A records), and by an SRV name with two priorities; an answer that changes
 * moves new connections while an open one finishes byte-exact; a server that stops answering
 * keeps the last good set.
 */

// deno-lint-ignore-file no-console -- a skipped test says why
import assert from "node:assert/strict";
import { shutdownRelayEngine } from "../mod.ts";
import { parseConfig } from "../config.ts";
import { startProxy, startProxyResolved } from "../proxy/mod.ts";
import type { ProxyEvent } from "../proxy/types.ts";
import {
  closeQuietly,
  concat,
  freePort,
  receiveAll,
  sendPattern,
  serveEach,
  waitFor,
} from "./_helpers.ts";

const DNSMASQ = "/usr/sbin/dnsmasq";

async function installed(): Promise<string | null> {
  const present = (): boolean => {
    try {
      Deno.statSync(DNSMASQ);
      return true;
    } catch {
      return false;
    }
  };
  if (present()) return null;
  for (
    const args of [["install", "-y", "dnsmasq-base"], ["update"], ["install", "-y", "dnsmasq-base"]]
  ) {
    try {
      await new Deno.Command("apt-get", {
        args,
        env: { DEBIAN_FRONTEND: "noninteractive" },
        stdout: "null",
        stderr: "null",
        signal: AbortSignal.timeout(300_000),
      }).output();
    } catch {
      // tried
    }
    if (present()) return null;
  }
  return "dnsmasq is not installed and apt-get could not install it";
}

const missing = await installed();
if (missing !== null) console.log(`DNS discovery tests skipped: ${missing}`);

/** dnsmasq on 127.0.0.1:`port` answering `records` (its config lines) and nothing else. */
function dnsServer(port: number): {
  start(records: string[]): Promise<void>;
  stop(): Promise<void>;
} {
  let child: Deno.ChildProcess | null = null;
  let dir: string | null = null;
  const stop = async (): Promise<void> => {
    if (child !== null) {
      try {
        child.kill("SIGKILL");
      } catch {
        // already exited
      }
      await child.status;
      child = null;
    }
    if (dir !== null) await Deno.remove(dir, { recursive: true }).catch(() => {});
    dir = null;
  };
  return {
    async start(records: string[]): Promise<void> {
      await stop();
      dir = await Deno.makeTempDir();
      const conf = `${dir}/dnsmasq.conf`;
      await Deno.writeTextFile(
        conf,
        [
          `port=${port}`,
          "listen-address=127.0.0.1",
          "bind-interfaces",
          "no-resolv",
          "no-hosts",
          "no-poll",
          "user=root",
          ...records,
        ].join("\n") + "\n",
      );
      child = new Deno.Command(DNSMASQ, {
        args: ["--keep-in-foreground", `--conf-file=${conf}`, "--pid-file="],
        stdout: "null",
        stderr: "null",
      }).spawn();
      // Up once it answers (bounded).
      await waitFor(
        () =>
          Deno.resolveDns("ready.test", "A", { nameServer: { ipAddr: "127.0.0.1", port } })
            .then(() => true, (error) => error instanceof Deno.errors.NotFound),
        "dnsmasq to answer",
        10_000,
      );
    },
    stop,
  };
}

/** A backend on `hostname`:`port` that answers each connection with its name, or echoes. */
function named(name: string, hostname: string, port = 0): {
  port: number;
  close(): Promise<void>;
} {
  const listener = Deno.listen({ hostname, port });
  const served = serveEach(listener, async (conn) => {
    try {
      const got = await receiveAll(conn);
      await conn.write(new TextEncoder().encode(`${name} ${got.bytes} ${got.sha256}`));
    } catch {
      // the client went away
    } finally {
      closeQuietly(conn);
    }
  });
  return { port: listener.addr.port, close: served.close };
}

async function via(port: number): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(Uint8Array.of(1));
    await conn.closeWrite();
    return new TextDecoder().decode(
      await receiveAllBytes(conn),
    ).split(" ")[0];
  } finally {
    closeQuietly(conn);
  }
}

async function receiveAllBytes(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(4096);
  for (let n; (n = await conn.read(buffer)) !== null;) chunks.push(buffer.slice(0, n));
  return concat(...chunks);
}

Deno.test({
  name:
    "DNS discovery: host and port follow the A records; a changed answer moves new connections while an open one finishes; a silent server keeps the last good set",
  ignore: missing !== null,
  async fn(): Promise<void> {
    const dnsPort = freePort();
    const dns = dnsServer(dnsPort);
    const backendPort = freePort();
    const a = named("a", "127.0.0.1", backendPort);
    const b = named("b", "127.0.0.2", backendPort);
    const events: ProxyEvent[] = [];
    await dns.start(["host-record=app.example.internal,127.0.0.1"]);
    const proxy = startProxy(
      parseConfig(`
engines = 2
dns_nameserver = "127.0.0.1:${dnsPort}"

[[listeners]]
address = "127.0.0.1:0"

[clusters.app]
dns_refresh_ms = 150
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ host = "app.example.internal", port = ${backendPort} }]
`),
      { onEvent: (e) => events.push(e) },
    );
    const port = proxy.listenerPorts["127.0.0.1:0"];
    try {
      await waitFor(
        () => events.some((e) => e.type === "dns-change"),
        "the first answer",
      );
      assert.equal(await via(port), "a");

      // An open transfer to a, across the change.
      const open = await Deno.connect({ hostname: "127.0.0.1", port });
      const sent = sendPattern(open, 4 * 1024 * 1024, 3);
      await dns.start(["host-record=app.example.internal,127.0.0.2"]);
      await waitFor(
        () =>
          events.some((e) =>
            e.type === "dns-change" && e.backends.join() === `127.0.0.2:${backendPort}`
          ),
        "the changed answer",
      );
      for (let i = 0; i < 4; i++) assert.equal(await via(port), "b");
      const hash = await sent;
      await open.closeWrite();
      const answer = new TextDecoder().decode(await receiveAllBytes(open));
      closeQuietly(open);
      assert.equal(answer, `a ${4 * 1024 * 1024} ${hash}`, "the open transfer finished at a");
      const key = `app/127.0.0.2:${backendPort}`;
      assert.ok(proxy.stats().backends[key].connections >= 4);

      // The server stops answering: the last good set stays, and it is said.
      await dns.stop();
      await waitFor(() => events.some((e) => e.type === "dns-error"), "a lookup error");
      assert.equal(await via(port), "b");
    } finally {
      await proxy.shutdown();
      await dns.stop();
      await a.close();
      await b.close();
      await shutdownRelayEngine();
    }
  },
});

Deno.test({
  name:
    "DNS discovery: SRV targets, ports and weights become backends; only the lowest priority group that is up serves",
  ignore: missing !== null,
  async fn(): Promise<void> {
    const dnsPort = freePort();
    const dns = dnsServer(dnsPort);
    const first = named("first", "127.0.0.1");
    const second = named("second", "127.0.0.1");
    const events: ProxyEvent[] = [];
    await dns.start([
      "host-record=one.example.internal,127.0.0.1",
      `srv-host=_app._tcp.example.internal,one.example.internal,${first.port},10,5`,
      `srv-host=_app._tcp.example.internal,one.example.internal,${second.port},20,5`,
    ]);
    const proxy = startProxy(
      parseConfig(`
engines = 1
dns_nameserver = "127.0.0.1:${dnsPort}"

[[listeners]]
address = "127.0.0.1:0"

[clusters.app]
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ srv = "_app._tcp.example.internal" }]
`),
      { onEvent: (e) => events.push(e) },
    );
    const port = proxy.listenerPorts["127.0.0.1:0"];
    try {
      await waitFor(() => events.some((e) => e.type === "dns-change"), "the SRV answer");
      const change = events.find((e) => e.type === "dns-change");
      assert.deepEqual(
        change?.type === "dns-change" ? [...change.backends].sort() : [],
        [`127.0.0.1:${first.port}`, `127.0.0.1:${second.port}`].sort(),
      );
      for (let i = 0; i < 4; i++) assert.equal(await via(port), "first", "priority 10 first");
      await first.close();
      // The first group is down (its connects fail): the next group serves.
      for (let i = 0; i < 4; i++) assert.equal(await via(port), "second");
    } finally {
      await proxy.shutdown();
      await dns.stop();
      await first.close();
      await second.close();
      await shutdownRelayEngine();
    }
  },
});

Deno.test({
  name:
    "DNS discovery: startProxyResolved listens once the first answers are in, so the first connection finds its backend",
  ignore: missing !== null,
  async fn(): Promise<void> {
    const dnsPort = freePort();
    const dns = dnsServer(dnsPort);
    const a = named("a", "127.0.0.1");
    const events: ProxyEvent[] = [];
    await dns.start(["host-record=first.example.internal,127.0.0.1"]);
    const proxy = await startProxyResolved(
      parseConfig(`
engines = 1
dns_nameserver = "127.0.0.1:${dnsPort}"

[[listeners]]
address = "127.0.0.1:0"

[clusters.app]
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ host = "first.example.internal", port = ${a.port} }]
`),
      { onEvent: (e) => events.push(e) },
    );
    try {
      // No wait for an event: the answer was in before the listener.
      const listening = events.findIndex((e) => e.type === "listening");
      const found = events.findIndex((e) => e.type === "dns-change");
      assert.ok(found >= 0 && found < listening, JSON.stringify(events.map((e) => e.type)));
      assert.equal(await via(proxy.listenerPorts["127.0.0.1:0"]), "a");
    } finally {
      await proxy.shutdown();
      await dns.stop();
      await a.close();
      await shutdownRelayEngine();
    }
  },
});
