/**
 * The admin endpoint's status page (`GET /`) in a real headless browser: Debian's chromium,
 * installed here when missing (the test is skipped, saying why, only where it cannot be). The
 * page reads `/status` by itself; the table it renders must match `/status`.
 */

// deno-lint-ignore-file no-console -- a skipped test says why
import assert from "node:assert/strict";
import { shutdownRelayEngine } from "../mod.ts";
import { parseConfig } from "../config.ts";
import { serveAdmin } from "../proxy/admin.ts";
import { startProxy } from "../proxy/mod.ts";
import type { ProxyStatus } from "../proxy/types.ts";
import { closeQuietly, echoBackend } from "./_helpers.ts";

/** The chromium binary, installed with apt-get if missing; or why there is none. */
async function chromium(): Promise<{ path: string } | { reason: string }> {
  const find = (): string | null => {
    for (const path of ["/usr/bin/chromium", "/usr/bin/chromium-browser"]) {
      try {
        Deno.statSync(path);
        return path;
      } catch {
        // not there
      }
    }
    return null;
  };
  const found = find();
  if (found !== null) return { path: found };
  const install = async (args: string[]): Promise<boolean> => {
    try {
      const out = await new Deno.Command("apt-get", {
        args,
        env: { DEBIAN_FRONTEND: "noninteractive" },
        stdout: "null",
        stderr: "null",
        signal: AbortSignal.timeout(600_000),
      }).output();
      return out.success;
    } catch {
      return false;
    }
  };
  if (!await install(["install", "-y", "chromium"])) {
    await install(["update"]);
    await install(["install", "-y", "chromium"]);
  }
  const installed = find();
  return installed !== null
    ? { path: installed }
    : { reason: "chromium is not installed and apt-get could not install it" };
}

const browser = await chromium();
if ("reason" in browser) console.log(`status page test skipped: ${browser.reason}`);
const browserPath = "path" in browser ? browser.path : "";

/** The page as chromium renders it after its scripts ran (virtual time, bounded). */
async function renderedDom(path: string, url: string): Promise<string> {
  const out = await new Deno.Command(path, {
    args: [
      "--headless",
      "--no-sandbox", // root, in a container: the sandbox cannot start
      "--disable-gpu",
      "--no-first-run",
      "--virtual-time-budget=5000",
      "--dump-dom",
      url,
    ],
    stdout: "piped",
    stderr: "null",
    signal: AbortSignal.timeout(60_000),
  }).output();
  return new TextDecoder().decode(out.stdout);
}

/** The rows of table `id` in `dom`: per `data-key`, each `data-field` cell's text. */
function rows(dom: string, id: string): Record<string, Record<string, string>> {
  const table = dom.match(new RegExp(`<table id="${id}">([\\s\\S]*?)</table>`))?.[1] ?? "";
  const out: Record<string, Record<string, string>> = {};
  for (const row of table.matchAll(/<tr data-key="([^"]*)"[^>]*>([\s\S]*?)<\/tr>/g)) {
    const cells: Record<string, string> = {};
    for (const cell of row[2].matchAll(/<td data-field="([^"]*)"[^>]*>([\s\S]*?)<\/td>/g)) {
      cells[cell[1]] = cell[2].replaceAll("&amp;", "&").replaceAll("&lt;", "<");
    }
    out[row[1].replaceAll("&amp;", "&")] = cells;
  }
  return out;
}

Deno.test({
  name: "status page: chromium renders listeners and backends from /status, as /status has them",
  ignore: "reason" in browser,
  async fn(): Promise<void> {
    const one = echoBackend();
    const two = echoBackend();
    const proxy = startProxy(parseConfig(`
engines = 1

[[listeners]]
address = "127.0.0.1:0"

[clusters.app]
frontends = [{ address = "127.0.0.1:0" }]
backends = [
  { address = "127.0.0.1:${one.port}", weight = 30 },
  { address = "127.0.0.1:${two.port}" },
  { address = "127.0.0.1:1", backup = true },
]
`));
    const stop = new AbortController();
    const admin = serveAdmin(
      { hostname: "127.0.0.1", port: 0 },
      {
        stats: () => proxy.stats(),
        status: () => proxy.status(),
        reload: () => Promise.resolve(null),
      },
      stop.signal,
    );
    const base = `http://127.0.0.1:${admin.addr.port}`;
    try {
      const port = proxy.listenerPorts["127.0.0.1:0"];
      for (let i = 0; i < 5; i++) {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        await conn.write(new Uint8Array(100 + i));
        await conn.closeWrite();
        while (await conn.read(new Uint8Array(1024)) !== null);
        closeQuietly(conn);
      }
      proxy.setBackend("app", `127.0.0.1:${two.port}`, { state: "drain" });
      const page = await fetch(`${base}/`);
      assert.equal(page.headers.get("content-type"), "text/html; charset=utf-8");
      assert.match(page.headers.get("content-security-policy") ?? "", /default-src 'none'/);
      const html = await page.text();
      assert.doesNotMatch(html, /https?:\/\//, "no external asset");

      const dom = await renderedDom(browserPath, `${base}/`);
      const status = await (await fetch(`${base}/status`)).json() as ProxyStatus;
      const backends = rows(dom, "backends");
      assert.deepEqual(Object.keys(backends).sort(), Object.keys(status.backends).sort(), dom);
      for (const [key, b] of Object.entries(status.backends)) {
        const shown = backends[key];
        assert.deepEqual(
          [shown.state, shown.weight, shown.active, shown.connections, shown.failures],
          [b.state, String(b.weight), String(b.active), String(b.connections), String(b.failures)],
          key,
        );
        assert.deepEqual([shown.bytesIn, shown.bytesOut], [String(b.bytesIn), String(b.bytesOut)]);
      }
      assert.equal(backends[`app/127.0.0.1:${two.port}`].state, "drain");
      const listeners = rows(dom, "listeners");
      assert.deepEqual(listeners["127.0.0.1:0"], { address: "127.0.0.1:0", port: String(port) });
      assert.match(dom, /data-field="total">total: 5</);
    } finally {
      stop.abort();
      await admin.finished;
      await proxy.shutdown();
      await one.close();
      await two.close();
      await shutdownRelayEngine();
    }
  },
});
