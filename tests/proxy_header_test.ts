import assert from "node:assert/strict";
import {
  encodeProxyHeader,
  parseProxyHeader,
  PROXY_V1_MAX_BYTES,
  PROXY_V2_MAX_BYTES,
  type ProxyHeader,
  type ProxyHeaderParse,
} from "../protocol/proxy_header.ts";
import { formatIp, parseIp } from "../protocol/ip.ts";
import { concat } from "./_helpers.ts";

const SIGNATURE_V2 = "0d 0a 0d 0a 00 0d 0a 51 55 49 54 0a";

/** Bytes from hex pairs; whitespace between them is ignored. */
function hex(text: string): Uint8Array {
  const digits = text.replace(/\s+/g, "");
  assert.equal(digits.length % 2, 0);
  const bytes = new Uint8Array(digits.length / 2);
  for (let i = 0; i < bytes.length; i++) {
    bytes[i] = Number.parseInt(digits.slice(i * 2, i * 2 + 2), 16);
  }
  return bytes;
}

function ascii(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** A v2 header: fixed part for `versionCommand` and `family`, then `block` as the rest. */
function v2(versionCommand: number, family: number, block: Uint8Array): Uint8Array {
  const fixed = hex(SIGNATURE_V2);
  return concat(
    fixed,
    Uint8Array.of(versionCommand, family, block.length >> 8, block.length & 0xff),
    block,
  );
}

function headerOf(result: ProxyHeaderParse): ProxyHeader {
  assert.equal(result.status, "complete", JSON.stringify(result));
  return (result as { header: ProxyHeader }).header;
}

function reasonOf(result: ProxyHeaderParse): string {
  assert.equal(result.status, "invalid", JSON.stringify(result));
  return (result as { reason: string }).reason;
}

/** TCP over IPv4, 192.0.2.1:56324 -> 198.51.100.7:443, written out by hand from the spec. */
const V2_TCP4_VECTOR = hex(`
  ${SIGNATURE_V2}
  21 11 00 0c
  c0 00 02 01  c6 33 64 07
  dc 04  01 bb
`);

/** TCP over IPv6, [2001:db8::1]:1 -> [::ffff:192.0.2.1]:65535, written out by hand. */
const V2_TCP6_VECTOR = hex(`
  ${SIGNATURE_V2}
  21 21 00 24
  20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01
  00 00 00 00 00 00 00 00 00 00 ff ff c0 00 02 01
  00 01  ff ff
`);

/** TLVs after a TCP4 address block: ALPN "h2", an empty NOOP, and an authority. */
const TLVS = concat(
  hex("01 00 02"),
  ascii("h2"),
  hex("04 00 00"),
  hex("02 00 0b"),
  ascii("example.com"),
);
const V2_WITH_TLVS = v2(0x21, 0x11, concat(V2_TCP4_VECTOR.subarray(16), TLVS));

const VALID_HEADERS: Uint8Array[] = [
  ascii("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"),
  ascii("PROXY TCP6 2001:db8::1 ::1 0 65535\r\n"),
  ascii("PROXY UNKNOWN\r\n"),
  ascii("PROXY UNKNOWN ::1 ::2 1 2\r\n"),
  V2_TCP4_VECTOR,
  V2_TCP6_VECTOR,
  V2_WITH_TLVS,
  v2(0x20, 0x00, new Uint8Array(0)),
  v2(0x21, 0x31, new Uint8Array(216)),
];

Deno.test("parseProxyHeader: v1 TCP4", () => {
  const line = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
  assert.deepEqual(parseProxyHeader(ascii(line)), {
    status: "complete",
    header: {
      version: 1,
      command: "proxy",
      source: { hostname: "192.0.2.1", port: 56324 },
      destination: { hostname: "198.51.100.7", port: 443 },
      length: line.length,
    },
  });
  const edges = headerOf(parseProxyHeader(ascii("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n")));
  assert.deepEqual(edges.source, { hostname: "0.0.0.0", port: 0 });
  assert.deepEqual(edges.destination, { hostname: "255.255.255.255", port: 65535 });
});

Deno.test("parseProxyHeader: v1 TCP6 addresses come out in canonical form", () => {
  const cases: [string, string][] = [
    ["2001:DB8:0:0:0:0:0:1", "2001:db8::1"],
    ["::1", "::1"],
    ["0:0:0:0:0:0:0:0", "::"],
    ["::ffff:1.2.3.4", "::ffff:1.2.3.4"],
    ["::FFFF:0102:0304", "::ffff:1.2.3.4"],
    ["2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"],
    ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1"], // the longer run of zeros
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"], // the first of equal runs
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
    ["1:0:3:4:5:6:7:8", "1:0:3:4:5:6:7:8"],
    ["fe80::1:2.3.4.5", "fe80::1:203:405"],
  ];
  for (const [text, canonical] of cases) {
    const line = `PROXY TCP6 ${text} ::2 1 2\r\n`;
    const header = headerOf(parseProxyHeader(ascii(line)));
    assert.deepEqual(header.source, { hostname: canonical, port: 1 }, text);
    assert.deepEqual(header.destination, { hostname: "::2", port: 2 });
    assert.equal(header.length, line.length);
  }
  const longest = `PROXY TCP6 ${"ffff:".repeat(7)}ffff ${"ffff:".repeat(7)}ffff 65535 65535\r\n`;
  assert.equal(headerOf(parseProxyHeader(ascii(longest))).length, longest.length);
});

Deno.test("parseProxyHeader: v1 UNKNOWN is local and ignores the rest of the line", () => {
  for (const line of ["PROXY UNKNOWN\r\n", "PROXY UNKNOWN 1.2.3.4 garbage !\r\n"]) {
    assert.deepEqual(parseProxyHeader(ascii(line)), {
      status: "complete",
      header: {
        version: 1,
        command: "local",
        source: null,
        destination: null,
        length: line.length,
      },
    });
  }
  // The longest line allowed: 107 bytes with the CRLF.
  const longest = `PROXY UNKNOWN ${"x".repeat(PROXY_V1_MAX_BYTES - 16)}\r\n`;
  assert.equal(longest.length, PROXY_V1_MAX_BYTES);
  assert.equal(headerOf(parseProxyHeader(ascii(longest))).length, PROXY_V1_MAX_BYTES);
  assert.equal(reasonOf(parseProxyHeader(ascii("PROXY UNKNOWNX\r\n"))), "bad v1 protocol");
});

Deno.test("parseProxyHeader: every prefix of a valid header is incomplete", () => {
  for (const header of VALID_HEADERS) {
    assert.equal(headerOf(parseProxyHeader(header)).length, header.length);
    for (let length = 0; length < header.length; length++) {
      assert.deepEqual(parseProxyHeader(header.subarray(0, length)), { status: "incomplete" });
    }
  }
});

Deno.test("parseProxyHeader: bytes after the header are not consumed", () => {
  const payload = ascii("GET / HTTP/1.1\r\n\r\n");
  for (const header of VALID_HEADERS) {
    const stream = concat(header, payload);
    assert.equal(headerOf(parseProxyHeader(stream)).length, header.length);
  }
  // A CRLF in the payload does not move the end of a v1 line.
  const line = ascii("PROXY UNKNOWN\r\n");
  assert.equal(headerOf(parseProxyHeader(concat(line, line))).length, line.length);
});

Deno.test("parseProxyHeader: a changed signature byte is invalid at once", () => {
  const signatures = [ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), V2_TCP4_VECTOR];
  const signatureLengths = [6, 12];
  for (const [which, header] of signatures.entries()) {
    for (let index = 0; index < signatureLengths[which]; index++) {
      const changed = header.slice();
      changed[index] ^= 0xff;
      assert.equal(reasonOf(parseProxyHeader(changed)), "bad signature");
      assert.equal(reasonOf(parseProxyHeader(changed.subarray(0, index + 1))), "bad signature");
    }
  }
  for (const text of ["GET / HTTP/1.1\r\n", "\x16\x03\x01", "proxy ", "PROXY\t", "\r\n\r\n\r"]) {
    assert.equal(reasonOf(parseProxyHeader(ascii(text))), "bad signature", JSON.stringify(text));
  }
});

Deno.test("parseProxyHeader: a v1 line longer than 107 bytes is invalid", () => {
  const reason = "v1 line longer than 107 bytes";
  const noCrlf = ascii(`PROXY UNKNOWN ${"x".repeat(PROXY_V1_MAX_BYTES - 14)}`);
  assert.equal(noCrlf.length, PROXY_V1_MAX_BYTES);
  assert.equal(reasonOf(parseProxyHeader(noCrlf)), reason);
  assert.equal(reasonOf(parseProxyHeader(concat(noCrlf, ascii("\r\n")))), reason);
  // 108 bytes with the CRLF: the CR sits where only the LF may.
  const tooLong = ascii(`PROXY UNKNOWN ${"x".repeat(PROXY_V1_MAX_BYTES - 15)}\r\n`);
  assert.equal(tooLong.length, PROXY_V1_MAX_BYTES + 1);
  assert.equal(reasonOf(parseProxyHeader(tooLong)), reason);
  assert.equal(reasonOf(parseProxyHeader(tooLong.subarray(0, PROXY_V1_MAX_BYTES))), reason);
});

Deno.test("parseProxyHeader: malformed v1 lines are invalid", () => {
  const cases: [string, string][] = [
    ["PROXY TCP4 192.0.2.01 198.51.100.7 1 2\r\n", "bad v1 address"],
    ["PROXY TCP4 256.0.0.1 198.51.100.7 1 2\r\n", "bad v1 address"],
    ["PROXY TCP4 1.2.3 198.51.100.7 1 2\r\n", "bad v1 address"],
    ["PROXY TCP4 1.2.3.4.5 198.51.100.7 1 2\r\n", "bad v1 address"],
    ["PROXY TCP4 1.2.3.4 1.2.3. 1 2\r\n", "bad v1 address"],
    ["PROXY TCP4 ::1 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP4 ::ffff:1.2.3.4 1.2.3.4 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 1::2::3 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 [::1] ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 1:2:3:4::5:6:7:8 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 12345::1 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 :1::2 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 ::1.2.3.04 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 1.2.3.4::1 ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP6 ::g ::1 1 2\r\n", "bad v1 address"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad v1 port"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 01\r\n", "bad v1 port"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad v1 port"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad v1 port"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2a\r\n", "bad v1 port"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 0x10\r\n", "bad v1 port"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n", "bad v1 port"],
    ["PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 field count"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "bad v1 field count"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "bad v1 field count"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "bad v1 field count"],
    ["PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "bad v1 field count"],
    ["PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 protocol"],
    ["PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 protocol"],
    ["PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 protocol"],
    ["PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 protocol"],
    ["PROXY \r\n", "bad v1 protocol"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bad v1 line ending"],
    ["PROXY TCP4\n", "bad v1 line ending"],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "bad v1 line ending"],
    ["PROXY TCP4\rX", "bad v1 line ending"],
  ];
  for (const [line, reason] of cases) {
    assert.equal(reasonOf(parseProxyHeader(ascii(line))), reason, JSON.stringify(line));
  }
  // Bytes above 0x7f are not ASCII digits or letters in disguise.
  const latin1 = ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n");
  latin1[latin1.length - 3] = 0xb2;
  assert.equal(reasonOf(parseProxyHeader(latin1)), "bad v1 port");
});

Deno.test("parseProxyHeader: v2 TCP over IPv4 and IPv6", () => {
  assert.deepEqual(parseProxyHeader(V2_TCP4_VECTOR), {
    status: "complete",
    header: {
      version: 2,
      command: "proxy",
      source: { hostname: "192.0.2.1", port: 56324 },
      destination: { hostname: "198.51.100.7", port: 443 },
      length: 28,
    },
  });
  assert.deepEqual(parseProxyHeader(V2_TCP6_VECTOR), {
    status: "complete",
    header: {
      version: 2,
      command: "proxy",
      source: { hostname: "2001:db8::1", port: 1 },
      destination: { hostname: "::ffff:192.0.2.1", port: 65535 },
      length: 52,
    },
  });
});

Deno.test("parseProxyHeader: v2 LOCAL ignores the address block", () => {
  const local = { version: 2, command: "local", source: null, destination: null };
  assert.deepEqual(headerOf(parseProxyHeader(v2(0x20, 0x00, new Uint8Array(0)))), {
    ...local,
    length: 16,
  });
  // LOCAL with a TCP4 block and bytes that are not TLVs: all skipped.
  const block = concat(V2_TCP4_VECTOR.subarray(16), hex("ff ff"));
  assert.deepEqual(headerOf(parseProxyHeader(v2(0x20, 0x11, block))), { ...local, length: 30 });
  // LOCAL needs no address block even for a TCP family.
  assert.deepEqual(headerOf(parseProxyHeader(v2(0x20, 0x21, new Uint8Array(0)))), {
    ...local,
    length: 16,
  });
});

Deno.test("parseProxyHeader: v2 TLVs are skipped and counted in the length", () => {
  const header = headerOf(parseProxyHeader(concat(V2_WITH_TLVS, ascii("payload"))));
  assert.equal(header.length, 16 + 12 + TLVS.length);
  assert.deepEqual(header.source, { hostname: "192.0.2.1", port: 56324 });
  assert.deepEqual(header.destination, { hostname: "198.51.100.7", port: 443 });
});

Deno.test("parseProxyHeader: a TLV overrunning the header is invalid", () => {
  const address = V2_TCP4_VECTOR.subarray(16);
  const overruns = [
    hex("01 00 05 68 32"), // says 5 value bytes, has 2
    hex("01 00 02 68 32 04"), // a TLV cut after its type
    hex("01 00 02 68 32 04 00"), // a TLV cut inside its length
    hex("01"),
    hex("01 ff ff"),
  ];
  for (const tlvs of overruns) {
    assert.equal(reasonOf(parseProxyHeader(v2(0x21, 0x11, concat(address, tlvs)))), "bad tlv");
  }
});

Deno.test("parseProxyHeader: v2 UNSPEC, UDP and UNIX give null addresses", () => {
  const cases: [number, number][] = [[0x00, 0], [0x00, 7], [0x12, 12], [0x22, 36], [0x31, 216], [
    0x32,
    216 + 4,
  ]];
  for (const [family, blockLength] of cases) {
    const block = new Uint8Array(blockLength);
    if (family === 0x32) block.set(hex("04 00 01 00"), 216); // a TLV after the UNIX block
    const header = v2(0x21, family, block);
    assert.deepEqual(headerOf(parseProxyHeader(header)), {
      version: 2,
      command: "proxy",
      source: null,
      destination: null,
      length: 16 + blockLength,
    }, `family ${family}`);
  }
});

Deno.test("parseProxyHeader: bad v2 fixed fields are invalid as soon as they arrive", () => {
  const cases: [Uint8Array, string][] = [
    [hex(`${SIGNATURE_V2} 11`), "bad v2 version"],
    [hex(`${SIGNATURE_V2} 31`), "bad v2 version"],
    [hex(`${SIGNATURE_V2} 22`), "bad v2 command"],
    [hex(`${SIGNATURE_V2} 2f`), "bad v2 command"],
    [hex(`${SIGNATURE_V2} 21 13`), "bad v2 family"],
    [hex(`${SIGNATURE_V2} 21 41`), "bad v2 family"],
    [hex(`${SIGNATURE_V2} 20 10`), "bad v2 family"],
    [hex(`${SIGNATURE_V2} 21 11 00 0b`), "v2 address block too short"],
    [hex(`${SIGNATURE_V2} 21 21 00 23`), "v2 address block too short"],
    [hex(`${SIGNATURE_V2} 21 31 00 d7`), "v2 address block too short"],
  ];
  for (const [bytes, reason] of cases) {
    assert.equal(reasonOf(parseProxyHeader(bytes)), reason);
  }
});

Deno.test("parseProxyHeader: a v2 header over PROXY_V2_MAX_BYTES is invalid", () => {
  const largest = PROXY_V2_MAX_BYTES - 16;
  const fixed = (length: number): Uint8Array =>
    hex(`${SIGNATURE_V2} 20 00 ${length.toString(16).padStart(4, "0")}`);
  // Refused from the fixed part alone, without waiting for the body.
  assert.equal(reasonOf(parseProxyHeader(fixed(largest + 1))), "v2 length 4097 over 4096");
  assert.equal(reasonOf(parseProxyHeader(fixed(0xffff))), "v2 length 65551 over 4096");
  assert.deepEqual(parseProxyHeader(fixed(largest)), { status: "incomplete" });
  const header = v2(0x20, 0x00, new Uint8Array(largest));
  assert.equal(headerOf(parseProxyHeader(header)).length, PROXY_V2_MAX_BYTES);
  // The largest PROXY header: a TCP4 block, then one TLV filling the rest.
  const tlvLength = largest - 12 - 3;
  const tlv = concat(
    Uint8Array.of(0x04, tlvLength >> 8, tlvLength & 0xff),
    new Uint8Array(tlvLength),
  );
  const proxy = v2(0x21, 0x11, concat(V2_TCP4_VECTOR.subarray(16), tlv));
  assert.equal(headerOf(parseProxyHeader(proxy)).length, PROXY_V2_MAX_BYTES);
});

Deno.test("encodeProxyHeader: matches known vectors byte for byte", () => {
  const client = { hostname: "192.0.2.1", port: 56324 };
  assert.deepEqual(
    encodeProxyHeader(2, client, { hostname: "198.51.100.7", port: 443 }),
    V2_TCP4_VECTOR,
  );
  assert.deepEqual(
    encodeProxyHeader(2, { hostname: "2001:db8::1", port: 1 }, {
      hostname: "192.0.2.1",
      port: 65535,
    }),
    V2_TCP6_VECTOR,
  );
  assert.deepEqual(
    encodeProxyHeader(1, client, { hostname: "198.51.100.7", port: 443 }),
    ascii("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"),
  );
  assert.deepEqual(
    encodeProxyHeader(1, { hostname: "2001:DB8:0::1", port: 0 }, client),
    ascii("PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 0 56324\r\n"),
  );
});

Deno.test("encodeProxyHeader: parse round trip for v1 and v2, IPv4, IPv6 and mixed", () => {
  const cases: [string, string, string, string][] = [
    // source, destination as given; as parsed back
    ["192.0.2.1", "198.51.100.7", "192.0.2.1", "198.51.100.7"],
    ["2001:db8::1", "::1", "2001:db8::1", "::1"],
    ["192.0.2.1", "2001:db8::7", "::ffff:192.0.2.1", "2001:db8::7"],
    ["2001:db8::1", "127.0.0.1", "2001:db8::1", "::ffff:127.0.0.1"],
    ["::ffff:10.0.0.1", "::", "::ffff:10.0.0.1", "::"],
    ["FE80:0:0:0:0:0:0:1", "0.0.0.0", "fe80::1", "::ffff:0.0.0.0"],
    // A dual-stack listener's IPv4 client: both ends IPv4-mapped, written as IPv4 (TCP4).
    ["::ffff:192.0.2.1", "::ffff:198.51.100.7", "192.0.2.1", "198.51.100.7"],
    ["::ffff:192.0.2.1", "198.51.100.7", "192.0.2.1", "198.51.100.7"],
  ];
  for (const version of [1, 2] as const) {
    for (const [source, destination, sourceOut, destinationOut] of cases) {
      const bytes = encodeProxyHeader(
        version,
        { hostname: source, port: 65535 },
        { hostname: destination, port: 0 },
      );
      assert.deepEqual(parseProxyHeader(concat(bytes, ascii("tail"))), {
        status: "complete",
        header: {
          version,
          command: "proxy",
          source: { hostname: sourceOut, port: 65535 },
          destination: { hostname: destinationOut, port: 0 },
          length: bytes.length,
        },
      });
    }
  }
});

Deno.test("encodeProxyHeader: IPv4-mapped ends are written as TCP4 (v1) and family 0x11 (v2)", () => {
  const source = { hostname: "::ffff:192.0.2.1", port: 1 };
  const destination = { hostname: "::ffff:198.51.100.7", port: 2 };
  assert.equal(
    new TextDecoder().decode(encodeProxyHeader(1, source, destination)),
    "PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\n",
  );
  const v2 = encodeProxyHeader(2, source, destination);
  assert.deepEqual([v2[13], v2.length], [0x11, 28]);
});

Deno.test("encodeProxyHeader: rejects bad hostnames, ports and versions", () => {
  const good = { hostname: "192.0.2.1", port: 1 };
  assert.throws(() => encodeProxyHeader(1, { hostname: "x", port: 1 }, good), {
    name: "TypeError",
    message: 'Cannot encode a PROXY header: "x" is not an IP address',
  });
  for (const hostname of ["example.com", "[::1]", "", "1.2.3.04", "::1%lo", " 1.2.3.4"]) {
    assert.throws(() => encodeProxyHeader(2, good, { hostname, port: 1 }), TypeError, hostname);
  }
  assert.throws(() => encodeProxyHeader(2, { hostname: "::1", port: 70000 }, good), {
    name: "RangeError",
    message: "Cannot encode a PROXY header: port 70000 is out of range (0 to 65535)",
  });
  for (const port of [-1, 65536, 1.5, NaN, Infinity]) {
    assert.throws(() => encodeProxyHeader(1, good, { hostname: "::1", port }), RangeError);
  }
  assert.throws(() => encodeProxyHeader(3 as 1, good, good), RangeError);
});

/** mulberry32: a small seeded generator, so a failure replays the same inputs. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function parseLoudly(bytes: Uint8Array): ProxyHeaderParse {
  try {
    return parseProxyHeader(bytes);
  } catch (error) {
    throw new Error(`parseProxyHeader threw on [${bytes.join(",")}]`, { cause: error });
  }
}

function assertSane(bytes: Uint8Array): void {
  const result = parseLoudly(bytes);
  if (result.status === "complete") {
    assert.ok(result.header.length > 0 && result.header.length <= bytes.length);
    assert.equal(result.header.source === null, result.header.destination === null);
  } else if (result.status === "invalid") {
    assert.ok(result.reason.length > 0);
  } else {
    assert.equal(result.status, "incomplete");
  }
}

Deno.test("parseProxyHeader: never throws on random and mangled input", () => {
  const next = random(0x5eed);
  const prefixes = [ascii("PROXY "), ascii("PROXY TCP4 "), ascii("PROXY TCP6 "), hex(SIGNATURE_V2)];
  const alphabet = ascii("0123456789abcdefABCDEF:. \r\nPROXYTCP46UNKOWN");
  for (let round = 0; round < 20_000; round++) {
    const bytes = new Uint8Array(Math.floor(next() * 160));
    const mode = Math.floor(next() * 3);
    for (let i = 0; i < bytes.length; i++) {
      bytes[i] = mode === 0
        ? Math.floor(next() * 256)
        : alphabet[Math.floor(next() * alphabet.length)];
    }
    if (mode !== 0 || next() < 0.5) {
      bytes.set(prefixes[round % prefixes.length].subarray(0, bytes.length));
    }
    assertSane(bytes);
  }
  // Valid headers cut short, with one byte changed, or with a wild v2 length.
  for (const header of VALID_HEADERS) {
    for (let length = 0; length <= header.length; length++) {
      assertSane(header.subarray(0, length));
      const changed = header.slice(0, length);
      if (length > 0) changed[Math.floor(next() * length)] = Math.floor(next() * 256);
      assertSane(changed);
    }
  }
});

Deno.test("parseIp and formatIp: strict input, canonical output", () => {
  assert.deepEqual(parseIp("192.0.2.1"), Uint8Array.of(192, 0, 2, 1));
  assert.deepEqual(parseIp("::"), new Uint8Array(16));
  for (
    const bad of ["", "1.2.3", "01.2.3.4", "1.2.3.4 ", "::1%1", "[::1]", ":::", "1::2::3", "x"]
  ) {
    assert.equal(parseIp(bad), null, bad);
  }
  assert.equal(formatIp(parseIp("1:0:0:2:0:0:0:3")!), "1:0:0:2::3");
  assert.equal(formatIp(parseIp("1:0:0:2:0:0:3:4")!), "1::2:0:0:3:4");
  assert.equal(formatIp(parseIp("0:0:0:0:0:0:0:1")!), "::1");
  assert.equal(formatIp(parseIp("1:0:0:0:0:0:0:0")!), "1::");
  assert.equal(formatIp(parseIp("::1.2.3.4")!), "::102:304");
  assert.equal(formatIp(parseIp("1:2:3:4:5:6:1.2.3.4")!), "1:2:3:4:5:6:102:304");
  assert.throws(() => formatIp(new Uint8Array(5)), TypeError);
});
