/**
 * proxy/http.ts, the admin endpoint's HTTP/1.1 server, against clients that misbehave: heads
 * trickled or abandoned, heads too large, malformed and ambiguous requests, bodies cut short,
 * more connections than allowed, and fds that run out. Every client is a raw loopback socket, so
 * the bytes are exactly the ones a hostile client sends; every wait is bounded. The parser
 * (proxy/http_parse.ts) is table-tested first.
 */

import assert from "node:assert/strict";
import { outputLines, waitFor } from "./_helpers.ts";
import {
  bodyFraming,
  ChunkedDecoder,
  closeRequested,
  findHeadEnd,
  HttpParseError,
  latin1Bytes as latin1,
  parseRequestHead,
  requestUrl,
  serializeResponse,
} from "../proxy/http_parse.ts";
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
const decoder = new TextDecoder();

// ---------------------------------------------------------------------------------------------
// The parser, by table

/** A head from text whose chars are its bytes. */
function head(text: string): ReturnType<typeof parseRequestHead> {
  return parseRequestHead(latin1(text));
}

function parseStatus(fn: () => unknown): number | "ok" {
  try {
    fn();
    return "ok";
  } catch (error) {
    if (error instanceof HttpParseError) return error.status;
    throw error;
  }
}

Deno.test("parseRequestHead: request lines and header lines, by table", () => {
  const ok = head("GET /a?b=c HTTP/1.1\r\nHost:  x:1 \r\nX-Y: a b\r\nx-y: c\r\n\r\n");
  assert.deepEqual(ok, {
    method: "GET",
    target: "/a?b=c",
    minor: 1,
    headers: [["host", "x:1"], ["x-y", "a b"], ["x-y", "c"]],
  });
  assert.equal(head("GET / HTTP/1.0\r\n\r\n").minor, 0);
  assert.equal(head("GET / HTTP/1.7\r\n\r\n").minor, 1, "a later 1.x is read as 1.1");
  assert.equal(head("GET http://h/p HTTP/1.1\r\n\r\n").target, "http://h/p");
  assert.equal(head("OPTIONS * HTTP/1.1\r\n\r\n").target, "*");
  assert.equal(head("GET / HTTP/1.1\r\nX: caf\xe9\r\n\r\n").headers[0][1], "caf\xe9");

  const table: Array<[string, number]> = [
    ["GET /\r\n\r\n", 400],
    ["GET  / HTTP/1.1\r\n\r\n", 400],
    ["GET / HTTP/1.1 \r\n\r\n", 400],
    ["GET / HTTP/1.1 extra\r\n\r\n", 400],
    ["G(T / HTTP/1.1\r\n\r\n", 400],
    ["GET / FOO/1.1\r\n\r\n", 400],
    ["GET / http/1.1\r\n\r\n", 400],
    ["GET / HTTP/1.10\r\n\r\n", 400],
    ["GET foo HTTP/1.1\r\n\r\n", 400],
    ["GET /a\x01 HTTP/1.1\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\n: x\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nA(b: x\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nX: a\r\n\tfolded\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400],
    ["GET / HTTP/2.0\r\n\r\n", 505],
    ["PRI * HTTP/2.0\r\n\r\n", 505],
    ["TRACE / HTTP/1.1\r\n\r\n", 501],
    ["CONNECT h:443 HTTP/1.1\r\n\r\n", 501],
  ];
  for (const [text, status] of table) {
    assert.equal(parseStatus(() => head(text)), status, JSON.stringify(text));
  }
  // The end of a head, and bare LFs refused as they arrive rather than waited on.
  assert.equal(findHeadEnd(latin1("GET / HTTP/1.1\r\n\r\nrest")), 18);
  assert.equal(findHeadEnd(latin1("GET / HTTP/1.1\r\nHost: x\r\n")), -1);
  assert.equal(parseStatus(() => findHeadEnd(latin1("GET / HTTP/1.1\n"))), 400);
});

Deno.test("bodyFraming: body framing, and Connection (closeRequested), by table", () => {
  const framing = (lines: string[], version = "1.1") =>
    parseStatus(() => bodyFraming(head(`POST / HTTP/${version}\r\n${lines.join("")}\r\n`)));
  const of = (lines: string[]) =>
    bodyFraming(head(`POST / HTTP/1.1\r\n${lines.map((l) => l + "\r\n").join("")}\r\n`));
  assert.deepEqual(of([]), { kind: "none" });
  assert.deepEqual(of(["Content-Length: 0"]), { kind: "none" });
  assert.deepEqual(of(["Content-Length: 012"]), { kind: "length", length: 12 });
  assert.deepEqual(of(["Transfer-Encoding: Chunked"]), { kind: "chunked" });
  const table: Array<[string[], number, string?]> = [
    [["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"], 400],
    [["Transfer-Encoding: chunked\r\n", "Content-Length: 5\r\n"], 400],
    [["Content-Length: 5\r\n", "Content-Length: 5\r\n"], 400],
    [["Content-Length: 5, 5\r\n"], 400],
    [["Content-Length: -1\r\n"], 400],
    [["Content-Length: +5\r\n"], 400],
    [["Content-Length: 0x5\r\n"], 400],
    [["Content-Length: 5.0\r\n"], 400],
    [["Content-Length: 1 2\r\n"], 400],
    [["Content-Length: \r\n"], 400],
    [["Content-Length: 1234567890123456\r\n"], 400],
    [["Transfer-Encoding: gzip\r\n"], 400],
    [["Transfer-Encoding: chunked, gzip\r\n"], 400],
    [["Transfer-Encoding: gzip, chunked\r\n"], 501],
    [["Transfer-Encoding: chunked\r\n"], 400, "1.0"],
  ];
  for (const [lines, status, version] of table) {
    assert.equal(framing(lines, version), status, JSON.stringify(lines));
  }
  const closes = (text: string) => closeRequested(head(text));
  assert.equal(closes("GET / HTTP/1.1\r\n\r\n"), false);
  assert.equal(closes("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n"), true);
  assert.equal(closes("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), true);
});

/** Decodes `text` whole, then again one byte at a time; both must agree. */
function decodeChunked(text: string): string | number {
  const run = (pieces: Uint8Array[]): string | number => {
    const decoder = new ChunkedDecoder({ maxLineBytes: 64, maxTrailerBytes: 64 });
    let pending = new Uint8Array(0);
    let out = "";
    try {
      for (const piece of pieces) {
        const joined = new Uint8Array(pending.length + piece.length);
        joined.set(pending);
        joined.set(piece, pending.length);
        pending = joined;
        for (;;) {
          const step = decoder.next(pending);
          if (step.data) out += String.fromCharCode(...step.data);
          pending = pending.slice(step.consumed);
          if (step.done) return out;
          if (step.consumed === 0 && !step.data) break;
        }
      }
      return "incomplete";
    } catch (error) {
      if (error instanceof HttpParseError) return error.status;
      throw error;
    }
  };
  const bytes = encoder.encode(text);
  const whole = run([bytes]);
  const trickled = run([...bytes].map((b) => new Uint8Array([b])));
  assert.deepEqual(trickled, whole, `whole and trickled differ on ${JSON.stringify(text)}`);
  return whole;
}

Deno.test("ChunkedDecoder: chunked bodies, strictly, by table (whole and one byte at a time)", () => {
  const table: Array<[string, string | number]> = [
    ["5\r\nhello\r\n0\r\n\r\n", "hello"],
    ["5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"],
    ["A\r\n0123456789\r\n0\r\n\r\n", "0123456789"],
    ["00000005\r\nhello\r\n0\r\n\r\n", "hello"],
    ["5;ext\r\nhello\r\n0\r\n\r\n", "hello"],
    ['5 ; a=b ;c="x;y"\r\nhello\r\n0\r\n\r\n', "hello"],
    ["0\r\nX-Trailer: 1\r\n\r\n", ""],
    ["5\r\nhello\r\n0\r\n", "incomplete"],
    ["-5\r\nhello\r\n0\r\n\r\n", 400],
    ["0x5\r\nhello\r\n0\r\n\r\n", 400],
    ["zz\r\n", 400],
    ["\r\n", 400],
    ["5 \r\nhello\r\n0\r\n\r\n", 400],
    [" 5\r\nhello\r\n0\r\n\r\n", 400],
    ["+5\r\nhello\r\n0\r\n\r\n", 400],
    ["123456789\r\n", 400],
    ["5;\r\nhello\r\n0\r\n\r\n", 400],
    ["5;a=\r\nhello\r\n0\r\n\r\n", 400],
    ["5\r\nhelloX\r\n0\r\n\r\n", 400],
    ["5\r\nhello\n0\r\n\r\n", 400],
    ["5\nhello\r\n0\r\n\r\n", 400],
    ["1" + ";a".repeat(40) + "\r\nx\r\n0\r\n\r\n", 400],
    ["0\r\nNoColon\r\n\r\n", 400],
    ["0\r\n folded: x\r\n\r\n", 400],
    ["0\r\n" + "X: y\r\n".repeat(20) + "\r\n", 400],
  ];
  for (const [text, expected] of table) {
    assert.deepEqual(decodeChunked(text), expected, JSON.stringify(text));
  }
});

Deno.test("requestUrl: never lets a Host or a target move the path", () => {
  const addr: Deno.NetAddr = { transport: "tcp", hostname: "127.0.0.1", port: 9901 };
  const url = (text: string, at = addr) => requestUrl(head(text), at);
  assert.equal(url("GET /a?b HTTP/1.1\r\nHost: x:1\r\n\r\n"), "http://x:1/a?b");
  assert.equal(url("GET /a HTTP/1.1\r\nHost: [::1]:2\r\n\r\n"), "http://[::1]:2/a");
  assert.equal(new URL(url("GET //evil/x HTTP/1.1\r\nHost: h\r\n\r\n")).pathname, "//evil/x");
  // A Host that is not a plain host[:port] keeps out of the URL (the handler still sees it).
  for (const host of ["evil.com/x@", "a@b", "h/../x", "h?q", "h#f", "h:1:2"]) {
    assert.equal(
      url(`GET /a HTTP/1.1\r\nHost: ${host}\r\n\r\n`),
      "http://127.0.0.1:9901/a",
      `Host ${host}`,
    );
  }
  assert.equal(url("GET /a HTTP/1.0\r\n\r\n"), "http://127.0.0.1:9901/a");
  assert.equal(
    url("GET /a HTTP/1.0\r\n\r\n", { transport: "tcp", hostname: "::1", port: 3 }),
    "http://[::1]:3/a",
  );
  assert.equal(url("GET http://o:5/p HTTP/1.1\r\nHost: h\r\n\r\n"), "http://o:5/p");
  assert.equal(url("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"), "http://h/*");
  assert.equal(parseStatus(() => url("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n")), 400);
});

Deno.test("serializeResponse: responses carry their own framing, whatever the handler's headers say", () => {
  const text = (response: Response, body: string, isHead: boolean, keep: boolean) =>
    decoder.decode(serializeResponse(response, encoder.encode(body), isHead, keep));
  const lying = new Response(null, {
    status: 201,
    headers: { "content-length": "999", "transfer-encoding": "chunked", connection: "keep-alive" },
  });
  const created = text(lying, "hello", false, false);
  assert.match(created, /^HTTP\/1\.1 201 Created\r\n/);
  assert.doesNotMatch(created, /999|chunked|keep-alive/);
  assert.match(created, /\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello$/);
  const head = text(new Response(null, { status: 200 }), "hello", true, true);
  assert.match(head, /\r\ncontent-length: 5\r\n\r\n$/, "HEAD: GET's length, no body");
  assert.doesNotMatch(head, /connection:/);
  const empty = text(new Response(null, { status: 204 }), "", false, true);
  assert.doesNotMatch(empty, /content-length/, "204 has no length");
});

// ---------------------------------------------------------------------------------------------
// The server, over loopback sockets

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
