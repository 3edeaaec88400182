/**
 * Reloads on the engines' data plane while clients are already knocking: the accept barrier
 * (engine/plane.ts) must never hand a connection routes that do not belong to its socket.
 */

import assert from "node:assert/strict";
import { shutdownRelayEngine } from "../mod.ts";
import { parseConfig } from "../config.ts";
import { specFromConfig, TcpProxy } from "../proxy/mod.ts";
import type { ProxyEvent } from "../proxy/types.ts";
import { acceptEach, freePort } from "./_helpers.ts";

/** A backend that answers each connection with `tag` and closes it. */
function taggedBackend(tag: string): { port: number; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  acceptEach(listener, (conn) => {
    conn.write(new TextEncoder().encode(tag)).catch(() => 0).finally(() => {
      try {
        conn.close();
      } catch { /* gone */ }
    });
  });
  return { port: listener.addr.port, close: () => listener.close() };
}

/** What one connection to `port` reads before its end; null when refused. */
async function knock(port: number): Promise<string | null> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
  } catch {
    return null;
  }
  try {
    const buffer = new Uint8Array(16);
    let text = "";
    for (let n; (n = await conn.read(buffer).catch(() => null)) !== null;) {
      text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    return text;
  } finally {
    conn.close();
  }
}

/**
 * Knocks on 127.0.0.1:PORT until stdin closes (bounded to 20 s): prints "go" once it started,
 * then the JSON list of what the answered connections said.
 */
const KNOCKER = `
const port = Number(Deno.args[0]);
let open = true;
(async () => { for await (const _ of Deno.stdin.readable) {} open = false; })();
console.log("go");
const answers = [];
const end = Date.now() + 20_000;
while (open && Date.now() < end) {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const buffer = new Uint8Array(16);
    let text = "";
    for (let n; (n = await conn.read(buffer).catch(() => null)) !== null;) {
      text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    conn.close();
    answers.push(text);
  } catch {
    await new Promise((r) => setTimeout(r, 0));
  }
}
console.log(JSON.stringify(answers));
`;

Deno.test("TcpProxy (engines = 1): a listener that a reload puts in place of another serves its own cluster to clients that knocked during the reload", async () => {
  // Regression test (was a bug): the reload's slot for the new listener was the old one's, and
  // connections queued on the new socket during the reload took the old listener's routes (or,
  // for a new cluster, crashed the engine). 300 weight-0 backends named "localhost" make the
  // reload resolve names for a while, so that clients are queued on the new socket meanwhile.
  const old = taggedBackend("old");
  const fresh = taggedBackend("new");
  const a = freePort();
  const b = freePort();
  const padding = Array.from(
    { length: 300 },
    (_, i) => `{ address = "localhost:${1000 + i}", weight = 0 }`,
  ).join(", ");
  const toml = (listener: number, cluster: string, backend: number): string => `
engines = 1
[[listeners]]
address = "127.0.0.1:${listener}"
[clusters.${cluster}]
frontends = [{ address = "127.0.0.1:${listener}" }]
backends = [{ address = "127.0.0.1:${backend}" }, ${padding}]
`;
  const events: ProxyEvent[] = [];
  const proxy = TcpProxy.start(specFromConfig(parseConfig(toml(a, "old", old.port))), {
    onEvent: (event) => events.push(event),
  });
  // The knocker is another process: reload() is synchronous, and a client in this one could
  // not connect while it runs.
  const knocker = new Deno.Command(Deno.execPath(), {
    args: ["eval", KNOCKER, String(b)],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = knocker.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let said = "";
  const readUntil = async (done: (text: string) => boolean): Promise<void> => {
    while (!done(said)) {
      const chunk = await reader.read();
      if (chunk.done) return;
      said += chunk.value;
    }
  };
  try {
    // It says "go" once it knocks (refused until the new listener exists).
    await readUntil((text) => text.includes("go\n"));
    assert.match(said, /^go/);
    proxy.reload(specFromConfig(parseConfig(toml(b, "new", fresh.port))));
    const after: string[] = [];
    for (let i = 0; i < 20; i++) after.push(await knock(b) ?? "refused");
    await knocker.stdin.close(); // stop knocking
    await readUntil(() => false);
    await knocker.status;
    const answers = [...JSON.parse(said.slice(said.indexOf("\n") + 1)) as string[], ...after];
    assert.deepEqual([...new Set(answers)], ["new"], `answers: ${[...new Set(answers)]}`);
    assert.deepEqual(events.filter((e) => e.type === "internal-error"), []);
  } finally {
    try {
      knocker.kill();
    } catch { /* exited */ }
    await reader.cancel().catch(() => {});
    await knocker.status;
    await proxy.shutdown();
    old.close();
    fresh.close();
    await shutdownRelayEngine();
  }
});

Deno.test("TcpProxy (engines = 1): backends past the 1,024 slots, over several reloads, take the slots of backends no longer named", async () => {
  // Each reload names 600 new backends (weight 0) beside the live one: the third cannot fit
  // without the slots the first named. Before, the new backends were left out of the routes and
  // every connection ended "no-backend".
  const live = taggedBackend("live");
  const port = freePort();
  const toml = (round: number): string => {
    const padding = Array.from(
      { length: 600 },
      (_, i) => `{ address = "127.0.0.${round + 2}:${1000 + i}", weight = 0 }`,
    ).join(", ");
    return `
engines = 1
[[listeners]]
address = "127.0.0.1:${port}"
[clusters.app${round}]
frontends = [{ address = "127.0.0.1:${port}" }]
backends = [${padding}, { address = "127.0.0.1:${live.port}" }]
`;
  };
  const proxy = TcpProxy.start(specFromConfig(parseConfig(toml(0))));
  try {
    for (let round = 0; round < 4; round++) {
      if (round > 0) proxy.reload(specFromConfig(parseConfig(toml(round))));
      assert.equal(await knock(port), "live", `round ${round}`);
    }
    const stats = proxy.stats();
    assert.equal(stats.connectionsTotal, 4);
    assert.equal(stats.backends[`app3/127.0.0.1:${live.port}`].connections, 1);
  } finally {
    await proxy.shutdown();
    live.close();
    await shutdownRelayEngine();
  }
});
