/**
 * proxy.ts, the CLI, under faults: fds that run out, a backend that resets every connection,
 * addresses already in use, and what the config or Deno's permissions make impossible, said at
 * start and under --check. The proxy runs as a subprocess; every wait is bounded.
 */

import assert from "node:assert/strict";
import {
  acceptEach,
  closeQuietly,
  echoBackend,
  freePort,
  outputLines,
  waitFor,
} from "./_helpers.ts";
import { within } from "./_relay_helpers.ts";
import { resetAndClose } from "./_sockets.ts";

const PROXY = new URL("../proxy.ts", import.meta.url).pathname;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;

interface RunningProxy {
  child: Deno.ChildProcess;
  /** stdout and stderr lines so far, in order of arrival per stream. */
  lines: string[];
  /** Waits for a line matching `pattern`; returns it. */
  line(pattern: RegExp, what: string, timeoutMs?: number): Promise<string>;
  /** SIGTERM, then the exit status (SIGKILL after 10 s). */
  stop(): Promise<Deno.CommandStatus>;
  /** The exit status of a proxy that exits by itself, with all its output read. */
  exited(): Promise<Deno.CommandStatus>;
}

/** Starts proxy.ts on `configPath` with `flags`, under `ulimit -n` when given. */
function spawnProxy(
  configPath: string,
  options: { flags?: string[]; nofile?: number } = {},
): RunningProxy {
  const deno = [Deno.execPath(), "run", "--config", CONFIG, ...(options.flags ?? ["-A"]), PROXY];
  const args = [...deno, "--config", configPath];
  const [command, commandArgs] = options.nofile
    ? ["bash", ["-c", `ulimit -n ${options.nofile} && exec "$0" "$@"`, ...args]]
    : [args[0], args.slice(1)];
  const child = new Deno.Command(command, {
    args: commandArgs,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const output = outputLines(child);
  const collected = output.done;
  return {
    child,
    lines: output.lines,
    line: output.line,
    async exited(): Promise<Deno.CommandStatus> {
      const status = await within(child.status, 15_000, "the proxy to exit");
      await collected;
      return status;
    },
    async stop(): Promise<Deno.CommandStatus> {
      try {
        child.kill("SIGTERM");
      } catch {
        // already exited
      }
      const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      try {
        const status = await child.status;
        await collected;
        return status;
      } finally {
        clearTimeout(killer);
      }
    },
  };
}

function config(backend: string, extra = "", listen = "127.0.0.1:0", metrics?: number): string {
  return `
${extra}
${metrics ? `[metrics]\naddress = "127.0.0.1:${metrics}"\n` : ""}
[[listeners]]
address = "${listen}"

[clusters.app]
frontends = [{ address = "${listen}" }]
backends = [{ address = "${backend}" }]
`;
}

async function withConfig<T>(text: string, fn: (path: string) => Promise<T>): Promise<T> {
  const path = await Deno.makeTempFile({ prefix: "splice_proxy_", suffix: ".toml" });
  try {
    await Deno.writeTextFile(path, text);
    return await fn(path);
  } finally {
    await Deno.remove(path);
  }
}

/** One byte there and back through the proxy. */
async function echoOnce(port: number): Promise<boolean> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new Uint8Array([42]));
    const byte = new Uint8Array(1);
    return (await conn.read(byte)) === 1 && byte[0] === 42;
  } finally {
    conn.close();
  }
}

function listeningPort(line: string): number {
  return Number(/\(port (\d+)\)/.exec(line)![1]);
}

async function metric(port: number, pattern: RegExp): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return Number(pattern.exec(text)?.[1] ?? 0);
}

Deno.test("proxy.ts: out of fds, accepting pauses and resumes; 300 connects at once under ulimit -n 128", async () => {
  const backend = echoBackend();
  const metricsPort = freePort();
  await withConfig(
    config(`127.0.0.1:${backend.port}`, "", "127.0.0.1:0", metricsPort),
    async (path) => {
      const proxy = spawnProxy(path, { nofile: 128 });
      const clients: Deno.TcpConn[] = [];
      try {
        const port = listeningPort(await proxy.line(/^listening /, "the listener"));
        await proxy.line(/^ready$/, "ready");
        assert.ok(await echoOnce(port), "an echo before the storm");
        // About 45 connections fit in 128 fds; the rest wait in the listen queue while the
        // proxy's accept() fails with EMFILE.
        for (let i = 0; i < 300; i++) {
          const conn = await Deno.connect({ hostname: "127.0.0.1", port });
          clients.push(conn);
          await conn.write(new Uint8Array([i & 0xff]));
        }
        await proxy.line(/accept failed \(EMFILE\)/, "the EMFILE log line");
        const firstAt = Date.now();
        // The admin endpoint's accept fails the same way: Deno.serve ends on it, and unhandled
        // that ended the process. It must come back instead.
        const scrape = fetch(`http://127.0.0.1:${metricsPort}/metrics`, {
          signal: AbortSignal.timeout(1_000),
        }).then((r) => r.text(), () => "");
        // Held for a while: the loop must neither spin nor give up.
        await waitFor(() => Date.now() - firstAt >= 1_500, "1.5 s of EMFILE", 3_000);
        const logged = proxy.lines.filter((l) => /accept failed/.test(l)).length;
        assert.ok(logged <= 3, `accept errors logged ${logged} times in about 1.5 s`);
        await scrape;
        for (const conn of clients.splice(0)) conn.close();
        // Every queued connection is accepted once fds are free, and new ones are served.
        await waitFor(async () => await echoOnce(port).catch(() => false), "an echo after", 15_000);
        const emfile = await metric(
          metricsPort,
          /^splice_accept_errors_total\{reason="EMFILE"\} (\d+)/m,
        );
        // Spinning would count hundreds of thousands; 5 ms doubling to 1 s makes a handful, plus
        // a retry each time a connection closed.
        assert.ok(emfile >= 1 && emfile < 1_000, `EMFILE counted ${emfile} times`);
        const ejected = await metric(metricsPort, /^splice_backend_ejected\{[^}]*\} (\d+)/m);
        const failures = await metric(
          metricsPort,
          /^splice_backend_connect_failures_total\{[^}]*\} (\d+)/m,
        );
        assert.equal(ejected, 0, "the proxy's own EMFILE never ejects the backend");
        assert.equal(failures, 0, "nor counts against it");
        await waitFor(
          async () => await metric(metricsPort, /^splice_connections_total (\d+)/m) >= 302,
          "every queued connection to be accepted",
          15_000,
        );
        const status = await proxy.stop();
        assert.equal(status.code, 0, proxy.lines.join("\n"));
      } finally {
        for (const conn of clients) closeQuietly(conn);
        await proxy.stop();
        await backend.close();
      }
    },
  );
});

Deno.test("proxy.ts: 300 connections to a backend that resets on accept; the proxy lives and exits 0", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  acceptEach(listener, resetAndClose);
  const metricsPort = freePort();
  await withConfig(
    config(`127.0.0.1:${listener.addr.port}`, "", "127.0.0.1:0", metricsPort),
    async (path) => {
      const proxy = spawnProxy(path);
      try {
        const port = listeningPort(await proxy.line(/^listening /, "the listener"));
        await proxy.line(/^ready$/, "ready");
        const one = async (): Promise<void> => {
          const conn = await Deno.connect({ hostname: "127.0.0.1", port });
          try {
            await conn.write(new Uint8Array(64)).catch(() => 0);
            const buffer = new Uint8Array(64);
            while ((await conn.read(buffer).catch(() => null)) !== null) {
              // until the reset or the end
            }
          } finally {
            conn.close();
          }
        };
        for (let round = 0; round < 30; round++) {
          await within(Promise.all(Array.from({ length: 10 }, one)), 10_000, "10 connections");
        }
        await waitFor(
          async () => await metric(metricsPort, /^splice_connections_total (\d+)/m) === 300,
          "300 connections counted",
        );
        assert.equal(await metric(metricsPort, /^splice_internal_errors_total (\d+)/m), 0);
        const status = await proxy.stop();
        assert.equal(status.code, 0, proxy.lines.join("\n"));
        assert.equal(proxy.lines.filter((l) => l.startsWith("conn ")).length, 300);
      } finally {
        await proxy.stop();
        listener.close();
      }
    },
  );
});

Deno.test("proxy.ts: an address already in use is named, for a listener and for metrics", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const address = `127.0.0.1:${taken.addr.port}`;
  await withConfig(config("127.0.0.1:9", "", address), async (path) => {
    const proxy = spawnProxy(path);
    const status = await proxy.exited();
    assert.equal(status.code, 1);
    assert.ok(
      proxy.lines.some((l) => l.includes(`Cannot listen on ${address}:`) && /in use/i.test(l)),
      proxy.lines.join("\n"),
    );
  });
  await withConfig(config("127.0.0.1:9", "", "127.0.0.1:0", taken.addr.port), async (path) => {
    const proxy = spawnProxy(path);
    const status = await proxy.exited();
    assert.equal(status.code, 1);
    assert.ok(
      proxy.lines.some((l) => l.includes(`Cannot listen on ${address} (metrics):`)),
      proxy.lines.join("\n"),
    );
  });
});

Deno.test("proxy.ts --check: warns of a cluster that takes no connection and of addresses --allow-net refuses", async () => {
  const text = `
[[listeners]]
address = "127.0.0.1:8080"

[clusters.app]
frontends = [{ address = "127.0.0.1:8080" }]
backends = [{ address = "app.internal:9000", weight = 0 }, { address = "127.0.0.1:9001", weight = 0 }]
`;
  await withConfig(text, async (path) => {
    const run = async (flags: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--config", CONFIG, ...flags, PROXY, "--check", "--config", path],
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: out.code, text: new TextDecoder().decode(out.stdout) };
    };
    // With the permissions of `deno task start`: the host name is outside them.
    const scoped = await run(["--allow-read", "--allow-net=127.0.0.1"]);
    assert.equal(scoped.code, 0, scoped.text);
    assert.match(scoped.text, /warning: clusters\.app\.backends: every backend has weight 0/);
    assert.match(
      scoped.text,
      /warning: clusters\.app\.backends\[0\]\.address = "app\.internal:9000": not permitted by --allow-net/,
    );
    assert.doesNotMatch(scoped.text, /127\.0\.0\.1:9001": not permitted/);
    assert.match(scoped.text, /ok \(2 warnings\)/);
    // Without any --allow-net, nothing can be said of permissions, and that is said.
    const bare = await run(["--allow-read"]);
    assert.equal(bare.code, 0, bare.text);
    assert.match(bare.text, /network permissions not checked/);
  });
});

Deno.test("proxy.ts: a backend host outside --allow-net is warned of at start, and each connection says why", async () => {
  const metricsPort = freePort();
  await withConfig(config("app.internal:9000", "", "127.0.0.1:0", metricsPort), async (path) => {
    const proxy = spawnProxy(path, {
      flags: ["--allow-ffi", "--allow-read", "--allow-net=127.0.0.1"],
    });
    try {
      await proxy.line(/app\.internal:9000": not permitted by --allow-net/, "the start warning");
      const port = listeningPort(await proxy.line(/^listening /, "the listener"));
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      const buffer = new Uint8Array(16);
      while ((await conn.read(buffer).catch(() => null)) !== null) {
        // closed by the proxy: no backend it may reach
      }
      conn.close();
      const record = await proxy.line(/^conn .* end=no-backend/, "the connection's log line");
      assert.match(record, /error=".*app\.internal:9000.*--allow-net/);
      await proxy.line(/backend app\/app\.internal:9000: not tried \(permission\)/, "the reason");
      assert.equal(
        await metric(metricsPort, /^splice_local_errors_total\{reason="permission"\} (\d+)/m),
        1,
      );
      assert.equal(await metric(metricsPort, /^splice_connect_failures_total (\d+)/m), 0);
    } finally {
      await proxy.stop();
    }
  });
});
