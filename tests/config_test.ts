import assert from "node:assert/strict";
import { applyConfig, loadConfig, parseConfig } from "../config.ts";
import {
  configErrorOf,
  configErrorOfAsync,
  DEFAULTS,
  KEY,
  KNOWN_KEYS,
  withTempConfig,
} from "./_config_helpers.ts";

Deno.test("loadConfig reads a valid file", async () => {
  await withTempConfig(`# pipes of 1 MiB\n${KEY} = 1048576\n`, async (path) => {
    const expected = { ...DEFAULTS, splicePipeCapacityBytes: 1_048_576 };
    assert.deepEqual(await loadConfig(path), expected);
    const url = new URL(`file://${path}`);
    assert.deepEqual(await loadConfig(url), expected);
  });
});

Deno.test("parseConfig gives every default to an empty file, or one with only the pipe capacity", () => {
  assert.deepEqual(parseConfig(""), DEFAULTS);
  assert.deepEqual(parseConfig(`${KEY} = 65536`), { ...DEFAULTS, splicePipeCapacityBytes: 65_536 });
  assert.equal("metrics" in parseConfig(""), false);
});

Deno.test("parseConfig gives 0 for an absent key and for 0", () => {
  assert.equal(parseConfig("").splicePipeCapacityBytes, 0);
  assert.equal(parseConfig("# nothing set\n").splicePipeCapacityBytes, 0);
  assert.equal(parseConfig(`${KEY} = 0`).splicePipeCapacityBytes, 0);
});

Deno.test("parseConfig accepts the bounds, other integer notations and a byte order mark", () => {
  assert.equal(parseConfig(`${KEY} = 1073741824`).splicePipeCapacityBytes, 2 ** 30);
  assert.equal(parseConfig(`${KEY} = 0x100000`).splicePipeCapacityBytes, 1_048_576);
  assert.equal(parseConfig(`${KEY} = 1_048_576`).splicePipeCapacityBytes, 1_048_576);
  assert.equal(parseConfig(`\uFEFF${KEY} = 4096\r\n`).splicePipeCapacityBytes, 4096);
});

Deno.test("parseConfig rejects each kind of bad value with the key, the value and the rule", () => {
  const range = "expected a whole number from 0 to 1073741824";
  const cases: [toml: string, message: string, value: unknown][] = [
    ["-1", `${KEY} = -1: ${range}`, -1],
    ["1.5", `${KEY} = 1.5: ${range}`, 1.5],
    ["1024.0", `${KEY} = 1024.0: ${range}, written without a decimal point`, 1024],
    ["1073741825", `${KEY} = 1073741825: ${range}`, 2 ** 30 + 1],
    [
      "99999999999999999999",
      `${KEY} = 99999999999999999999: ${range}`,
      99999999999999999999n,
    ],
    ["inf", `${KEY} = inf: ${range}`, Infinity],
    ['"64k"', `${KEY} = "64k": expected an integer, got a string`, "64k"],
    ["true", `${KEY} = true: expected an integer, got a boolean`, true],
    ["[1, 2]", `${KEY} = [1, 2]: expected an integer, got an array`, [1n, 2n]],
    ["1979-05-27", `${KEY} = 1979-05-27: expected an integer, got a date-time`, undefined],
  ];
  for (const [toml, message, value] of cases) {
    const error = configErrorOf(() => parseConfig(`${KEY} = ${toml}`, { path: "x.toml" }));
    assert.equal(error.message, `Cannot parse config "x.toml": ${message}`);
    assert.equal(error.issues.length, 1);
    assert.equal(error.issues[0].keyPath, KEY);
    assert.equal(error.issues[0].message, message);
    if (value !== undefined) assert.deepEqual(error.issues[0].value, value);
  }
});

Deno.test("parseConfig rejects a table where an integer belongs", () => {
  for (const toml of [`${KEY} = { size = 1 }`, `[${KEY}]\nsize = 1`]) {
    const error = configErrorOf(() => parseConfig(toml));
    assert.equal(
      error.message,
      `Cannot parse config: ${KEY} = { size = 1 }: expected an integer, got a table`,
    );
  }
});

Deno.test("parseConfig suggests the nearest known key for a misspelt one", () => {
  for (
    const typo of [
      "splice_pipe_capacity",
      "splice-pipe-capacity-bytes",
      "Splice_Pipe_Capacity_Bytes",
    ]
  ) {
    const error = configErrorOf(() => parseConfig(`${typo} = 1048576`, { path: "x.toml" }));
    assert.equal(
      error.message,
      `Cannot parse config "x.toml": unknown key ${JSON.stringify(typo)}: ` +
        `did you mean "${KEY}"?`,
    );
    assert.equal(error.issues[0].keyPath, typo);
    assert.equal(error.issues[0].value, 1_048_576);
  }
});

Deno.test("parseConfig lists the known keys when no key is close", () => {
  const error = configErrorOf(() => parseConfig('foo = "bar"'));
  assert.equal(
    error.message,
    `Cannot parse config: unknown key "foo" (known keys: ${KNOWN_KEYS})`,
  );
  assert.deepEqual(error.issues, [{
    keyPath: "foo",
    value: "bar",
    message: `unknown key "foo" (known keys: ${KNOWN_KEYS})`,
  }]);
});

Deno.test("parseConfig treats prototype names as unknown keys", () => {
  const error = configErrorOf(() => parseConfig('constructor = 1\n"__proto__" = 2\ntoString = 3'));
  assert.deepEqual(error.issues.map((issue) => issue.keyPath), [
    "constructor",
    "__proto__",
    "toString",
  ]);
});

Deno.test("parseConfig quotes keys that are not bare in key paths", () => {
  const error = configErrorOf(() => parseConfig('"my key" = 1\n[other.table]\nx = 1'));
  assert.deepEqual(error.issues.map((issue) => issue.keyPath), ['"my key"', "other"]);
  assert.match(error.message, /unknown key "\\"my key\\"" \(known keys: /);
});

Deno.test("parseConfig reports every problem at once, one per line", () => {
  const error = configErrorOf(() =>
    parseConfig(`${KEY} = -1\nfoo = 1\nsplice_pipe_capacity = 2\n`, { path: "x.toml" })
  );
  assert.equal(error.issues.length, 3);
  assert.deepEqual(error.issues.map((issue) => issue.keyPath), [
    KEY,
    "foo",
    "splice_pipe_capacity",
  ]);
  const lines = error.message.split("\n");
  assert.equal(lines[0], `Cannot parse config "x.toml": 3 problems:`);
  assert.equal(lines[1], `  ${KEY} = -1: expected a whole number from 0 to 1073741824`);
  assert.equal(lines[2], `  unknown key "foo" (known keys: ${KNOWN_KEYS})`);
  assert.equal(lines[3], `  unknown key "splice_pipe_capacity": did you mean "${KEY}"?`);
  assert.equal(lines.length, 4);
});

Deno.test("ConfigError cuts a long list of problems short in its message but keeps all in issues", () => {
  const text = Array.from({ length: 30 }, (_, i) => `unknown_${i} = ${i}`).join("\n");
  const error = configErrorOf(() => parseConfig(text));
  assert.equal(error.issues.length, 30);
  const lines = error.message.split("\n");
  assert.equal(lines[0], "Cannot parse config: 30 problems:");
  assert.equal(lines.at(-1), "  ... and 10 more");
  assert.equal(lines.length, 22);
});

Deno.test("parseConfig and loadConfig name the file, the line and the column of a TOML syntax error", async () => {
  const text = `# comment\n${KEY} = \n`;
  const error = configErrorOf(() => parseConfig(text, { path: "x.toml" }));
  assert.match(
    error.message,
    /^Cannot parse config "x\.toml": invalid TOML at line 2, column \d+: \S/,
  );
  assert.equal(error.message.includes("\n"), false);
  assert.deepEqual(error.issues.map((issue) => issue.keyPath), [""]);
  assert.ok(error.cause instanceof Error);

  await withTempConfig(`${KEY} = 1\n[broken\n`, async (path) => {
    const error = await configErrorOfAsync(loadConfig(path));
    assert.equal(error.path, path);
    assert.ok(
      error.message.startsWith(`Cannot parse config "${path}": invalid TOML at line 2, column `),
      error.message,
    );
  });
});

Deno.test("parseConfig only ever throws ConfigError for malformed input", () => {
  const inputs = [
    "[",
    "a = \u0000",
    "a = 1\na = 2",
    "[a]\n[a]",
    "x = " + "[".repeat(5_000),
    "x = " + "{ a = ".repeat(5_000),
    `${KEY} = 1\n${KEY} = 2`,
    '"\uD800" = 1',
  ];
  for (const input of inputs) {
    configErrorOf(() => parseConfig(input));
  }
});

Deno.test("loadConfig reports a missing file as a ConfigError with the cause kept", async () => {
  const dir = await Deno.makeTempDir({ prefix: "splice_config_" });
  try {
    const path = `${dir}/absent.toml`;
    const error = await configErrorOfAsync(loadConfig(path));
    assert.equal(error.message, `Cannot read config "${path}": No such file or directory`);
    assert.equal(error.path, path);
    assert.ok(error.cause instanceof Deno.errors.NotFound);
    assert.deepEqual(error.issues, [{
      keyPath: "",
      value: undefined,
      message: "No such file or directory",
    }]);

    const dirError = await configErrorOfAsync(loadConfig(dir));
    assert.ok(dirError.message.startsWith(`Cannot read config "${dir}": `), dirError.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ConfigError carries the path, the issues and a name", () => {
  const error = configErrorOf(() => parseConfig(`${KEY} = -1`, { path: "proxy.toml" }));
  assert.ok(error instanceof Error);
  assert.equal(error.name, "ConfigError");
  assert.equal(error.path, "proxy.toml");
  assert.deepEqual(error.issues, [{
    keyPath: KEY,
    value: -1,
    message: `${KEY} = -1: expected a whole number from 0 to 1073741824`,
  }]);
  assert.ok(Object.isFrozen(error.issues));

  const anonymous = configErrorOf(() => parseConfig(`${KEY} = -1`));
  assert.equal(anonymous.path, undefined);
  assert.ok(anonymous.message.startsWith("Cannot parse config: "), anonymous.message);
});

Deno.test("applyConfig rejects a hand-built config without touching the process state", () => {
  for (const bad of [-1, 1.5, NaN, 2 ** 30 + 1]) {
    const error = configErrorOf(() => applyConfig({ ...DEFAULTS, splicePipeCapacityBytes: bad }));
    assert.equal(
      error.message,
      `Cannot apply config: ${KEY} = ${bad}: expected a whole number from 0 to 1073741824`,
    );
  }
  // 0 keeps the default and does not lock the process-wide value.
  assert.deepEqual(applyConfig(DEFAULTS), { pipeCapacityApplied: false });
});

Deno.test("applyConfig sets the pipe capacity once per process", async () => {
  // The capacity is set-once process state: a fresh process keeps this test independent of
  // every other test.
  const configUrl = new URL("../config.ts", import.meta.url).href;
  const splicePipeUrl = new URL("../splice_pipe.ts", import.meta.url).href;
  const script = await Deno.makeTempFile({ prefix: "splice_apply_config_", suffix: ".ts" });
  try {
    await Deno.writeTextFile(
      script,
      `import { applyConfig, parseConfig } from ${JSON.stringify(configUrl)};
import { requestedPipeCapacity } from ${JSON.stringify(splicePipeUrl)};

const before = requestedPipeCapacity();
const first = applyConfig(parseConfig("${KEY} = 1048576"));
const afterFirst = requestedPipeCapacity();
const second = applyConfig(parseConfig("${KEY} = 65536"));
const afterSecond = requestedPipeCapacity();
console.log(JSON.stringify({ before, first, afterFirst, second, afterSecond }));
`,
    );
    const output = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--config",
        new URL("../deno.json", import.meta.url).pathname,
        "--allow-ffi",
        "--allow-read",
        script,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(output.stderr);
    assert.equal(output.code, 0, stderr);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(output.stdout)), {
      before: 65_536,
      first: { pipeCapacityApplied: true },
      afterFirst: 1_048_576,
      second: { pipeCapacityApplied: false },
      afterSecond: 1_048_576,
    });
  } finally {
    await Deno.remove(script);
  }
});
