import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { acceptEach, concat, freePort, receiveAll, sendPattern, waitFor } from "./_helpers.ts";

const PROXY = new URL("../proxy.ts", import.meta.url).pathname;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;

/** A backend that answers each connection with its name, after reading the request to its end. */
function namedBackend(name: string): { port: number; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  acceptEach(listener, (conn) => {
    (async () => {
      try {
        const request = await receiveAll(conn);
        await conn.write(new TextEncoder().encode(`${name} ${request.sha256}`));
      } finally {
        conn.close();
      }
    })().catch(() => {});
  });
  return { port: listener.addr.port, close: () => listener.close() };
}

function configText(backendPort: number, metricsPort: number): string {
  return `
log_format = "json"
drain_timeout_ms = 5000

[metrics]
address = "127.0.0.1:${metricsPort}"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:0"

[clusters.app]
protocol = "tcp"
frontends = [{ address = "127.0.0.1:0" }]
backends = [{ address = "127.0.0.1:${backendPort}" }]
`;
}

/** The proxy as a subprocess, its stdout lines collected. */
function spawnProxy(configPath: string): {
  child: Deno.ChildProcess;
  lines: string[];
  done: Promise<void>;
} {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--config", CONFIG, "-A", PROXY, "--config", configPath],
    stdout: "piped",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  const lines: string[] = [];
  const done = (async () => {
    let rest = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      rest += chunk;
      const parts = rest.split("\n");
      rest = parts.pop()!;
      lines.push(...parts);
    }
  })();
  return { child, lines, done };
}

/** Bytes this file's clients sent through the proxy and got back, to check the metrics. */
const traffic = { sent: 0, received: 0 };

async function ask(port: number, payload: number): Promise<{ name: string; intact: boolean }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const hash = await sendPattern(conn, payload, payload);
    traffic.sent += payload;
    await conn.closeWrite();
    const buffer = new Uint8Array(256);
    let text = "";
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      traffic.received += n;
      text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const [name, echoed] = text.split(" ");
    return { name, intact: echoed === hash };
  } finally {
    conn.close();
  }
}

Deno.test("proxy.ts --check: a good file passes, a bad one lists every problem", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const good = `${dir}/good.toml`;
    const bad = `${dir}/bad.toml`;
    await Deno.writeTextFile(good, configText(9000, 9901));
    await Deno.writeTextFile(
      bad,
      `splice_pipe_capacity_bytes = -1\nconect_timeout_ms = 5\n[[listeners]]\naddress = "nope"\n`,
    );
    const run = (file: string) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--config", CONFIG, "-A", PROXY, "--check", "--config", file],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const ok = await run(good);
    assert.equal(ok.code, 0, new TextDecoder().decode(ok.stderr));
    const failed = await run(bad);
    assert.equal(failed.code, 1);
    const message = new TextDecoder().decode(failed.stderr);
    assert.match(message, /bad\.toml/);
    assert.match(message, /splice_pipe_capacity_bytes = -1/);
    assert.match(message, /did you mean "connect_timeout_ms"/);
    assert.match(message, /listeners\[0\]\.address/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("proxy.ts: relays intact, reloads three ways (a bad file is refused), drains on SIGTERM, exits 0", async () => {
  const first = namedBackend("first");
  const second = namedBackend("second");
  const dir = await Deno.makeTempDir();
  const path = `${dir}/proxy.toml`;
  const metricsPort = freePort();
  await Deno.writeTextFile(path, configText(first.port, metricsPort));
  const proxy = spawnProxy(path);
  try {
    let port = 0;
    await waitFor(
      () => {
        const listening = proxy.lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l))
          .find((e) => e.event === "listening");
        port = listening?.port ?? 0;
        return port !== 0;
      },
      "the proxy to listen",
      15_000,
    );

    const before = await ask(port, 2_000_000);
    assert.deepEqual(before, { name: "first", intact: true });

    // A long transfer stays open across all three reloads below, on the backend it started on.
    const long = await Deno.connect({ hostname: "127.0.0.1", port });
    const longHash = createHash("sha256");
    const longPart = async (seed: number): Promise<void> => {
      const bytes = await patternBytes(8 * 1024 * 1024, seed);
      longHash.update(bytes);
      for (let off = 0; off < bytes.length;) off += await long.write(bytes.subarray(off));
      traffic.sent += bytes.length;
    };
    await longPart(1);

    // An invalid file is refused; the running config keeps serving.
    await Deno.writeTextFile(path, "listeners = 5\n");
    proxy.child.kill("SIGHUP");
    await waitFor(() => proxy.lines.some((l) => l.includes("refused")), "the refusal", 10_000);
    assert.equal((await ask(port, 1000)).name, "first");

    // A valid one applies to new connections. The listener (127.0.0.1:0) is kept as it is.
    await Deno.writeTextFile(path, configText(second.port, metricsPort));
    proxy.child.kill("SIGHUP");
    await waitFor(async () => (await ask(port, 1000)).name === "second", "the reload", 10_000);

    // Saving the file reloads it too, also the way editors save: a new file renamed over it.
    await Deno.writeTextFile(`${path}.tmp`, configText(first.port, metricsPort));
    await Deno.rename(`${path}.tmp`, path);
    await waitFor(async () => (await ask(port, 1000)).name === "first", "the file reload", 10_000);

    // And so does the admin endpoint.
    const reloaded = await fetch(`http://127.0.0.1:${metricsPort}/reload`, { method: "POST" });
    assert.deepEqual(await reloaded.json(), { reloaded: true });
    await waitFor(
      () => proxy.lines.some((l) => l.includes("reload (admin): applied")),
      "the admin reload's log line",
    );

    // The long transfer finishes intact, on the backend it started on.
    await longPart(2);
    await long.closeWrite();
    const longReply = new TextDecoder().decode(await readAll(long));
    traffic.received += longReply.length;
    long.close();
    assert.equal(longReply, `first ${longHash.digest("hex")}`);

    // The counters match the bytes this test moved, once the last relay has been counted.
    const proxyStatus = async () =>
      await (await fetch(`http://127.0.0.1:${metricsPort}/status`)).json();
    await waitFor(
      async () => (await proxyStatus()).connectionsOpen === 0,
      "the relays to be counted",
    );
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    assert.match(metrics, /^splice_reloads_total [1-9]/m);
    assert.match(metrics, new RegExp(`^splice_bytes_in_total ${traffic.sent}$`, "m"));
    assert.match(metrics, new RegExp(`^splice_bytes_out_total ${traffic.received}$`, "m"));

    proxy.child.kill("SIGTERM");
    const status = await proxy.child.status;
    await proxy.done;
    assert.equal(status.code, 0);
    const logged = proxy.lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
    const connections = logged.filter((e) => e.event === "connection");
    assert.ok(connections.length >= 3);
    assert.equal(connections[0].bytesIn, 2_000_000);
  } finally {
    try {
      proxy.child.kill("SIGKILL");
    } catch {
      // already exited
    }
    await proxy.child.status;
    first.close();
    second.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("proxy.ts: SIGTERM lets an in-flight transfer finish, refuses new connections, exits 0", async () => {
  const server = namedBackend("server");
  const dir = await Deno.makeTempDir();
  const path = `${dir}/proxy.toml`;
  await Deno.writeTextFile(path, configText(server.port, freePort()));
  const proxy = spawnProxy(path);
  try {
    await waitFor(() => proxy.lines.includes("ready"), "the proxy to be ready", 15_000);
    const port = JSON.parse(proxy.lines.find((l) => l.includes('"event":"listening"'))!).port;
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const first = new Uint8Array(4 * 1024 * 1024);
    for (let off = 0; off < first.length;) off += await conn.write(first.subarray(off));
    proxy.child.kill("SIGTERM");
    await waitFor(() => proxy.lines.some((l) => l.startsWith("draining")), "the drain to start")
      .catch((e) => {
        throw new Error(`${e.message}; proxy said:\n${proxy.lines.join("\n")}`);
      });
    // The listener is closed: new connections are refused.
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port }));
    // The open one still flows both ways to its end.
    await sendPattern(conn, 4 * 1024 * 1024, 9);
    await conn.closeWrite();
    const reply = new TextDecoder().decode(await readAll(conn));
    conn.close();
    const expected = createHash("sha256");
    expected.update(first);
    expected.update(await patternBytes(4 * 1024 * 1024, 9));
    assert.equal(reply, `server ${expected.digest("hex")}`);
    const status = await proxy.child.status;
    await proxy.done;
    assert.equal(status.code, 0);
    assert.ok(proxy.lines.includes("stopped"));
  } finally {
    try {
      proxy.child.kill("SIGKILL");
    } catch {
      // already exited
    }
    await proxy.child.status;
    server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

async function readAll(conn: Deno.TcpConn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
  }
  return concat(...chunks);
}

/** The bytes `sendPattern(_, size, seed)` writes. */
async function patternBytes(size: number, seed: number): Promise<Uint8Array> {
  const out = new Uint8Array(size);
  let offset = 0;
  await sendPattern(
    {
      write: (p) => {
        out.set(p, offset);
        offset += p.byteLength;
        return Promise.resolve(p.byteLength);
      },
    },
    size,
    seed,
  );
  return out;
}
