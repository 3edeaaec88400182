/**
 * Takeover upgrades (`proxy.ts --takeover ADMIN`): a new process takes the running one's
 * listening sockets, and under continuous churn not one connection is refused or reset and no
 * byte of an open transfer is lost. Both proxies are real subprocesses; the clients and the
 * echo backend are this test's.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { freePortOn } from "./_peers.ts";
import { receiveListeners, sendListeners } from "../proxy/takeover.ts";
import { closeFd } from "../ffi/pipe.ts";
import { encodeSockaddr, listenSocket, localAddress, localPort } from "../ffi/net.ts";
import {
  closeQuietly,
  echoBackend,
  freePort,
  outputLines,
  type ProxyProcess,
  spawnProxy,
  waitFor,
} from "./_helpers.ts";

const PROXY = new URL("../proxy.ts", import.meta.url).pathname;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;
const TOKEN = "takeover-test-token-0123456789";

type Proxy = ProxyProcess;

function configText(listen: number, admin: number, backend: number, extra = ""): string {
  return `
drain_timeout_ms = 30000
access_log = "errors"
${extra}
[metrics]
address = "127.0.0.1:${admin}"
token = "${TOKEN}"

[[listeners]]
address = "127.0.0.1:${listen}"

[clusters.app]
frontends = [{ address = "127.0.0.1:${listen}" }]
backends = [{ address = "127.0.0.1:${backend}" }]
`;
}

/** One short connection: 1 KiB out, the same 1 KiB back, then close. */
async function shortExchange(
  port: number,
  payload: Uint8Array,
  hostname = "127.0.0.1",
): Promise<void> {
  const conn = await Deno.connect({ hostname, port });
  try {
    conn.setNoDelay(true);
    await conn.write(payload);
    const back = new Uint8Array(payload.length);
    for (let got = 0; got < back.length;) {
      const n = await conn.read(back.subarray(got));
      if (n === null) throw new Error(`end of stream after ${got} of ${back.length} bytes`);
      got += n;
    }
    if (!back.every((b, i) => b === payload[i])) throw new Error("the echo differs");
  } finally {
    closeQuietly(conn);
  }
}

/** `clients` loops of short connections until `stop()`; every failure is kept. */
interface Churn {
  ok(): number;
  failures: string[];
  stop(): Promise<void>;
}

function churn(port: number, clients: number, maxConnections: number): Churn {
  let running = true;
  let ok = 0;
  const failures: string[] = [];
  const payload = crypto.getRandomValues(new Uint8Array(1024));
  const loops = Array.from({ length: clients }, async () => {
    while (running && ok + failures.length < maxConnections) {
      try {
        await shortExchange(port, payload);
        ok++;
      } catch (error) {
        failures.push((error as Error).message);
      }
    }
  });
  return {
    ok: () => ok,
    failures,
    async stop(): Promise<void> {
      running = false;
      await Promise.all(loops);
    },
  };
}

/**
 * One long transfer through the proxy, paced so that it spans the takeover: `total` bytes out
 * in 64 KiB chunks, the echo read back and hashed on the way.
 */
interface Transfer {
  done: Promise<{ sent: string; received: string; receivedBytes: number }>;
  receivedBytes(): number;
}

function transfer(port: number, total: number, chunkPauseMs: number): Transfer {
  const sent = createHash("sha256");
  const received = createHash("sha256");
  let receivedBytes = 0;
  const done = (async () => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const reading = (async () => {
      const buffer = new Uint8Array(256 * 1024);
      for (let n; (n = await conn.read(buffer)) !== null;) {
        received.update(buffer.subarray(0, n));
        receivedBytes += n;
      }
    })();
    for (let off = 0; off < total; off += 64 * 1024) {
      const chunk = crypto.getRandomValues(new Uint8Array(Math.min(64 * 1024, total - off)));
      sent.update(chunk);
      for (let w = 0; w < chunk.length;) w += await conn.write(chunk.subarray(w));
      await new Promise((resolve) => setTimeout(resolve, chunkPauseMs));
    }
    await conn.closeWrite();
    await reading;
    conn.close();
    return { sent: sent.digest("hex"), received: received.digest("hex"), receivedBytes };
  })();
  return { done, receivedBytes: () => receivedBytes };
}

async function metric(admin: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return Number(line?.split(" ")[1] ?? NaN);
}

/** Whether an abstract Unix socket of a takeover is still bound anywhere on this machine. */
function takeoverSocketsLeft(): number {
  return Deno.readTextFileSync("/proc/net/unix").split("\n")
    .filter((line) => line.includes("@splice-takeover-")).length;
}

/** A proxy.ts running on a config of its own, with an echo backend, for one test. */
interface Running {
  backend: ReturnType<typeof echoBackend>;
  listen: number;
  admin: number;
  dir: string;
  path: string;
  old: Proxy;
}

/**
 * Runs `body` against a proxy.ts started on `configText` (changed by `edit`) once it is ready;
 * stops it, the backend and the files however `body` ends.
 */
async function withRunningProxy(
  edit: (text: string, ports: { listen: number; admin: number; backend: number }) => string,
  body: (running: Running) => Promise<void>,
): Promise<void> {
  const backend = echoBackend();
  const listen = freePort();
  const admin = freePort();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/proxy.toml`;
  const ports = { listen, admin, backend: backend.port };
  await Deno.writeTextFile(path, edit(configText(listen, admin, backend.port), ports));
  const old = spawnProxy(path);
  try {
    await old.output.line(/^ready$/, "the first proxy to be ready");
    await body({ backend, listen, admin, dir, path, old });
  } finally {
    await old.stop();
    await backend.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "takeover: under 8-client churn and an open transfer, nothing is refused, reset or lost",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const v6 = freePortOn("::1");
  // A second listener on IPv6, for the same cluster: every listener's socket is handed over.
  const withV6 = (text: string): string =>
    text.replace("frontends = [", `frontends = [{ address = "[::1]:${v6}" }, `) + `
[[listeners]]
address = "[::1]:${v6}"
`;
  let next: Proxy | undefined;
  await withRunningProxy(withV6, async ({ listen, admin, path, old }) => {
    // 48 MiB at about 16 MiB/s: open for the whole takeover, and drained by the old process.
    const long = transfer(listen, 48 * 1024 * 1024, 4);
    const load = churn(listen, 8, 40_000);
    await waitFor(
      () => (load.ok() >= 300 && long.receivedBytes() > 0) || load.failures.length > 0,
      "churn under way",
      10_000,
    );

    next = spawnProxy(path, { args: ["--takeover", `127.0.0.1:${admin}`] });
    await next.output.line(/^ready$/, "the new proxy to be ready", 20_000);
    const atTakeover = load.ok();
    const oldCode = await old.child.status.then((s) => s.code);
    await old.output.done;
    await waitFor(
      () => load.ok() >= atTakeover + 500 || load.failures.length > 0,
      "churn after the takeover",
      20_000,
    );
    await load.stop();
    const result = await long.done;

    assert.deepEqual(load.failures.slice(0, 5), [], `${load.failures.length} failed`);
    assert.equal(result.receivedBytes, 48 * 1024 * 1024);
    assert.equal(result.received, result.sent);
    assert.equal(oldCode, 0, old.output.lines.join("\n"));
    const oldSaid = old.output.lines.join("\n");
    assert.match(oldSaid, /takeover: listening sockets sent to a new process: 127\.0\.0\.1:/);
    assert.match(oldSaid, /takeover: the new process serves the listeners; draining/);
    assert.match(
      next.output.lines.join("\n"),
      /takeover: received the listening sockets of pid \d+: 127\.0\.0\.1:\d+, \[::1\]:\d+/,
    );
    for (let i = 0; i < 20; i++) {
      await shortExchange(v6, crypto.getRandomValues(new Uint8Array(1024)), "::1");
    }
    // The new process serves on the same admin address, and took connections itself.
    assert.ok(await metric(admin, "splice_connections_total") > 0);
    assert.equal(takeoverSocketsLeft(), 0);
    assert.equal(await next.stop("SIGTERM"), 0, next.output.lines.join("\n"));
  }).finally(() => next?.stop());
});

async function adminPost(
  admin: number,
  path: string,
  body: string,
  token = TOKEN,
): Promise<{ status: number; text: string }> {
  const response = await fetch(`http://127.0.0.1:${admin}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body,
  });
  return { status: response.status, text: await response.text() };
}

Deno.test({
  name: "takeover: a new process that fails at any step leaves the running one serving",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const payload = crypto.getRandomValues(new Uint8Array(1024));
  const failed: Proxy[] = [];
  await withRunningProxy((text) => text, async ({ backend, listen, admin, dir, path, old }) => {
    // The same proxy with a second listener on a port this test holds: it cannot start.
    const badPath = `${dir}/bad.toml`;
    await Deno.writeTextFile(
      badPath,
      configText(listen, admin, backend.port) + `
[[listeners]]
address = "127.0.0.1:${taken.addr.port}"
`,
    );

    // A wrong token: refused before anything is sent.
    const wrongTokenPath = `${dir}/wrong-token.toml`;
    await Deno.writeTextFile(
      wrongTokenPath,
      configText(listen, admin, backend.port).replace(TOKEN, "not-the-token-0123456789"),
    );
    const wrongToken = spawnProxy(wrongTokenPath, { args: ["--takeover", `127.0.0.1:${admin}`] });
    failed.push(wrongToken);
    assert.equal(await wrongToken.child.status.then((s) => s.code), 1);
    await wrongToken.output.done;
    assert.match(
      wrongToken.output.lines.join("\n"),
      /Cannot take over from 127\.0\.0\.1:\d+: POST \/takeover answered 401.*the running proxy keeps serving/s,
    );

    // Sockets received, then a listener of its own fails: it exits, closing its copies.
    const cannotListen = spawnProxy(badPath, { args: ["--takeover", `127.0.0.1:${admin}`] });
    failed.push(cannotListen);
    assert.equal(await cannotListen.child.status.then((s) => s.code), 1);
    await cannotListen.output.done;
    assert.match(
      cannotListen.output.lines.join("\n"),
      /Cannot listen on 127\.0\.0\.1:\d+: .*; the running proxy keeps serving/,
    );
    assert.match(old.output.lines.join("\n"), /takeover: listening sockets sent/);
    // Nothing reached the old process's listener or changed for its clients.
    for (let i = 0; i < 50; i++) await shortExchange(listen, payload);
    assert.equal(await metric(admin, "splice_connections_total"), 50);

    // A later takeover with a good config succeeds.
    const next = spawnProxy(path, { args: ["--takeover", `127.0.0.1:${admin}`] });
    failed.push(next);
    await next.output.line(/^ready$/, "the new proxy to be ready", 20_000);
    assert.equal(await old.child.status.then((s) => s.code), 0);
    for (let i = 0; i < 50; i++) await shortExchange(listen, payload);
    assert.equal(await metric(admin, "splice_connections_total"), 50);
    assert.equal(takeoverSocketsLeft(), 0);
  }).finally(async () => {
    for (const proxy of failed) await proxy.stop();
    taken.close();
  });
});

Deno.test({
  name: "takeover: bad requests are refused with their reason; the socket must be this user's",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  let stranger: Deno.ChildProcess | undefined;
  await withRunningProxy((text) => text, async ({ listen, admin, dir }) => {
    await Deno.chmod(dir, 0o777);
    const name = `splice-takeover-1-${"ab".repeat(16)}`;

    const notAName = await adminPost(admin, "/takeover", '{"socket": "/tmp/x.sock"}');
    assert.equal(notAName.status, 400);
    assert.match(notAName.text, /the body must be \{"socket": "@splice-takeover-/);
    const nobodyThere = await adminPost(admin, "/takeover", JSON.stringify({ socket: `@${name}` }));
    assert.equal(nobodyThere.status, 400);
    assert.match(nobodyThere.text, /Cannot connect to @splice-takeover-1-.*ECONNREFUSED/);
    const early = await adminPost(admin, "/takeover/finish", "{}");
    assert.equal(early.status, 409);
    assert.match(
      early.text,
      /Cannot finish a takeover: the body must be \{"id": \.\.\.\} of a handover/,
    );
    const madeUp = await adminPost(
      admin,
      "/takeover/finish",
      JSON.stringify({ id: "0".repeat(32) }),
    );
    assert.equal(madeUp.status, 409);
    const noToken = await adminPost(
      admin,
      "/takeover",
      JSON.stringify({ socket: `@${name}` }),
      "x",
    );
    assert.equal(noToken.status, 401);

    // A socket another user listens on (the kernel says who, SO_PEERCRED) gets nothing.
    const setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => {
      try {
        return Deno.statSync(p).isFile;
      } catch {
        return false;
      }
    });
    if (Deno.uid() !== 0 || setpriv === undefined) {
      // deno-lint-ignore no-console -- a skipped case says why
      console.log("skipped the other-user case: needs root and setpriv (util-linux)");
    } else {
      const script = `${dir}/stranger.ts`;
      const unix = new URL("../ffi/unix.ts", import.meta.url).href;
      await Deno.writeTextFile(
        script,
        `import { listenAbstract } from "${unix}";
const fd = listenAbstract(Deno.args[0]);
console.log(typeof fd === "number" ? "listening" : "failed " + JSON.stringify(fd));
await new Promise((resolve) => setTimeout(resolve, 30_000));
`,
      );
      await Deno.mkdir(`${dir}/deno`, { mode: 0o777 });
      stranger = new Deno.Command(setpriv, {
        args: [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          Deno.execPath(),
          "run",
          "--allow-ffi",
          "--allow-read",
          script,
          name,
        ],
        env: { DENO_DIR: `${dir}/deno`, NO_COLOR: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const said = outputLines(stranger);
      await said.line(/^listening$/, "the other user's socket");
      const refused = await adminPost(admin, "/takeover", JSON.stringify({ socket: `@${name}` }));
      assert.equal(refused.status, 403);
      assert.match(refused.text, /belongs to uid 65534, not 0/);
      stranger.kill("SIGKILL");
      await stranger.status;
      await said.done;
      stranger = undefined;
    }
    // Still serving, and still the only one.
    await shortExchange(listen, crypto.getRandomValues(new Uint8Array(1024)));
    assert.equal(await metric(admin, "splice_connections_total"), 1);
  }).finally(async () => {
    if (stranger) {
      stranger.kill("SIGKILL");
      await stranger.status;
    }
  });
});

Deno.test("takeover: --takeover needs --config and --allow-ffi", async () => {
  const run = async (args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--config", CONFIG, ...args],
      stdin: "null",
      env: { NO_COLOR: "1" },
    }).output();
    return { code: out.code, text: new TextDecoder().decode(out.stderr) };
  };
  const noConfig = await run(["-A", PROXY, "--takeover", "127.0.0.1:9901"]);
  assert.equal(noConfig.code, 2);
  assert.match(noConfig.text, /--takeover needs --config FILE/);
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/p.toml`, configText(freePort(), freePort(), freePort()));
    const noFfi = await run([
      "--allow-net",
      "--allow-read",
      PROXY,
      "--config",
      `${dir}/p.toml`,
      "--takeover",
      "127.0.0.1:9901",
    ]);
    assert.equal(noFfi.code, 1);
    assert.match(noFfi.text, /Cannot take over: --takeover needs --allow-ffi/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "takeover: an admin endpoint without a token hands nothing over",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const noToken = (text: string): string => text.replace(`token = "${TOKEN}"`, "");
  await withRunningProxy(noToken, async ({ listen, admin, path, old }) => {
    const next = spawnProxy(path, { args: ["--takeover", `127.0.0.1:${admin}`] });
    assert.equal(await next.child.status.then((s) => s.code), 1);
    await next.output.done;
    assert.match(
      next.output.lines.join("\n"),
      /POST \/takeover answered 403: Cannot take over: the admin endpoint has no token/,
    );
    await shortExchange(listen, crypto.getRandomValues(new Uint8Array(1024)));
    assert.doesNotMatch(old.output.lines.join("\n"), /sockets sent/);
  });
});

Deno.test({
  name: "takeover: the new process takes the sockets only from the pid the admin answer names",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  // A stand-in for the running proxy's admin endpoint: before it sends the real message, a
  // stranger process connects to the new process's socket and sends a fd of its own.
  const dir = await Deno.makeTempDir();
  const unix = new URL("../ffi/unix.ts", import.meta.url).href;
  const script = `${dir}/stranger.ts`;
  await Deno.writeTextFile(
    script,
    `import { connectAbstract, sendWithFds } from "${unix}";
const fd = connectAbstract(Deno.args[0]);
if (typeof fd !== "number") throw new Error(JSON.stringify(fd));
const json = new TextEncoder().encode(JSON.stringify({ version: 1, pid: 1, listeners: [{ address: "127.0.0.1:1", port: 1 }] }));
const bytes = new Uint8Array(4 + json.length);
new DataView(bytes.buffer).setUint32(0, json.length);
bytes.set(json, 4);
console.log(sendWithFds(fd, bytes, [0]) === bytes.length ? "sent" : "failed");
await new Promise((resolve) => setTimeout(resolve, 10_000));
`,
  );
  const made = listenSocket(encodeSockaddr("127.0.0.1", 0)!, { reusePort: false, backlog: 8 });
  assert.ok("fd" in made);
  const realFd = made.fd;
  const realPort = localPort(realFd);
  let stranger: Deno.ChildProcess | undefined;
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (request) => {
      const { socket } = await request.json() as { socket: string };
      stranger = new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-ffi", "--allow-read", script, socket.slice(1)],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const said = outputLines(stranger);
      await said.line(/^sent$/, "the stranger's message");
      const handover = sendListeners(
        (send) => send([{ address: "127.0.0.1:8080", port: realPort, fd: realFd }]),
        JSON.stringify({ socket }),
      );
      return Response.json(handover);
    },
  );
  try {
    const taken = await receiveListeners({ address: `127.0.0.1:${server.addr.port}` });
    assert.equal(taken.pid, Deno.pid);
    assert.deepEqual([...taken.sockets.keys()], ["127.0.0.1:8080"]);
    const fd = taken.sockets.get("127.0.0.1:8080")!;
    assert.equal(localAddress(fd), `127.0.0.1:${realPort}`);
    closeFd(fd);
  } finally {
    stranger?.kill("SIGKILL");
    await stranger?.status;
    await server.shutdown();
    closeFd(realFd);
    await Deno.remove(dir, { recursive: true });
  }
});
