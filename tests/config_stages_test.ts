/**
 * The config keys of the listener stages: `allow`, `deny`, `max_connections_per_ip`,
 * `expect_proxy`, `proxy_header_timeout_ms`, `sni_timeout_ms`, a frontend's `hostname` and a
 * cluster's `send_proxy`: bad values named with their key path, listeners shared by hostname,
 * and what specFromConfig makes of them.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../config.ts";
import { specFromConfig } from "../proxy/mod.ts";
import { configErrorOf } from "./_config_helpers.ts";

/** One listener on 127.0.0.1:8080 with `listener` keys; cluster app with `frontends`. */
function toml(
  listener: string,
  frontends = '[{ address = "127.0.0.1:8080" }]',
  extra = "",
): string {
  return `[[listeners]]
address = "127.0.0.1:8080"
${listener}

[clusters.app]
frontends = ${frontends}
backends = [{ address = "127.0.0.1:9000" }]
${extra}`;
}

/** The issue messages of `text`, in order. */
function problems(text: string): string[] {
  return configErrorOf(() => parseConfig(text)).issues.map((issue) => issue.message);
}

Deno.test("parseConfig: allow and deny take IPv4 and IPv6 CIDRs and bare addresses; a bad one is named with its reason", () => {
  const config = parseConfig(toml('allow = ["10.0.0.0/8", "::1"]\ndeny = ["10.6.6.0/24"]'));
  assert.deepEqual(config.listeners[0].allow, ["10.0.0.0/8", "::1"]);
  assert.deepEqual(config.listeners[0].deny, ["10.6.6.0/24"]);
  assert.deepEqual(
    problems(toml('allow = ["10.0.0.0/33", "10.0.0.1/24", "bogus", "::1/129", 7]')),
    [
      'listeners[0].allow[0] = "10.0.0.0/33": prefix length 33 is over 32',
      'listeners[0].allow[1] = "10.0.0.1/24": host bits are set (did you mean 10.0.0.0/24?)',
      'listeners[0].allow[2] = "bogus": not an IP address',
      'listeners[0].allow[3] = "::1/129": prefix length 129 is over 128',
      'listeners[0].allow[4] = 7: expected a CIDR, e.g. "192.0.2.0/24", "2001:db8::/32" or ' +
      '"10.0.0.1", got an integer',
    ],
  );
  assert.deepEqual(problems(toml('deny = "10.0.0.0/8"')), [
    'listeners[0].deny = "10.0.0.0/8": expected an array, got a string',
  ]);
});

Deno.test("parseConfig: a frontend hostname is a DNS name or *. and a domain, lowercased; bad ones are named", () => {
  const config = parseConfig(
    toml("", '[{ address = "127.0.0.1:8080", hostname = "*.Example.COM." }]'),
  );
  assert.equal(config.clusters.app.frontends[0].hostname, "*.example.com");
  const bad = [
    "a..example.com",
    "*.com",
    "a.*.example.com",
    "-x.example.com",
    `${"a".repeat(64)}.com`,
  ];
  const list = bad.map((name) => `{ address = "127.0.0.1:8080", hostname = "${name}" }`).join(", ");
  const messages = problems(toml("", `[${list}]`));
  assert.equal(messages.length, bad.length, messages.join("\n"));
  assert.match(messages[0], /hostname = "a\.\.example\.com": the name has an empty label/);
  assert.match(messages[1], /"\*\.com" covers a whole top-level domain/);
  assert.match(messages[2], /a wildcard is "\*\." at the start only/);
  assert.match(messages[3], /label "-x" is not a DNS label/);
  assert.match(messages[4], /is not a DNS label \(letters, digits, "-" and "_", at most 63/);
});

Deno.test("parseConfig: clusters share a listener by hostname; an address and hostname taken twice is named", () => {
  const shared = toml(
    "",
    '[{ address = "127.0.0.1:8080", hostname = "a.example.com" }]',
    '\n[clusters.b]\nfrontends = [{ address = "127.0.0.1:8080", hostname = "*.example.com" }]\n' +
      'backends = [{ address = "127.0.0.1:9001" }]\n' +
      '\n[clusters.c]\nfrontends = [{ address = "127.0.0.1:8080" }]\n' +
      'backends = [{ address = "127.0.0.1:9002" }]',
  );
  const spec = specFromConfig(parseConfig(shared));
  assert.deepEqual(spec.clusters.map((c) => c.frontends), [
    [{ address: "127.0.0.1:8080", hostname: "a.example.com" }],
    [{ address: "127.0.0.1:8080", hostname: "*.example.com" }],
    ["127.0.0.1:8080"],
  ]);
  assert.deepEqual(
    problems(toml(
      "",
      '[{ address = "127.0.0.1:8080", hostname = "a.example.com" }]',
      '\n[clusters.b]\nfrontends = [{ address = "127.0.0.1:8080", hostname = "A.example.com." }]\n' +
        'backends = [{ address = "127.0.0.1:9001" }]',
    )),
    [
      'clusters.b.frontends[0].address = "127.0.0.1:8080": already the frontend of ' +
      'clusters.app.frontends[0].address for hostname "a.example.com"',
    ],
  );
});

Deno.test("parseConfig: the stage keys are range-checked and typo-checked; specFromConfig passes them on", () => {
  assert.deepEqual(
    problems(toml(
      "expect_proxi = true\nmax_connections_per_ip = 0\nproxy_header_timeout_ms = 0\n" +
        "sni_timeout_ms = 600001\nexpect_proxy = 1",
      undefined,
      'send_proxy = "v3"',
    )),
    [
      'unknown key "listeners[0].expect_proxi": did you mean "expect_proxy"?',
      "listeners[0].max_connections_per_ip = 0: expected a whole number from 1 to 1000000",
      "listeners[0].proxy_header_timeout_ms = 0: expected a whole number from 1 to 600000",
      "listeners[0].sni_timeout_ms = 600001: expected a whole number from 1 to 600000",
      "listeners[0].expect_proxy = 1: expected a boolean, got an integer",
      'clusters.app.send_proxy = "v3": expected one of "v1", "v2": did you mean "v1"?',
    ],
  );
  const spec = specFromConfig(parseConfig(toml(
    "expect_proxy = true\nmax_connections_per_ip = 5\nproxy_header_timeout_ms = 100\nsni_timeout_ms = 200",
    undefined,
    'send_proxy = "v2"',
  )));
  const { expectProxy, maxConnectionsPerIp, proxyHeaderTimeoutMs, sniTimeoutMs } =
    spec.listeners[0];
  assert.deepEqual([expectProxy, maxConnectionsPerIp, proxyHeaderTimeoutMs, sniTimeoutMs], [
    true,
    5,
    100,
    200,
  ]);
  assert.equal(spec.clusters[0].sendProxy, "v2");
});

Deno.test("parseConfig: health_check, backup and source_hash: defaults, ranges and typos named; specFromConfig passes them on", () => {
  const config = parseConfig(
    toml(
      "",
      undefined,
      'load_balancing = "source_hash"\nhealth_check = { send = "PING\\r\\n", expect = "PONG" }',
    ).replace(
      'backends = [{ address = "127.0.0.1:9000" }]',
      'backends = [{ address = "127.0.0.1:9000" }, { address = "127.0.0.1:9001", backup = true }]',
    ),
  );
  const app = config.clusters.app;
  assert.equal(app.loadBalancing, "source_hash");
  assert.deepEqual(app.healthCheck, {
    intervalMs: 2000,
    timeoutMs: 1000,
    rise: 2,
    fall: 3,
    send: "PING\r\n",
    expect: "PONG",
  });
  assert.deepEqual(app.backends.map((b) => b.backup), [false, true]);
  const spec = specFromConfig(config);
  assert.deepEqual(spec.clusters[0].backends.map((b) => b.backup), [undefined, true]);
  assert.equal(spec.clusters[0].healthCheck?.send, "PING\r\n");
  assert.deepEqual(
    problems(toml(
      "",
      undefined,
      "health_check = { interval_ms = 50, rise = 0, fal = 3 }\n" + 'load_balancing = "source_hsah"',
    )),
    [
      "clusters.app.health_check.interval_ms = 50: expected a whole number from 100 to 3600000",
      "clusters.app.health_check.rise = 0: expected a whole number from 1 to 1000",
      'unknown key "clusters.app.health_check.fal": did you mean "fall"?',
      'clusters.app.load_balancing = "source_hsah": expected one of "round_robin", ' +
      '"least_connections", "random", "source_hash": did you mean "source_hash"?',
    ],
  );
});

Deno.test("parseConfig: a backend names one source (address, srv, or host and port); DNS keys are checked and passed on", () => {
  const config = parseConfig(
    'dns_nameserver = "127.0.0.1:5353"\n' + toml("", undefined, "dns_refresh_ms = 1000").replace(
      'backends = [{ address = "127.0.0.1:9000" }]',
      'backends = [{ address = "127.0.0.1:9000" }, { srv = "_App._tcp.Example.internal." }, ' +
        '{ host = "app.example.internal", port = 9001, weight = 5, backup = true }]',
    ),
  );
  assert.deepEqual(config.dnsNameserver, { hostname: "127.0.0.1", port: 5353 });
  const spec = specFromConfig(config);
  assert.equal(spec.clusters[0].backends.length, 1, "only the fixed backend");
  assert.deepEqual(spec.clusters[0].discover, [
    { srv: "_app._tcp.example.internal", weight: 100 },
    { host: "app.example.internal", port: 9001, weight: 5, backup: true },
  ]);
  assert.equal(spec.clusters[0].dnsRefreshMs, 1000);
  assert.deepEqual(spec.dnsNameserver, { hostname: "127.0.0.1", port: 5353 });
  const bad = (backends: string): string[] =>
    problems(
      toml("").replace('backends = [{ address = "127.0.0.1:9000" }]', `backends = ${backends}`),
    );
  assert.deepEqual(bad("[{ weight = 1 }]"), [
    'clusters.app.backends[0]: needs "address", "srv", or "host" and "port"',
  ]);
  assert.deepEqual(bad('[{ address = "127.0.0.1:1", srv = "_a._tcp.x.y" }]'), [
    'clusters.app.backends[0]: "address" and "srv" both given: a backend names one source',
  ]);
  assert.deepEqual(bad('[{ host = "a.example.com" }]'), [
    'clusters.app.backends[0].host = "a.example.com": needs "port" beside it',
  ]);
  assert.deepEqual(bad('[{ srv = "_a._tcp.x.y", port = 1 }]'), [
    'clusters.app.backends[0].port = 1: only goes with "host"',
  ]);
  assert.match(bad('[{ srv = "*.x.y" }]')[0], /a name to look up has no wildcard/);
  assert.match(
    problems('dns_nameserver = "nowhere"\n' + toml(""))[0],
    /^dns_nameserver = "nowhere"/,
  );
});
