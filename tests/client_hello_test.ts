import assert from "node:assert/strict";
import {
  CLIENT_HELLO_MAX_BYTES,
  matchServerName,
  serverNameFromClientHello,
  type ServerNameParse,
  ServerNameRoutes,
} from "../protocol/client_hello.ts";

// A ClientHello builder: each helper returns the wire bytes of one TLS structure.

const encoder = new TextEncoder();

function concat(...parts: (Uint8Array | number[])[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function u16(n: number): number[] {
  return [(n >> 8) & 0xff, n & 0xff];
}

function vector16(data: Uint8Array): Uint8Array {
  return concat(u16(data.length), data);
}

function extension(type: number, data: Uint8Array): Uint8Array {
  return concat(u16(type), u16(data.length), data);
}

/** A server_name extension; a name given as `[type, bytes]` sets its name_type. */
function sniExtension(...names: (string | Uint8Array | [number, Uint8Array])[]): Uint8Array {
  const entries = names.map((name) => {
    const [type, bytes] = Array.isArray(name)
      ? name
      : [0, typeof name === "string" ? encoder.encode(name) : name];
    return concat([type], u16(bytes.length), bytes);
  });
  return extension(0, vector16(concat(...entries)));
}

/** Extensions a TLS 1.3 client sends besides the server name. */
const TYPICAL_EXTENSIONS = [
  extension(10, vector16(Uint8Array.of(0, 0x1d, 0, 0x17))), // supported_groups
  extension(13, vector16(Uint8Array.of(4, 3, 8, 4))), // signature_algorithms
  extension(43, Uint8Array.of(4, 3, 4, 3, 3)), // supported_versions
  extension(51, vector16(concat([0, 0x1d], vector16(new Uint8Array(32).fill(7))))), // key_share
];

interface HelloParts {
  sessionId?: number;
  suites?: Uint8Array;
  compression?: Uint8Array;
}

/** The handshake message: type 1, a 3-byte length, the body. Null extensions: none at all. */
function helloMessage(extensions: Uint8Array[] | null, parts: HelloParts = {}): Uint8Array {
  const sessionId = new Uint8Array(parts.sessionId ?? 32).fill(9);
  const body = concat(
    [3, 3],
    new Uint8Array(32).fill(1),
    [sessionId.length],
    sessionId,
    vector16(parts.suites ?? Uint8Array.of(0x13, 0x01, 0x13, 0x02)),
    concat([parts.compression?.length ?? 1], parts.compression ?? [0]),
    extensions === null ? [] : vector16(concat(...extensions)),
  );
  return concat([1, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff], body);
}

/** The message in handshake records of at most `fragment` bytes each. */
function inRecords(message: Uint8Array, fragment = 16384): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let offset = 0; offset < message.length; offset += fragment) {
    const chunk = message.subarray(offset, offset + fragment);
    parts.push(concat([22, 3, 1], u16(chunk.length), chunk));
  }
  return concat(...parts);
}

function helloFor(name: string): Uint8Array {
  return inRecords(helloMessage([...TYPICAL_EXTENSIONS.slice(0, 2), sniExtension(name)]));
}

const FOUND_EXAMPLE = { status: "found", serverName: "a.example.com" };

function assertInvalid(parse: ServerNameParse, reason: string | RegExp): void {
  assert.equal(parse.status, "invalid", JSON.stringify(parse));
  if (parse.status !== "invalid") return;
  if (typeof reason === "string") assert.equal(parse.reason, reason);
  else assert.match(parse.reason, reason);
}

Deno.test("serverNameFromClientHello: finds the name in a built hello, in place", () => {
  const hello = helloFor("a.example.com");
  assert.deepEqual(serverNameFromClientHello(hello), FOUND_EXAMPLE);
  // Records after the hello (a ChangeCipherSpec here) do not matter.
  const more = concat(hello, [20, 3, 3, 0, 1, 1]);
  assert.deepEqual(serverNameFromClientHello(more), FOUND_EXAMPLE);
  // The name as the only extension, and after every other one.
  const only = inRecords(helloMessage([sniExtension("a.example.com")]));
  assert.deepEqual(serverNameFromClientHello(only), FOUND_EXAMPLE);
  const last = inRecords(helloMessage([...TYPICAL_EXTENSIONS, sniExtension("a.example.com")]));
  assert.deepEqual(serverNameFromClientHello(last), FOUND_EXAMPLE);
});

Deno.test("serverNameFromClientHello: a hello without a host name is none", () => {
  assert.deepEqual(serverNameFromClientHello(inRecords(helloMessage(TYPICAL_EXTENSIONS))), {
    status: "none",
  });
  assert.deepEqual(serverNameFromClientHello(inRecords(helloMessage([]))), { status: "none" });
  assert.deepEqual(serverNameFromClientHello(inRecords(helloMessage(null))), { status: "none" });
  const otherType = sniExtension([1, encoder.encode("x")]);
  assert.deepEqual(serverNameFromClientHello(inRecords(helloMessage([otherType]))), {
    status: "none",
  });
  // An entry of another name_type first: the host_name after it counts.
  const both = sniExtension([1, encoder.encode("x")], "a.example.com");
  assert.deepEqual(serverNameFromClientHello(inRecords(helloMessage([both]))), FOUND_EXAMPLE);
});

Deno.test("serverNameFromClientHello: every prefix of a valid hello is incomplete, its minimumLength a bound past it and within the hello", () => {
  const message = helloMessage([...TYPICAL_EXTENSIONS, sniExtension("a.example.com")]);
  for (const hello of [inRecords(message), inRecords(message, 100), inRecords(message, 1)]) {
    for (let length = 0; length < hello.length; length++) {
      const parse = serverNameFromClientHello(hello.subarray(0, length));
      assert.equal(parse.status, "incomplete", `prefix of ${length} bytes`);
      const { minimumLength } = parse as { minimumLength: number };
      assert.ok(
        minimumLength > length && minimumLength <= hello.length,
        `prefix of ${length} bytes: minimumLength ${minimumLength} of ${hello.length}`,
      );
    }
    assert.deepEqual(serverNameFromClientHello(hello), FOUND_EXAMPLE);
  }
  // In one record, it is exact once the handshake header is in (before it, one byte more).
  const whole = inRecords(message);
  assert.deepEqual(serverNameFromClientHello(whole.subarray(0, 9)), {
    status: "incomplete",
    minimumLength: whole.length,
  });
  const none = inRecords(helloMessage(null));
  for (let length = 0; length < none.length; length++) {
    assert.equal(serverNameFromClientHello(none.subarray(0, length)).status, "incomplete");
  }
});

Deno.test("serverNameFromClientHello: reassembles a hello fragmented over several records", () => {
  const message = helloMessage([...TYPICAL_EXTENSIONS, sniExtension("a.example.com")]);
  for (const fragment of [message.length - 1, 70, 7, 3, 1]) {
    const hello = inRecords(message, fragment);
    assert.deepEqual(serverNameFromClientHello(hello), FOUND_EXAMPLE, `fragment ${fragment}`);
  }
  // Two records split inside the server name itself.
  const split = message.length - 5;
  const twoRecords = concat(
    inRecords(message.subarray(0, split)),
    inRecords(message.subarray(split)),
  );
  assert.deepEqual(serverNameFromClientHello(twoRecords), FOUND_EXAMPLE);
});

Deno.test("serverNameFromClientHello: rejects what is not a TLS handshake", () => {
  assertInvalid(
    serverNameFromClientHello(encoder.encode("GET / HTTP/1.1\r\nHost: a\r\n\r\n")),
    "not a tls handshake",
  );
  assertInvalid(serverNameFromClientHello(encoder.encode("G")), "not a tls handshake");
  // SSLv2-compatible ClientHello: a 2-byte length with the high bit set, then type 1.
  assertInvalid(
    serverNameFromClientHello(Uint8Array.of(0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15)),
    "not a tls handshake",
  );
  assertInvalid(serverNameFromClientHello(Uint8Array.of(22, 2)), "not a tls handshake");
  assertInvalid(serverNameFromClientHello(Uint8Array.of(22, 3, 5)), "bad record version");
  // A ServerHello where a ClientHello should be.
  assertInvalid(serverNameFromClientHello(Uint8Array.of(22, 3, 3, 0, 4, 2)), "not a client hello");
  assertInvalid(serverNameFromClientHello(Uint8Array.of(22, 3, 1, 0, 0)), "empty handshake record");
});

Deno.test("serverNameFromClientHello: rejects records and hellos over 16384 bytes early", () => {
  assertInvalid(
    serverNameFromClientHello(Uint8Array.of(22, 3, 1, 0x40, 0x01)),
    "record over 16384 bytes",
  );
  // The first 9 bytes declare a hello that cannot end within 16384 bytes of stream.
  const big = Uint8Array.of(22, 3, 1, 0x40, 0x00, 1, 0x00, 0x40, 0x00);
  assertInvalid(serverNameFromClientHello(big), "client hello over 16384 bytes");
  assertInvalid(
    serverNameFromClientHello(Uint8Array.of(22, 3, 1, 0, 10, 1, 0xff, 0xff, 0xff)),
    "client hello over 16384 bytes",
  );
  // The largest hello that fits one record: 16384 - 5 - 4 bytes of body, padded out.
  const body = 16384 - 5 - 4;
  const base = helloMessage([sniExtension("a.example.com")]).length - 4;
  const padded = helloMessage([
    sniExtension("a.example.com"),
    extension(21, new Uint8Array(body - base - 4)),
  ]);
  assert.equal(padded.length + 5, CLIENT_HELLO_MAX_BYTES);
  assert.deepEqual(serverNameFromClientHello(inRecords(padded)), FOUND_EXAMPLE);
  const over = helloMessage([
    sniExtension("a.example.com"),
    extension(21, new Uint8Array(body - base - 3)),
  ]);
  assertInvalid(
    serverNameFromClientHello(inRecords(over).subarray(0, 9)),
    "client hello over 16384 bytes",
  );
  // Small, but in 1-byte records whose headers take it past the limit.
  const tiny = inRecords(
    helloMessage([sniExtension("a.example.com"), extension(21, new Uint8Array(3000))]),
    1,
  );
  const parse = serverNameFromClientHello(tiny);
  assertInvalid(parse, "client hello over 16384 bytes");
  assertInvalid(
    serverNameFromClientHello(tiny.subarray(0, CLIENT_HELLO_MAX_BYTES)),
    "client hello over 16384 bytes",
  );
});

Deno.test("serverNameFromClientHello: a non-handshake record amid the hello is invalid", () => {
  const message = helloMessage([sniExtension("a.example.com")]);
  const alert = Uint8Array.of(21, 3, 3, 0, 2, 1, 0);
  const hello = concat(inRecords(message.subarray(0, 20)), alert, inRecords(message.subarray(20)));
  assertInvalid(serverNameFromClientHello(hello), "non-handshake record in client hello");
});

Deno.test("serverNameFromClientHello: rejects corrupted lengths", () => {
  const message = helloMessage([...TYPICAL_EXTENSIONS, sniExtension("a.example.com")]);
  // Offsets in the message: 4 header, 2 version, 32 random, 1 + 32 session id.
  const suites = 4 + 2 + 32 + 1 + 32;
  const compression = suites + 2 + 4;
  const extensions = compression + 2;
  const corrupt = (offset: number, value: number): ServerNameParse => {
    const copy = message.slice();
    copy[offset] = value;
    return serverNameFromClientHello(inRecords(copy));
  };
  assertInvalid(corrupt(4 + 2 + 32, 33), "bad session id length");
  assertInvalid(corrupt(suites + 1, 3), "bad cipher suites length");
  assertInvalid(corrupt(suites + 1, 0), "bad cipher suites length");
  assertInvalid(corrupt(suites, 0xff), "bad cipher suites length");
  assertInvalid(corrupt(compression, 0), "bad compression methods length");
  assertInvalid(corrupt(extensions + 1, message[extensions + 1] + 1), "bad extensions length");
  assertInvalid(corrupt(extensions + 1, message[extensions + 1] - 1), /^bad extension/);
  // The first extension's own length, past the block.
  assertInvalid(corrupt(extensions + 2 + 2, 0xff), "bad extension length");
  assertInvalid(corrupt(0, 2), "not a client hello");
  assertInvalid(corrupt(4, 2), "bad client hello version");
  // A declared hello length shorter than its content.
  const shortened = message.slice();
  shortened[3] -= 1;
  assertInvalid(serverNameFromClientHello(inRecords(shortened)), /^bad extension/);
  // Inside the server name extension: its list length, and an entry's length.
  const sni = sniExtension("a.example.com");
  const listBad = sni.slice();
  listBad[5] += 1;
  assertInvalid(serverNameFromClientHello(inRecords(helloMessage([listBad]))), /^bad /);
  const entryBad = sni.slice();
  entryBad[8] += 1;
  assertInvalid(
    serverNameFromClientHello(inRecords(helloMessage([entryBad]))),
    "bad server name list",
  );
  assertInvalid(
    serverNameFromClientHello(inRecords(helloMessage([extension(0, new Uint8Array(0))]))),
    "bad server name list",
  );
  // Detected before the rest of the hello arrives.
  const early = inRecords(helloMessage([listBad, extension(21, new Uint8Array(1000))]));
  assertInvalid(serverNameFromClientHello(early.subarray(0, early.length - 900)), /^bad /);
});

Deno.test("serverNameFromClientHello: rejects a duplicate server_name extension", () => {
  const hello = inRecords(
    helloMessage([
      sniExtension("a.example.com"),
      ...TYPICAL_EXTENSIONS,
      sniExtension("b.example.com"),
    ]),
  );
  assertInvalid(serverNameFromClientHello(hello), "duplicate server name extension");
});

Deno.test("serverNameFromClientHello: rejects bad names, lowercases, drops a trailing dot", () => {
  const parse = (name: string | Uint8Array): ServerNameParse =>
    serverNameFromClientHello(inRecords(helloMessage([sniExtension(name)])));
  for (
    const bad of [
      "a..example.com",
      ".example.com",
      "example.com..",
      ".",
      "a b.com",
      "a/b.com",
      "a".repeat(300),
      `${"a".repeat(64)}.com`,
      `${"a.".repeat(126)}ab`, // 254 characters
      Uint8Array.of(0x61, 0xc3, 0xa9, 0x2e, 0x63, 0x6f, 0x6d), // "a\u00e9.com" in UTF-8
      Uint8Array.of(0x61, 0x00, 0x62),
    ]
  ) {
    assertInvalid(parse(bad), "bad server name");
  }
  assertInvalid(parse(""), "bad server name list");
  assert.deepEqual(parse("A.Example.COM."), FOUND_EXAMPLE);
  assert.deepEqual(parse("_dmarc.my-host.example"), {
    status: "found",
    serverName: "_dmarc.my-host.example",
  });
  const longest = `${"a.".repeat(126)}a`;
  assert.deepEqual(parse(longest), { status: "found", serverName: longest });
  assert.deepEqual(parse(`${longest}.`), { status: "found", serverName: longest });
  const label63 = `${"b".repeat(63)}.com`;
  assert.deepEqual(parse(label63), { status: "found", serverName: label63 });
});

/** A generator of 32-bit numbers, seeded (mulberry32). */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (t ^ (t >>> 14)) >>> 0;
  };
}

Deno.test("serverNameFromClientHello: 20,000 random and mutated inputs never throw", () => {
  const random = prng(0x5eed);
  const valid = [
    helloFor("a.example.com"),
    inRecords(helloMessage([...TYPICAL_EXTENSIONS, sniExtension("x.example")]), 40),
    inRecords(helloMessage(null)),
  ];
  const statuses = new Map<string, number>();
  for (let round = 0; round < 20_000; round++) {
    let input: Uint8Array;
    const kind = round % 4;
    if (kind === 0) {
      input = new Uint8Array(random() % 300);
      for (let i = 0; i < input.length; i++) input[i] = random() & 0xff;
      if (input.length > 0 && (random() & 1) === 1) input[0] = 22;
      if (input.length > 1 && (random() & 1) === 1) input[1] = 3;
    } else {
      input = valid[random() % valid.length].slice();
      const flips = 1 + (random() % (kind * 3));
      for (let i = 0; i < flips; i++) input[random() % input.length] = random() & 0xff;
      if (kind === 3) input = input.subarray(0, random() % (input.length + 1));
    }
    const parse = serverNameFromClientHello(input);
    statuses.set(parse.status, (statuses.get(parse.status) ?? 0) + 1);
    if (parse.status === "found") assert.match(parse.serverName, /^[a-z0-9_.-]{1,253}$/);
  }
  // The mutations reach every outcome, not only the first check.
  for (const status of ["incomplete", "found", "none", "invalid"]) {
    assert.ok((statuses.get(status) ?? 0) > 0, `${status}: ${JSON.stringify([...statuses])}`);
  }
});

/** Reads what a client sends until it is more than a hello prefix, or 5 s pass. */
async function captureHello(conn: Deno.Conn): Promise<Uint8Array> {
  const buffer = new Uint8Array(CLIENT_HELLO_MAX_BYTES);
  let filled = 0;
  const timer = setTimeout(() => conn.close(), 5_000);
  try {
    while (filled < buffer.length) {
      const n = await conn.read(buffer.subarray(filled));
      if (n === null) break;
      filled += n;
      if (serverNameFromClientHello(buffer.subarray(0, filled)).status !== "incomplete") break;
    }
  } finally {
    clearTimeout(timer);
  }
  return buffer.slice(0, filled);
}

/** The first bytes `openssl s_client` sends with `args`; null without openssl. */
async function opensslHello(args: string[]): Promise<Uint8Array | null> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("openssl", {
      args: ["s_client", "-connect", `127.0.0.1:${listener.addr.port}`, ...args],
      stdin: "piped",
      stdout: "null",
      stderr: "null",
    }).spawn();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
  const timer = setTimeout(() => listener.close(), 5_000);
  try {
    const conn = await listener.accept();
    try {
      return await captureHello(conn);
    } finally {
      try {
        conn.close();
      } catch {
        // closed by the capture's timeout
      }
    }
  } finally {
    clearTimeout(timer);
    await child.stdin.close();
    try {
      child.kill();
    } catch {
      // it already exited when the connection closed
    }
    await child.status;
  }
}

Deno.test("serverNameFromClientHello: reads what openssl s_client sends", async () => {
  const withName = await opensslHello(["-servername", "A.Example.com"]);
  if (withName === null) {
    // deno-lint-ignore no-console
    console.log("skipped: openssl is not installed");
    return;
  }
  assert.deepEqual(serverNameFromClientHello(withName), FOUND_EXAMPLE);
  const withoutName = await opensslHello(["-noservername"]);
  assert.deepEqual(serverNameFromClientHello(withoutName!), { status: "none" });
  // TLS 1.2 only: a different hello layout, same answer.
  const tls12 = await opensslHello(["-servername", "a.example.com", "-tls1_2"]);
  assert.deepEqual(serverNameFromClientHello(tls12!), FOUND_EXAMPLE);
});

Deno.test("serverNameFromClientHello: Deno.connectTls to an IP address sends no name", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept();
  const client = await Deno.connectTls({ hostname: "127.0.0.1", port: listener.addr.port });
  const handshake = client.handshake().then(() => "done", () => "failed");
  const server = await accepted;
  const hello = await captureHello(server);
  server.close();
  await handshake;
  client.close();
  assert.deepEqual(serverNameFromClientHello(hello), { status: "none" });
});

Deno.test("ServerNameRoutes: exact beats wildcard, the longest wildcard wins", () => {
  const routes = new ServerNameRoutes<number>([
    ["*.example.com", 1],
    ["*.b.example.com", 2],
    ["a.b.example.com", 3],
    ["Example.COM", 4],
    ["*.example.com", 5], // a duplicate: the first is kept
  ]);
  assert.equal(routes.lookup("a.b.example.com"), 3);
  assert.equal(routes.lookup("x.b.example.com"), 2);
  assert.equal(routes.lookup("x.y.b.example.com"), 2);
  assert.equal(routes.lookup("b.example.com"), 1);
  assert.equal(routes.lookup("x.example.com"), 1);
  assert.equal(routes.lookup("example.com"), 4);
  assert.equal(routes.lookup("EXAMPLE.com."), 4);
  assert.equal(routes.lookup("X.B.Example.Com"), 2);
  assert.equal(routes.lookup("example.org"), null);
  assert.equal(routes.lookup("com"), null);
  assert.equal(routes.lookup(""), null);
  assert.equal(routes.lookup(".example.com"), null);
  assert.equal(new ServerNameRoutes<number>([]).lookup("a"), null);
  // Falsy values are values.
  assert.equal(new ServerNameRoutes([["a", 0]]).lookup("a"), 0);
  assert.equal(new ServerNameRoutes([["*.a", ""]]).lookup("x.a"), "");
});

Deno.test("ServerNameRoutes: rejects malformed patterns", () => {
  for (const pattern of ["", "*", "*.", "a.*.com", "**.com", "*example.com", "*..com", "."]) {
    assert.throws(() => new ServerNameRoutes([[pattern, 1]]), {
      name: "TypeError",
      message: `Cannot route server name pattern "${pattern}": expected a name or "*." and a name`,
    });
  }
});

Deno.test("matchServerName: returns the pattern as given", () => {
  const patterns = ["*.Example.com", "*.eu.example.com", "WWW.example.com"];
  assert.equal(matchServerName("www.example.com", patterns), "WWW.example.com");
  assert.equal(matchServerName("shop.eu.example.com", patterns), "*.eu.example.com");
  assert.equal(matchServerName("a.EXAMPLE.com", patterns), "*.Example.com");
  assert.equal(matchServerName("example.com", patterns), null);
  assert.equal(matchServerName("example.net", patterns), null);
  assert.equal(matchServerName("a.example.com", []), null);
});

Deno.test("serverNameFromClientHello: a reader that waits for minimumLength parses a hello sent a byte at a time a few times, not once per byte", () => {
  const message = helloMessage([...TYPICAL_EXTENSIONS, sniExtension("a.example.com")]);
  for (const [hello, most] of [[inRecords(message), 10], [inRecords(message, 1), 80]] as const) {
    let parses = 0;
    let wanted = 0;
    let result = null;
    for (let length = 1; length <= hello.length && result === null; length++) {
      if (length < wanted) continue;
      parses++;
      const parse = serverNameFromClientHello(hello.subarray(0, length));
      if (parse.status === "incomplete") wanted = parse.minimumLength;
      else result = parse;
    }
    assert.deepEqual(result, FOUND_EXAMPLE);
    assert.ok(parses <= most, `${parses} parses of a ${hello.length}-byte hello`);
  }
});
