// deno-lint-ignore-file no-console -- a benchmark CLI: printing is its job
/**
 * How many idle connections one proxy.ts process holds here, and what each costs: the process's
 * fd limit raised to its hard limit (20,000 on this machine: two fds per relayed connection, so
 * about 9,900 connections), then as many connections as fit, each proved relayed by a 1-byte echo
 * when opened, every tenth proved again once all are open, PSS per connection from before to
 * after, and the extrapolation to 100,000 connections.
 *
 *     deno run -A bench/capacity.ts [COUNT] [ENGINES]
 *
 * Run after bench/run.ts has built bench/.build/benchtool.
 *
 * @module
 */

import { pssKiB, ROOT, start, TOOL } from "./peers.ts";

const count = Number(Deno.args[0] ?? 9_900);
const engines = Number(Deno.args[1] ?? 2);
/** Each process's fd limit, raised to the hard limit with `ulimit -n` before it execs. */
const NOFILE = 20_000;

function raised(command: string, args: string[]): [string, string[]] {
  const quoted = [command, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
  return ["bash", ["-c", `ulimit -n ${NOFILE} && exec ${quoted}`]];
}

const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const echoPort = listener.addr.port;
listener.close();
const echo = await start(...raised(TOOL, ["echo", String(echoPort)]), true);
const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const port = probe.addr.port;
probe.close();
const config = await Deno.makeTempFile({ suffix: ".toml" });
await Deno.writeTextFile(
  config,
  `engines = ${engines}\n[[listeners]]\naddress = "127.0.0.1:${port}"\nmax_connections = 100000\n` +
    `[clusters.app]\nfrontends = [{ address = "127.0.0.1:${port}" }]\n` +
    `backends = [{ address = "127.0.0.1:${echoPort}" }]\n`,
);
const proxy = await start(
  ...raised(Deno.execPath(), ["run", "-A", `${ROOT}proxy.ts`, "--config", config]),
  true,
);
try {
  const warm = await start(...raised(TOOL, ["idle", String(port), "10"]), true);
  await warm.stop();
  await new Promise((r) => setTimeout(r, 500));
  const before = pssKiB(proxy.pid);
  const started = performance.now();
  const [command, args] = raised(TOOL, ["idle", String(port), String(count)]);
  const holder = new Deno.Command(command, { args, stdin: "piped", stdout: "piped" }).spawn();
  const lines = holder.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const waitFor = async (pattern: RegExp): Promise<RegExpMatchArray> => {
    for (;;) {
      const match = text.match(pattern);
      if (match) return match;
      const { value, done } = await lines.read();
      if (done) throw new Error(`benchtool idle ended before ${pattern}: ${text}`);
      text += value;
    }
  };
  const writer = holder.stdin.getWriter();
  try {
    await waitFor(/ready/);
    const openSeconds = (performance.now() - started) / 1000;
    await writer.write(new TextEncoder().encode("c"));
    const checked = await waitFor(/checked (\d+) (\d+)/);
    await new Promise((r) => setTimeout(r, 1000));
    const after = pssKiB(proxy.pid);
    const perConn = (after - before) / count;
    const at100k = (before + perConn * 100_000) / 1024;
    console.log(
      `capacity: ${count} idle connections through proxy.ts (engines = ${engines}) opened in ` +
        `${openSeconds.toFixed(1)} s, each echoed once; ${checked[2]} of ${checked[1]} sampled ` +
        `echo again; PSS ${(before / 1024).toFixed(1)} -> ${(after / 1024).toFixed(1)} MiB, ` +
        `${perConn.toFixed(2)} KiB per connection; 100,000 would take about ` +
        `${at100k.toFixed(0)} MiB and 200,000 fds`,
    );
  } finally {
    await writer.close().catch(() => {});
    await lines.cancel().catch(() => {});
    await holder.status;
  }
} finally {
  await proxy.stop();
  await echo.stop();
  await Deno.remove(config);
}
