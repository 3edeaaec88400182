/**
 * What a configuration problem looks like: the {@linkcode ConfigIssue} shape, the constructors
 * that build one for a value, and the way values, keys and key paths are written in messages.
 *
 * Every message names a key path and a value a user may have typed at any length, so each is
 * written back shortened (key paths lose their middle, values their end, secrets all but their
 * first characters), and a message stays a few hundred characters however large the file.
 *
 * @module
 */

/**
 * One problem found in a configuration.
 *
 * @example
 * ```ts
 * import { ConfigError, type ConfigIssue, parseConfig } from "@zerocopy/splice/config";
 *
 * try {
 *   parseConfig("splice_pipe_capacity_bytes = -1");
 * } catch (error) {
 *   if (!(error instanceof ConfigError)) throw error;
 *   const issue: ConfigIssue = error.issues[0];
 *   console.log(issue.keyPath, issue.value); // splice_pipe_capacity_bytes -1
 * }
 * ```
 */
export interface ConfigIssue {
  /**
   * Where the problem is, as a TOML key path such as `clusters.app.backends[1].weight`; `""`
   * for the file as a whole (unreadable, not valid TOML).
   */
  readonly keyPath: string;
  /**
   * The offending value as parsed, `undefined` when there is none (a missing key, a syntax
   * error) and for the secret `metrics.token`, which is not repeated. An integer is a `number`
   * when it fits one exactly, else a `bigint`; tables and arrays are passed as parsed, with
   * their integers as `bigint`.
   */
  readonly value: unknown;
  /**
   * The problem in one line that names the key path and the value, e.g.
   * `splice_pipe_capacity_bytes = -1: expected a whole number from 0 to 1073741824`. Key paths
   * longer than 80 characters lose their middle and values longer than 60 their end, each cut
   * marked `...`, so a message stays a few hundred characters at most. An unknown key or
   * value suggests the nearest known one in the first 1000 issues of a file; later ones list
   * the known keys or values, as when none is near.
   */
  readonly message: string;
}

/**
 * How many issues of a file may suggest the nearest known key or value. One search takes
 * microseconds, but a file can hold hundreds of thousands of unknown keys, which took seconds.
 * Past this many issues, far more than a message lists, an unknown key lists the known keys and
 * an unknown value the valid ones, as when none is near.
 */
export const MAX_SUGGESTED_ISSUES = 1_000;

/** Values longer than this are cut in messages (and strings are escaped no further). */
export const MAX_SHOWN_VALUE_LENGTH = 60;
const MAX_SHOWN_KEY_PATH_LENGTH = 80;
/** A secret shows no more than this: a log of a rejected file must not hand out a token. */
const MAX_SHOWN_SECRET_LENGTH = 4;
/** Items of an array or table, and values of a list, shown before the rest are summed up. */
const MAX_SHOWN_ITEMS = 3;

/** The issue `keyPath = value: problem`, for a value that is there but wrong. */
export function valueIssue(keyPath: string, value: unknown, problem: string): ConfigIssue {
  return {
    keyPath,
    value: plainValue(value),
    message: `${formatKeyPath(keyPath)} = ${formatValue(value)}: ${problem}`,
  };
}

/** An issue with a secret: its value is withheld, and the message shows its start only. */
export function secretIssue(keyPath: string, value: unknown, problem: string): ConfigIssue {
  return {
    keyPath,
    value: undefined,
    message: `${formatKeyPath(keyPath)} = ${formatSecret(value)}: ${problem}`,
  };
}

/** The issue of a value of the wrong TOML type; `expected` names the right one, with article. */
export function typeIssue(keyPath: string, value: unknown, expected: string): ConfigIssue {
  return valueIssue(keyPath, value, `expected ${expected}, got ${tomlTypeName(value)}`);
}

/** The issue of a required key that the file leaves out. */
export function missingKeyIssue(keyPath: string): ConfigIssue {
  return {
    keyPath,
    value: undefined,
    message: `missing required key ${JSON.stringify(formatKeyPath(keyPath))}`,
  };
}

/** The TOML type of a parsed value, with its article. */
export function tomlTypeName(value: unknown): string {
  if (typeof value === "string") return "a string";
  if (typeof value === "bigint") return "an integer";
  if (typeof value === "number") return "a float";
  if (typeof value === "boolean") return "a boolean";
  if (value instanceof Date) return "a date-time";
  if (Array.isArray(value)) return "an array";
  return "a table";
}

/** Integers that fit a number exactly become one, so callers need not compare with `-1n`. */
export function plainValue(value: unknown): unknown {
  if (typeof value === "bigint" && Number.isSafeInteger(Number(value))) return Number(value);
  return value;
}

/** A parsed value written back as TOML, shortened: enough to spot it in the file. */
export function formatValue(value: unknown, depth = 0): string {
  return cutEnd(formatValueUnbounded(value, depth), MAX_SHOWN_VALUE_LENGTH);
}

/**
 * A secret as messages show it: its first few characters only, so that a log of a rejected
 * configuration does not hand out a token that is nearly right.
 */
function formatSecret(value: unknown): string {
  if (typeof value !== "string") {
    const text = formatValueUnbounded(value, 0);
    return text.length > MAX_SHOWN_SECRET_LENGTH
      ? `${headOf(text, MAX_SHOWN_SECRET_LENGTH)}...`
      : text;
  }
  if (value.length <= MAX_SHOWN_SECRET_LENGTH) return JSON.stringify(value);
  return `${JSON.stringify(headOf(value, MAX_SHOWN_SECRET_LENGTH)).slice(0, -1)}..."`;
}

/**
 * A key path as messages show it, at most 80 characters. A longer one loses its middle rather
 * than its end, which names the key itself: `clusters.<long name>.backends[0].address`.
 */
export function formatKeyPath(keyPath: string): string {
  if (keyPath.length <= MAX_SHOWN_KEY_PATH_LENGTH) return keyPath;
  const head = MAX_SHOWN_KEY_PATH_LENGTH / 2;
  const tail = MAX_SHOWN_KEY_PATH_LENGTH - head - 3;
  return `${headOf(keyPath, head)}...${tailOf(keyPath, tail)}`;
}

/** `"a", "b", "c" and 2 more`: the first few values, with the count of the others. */
export function formatValues(values: readonly unknown[]): string {
  const shown = values.slice(0, MAX_SHOWN_ITEMS).map((value) => formatValue(value)).join(", ");
  const more = values.length - MAX_SHOWN_ITEMS;
  return more > 0 ? `${shown} and ${more} more` : shown;
}

/** `text` cut to `max` characters at most, the cut marked `...`. */
export function cutEnd(text: string, max: number): string {
  return text.length > max ? `${headOf(text, max - 3)}...` : text;
}

/** The first `length` UTF-16 units of `text`, one fewer rather than half a surrogate pair. */
function headOf(text: string, length: number): string {
  const last = text.charCodeAt(length - 1);
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? length - 1 : length);
}

/** The last `length` UTF-16 units of `text`, one fewer rather than half a surrogate pair. */
function tailOf(text: string, length: number): string {
  const start = text.length - length;
  const first = text.charCodeAt(start);
  return text.slice(first >= 0xdc00 && first <= 0xdfff ? start + 1 : start);
}

function formatValueUnbounded(value: unknown, depth: number): string {
  // Only the start of a long string can be shown: the rest need not be escaped.
  if (typeof value === "string") return JSON.stringify(value.slice(0, MAX_SHOWN_VALUE_LENGTH));
  if (typeof value === "bigint" || typeof value === "boolean") return String(value);
  if (typeof value === "number") {
    if (Number.isNaN(value)) return "nan";
    if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
    if (Object.is(value, -0)) return "-0.0";
    const text = String(value);
    // TOML writes floats with a point; "1" would read as the integer the user did not write.
    return /[.eE]/.test(text) ? text : `${text}.0`;
  }
  if (value instanceof Date) return value.toISOString();
  if (value === undefined || value === null) return String(value);
  if (depth >= 2) return Array.isArray(value) ? "[...]" : "{...}";
  if (Array.isArray(value)) {
    const items = value.slice(0, MAX_SHOWN_ITEMS).map((item) => formatValue(item, depth + 1));
    if (value.length > MAX_SHOWN_ITEMS) items.push("...");
    return `[${items.join(", ")}]`;
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (entries.length === 0) return "{}";
    const items = entries.slice(0, MAX_SHOWN_ITEMS).map(([key, item]) =>
      `${formatKey(key)} = ${formatValue(item, depth + 1)}`
    );
    if (entries.length > MAX_SHOWN_ITEMS) items.push("...");
    return `{ ${items.join(", ")} }`;
  }
  return String(value);
}

/** A key as TOML writes it: bare when it can be, quoted otherwise. */
function formatKey(key: string): string {
  return /^[A-Za-z0-9_-]+$/.test(key) ? key : JSON.stringify(key);
}

/** The key path of `key` in the table at `parent` (`""` for the root), quoted as TOML needs. */
export function joinKeyPath(parent: string, key: string): string {
  return parent === "" ? formatKey(key) : `${parent}.${formatKey(key)}`;
}

/**
 * The candidate nearest to `word` by edit distance (transpositions count as one edit, the
 * commonest typo), if it is close enough to be what was meant rather than a different word. The
 * first of equally near candidates wins.
 *
 * The distance is at least the difference in length, so a candidate whose length is too far
 * from the word's to beat the best so far, or to be within the limit, is not measured: the work
 * is bounded by the candidates' lengths, however long the word.
 */
export function closestMatch(word: string, candidates: readonly string[]): string | undefined {
  const lowerWord = word.toLowerCase();
  let best: string | undefined;
  // The largest distance that can still win: within the limit, and below the best so far.
  let bound = Math.max(2, Math.floor(word.length / 3));
  for (const candidate of candidates) {
    const lowerCandidate = candidate.toLowerCase();
    if (Math.abs(lowerWord.length - lowerCandidate.length) > bound) continue;
    const distance = editDistance(lowerWord, lowerCandidate);
    if (distance > bound) continue;
    best = candidate;
    bound = distance - 1;
  }
  return best;
}

/** Optimal string alignment distance: Levenshtein plus adjacent transpositions. */
function editDistance(a: string, b: string): number {
  let previous2: number[] = [];
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let distance = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        distance = Math.min(distance, previous2[j - 2] + 1);
      }
      current.push(distance);
    }
    previous2 = previous;
    previous = current;
  }
  return previous[b.length];
}
