/**
 * proxy/http.ts, the admin endpoint's HTTP/1.1 server, against clients that misbehave: heads
 * trickled or abandoned, heads too large, malformed and ambiguous requests, bodies cut short,
 * more connections than allowed, and fds that run out. Every client is a raw loopback socket, so
 * the bytes are exactly the ones a hostile client sends; every wait is bounded. The parser
 * (proxy/http_parse.ts) is table-tested in http_parse_test.ts.
 */

import assert from "node:assert/strict";
import { outputLines, waitFor } from "./_helpers.ts";
import {
  type HttpHandler,
  type HttpLimits,
  type HttpServerEvent,
  serveHttp,
} from "../proxy/http.ts";
import { RAW_HTTP_TIMEOUT_MS as TIMEOUT_MS, RawHttp } from "./_raw_http.ts";

/** The module the EMFILE subprocess serves with. */
const HTTP_MODULE = new URL("../proxy/http.ts", import.meta.url).href;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;
const encoder = new TextEncoder();

interface Served {
  port: number;
  refused: Readonly<Record<string, number>>;
  events: HttpServerEvent[];
  /** Requests that reached the handler, as "METHOD path". */
  requests: string[];
}

/** The default handler: echoes the method, path, remote port and the body's length. */
const echo: HttpHandler = async (request, info) => {
  const body = request.body ? (await request.arrayBuffer()).byteLength : 0;
  const path = new URL(request.url).pathname;
  return new Response(`${request.method} ${path} ${info.remoteAddr.port} ${body}\n`);
};

/** Runs `body` against a fresh server on 127.0.0.1 (any free port), then stops it. */
async function withServer(
  limits: Partial<HttpLimits>,
  body: (served: Served) => Promise<void>,
  handler: HttpHandler = echo,
): Promise<void> {
  const stop = new AbortController();
  const events: HttpServerEvent[] = [];
  const requests: string[] = [];
  const server = serveHttp({
    hostname: "127.0.0.1",
    port: 0,
    signal: stop.signal,
    limits,
    onEvent: (event) => events.push(event),
  }, (request, info) => {
    requests.push(`${request.method} ${new URL(request.url).pathname}`);
    return handler(request, info);
  });
  try {
    await body({ port: server.addr.port, refused: server.refused, events, requests });
  } finally {
    stop.abort();
    await server.finished;
  }
}

const GET = "GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

Deno.test("serveHttp: a head trickled a byte at a time is served; trickled past the deadline, cut off at it (408)", async () => {
  await withServer({ headTimeoutMs: 800 }, async (served) => {
    const quick = await RawHttp.open(served.port);
    try {
      const started = Date.now();
      await quick.trickle(GET, 5);
      const reply = await quick.reply();
      assert.equal(reply.status, 200);
      assert.match(reply.body, /^GET \/x /);
      assert.ok(Date.now() - started < 800, "the whole head within the deadline");
    } finally {
      quick.close();
    }
    // A byte every 50 ms forever: each byte is prompt, but the head never ends. The deadline
    // runs from the accept, not from the last byte.
    const slow = await RawHttp.open(served.port);
    try {
      const started = Date.now();
      const sending = slow.trickle(`GET / HTTP/1.1\r\nX-Slow: ${"a".repeat(10_000)}`, 50);
      const reply = await slow.reply();
      await slow.closed();
      const elapsed = Date.now() - started;
      await sending;
      assert.equal(reply.status, 408);
      assert.equal(reply.headers.get("connection"), "close");
      assert.ok(elapsed >= 700 && elapsed < 2_500, `closed after ${elapsed} ms`);
    } finally {
      slow.close();
    }
    assert.equal(served.refused.slow, 1);
    assert.deepEqual(served.requests, ["GET /x"]);
  });
});

Deno.test("serveHttp: a head that stops half way gets 408 and is closed at the deadline; counted and reported", async () => {
  await withServer({ headTimeoutMs: 300 }, async (served) => {
    const client = await RawHttp.open(served.port);
    try {
      const started = Date.now();
      await client.send("GET /half HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Part");
      const reply = await client.reply();
      assert.equal(reply.status, 408);
      assert.match(reply.body, /^Request head not complete within 300 ms\n$/);
      await client.closed();
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 250 && elapsed < 1_500, `closed after ${elapsed} ms`);
    } finally {
      client.close();
    }
    assert.equal(served.refused.slow, 1);
    assert.deepEqual(served.requests, []);
    const event = served.events.find((e) => e.type === "refused");
    assert.ok(event?.type === "refused" && event.reason === "slow" && event.status === 408);
  });
});

Deno.test("serveHttp: a connection that sends nothing is closed at the deadline without an answer, and counted", async () => {
  await withServer({ headTimeoutMs: 300 }, async (served) => {
    const client = await RawHttp.open(served.port);
    try {
      const started = Date.now();
      assert.equal(await client.closed(), "", "closed without a response");
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 250 && elapsed < 1_500, `closed after ${elapsed} ms`);
    } finally {
      client.close();
    }
    assert.equal(served.refused.slow, 1);
  });
});

Deno.test("serveHttp: a 100 KiB head gets 431, whether in a header or the request line", async () => {
  await withServer({}, async (served) => {
    for (
      const text of [
        `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(100 * 1024)}\r\n\r\n`,
        `GET /${"a".repeat(100 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n`,
      ]
    ) {
      const client = await RawHttp.open(served.port);
      try {
        // The server answers after 16 KiB and stops reading: the rest may not all be taken.
        const sending = client.send(text).catch(() => {});
        const reply = await client.reply();
        assert.equal(reply.status, 431);
        assert.equal(reply.headers.get("connection"), "close");
        await client.closed();
        await sending;
      } finally {
        client.close();
      }
    }
    assert.equal(served.refused["head-too-large"], 2);
    assert.deepEqual(served.requests, []);
  });
});

Deno.test("serveHttp: malformed request lines and headers get 400 and close; other versions 505; counted", async () => {
  const malformed = [
    "GET /\r\n\r\n",
    "GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "GET / FOO/1.1\r\n\r\n",
    "GET nopath HTTP/1.1\r\n\r\n",
    "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
    "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    "GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    "GET / HTTP/1.1\nHost: x\n\n",
    "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
  ];
  await withServer({}, async (served) => {
    for (const text of malformed) {
      const client = await RawHttp.open(served.port);
      try {
        await client.send(text);
        const reply = await client.reply();
        assert.equal(reply.status, 400, JSON.stringify(text));
        assert.equal(reply.headers.get("connection"), "close");
        await client.closed();
      } finally {
        client.close();
      }
    }
    const http2 = await RawHttp.open(served.port);
    try {
      await http2.send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
      assert.equal((await http2.reply()).status, 505);
    } finally {
      http2.close();
    }
    assert.equal(served.refused.malformed, malformed.length);
    assert.equal(served.refused.unsupported, 1);
    assert.deepEqual(served.requests, []);
  });
});

Deno.test("serveHttp: Content-Length with Transfer-Encoding, or a bad Content-Length, gets 400 before the handler", async () => {
  const requests = [
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" +
    "0\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello",
  ];
  await withServer({}, async (served) => {
    for (const text of requests) {
      const client = await RawHttp.open(served.port);
      try {
        await client.send(text);
        assert.equal((await client.reply()).status, 400, JSON.stringify(text));
        await client.closed();
      } finally {
        client.close();
      }
    }
    assert.equal(served.refused.malformed, requests.length);
    assert.deepEqual(served.requests, []);
  });
});

Deno.test("serveHttp: chunked bodies with bad sizes get 400; good ones are read; a slow body gets 408", async () => {
  await withServer({ bodyTimeoutMs: 300 }, async (served) => {
    const post = "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (const chunks of ["-5\r\nhello\r\n", "0x5\r\nhello\r\n", "zz\r\n", "5 \r\nhello\r\n"]) {
      const client = await RawHttp.open(served.port);
      try {
        await client.send(post + chunks + "0\r\n\r\n");
        assert.equal((await client.reply()).status, 400, JSON.stringify(chunks));
        await client.closed();
      } finally {
        client.close();
      }
    }
    assert.equal(served.refused.malformed, 4);
    // A good body, with an extension and a trailer, leaves the connection usable; Expect:
    // 100-continue is answered when the handler reads.
    const good = await RawHttp.open(served.port);
    try {
      await good.send(post.replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n"));
      assert.equal((await good.reply()).status, 100);
      await good.send("5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n");
      const reply = await good.reply();
      assert.equal(reply.status, 200);
      assert.match(reply.body, /^POST \/c \d+ 11\n$/);
      await good.send(GET);
      assert.equal((await good.reply()).status, 200);
    } finally {
      good.close();
    }
    // Half a body, then silence: the handler's read fails at the body deadline, and the client
    // is told so.
    const slow = await RawHttp.open(served.port);
    try {
      await slow.send("POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello");
      const reply = await slow.reply();
      assert.equal(reply.status, 408);
      assert.match(reply.body, /body/);
      await slow.closed();
    } finally {
      slow.close();
    }
    assert.equal(served.refused.slow, 1);
  });
});

Deno.test("serveHttp: keep-alive serves requests in turn on one connection, then closes it when idle, uncounted", async () => {
  await withServer({ idleTimeoutMs: 300 }, async (served) => {
    const client = await RawHttp.open(served.port);
    try {
      await client.send(GET);
      const first = await client.reply();
      assert.equal(first.status, 200);
      assert.equal(first.headers.get("connection"), null);
      // Two more in one write (pipelined), one with a body: answered in order.
      await client.send(
        "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" +
          "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n",
      );
      const second = await client.reply();
      const third = await client.reply(true);
      assert.equal(second.status, 200);
      assert.match(second.body, /^POST \/b \d+ 3\n$/);
      assert.equal(third.status, 200);
      assert.ok(Number(third.headers.get("content-length")) > 0, "HEAD is told GET's length");
      // The same connection throughout: the same client port each time.
      assert.equal(first.body.split(" ")[2], second.body.split(" ")[2]);
      const started = Date.now();
      assert.equal(await client.closed(), "", "no bytes after the last response");
      const idle = Date.now() - started;
      assert.ok(idle >= 250 && idle < 1_500, `closed after ${idle} ms idle`);
    } finally {
      client.close();
    }
    // Connection: close, and HTTP/1.0, close after one response.
    for (
      const text of [
        GET.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"),
        "GET / HTTP/1.0\r\n\r\n",
      ]
    ) {
      const once = await RawHttp.open(served.port);
      try {
        await once.send(text);
        const reply = await once.reply();
        assert.equal(reply.status, 200);
        assert.equal(reply.headers.get("connection"), "close");
        assert.equal(await once.closed(), "");
      } finally {
        once.close();
      }
    }
    assert.deepEqual(Object.values(served.refused).filter((n) => n > 0), []);
    assert.equal(served.requests.length, 5);
  });
});

Deno.test("serveHttp: past the connection limit, 503 at once, counted; a freed slot serves again", async () => {
  await withServer({ maxConnections: 2 }, async (served) => {
    const held: RawHttp[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        const client = await RawHttp.open(served.port);
        held.push(client);
        await client.send(GET);
        assert.equal((await client.reply()).status, 200, "kept alive, holding a slot");
      }
      const extra = await RawHttp.open(served.port);
      try {
        const reply = await extra.reply();
        assert.equal(reply.status, 503);
        assert.equal(reply.headers.get("connection"), "close");
        assert.match(reply.body, /Too many connections/);
        await extra.closed();
      } finally {
        extra.close();
      }
      assert.equal(served.refused["too-many"], 1);
      held.shift()!.close();
      // The slot frees when the server sees the close; until then a connection may still get 503.
      await waitFor(async () => {
        const next = await RawHttp.open(served.port);
        try {
          await next.send(GET);
          return (await next.reply()).status === 200;
        } finally {
          next.close();
        }
      }, "a connection served after one closed");
    } finally {
      for (const client of held) client.close();
    }
  });
});

Deno.test("serveHttp: stopping closes waiting connections, even half-sent ones, and lets a response in flight finish", async () => {
  const stop = new AbortController();
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  let entered!: () => void;
  const inHandler = new Promise<void>((resolve) => entered = resolve);
  const server = serveHttp({ hostname: "127.0.0.1", port: 0, signal: stop.signal }, async () => {
    entered();
    await released;
    return new Response("late\n");
  });
  const port = server.addr.port;
  const idle = await RawHttp.open(port);
  const half = await RawHttp.open(port);
  const busy = await RawHttp.open(port);
  try {
    await half.send("GET / HTTP/1.1\r\nHost: x\r\n");
    await busy.send(GET);
    await inHandler;
    stop.abort();
    assert.equal(await idle.closed(), "");
    assert.equal(await half.closed(), "");
    release();
    const reply = await busy.reply();
    assert.equal(reply.status, 200);
    assert.equal(reply.body, "late\n");
    assert.equal(reply.headers.get("connection"), "close");
    await busy.closed();
    let done = false;
    await Promise.race([
      server.finished.then(() => done = true),
      new Promise((resolve) => setTimeout(resolve, TIMEOUT_MS)),
    ]);
    assert.ok(done, "finished resolved");
    await assert.rejects(RawHttp.open(port), "the listener is closed");
  } finally {
    for (const client of [idle, half, busy]) client.close();
    release();
    await server.finished;
  }
});

Deno.test("serveHttp: out of fds, a connection queued meanwhile is served once fds are free, without listening again", async () => {
  // The server runs in a subprocess under `ulimit -n 256` that takes every fd left, so that its
  // accept() fails with EMFILE, then frees them when told (on stdin).
  const script = `
    import { serveHttp } from ${JSON.stringify(HTTP_MODULE)};
    const stop = new AbortController();
    const server = serveHttp({
      hostname: "127.0.0.1", port: 0, signal: stop.signal,
      onEvent: (event) => console.log("event " + JSON.stringify(event)),
    }, () => new Response("served\\n"));
    console.log("port " + server.addr.port);
    const input = Deno.stdin.readable.getReader();
    await input.read();
    const held = [];
    try {
      for (;;) held.push(Deno.openSync("/dev/null"));
    } catch (error) {
      console.log("full " + held.length + " " + error.code);
    }
    await input.read();
    for (const file of held) file.close();
    console.log("freed");
    await input.read();
    stop.abort();
    await server.finished;
    console.log("stopped");
  `;
  const file = await Deno.makeTempFile({ suffix: ".ts" });
  await Deno.writeTextFile(file, script);
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      'ulimit -n 256 && exec "$0" "$@"',
      Deno.execPath(),
      "run",
      "--quiet",
      "--config",
      CONFIG,
      "-A",
      file,
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const output = outputLines(child);
  const { lines, line } = output;
  const collected = output.done;
  const stdin = child.stdin.getWriter();
  const queued: RawHttp[] = [];
  try {
    const port = Number((await line(/^port \d+$/, "the port")).slice(5));
    const before = await RawHttp.open(port);
    queued.push(before);
    await before.send(GET);
    assert.equal((await before.reply()).status, 200, "served before the fds run out");
    await stdin.write(encoder.encode("fill\n"));
    await line(/^full \d+ EMFILE$/, "the fds taken");
    // Queued in the kernel: the server's accept fails with EMFILE while it waits.
    const during = await RawHttp.open(port);
    queued.push(during);
    await during.send(GET);
    await line(/"type":"accept-error".*"code":"EMFILE"/, "the EMFILE report");
    await stdin.write(encoder.encode("free\n"));
    await line(/^freed$/, "the fds freed");
    const reply = await during.reply();
    assert.equal(reply.status, 200);
    assert.equal(reply.body, "served\n");
    const after = await RawHttp.open(port);
    queued.push(after);
    await after.send(GET);
    assert.equal((await after.reply()).status, 200, "the same listener serves new connections");
    const reports = lines.filter((l) => l.includes('"accept-error"')).length;
    assert.ok(reports >= 1 && reports <= 3, `EMFILE reported ${reports} times`);
    await stdin.write(encoder.encode("stop\n"));
    await line(/^stopped$/, "the server stopped");
    const status = await child.status;
    assert.equal(status.code, 0, lines.join("\n"));
  } finally {
    for (const client of queued) client.close();
    await stdin.close().catch(() => {});
    try {
      child.kill("SIGKILL");
    } catch {
      // exited already
    }
    await child.status;
    await collected;
    clearTimeout(killer);
    await Deno.remove(file);
  }
});
