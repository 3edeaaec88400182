import assert from "node:assert/strict";
import { CidrList } from "../protocol/cidr.ts";

Deno.test("CidrList: IPv4 membership at the edges of a prefix", () => {
  const list = CidrList.parse(["192.0.2.0/24", "10.0.0.0/8", "198.51.100.128/25"]);
  assert.equal(list.size, 3);
  for (
    const inside of ["192.0.2.0", "192.0.2.255", "10.0.0.0", "10.255.255.255", "198.51.100.128"]
  ) {
    assert.equal(list.includes(inside), true, inside);
  }
  for (
    const outside of ["192.0.3.0", "192.0.1.255", "11.0.0.0", "9.255.255.255", "198.51.100.127"]
  ) {
    assert.equal(list.includes(outside), false, outside);
  }
  // High addresses: the sign bit of a 32-bit word is set.
  const high = CidrList.parse(["224.0.0.0/4", "255.255.255.255/32"]);
  assert.equal(high.includes("239.1.2.3"), true);
  assert.equal(high.includes("255.255.255.255"), true);
  assert.equal(high.includes("255.255.255.254"), false);
  assert.equal(high.includes("223.255.255.255"), false);
});

Deno.test("CidrList: IPv6 membership, in each 32-bit word of a prefix", () => {
  const list = CidrList.parse([
    "2001:db8::/32",
    "fe80::/10",
    "2001:db8:1:2:3:4:5:0/112",
    "fd00::1:0:0/96",
  ]);
  assert.equal(list.includes("2001:db8::1"), true);
  assert.equal(list.includes("2001:0DB8:ffff:ffff:ffff:ffff:ffff:ffff"), true);
  assert.equal(list.includes("2001:db9::"), false);
  assert.equal(list.includes("febf:ffff::1"), true);
  assert.equal(list.includes("fec0::1"), false);
  assert.equal(
    CidrList.parse(["2001:db8:1:2:3:4:5:0/112"]).includes("2001:db8:1:2:3:4:5:ffff"),
    true,
  );
  assert.equal(
    CidrList.parse(["2001:db8:1:2:3:4:5:0/112"]).includes("2001:db8:1:2:3:4:6:0"),
    false,
  );
  assert.equal(list.includes("fd00::1:ab:cd"), true);
  assert.equal(list.includes("fd00::2:ab:cd"), false);
  // IPv4 entries never match IPv6 addresses, nor the other way round.
  assert.equal(CidrList.parse(["0.0.0.0/0"]).includes("::1"), false);
  assert.equal(CidrList.parse(["::/0"]).includes("127.0.0.1"), false);
});

Deno.test("CidrList: /0, /32, /128 and bare addresses", () => {
  const all = CidrList.parse(["0.0.0.0/0", "::/0"]);
  for (const address of ["0.0.0.0", "255.255.255.255", "203.0.113.9", "::", "ffff::1", "::1"]) {
    assert.equal(all.includes(address), true, address);
  }
  const hosts = CidrList.parse(["10.0.0.1/32", "10.0.0.3", "2001:db8::1/128", "::1"]);
  assert.equal(hosts.size, 4);
  for (const address of ["10.0.0.1", "10.0.0.3", "2001:db8::1", "::1", "0:0:0:0:0:0:0:1"]) {
    assert.equal(hosts.includes(address), true, address);
  }
  for (const address of ["10.0.0.2", "10.0.0.0", "2001:db8::2", "::", "::2"]) {
    assert.equal(hosts.includes(address), false, address);
  }
  const empty = CidrList.parse([]);
  assert.equal(empty.size, 0);
  assert.equal(empty.includes("127.0.0.1"), false);
  assert.equal(empty.includes("::1"), false);
});

Deno.test("CidrList: an IPv4-mapped address matches as IPv4, and as itself against IPv6", () => {
  const v4 = CidrList.parse(["192.0.2.0/24"]);
  assert.equal(v4.includes("::ffff:192.0.2.1"), true);
  assert.equal(v4.includes("::FFFF:c000:0201"), true);
  assert.equal(v4.includes("::ffff:192.0.3.1"), false);
  // Only the ::ffff:0:0/96 form is unmapped: not the deprecated IPv4-compatible ::a.b.c.d.
  assert.equal(v4.includes("::192.0.2.1"), false);
  assert.equal(v4.includes("64:ff9b::192.0.2.1"), false);
  const mappedRange = CidrList.parse(["::ffff:0:0/96"]);
  assert.equal(mappedRange.includes("::ffff:203.0.113.1"), true);
  // A plain IPv4 address is matched against IPv4 entries only.
  assert.equal(mappedRange.includes("203.0.113.1"), false);
});

Deno.test("CidrList: includesBytes takes 4 or 16 bytes and nothing else", () => {
  const list = CidrList.parse(["192.0.2.0/24", "2001:db8::/32"]);
  assert.equal(list.includesBytes(Uint8Array.of(192, 0, 2, 77)), true);
  assert.equal(list.includesBytes(Uint8Array.of(192, 0, 3, 77)), false);
  const v6 = new Uint8Array(16);
  v6.set([0x20, 0x01, 0x0d, 0xb8]);
  v6[15] = 1;
  assert.equal(list.includesBytes(v6), true);
  v6[3] = 0xb9;
  assert.equal(list.includesBytes(v6), false);
  const mapped = Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1);
  assert.equal(list.includesBytes(mapped), true);
  // A view into a larger buffer is read at its own offset.
  const buffer = new Uint8Array(32).fill(0xaa);
  buffer.set([192, 0, 2, 9], 7);
  assert.equal(list.includesBytes(buffer.subarray(7, 11)), true);
  for (const length of [0, 3, 5, 15, 17, 32]) {
    assert.equal(list.includesBytes(new Uint8Array(length)), false, `${length} bytes`);
  }
  assert.equal(CidrList.parse(["0.0.0.0/0", "::/0"]).includesBytes(new Uint8Array(8)), false);
});

Deno.test("CidrList: text that is not an address is outside", () => {
  const all = CidrList.parse(["0.0.0.0/0", "::/0"]);
  for (
    const text of [
      "",
      "localhost",
      "[::1]",
      "127.0.0.1:80",
      "10.0.0.1/32",
      "1.2.3",
      "01.2.3.4",
      "fe80::1%eth0",
      " 1.2.3.4",
    ]
  ) {
    assert.equal(all.includes(text), false, JSON.stringify(text));
  }
});

Deno.test("CidrList: parse errors name the entry and the reason", () => {
  const cases: [string, string][] = [
    ["", "not an IP address"],
    ["example.com/24", "not an IP address"],
    ["192.0.2.0/", 'bad prefix length ""'],
    ["192.0.2.0/abc", 'bad prefix length "abc"'],
    ["192.0.2.0/024", 'bad prefix length "024"'],
    ["192.0.2.0/-1", 'bad prefix length "-1"'],
    ["192.0.2.0/ 24", 'bad prefix length " 24"'],
    ["192.0.2.0/24/8", 'bad prefix length "24/8"'],
    ["192.0.2.0/33", "prefix length 33 is over 32"],
    ["2001:db8::/129", "prefix length 129 is over 128"],
    ["::/99999999999999999999", "prefix length 99999999999999999999 is over 128"],
    ["192.0.2.1/24", "host bits are set (did you mean 192.0.2.0/24?)"],
    ["10.1.0.0/8", "host bits are set (did you mean 10.0.0.0/8?)"],
    ["1.2.3.4/0", "host bits are set (did you mean 0.0.0.0/0?)"],
    ["2001:db8::1/64", "host bits are set (did you mean 2001:db8::/64?)"],
    ["2001:db8:8000::/32", "host bits are set (did you mean 2001:db8::/32?)"],
    ["::1/0", "host bits are set (did you mean ::/0?)"],
  ];
  for (const [cidr, reason] of cases) {
    assert.throws(() => CidrList.parse(["10.0.0.0/8", cidr]), {
      name: "TypeError",
      message: `Cannot parse CIDR "${cidr}": ${reason}`,
    });
  }
});
