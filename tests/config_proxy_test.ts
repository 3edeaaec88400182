import assert from "node:assert/strict";
import { loadConfig, parseConfig } from "../config.ts";
import { specFromConfig } from "../proxy/spec.ts";
import {
  configErrorOf,
  FULL,
  FULL_CONFIG,
  onlyIssue,
  proxyToml,
  withTempConfig,
} from "./_config_helpers.ts";

// --- The proxy's keys: listeners, clusters, metrics, timeouts ---------------------------------

Deno.test("parseConfig and loadConfig: a full proxy file round-trips into the expected Config", async () => {
  assert.deepEqual(parseConfig(FULL), FULL_CONFIG);
  await withTempConfig(FULL, async (path) => {
    assert.deepEqual(await loadConfig(path), FULL_CONFIG);
  });
  // The example of the brief, defaults included.
  assert.deepEqual(parseConfig(proxyToml()).clusters.app, {
    protocol: "tcp",
    loadBalancing: "round_robin",
    dnsRefreshMs: 5000,
    frontends: [{ address: { hostname: "127.0.0.1", port: 8080 } }],
    backends: [{ address: { hostname: "127.0.0.1", port: 9000 }, weight: 100, backup: false }],
  });
});

Deno.test("parseConfig rejects each kind of bad address with the key path and the value", () => {
  const example = 'expected "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"';
  const cases: [address: string, problem: string][] = [
    ["localhost", `missing ":port": ${example}`],
    [":9000", `the host is empty: ${example}`],
    ["[]:9000", `the host is empty: ${example}`],
    ["127.0.0.1:", `the port is empty: ${example}`],
    ["127.0.0.1:http", 'port "http" is not a number'],
    ["127.0.0.1:-1", 'port "-1" is not a number'],
    ["::1:9000", `an IPv6 address needs brackets, e.g. "[::1]:8080": ${example}`],
    ["[::1]9000", `missing ":port" after "]": ${example}`],
    ["[::1:9000", `missing "]" after the IPv6 address: ${example}`],
    ["[::g]:9000", '"::g" is not an IPv6 address'],
    ["[1:2:3:4:5:6:7:8:9]:9000", '"1:2:3:4:5:6:7:8:9" is not an IPv6 address'],
    ["my host:9000", '"my host" is not a host name or an IP address'],
  ];
  const keyPath = "clusters.app.backends[0].address";
  for (const [address, problem] of cases) {
    const issue = onlyIssue(proxyToml("", `[{ address = ${JSON.stringify(address)} }]`));
    assert.deepEqual(issue, {
      keyPath,
      value: address,
      message: `${keyPath} = ${JSON.stringify(address)}: ${problem}`,
    });
  }
  const typeIssue = onlyIssue("[metrics]\naddress = 9901");
  assert.deepEqual(typeIssue, {
    keyPath: "metrics.address",
    value: 9901,
    message: `metrics.address = 9901: expected an address ${example.slice(9)}, got an integer`,
  });
});

Deno.test("parseConfig: ports must be 1 to 65535; 0 only for listeners (and frontends naming them)", () => {
  let issue = onlyIssue(proxyToml("", '[{ address = "127.0.0.1:65536" }]'));
  assert.equal(issue.keyPath, "clusters.app.backends[0].address");
  assert.equal(
    issue.message,
    'clusters.app.backends[0].address = "127.0.0.1:65536": port 65536 is out of range: ' +
      "expected 1 to 65535",
  );

  issue = onlyIssue('[metrics]\naddress = "127.0.0.1:0"');
  assert.equal(
    issue.message,
    'metrics.address = "127.0.0.1:0": port 0 is out of range: expected 1 to 65535 ' +
      '(port 0, "any free port", is for listeners only)',
  );

  issue = onlyIssue('[[listeners]]\naddress = "[::1]:99999"');
  assert.deepEqual(issue, {
    keyPath: "listeners[0].address",
    value: "[::1]:99999",
    message: 'listeners[0].address = "[::1]:99999": port 99999 is out of range: ' +
      "expected 0 to 65535 (0: any free port)",
  });

  const config = parseConfig(
    '[[listeners]]\naddress = "127.0.0.1:0"\n[clusters.test]\n' +
      'frontends = [{ address = "127.0.0.1:0" }]\nbackends = [{ address = "127.0.0.1:1" }]',
  );
  assert.deepEqual(config.listeners[0].address, { hostname: "127.0.0.1", port: 0 });
  assert.deepEqual(config.clusters.test.frontends[0].address, { hostname: "127.0.0.1", port: 0 });
});

Deno.test("parseConfig suggests the nearest valid value for an unknown enum value", () => {
  let issue = onlyIssue(proxyToml('load_balancing = "round-robin"'));
  assert.deepEqual(issue, {
    keyPath: "clusters.app.load_balancing",
    value: "round-robin",
    message: 'clusters.app.load_balancing = "round-robin": expected one of "round_robin", ' +
      '"least_connections", "random", "source_hash": did you mean "round_robin"?',
  });

  issue = onlyIssue('splice_mode = "zero-copy"');
  assert.equal(
    issue.message,
    'splice_mode = "zero-copy": expected one of "auto", "splice", "copy"',
  );

  issue = onlyIssue('[[listeners]]\nprotocol = "udp"\naddress = "127.0.0.1:53"');
  assert.deepEqual(issue, {
    keyPath: "listeners[0].protocol",
    value: "udp",
    message: 'listeners[0].protocol = "udp": expected one of "tcp": did you mean "tcp"?',
  });

  issue = onlyIssue('log_format = "JSON"');
  assert.equal(
    issue.message,
    'log_format = "JSON": expected one of "text", "json": did you mean "json"?',
  );

  issue = onlyIssue('access_log = "error"');
  assert.equal(
    issue.message,
    'access_log = "error": expected one of "all", "errors", "off": did you mean "errors"?',
  );
  issue = onlyIssue("access_log = false");
  assert.equal(issue.keyPath, "access_log");
  assert.equal(
    issue.message,
    'access_log = false: expected one of "all", "errors", "off", got a boolean',
  );
});

Deno.test("parseConfig suggests the nearest key of a nested table for a misspelt key in it", () => {
  let issue = onlyIssue(proxyToml('load_balance = "random"'));
  assert.deepEqual(issue, {
    keyPath: "clusters.app.load_balance",
    value: "random",
    message: 'unknown key "clusters.app.load_balance": did you mean "load_balancing"?',
  });

  issue = onlyIssue('[[listeners]]\naddress = "127.0.0.1:80"\nmax_connection = 5');
  assert.equal(
    issue.message,
    'unknown key "listeners[0].max_connection": did you mean "max_connections"?',
  );

  issue = onlyIssue(proxyToml("", '[{ address = "127.0.0.1:9000", wieght = 5 }]'));
  assert.equal(issue.keyPath, "clusters.app.backends[0].wieght");
  assert.equal(
    issue.message,
    'unknown key "clusters.app.backends[0].wieght": did you mean "weight"?',
  );

  issue = onlyIssue("[[listener]]\naddress = 1");
  assert.equal(issue.message, 'unknown key "listener": did you mean "listeners"?');
});

Deno.test("parseConfig: a frontend must be the address of a listener", () => {
  let issue = onlyIssue(
    proxyToml(
      '\n[clusters.api]\nfrontends = [{ address = "127.0.0.1:8081" }]\n' +
        'backends = [{ address = "127.0.0.1:9100" }]',
    ),
  );
  assert.deepEqual(issue, {
    keyPath: "clusters.api.frontends[0].address",
    value: "127.0.0.1:8081",
    message: 'clusters.api.frontends[0].address = "127.0.0.1:8081": no listener has this ' +
      'address (listeners: "127.0.0.1:8080")',
  });

  issue = onlyIssue(
    '[clusters.app]\nfrontends = [{ address = "127.0.0.1:8080" }]\n' +
      'backends = [{ address = "127.0.0.1:9000" }]',
  );
  assert.equal(
    issue.message,
    'clusters.app.frontends[0].address = "127.0.0.1:8080": no listener has this address ' +
      "(no listeners are configured)",
  );

  // Matching is on the normalised address: case of the host name, IPv6 notation.
  const config = parseConfig(
    '[[listeners]]\naddress = "[0:0:0:0:0:0:0:1]:8080"\n[[listeners]]\naddress = "LOCALHOST:80"\n' +
      '[clusters.app]\nfrontends = [{ address = "[::1]:8080" }, { address = "localhost:80" }]\n' +
      'backends = [{ address = "127.0.0.1:9000" }]',
  );
  assert.equal(config.clusters.app.frontends.length, 2);

  // A listener that is itself wrong does not make its frontends look orphaned.
  issue = onlyIssue(
    '[[listeners]]\naddress = "127.0.0.1:80800"\n[clusters.app]\n' +
      'frontends = [{ address = "127.0.0.1:8080" }]\nbackends = [{ address = "127.0.0.1:9000" }]',
  );
  assert.equal(issue.keyPath, "listeners[0].address");
});

Deno.test("parseConfig: listener addresses are unique, and so are frontends and backends", () => {
  let issue = onlyIssue(proxyToml() + '\n[[listeners]]\naddress = "127.0.0.1:8080"');
  assert.deepEqual(issue, {
    keyPath: "listeners[1].address",
    value: "127.0.0.1:8080",
    message: 'listeners[1].address = "127.0.0.1:8080": same address as listeners[0].address',
  });

  issue = onlyIssue(
    proxyToml(
      '\n[clusters.other]\nfrontends = [{ address = "127.0.0.1:8080" }]\n' +
        'backends = [{ address = "127.0.0.1:9000" }]',
    ),
  );
  assert.deepEqual(issue, {
    keyPath: "clusters.other.frontends[0].address",
    value: "127.0.0.1:8080",
    message: 'clusters.other.frontends[0].address = "127.0.0.1:8080": already the frontend ' +
      "of clusters.app.frontends[0].address",
  });

  issue = onlyIssue(
    proxyToml("", '[{ address = "127.0.0.1:9000" }, { address = "127.0.0.1:9000", weight = 1 }]'),
  );
  assert.deepEqual(issue, {
    keyPath: "clusters.app.backends[1].address",
    value: "127.0.0.1:9000",
    message: 'clusters.app.backends[1].address = "127.0.0.1:9000": same address as ' +
      "clusters.app.backends[0].address",
  });
});

Deno.test("parseConfig: a cluster needs frontends and backends, at least one of each", () => {
  let issue = onlyIssue(
    '[[listeners]]\naddress = "127.0.0.1:8080"\n' +
      '[clusters.app]\nfrontends = [{ address = "127.0.0.1:8080" }]',
  );
  assert.deepEqual(issue, {
    keyPath: "clusters.app.backends",
    value: undefined,
    message: 'missing required key "clusters.app.backends"',
  });

  issue = onlyIssue(proxyToml("", "[]"));
  assert.deepEqual(issue, {
    keyPath: "clusters.app.backends",
    value: [],
    message: "clusters.app.backends = []: expected at least 1 entry",
  });

  issue = onlyIssue("[metrics]");
  assert.equal(issue.message, 'missing required key "metrics.address"');

  issue = onlyIssue(proxyToml("", "[{ weight = 5 }]"));
  assert.equal(
    issue.message,
    'clusters.app.backends[0]: needs "address", "srv", or "host" and "port"',
  );
});

Deno.test("parseConfig range-checks weights, timeouts and connection limits", () => {
  const cases: [toml: string, keyPath: string, message: string][] = [
    [
      proxyToml(
        "",
        '[{ address = "127.0.0.1:9000" }, { address = "127.0.0.1:9001", weight = 1000001 }]',
      ),
      "clusters.app.backends[1].weight",
      "clusters.app.backends[1].weight = 1000001: expected a whole number from 0 to 1000000",
    ],
    [
      proxyToml("", '[{ address = "127.0.0.1:9000", weight = -1 }]'),
      "clusters.app.backends[0].weight",
      "clusters.app.backends[0].weight = -1: expected a whole number from 0 to 1000000",
    ],
    [
      "connect_timeout_ms = 0",
      "connect_timeout_ms",
      "connect_timeout_ms = 0: expected a whole number from 1 to 600000",
    ],
    [
      "idle_timeout_ms = 2147483648",
      "idle_timeout_ms",
      "idle_timeout_ms = 2147483648: expected a whole number from 0 to 2147483647",
    ],
    [
      "drain_timeout_ms = 3600001",
      "drain_timeout_ms",
      "drain_timeout_ms = 3600001: expected a whole number from 0 to 3600000",
    ],
    [
      '[[listeners]]\naddress = "127.0.0.1:80"\nmax_connections = 0',
      "listeners[0].max_connections",
      "listeners[0].max_connections = 0: expected a whole number from 1 to 1000000",
    ],
  ];
  for (const [toml, keyPath, message] of cases) {
    const issue = onlyIssue(toml);
    assert.equal(issue.keyPath, keyPath);
    assert.equal(issue.message, message);
  }
});

Deno.test("parseConfig: cluster names are letters, digits, _ and -; sections have the right types", () => {
  let issue = onlyIssue(
    '[[listeners]]\naddress = "127.0.0.1:8080"\n[clusters."my app"]\n' +
      'frontends = [{ address = "127.0.0.1:8080" }]\nbackends = [{ address = "127.0.0.1:9000" }]',
  );
  assert.equal(issue.keyPath, 'clusters."my app"');
  assert.equal(
    issue.message,
    'clusters."my app": invalid name "my app": expected one or more letters, digits, "_" and "-"',
  );

  const error = configErrorOf(() =>
    parseConfig('listeners = "127.0.0.1:8080"\nclusters = []\nmetrics = "127.0.0.1:9901"')
  );
  assert.deepEqual(error.issues.map((issue) => issue.message), [
    'listeners = "127.0.0.1:8080": expected an array, got a string',
    "clusters = []: expected a table, got an array",
    'metrics = "127.0.0.1:9901": expected a table, got a string',
  ]);

  issue = onlyIssue('[[listeners]]\naddress = "127.0.0.1:80"\n[clusters]\napp = 1');
  assert.equal(issue.message, "clusters.app = 1: expected a table, got an integer");
});

Deno.test("parseConfig reports every problem of a proxy file at once", () => {
  const toml = `
connect_timeout_ms = 0
splice_mode = "splcie"

[[listeners]]
address = "127.0.0.1:8080"

[[listeners]]
address = "127.0.0.1:8080"

[clusters.app]
load_balance = "random"
frontends = [{ address = "127.0.0.1:8081" }]
backends = [
  { address = "127.0.0.1:9000", weight = 100 },
  { address = "127.0.0.1:70000", weight = 2000000 },
]

[clusters.api]
frontends = [{ address = "127.0.0.1:8080" }]
`;
  const error = configErrorOf(() => parseConfig(toml, { path: "proxy.toml" }));
  assert.deepEqual(error.issues.map((issue) => issue.keyPath), [
    "connect_timeout_ms",
    "splice_mode",
    "clusters.app.load_balance",
    "clusters.app.backends[1].address",
    "clusters.app.backends[1].weight",
    "clusters.api.backends",
    "listeners[1].address",
    "clusters.app.frontends[0].address",
  ]);
  const lines = error.message.split("\n");
  assert.equal(lines[0], 'Cannot parse config "proxy.toml": 8 problems:');
  assert.equal(lines.length, 9);
  assert.equal(
    lines[4],
    '  clusters.app.backends[1].address = "127.0.0.1:70000": port 70000 is out of range: ' +
      "expected 1 to 65535",
  );
  assert.equal(
    lines[8],
    '  clusters.app.frontends[0].address = "127.0.0.1:8081": no listener has this address ' +
      '(listeners: "127.0.0.1:8080")',
  );
});

// --- engines -----------------------------------------------------------------------------------

Deno.test("parseConfig: engines is 0 to 64, 0 when absent; specFromConfig passes it on", () => {
  assert.equal(parseConfig("").engines, 0);
  assert.equal(parseConfig(proxyToml()).engines, 0);
  for (const engines of [0, 1, 2, 63, 64]) {
    const config = parseConfig(`engines = ${engines}\n${proxyToml()}`);
    assert.equal(config.engines, engines);
    assert.equal(specFromConfig(config).engines, engines);
  }
  assert.equal(parseConfig("engines = 0x10").engines, 16);
  assert.equal(specFromConfig(parseConfig("")).engines, 0);
});

Deno.test("parseConfig refuses engines out of range, fractional or not an integer, naming key and value", () => {
  const range = "expected a whole number from 0 to 64";
  const cases: [toml: string, message: string, value: unknown][] = [
    ["65", `engines = 65: ${range}`, 65],
    ["-1", `engines = -1: ${range}`, -1],
    ["1.5", `engines = 1.5: ${range}`, 1.5],
    ["2.0", `engines = 2.0: ${range}, written without a decimal point`, 2],
    ['"auto"', 'engines = "auto": expected an integer, got a string', "auto"],
    ["true", "engines = true: expected an integer, got a boolean", true],
  ];
  for (const [toml, message, value] of cases) {
    const issue = onlyIssue(`engines = ${toml}\n${proxyToml()}`);
    assert.deepEqual(issue, { keyPath: "engines", value, message });
  }
  // A misspelt key is suggested as any other; under a table it is that table's unknown key.
  assert.equal(onlyIssue("engine = 2").message, 'unknown key "engine": did you mean "engines"?');
  assert.equal(onlyIssue("Engines = 2").message, 'unknown key "Engines": did you mean "engines"?');
  assert.equal(
    onlyIssue('[metrics]\naddress = "127.0.0.1:9901"\nengines = 2').message,
    'unknown key "metrics.engines" (known keys: address, token)',
  );
});

// --- The admin token ---------------------------------------------------------------------------

Deno.test("parseConfig: metrics.token is optional and kept as written when valid", () => {
  const token = "Zx9-abcdefghijklmnop_+/=.~";
  const config = parseConfig(`[metrics]\naddress = "127.0.0.1:9901"\ntoken = "${token}"`);
  assert.deepEqual(config.metrics, {
    address: { hostname: "127.0.0.1", port: 9901 },
    token,
  });
  // Exactly 16 characters is enough.
  const sixteen = "0123456789abcdef";
  assert.equal(
    parseConfig(`[metrics]\naddress = "127.0.0.1:9901"\ntoken = "${sixteen}"`).metrics?.token,
    sixteen,
  );
  const absent = parseConfig('[metrics]\naddress = "127.0.0.1:9901"').metrics;
  assert.ok(absent !== undefined && !("token" in absent));
});

Deno.test("parseConfig reports a bad metrics.token by key, without the token itself", () => {
  const expected = "expected a string of at least 16 printable ASCII characters, without " +
    "whitespace";
  const cases: [toml: string, shown: string, found: string][] = [
    ['"s3cr3t-but-shrt"', '"s3cr..."', "got 15 characters"],
    ['""', '""', "got 0 characters"],
    ['"abc"', '"abc"', "got 3 characters"],
    // Four UTF-16 units at most, never half a surrogate pair.
    [
      '"\u{1F511}\u{1F511}\u{1F511}\u{1F511}\u{1F511}"',
      '"\u{1F511}\u{1F511}..."',
      "got 5 characters and a character outside printable ASCII (U+1F511) at character 1",
    ],
    // A header's bytes are read as Latin-1: such a token could never match.
    [
      '"0123456789abcdef\u00E9"',
      '"0123..."',
      "got a character outside printable ASCII (U+00E9) at character 17",
    ],
    ['"0123456789abcdef "', '"0123..."', "got whitespace (U+0020) at character 17"],
    ['"0123456789\\tabcdef"', '"0123..."', "got whitespace (U+0009) at character 11"],
    ['"01234567\\u00A089abcdef"', '"0123..."', "got whitespace (U+00A0) at character 9"],
    [
      '"x0123456789abcdef\\u007F"',
      '"x012..."',
      "got a control character (U+007F) at character 18",
    ],
    [
      '"\\u0000bc"',
      '"\\u0000bc"',
      "got 3 characters and a control character (U+0000) at character 1",
    ],
    ["1234567890123456789", "1234...", "got an integer"],
    ["true", "true", "got a boolean"],
  ];
  for (const [value, shown, found] of cases) {
    const toml = `[metrics]\naddress = "127.0.0.1:9901"\ntoken = ${value}`;
    const issue = onlyIssue(toml);
    assert.deepEqual(issue, {
      keyPath: "metrics.token",
      value: undefined,
      message: `metrics.token = ${shown}: ${expected}, ${found}`,
    });
  }
  // Nowhere in the error, not even in the value of an issue, is the token repeated.
  const secret = "hunter2 hunter2 hunter2";
  const error = configErrorOf(() =>
    parseConfig(`[metrics]\naddress = "127.0.0.1:9901"\ntoken = "${secret}"`)
  );
  assert.equal(error.message.includes("hunter2 "), false, error.message);
  assert.equal(JSON.stringify(error.issues).includes("hunter2 "), false);
});
