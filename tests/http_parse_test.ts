/**
 * proxy/http_parse.ts, the admin endpoint's HTTP/1.1 parser, by table: request lines and
 * headers, body framing (Content-Length, chunked, and the ambiguous mixes a smuggler sends),
 * chunked bodies whole and a byte at a time, request URLs that a Host or target must not move,
 * and responses that carry their own framing. The server over sockets is in http_test.ts.
 */

import assert from "node:assert/strict";
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

const encoder = new TextEncoder();
const decoder = new TextDecoder();

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
