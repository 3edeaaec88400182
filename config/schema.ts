/**
 * The validation machinery of the configuration file: a schema is data (the field kinds below),
 * one walker checks a parsed TOML document against it, and {@linkcode SchemaOutput} gives the
 * TypeScript type the walker produces, so that a schema and the interface it is meant to fill
 * are checked against each other at compile time.
 *
 * A new key or section is one more entry in a schema plus its property in the interface; the
 * walker does not change.
 *
 * @module
 */

import {
  closestMatch,
  type ConfigIssue,
  formatKeyPath,
  formatValue,
  joinKeyPath,
  MAX_SUGGESTED_ISSUES,
  missingKeyIssue,
  plainValue,
  secretIssue,
  tomlTypeName,
  typeIssue,
  valueIssue,
} from "./messages.ts";

// ---------------------------------------------------------------------------------------------
// Field kinds

/** An integer from `min` to `max`; `default` when absent. */
export interface IntegerField {
  /** The kind's tag. */
  readonly kind: "integer";
  /** The smallest value accepted. */
  readonly min: number;
  /** The largest value accepted. */
  readonly max: number;
  /** The value of an absent key. */
  readonly default?: number;
  /** Whether an absent key is an issue. */
  readonly required?: boolean;
}

/** A string; `default` when absent. */
export interface StringField {
  /** The kind's tag. */
  readonly kind: "string";
  /** The value of an absent key. */
  readonly default?: string;
  /** Whether an absent key is an issue. */
  readonly required?: boolean;
}

/** One of a few strings. */
export interface EnumField {
  /** The kind's tag. */
  readonly kind: "enum";
  /** The strings accepted, in the order messages list them. */
  readonly values: readonly string[];
  /** The value of an absent key. */
  readonly default?: string;
  /** Whether an absent key is an issue. */
  readonly required?: boolean;
}

/**
 * A secret string, such as a token: at least `minLength` characters, printable ASCII without
 * whitespace (it travels in an HTTP header). Messages show no more than its first few
 * characters, and issues carry no value.
 */
export interface SecretField {
  /** The kind's tag. */
  readonly kind: "secret";
  /** The fewest characters (code points) accepted. */
  readonly minLength: number;
  /** Whether an absent key is an issue. */
  readonly required?: boolean;
}

/** `true` or `false`. */
export interface BooleanField {
  /** The kind's tag. */
  readonly kind: "boolean";
  /** The value of an absent key. */
  readonly default?: boolean;
  /** Whether an absent key is an issue. */
  readonly required?: boolean;
}

/**
 * A string that `parse` turns into a value of type `T`, such as a socket address. A value that
 * is no string is reported as `expected <expected>, got <its type>`; a string `parse` refuses,
 * with the problem `parse` returns.
 */
export interface ParsedField<T = unknown> {
  /** The kind's tag. */
  readonly kind: "parsed";
  /** What the value should be, with its article, e.g. `an address "host:port", ...`. */
  readonly expected: string;
  /** The value the text stands for, or the problem with it as a message. */
  readonly parse: (text: string) => { readonly value: T } | { readonly problem: string };
  /** Whether an absent key is an issue. */
  readonly required?: boolean;
}

/** A table with known keys, e.g. `[metrics]`. Absent: `undefined` unless required. */
export interface TableField {
  /** The kind's tag. */
  readonly kind: "table";
  /** The known keys, in the order messages list them. */
  readonly fields: FieldMap;
  /** Whether an absent table is an issue. */
  readonly required?: boolean;
}

/**
 * An array, e.g. `[[listeners]]` or `backends = [{ ... }]`. Absent: empty unless required; at
 * least `minItems` long.
 */
export interface ArrayField {
  /** The kind's tag. */
  readonly kind: "array";
  /** What each item must be. */
  readonly items: Field;
  /** Whether an absent array is an issue. */
  readonly required?: boolean;
  /** The fewest items accepted. */
  readonly minItems?: number;
}

/**
 * A table of user-named entries, e.g. `[clusters.<name>]`. Absent: empty. Names must match
 * `names.pattern`, which `names.rule` describes.
 */
export interface MapField {
  /** The kind's tag. */
  readonly kind: "map";
  /** What each entry must be. */
  readonly values: Field;
  /** The names allowed, and their rule in words (`letters, digits, "_" and "-"`). */
  readonly names?: { readonly pattern: RegExp; readonly rule: string };
}

/** Any field of a schema. */
export type Field =
  | IntegerField
  | StringField
  | EnumField
  | SecretField
  | BooleanField
  | ParsedField
  | TableField
  | ArrayField
  | MapField;

/** The known keys of a table, by their name in the file (snake_case). */
export type FieldMap = { readonly [key: string]: Field };

// ---------------------------------------------------------------------------------------------
// The TypeScript type a schema field produces

/** `snake_case` as `camelCase`, as keys of the file become properties. */
export type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}`
  ? `${Head}${Capitalize<CamelCase<Tail>>}`
  : S;

/** What the walker returns for a value checked against field `F`. */
export type SchemaOutput<F> = F extends { kind: "integer" } ? number
  : F extends { kind: "string" | "secret" } ? string
  : F extends { kind: "enum"; values: readonly (infer V)[] } ? V
  : F extends { kind: "boolean" } ? boolean
  : F extends { kind: "parsed"; parse: (text: string) => infer R } ? ParsedValue<R>
  : F extends { kind: "table"; fields: infer M } ? TableOutput<M>
  : F extends { kind: "array"; items: infer I } ? SchemaOutput<I>[]
  : F extends { kind: "map"; values: infer V } ? Record<string, SchemaOutput<V>>
  : never;

type ParsedValue<R> = R extends { value: infer T } ? T : never;

type AlwaysPresent<F> = F extends { default: unknown } | { required: true } ? true
  : F extends { kind: "array" | "map" } ? true
  : false;

type TableOutput<M> =
  & {
    [
      K in keyof M as K extends string ? AlwaysPresent<M[K]> extends true ? CamelCase<K> : never
        : never
    ]: SchemaOutput<M[K]>;
  }
  & {
    [
      K in keyof M as K extends string ? AlwaysPresent<M[K]> extends true ? never : CamelCase<K>
        : never
    ]?: SchemaOutput<M[K]>;
  };

// ---------------------------------------------------------------------------------------------
// The walker
//
// Each function checks one value against one field, pushes every problem it finds to `issues`
// and returns the converted value, or `undefined` when the value is unusable. It never stops at
// the first problem, so a user fixes a file in one round.

/** Whether `value` is a TOML table as parsed: a plain object, not an array, date or class. */
export function isTable(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === null || prototype === Object.prototype;
}

/** The rule of an integer field, as its issues state it. */
export function describeIntegerRange(field: IntegerField): string {
  return `expected a whole number from ${field.min} to ${field.max}`;
}

/**
 * Checks `value`, found at `keyPath`, against `field`; pushes each problem to `issues` and
 * returns the value converted (keys in camelCase, defaults filled in), or `undefined` when it is
 * unusable.
 */
export function validateField(
  field: Field,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): unknown {
  switch (field.kind) {
    case "integer":
      return validateInteger(field, value, keyPath, issues);
    case "string":
      if (typeof value === "string") return value;
      issues.push(typeIssue(keyPath, value, "a string"));
      return undefined;
    case "enum":
      return validateEnum(field, value, keyPath, issues);
    case "secret":
      return validateSecret(field, value, keyPath, issues);
    case "boolean":
      if (typeof value === "boolean") return value;
      issues.push(typeIssue(keyPath, value, "a boolean"));
      return undefined;
    case "parsed":
      return validateParsed(field, value, keyPath, issues);
    case "table":
      return validateTable(field, value, keyPath, issues);
    case "array":
      return validateArray(field, value, keyPath, issues);
    case "map":
      return validateMap(field, value, keyPath, issues);
  }
}

function validateInteger(
  field: IntegerField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): number | undefined {
  if (typeof value === "bigint") {
    if (value >= BigInt(field.min) && value <= BigInt(field.max)) return Number(value);
    issues.push(valueIssue(keyPath, value, describeIntegerRange(field)));
  } else if (typeof value === "number") {
    // A float, since integers arrive as bigint. `1024.0` gets a hint, as it looks whole.
    const hint = Number.isInteger(value) ? ", written without a decimal point" : "";
    issues.push(valueIssue(keyPath, value, describeIntegerRange(field) + hint));
  } else {
    issues.push(typeIssue(keyPath, value, "an integer"));
  }
  return undefined;
}

function validateEnum(
  field: EnumField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): string | undefined {
  const expected = `one of ${field.values.map((v) => JSON.stringify(v)).join(", ")}`;
  if (typeof value !== "string") {
    issues.push(typeIssue(keyPath, value, expected));
    return undefined;
  }
  if (field.values.includes(value)) return value;
  const suggestion = issues.length < MAX_SUGGESTED_ISSUES
    ? closestMatch(value, field.values)
    : undefined;
  const hint = suggestion === undefined ? "" : `: did you mean ${JSON.stringify(suggestion)}?`;
  issues.push(valueIssue(keyPath, value, `expected ${expected}${hint}`));
  return undefined;
}

function validateSecret(
  field: SecretField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): string | undefined {
  const expected = `expected a string of at least ${field.minLength} printable ASCII ` +
    "characters, without whitespace";
  if (typeof value !== "string") {
    issues.push(secretIssue(keyPath, value, `${expected}, got ${tomlTypeName(value)}`));
    return undefined;
  }
  const found: string[] = [];
  // Code points, not UTF-16 units: what a user counts as characters.
  let length = 0;
  for (const _ of value) length++;
  if (length < field.minLength) found.push(`${length} characters`);
  // A token travels in an HTTP header, whose bytes are read as Latin-1: outside printable
  // ASCII it could never match.
  const bad = /[^\x21-\x7e]/u.exec(value);
  if (bad !== null) {
    const code = bad[0].codePointAt(0)!;
    const kind = /\s/u.test(bad[0])
      ? "whitespace"
      : /\p{Cc}/u.test(bad[0])
      ? "a control character"
      : "a character outside printable ASCII";
    let position = 1;
    for (const _ of value.slice(0, bad.index)) position++;
    const unicode = `U+${code.toString(16).toUpperCase().padStart(4, "0")}`;
    found.push(`${kind} (${unicode}) at character ${position}`);
  }
  if (found.length === 0) return value;
  issues.push(secretIssue(keyPath, value, `${expected}, got ${found.join(" and ")}`));
  return undefined;
}

function validateParsed(
  field: ParsedField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): unknown {
  if (typeof value !== "string") {
    issues.push(typeIssue(keyPath, value, field.expected));
    return undefined;
  }
  const result = field.parse(value);
  if ("problem" in result) {
    issues.push(valueIssue(keyPath, value, result.problem));
    return undefined;
  }
  return result.value;
}

/**
 * Checks a table: its keys in document order, so that issues come out in the order the user
 * reads the file, then the absent ones (defaults, or missing required keys) in schema order.
 */
export function validateTable(
  field: TableField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): Record<string, unknown> | undefined {
  if (!isTable(value)) {
    issues.push(typeIssue(keyPath, value, "a table"));
    return undefined;
  }
  const knownKeys = Object.keys(field.fields);
  const entries: [string, unknown][] = [];
  for (const key of Object.keys(value)) {
    const child = value[key];
    const childPath = joinKeyPath(keyPath, key);
    // Object.hasOwn: a key such as "constructor" must not match Object.prototype members.
    if (!Object.hasOwn(field.fields, key)) {
      issues.push(unknownKeyIssue(childPath, key, child, field, issues.length));
      continue;
    }
    const result = validateField(field.fields[key], child, childPath, issues);
    if (result !== undefined) entries.push([camelCase(key), result]);
  }
  for (const key of knownKeys) {
    if (Object.hasOwn(value, key)) continue;
    const result = absentValue(field.fields[key], joinKeyPath(keyPath, key), issues);
    if (result !== undefined) entries.push([camelCase(key), result]);
  }
  return Object.fromEntries(entries);
}

function validateArray(
  field: ArrayField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): unknown[] | undefined {
  if (!Array.isArray(value)) {
    issues.push(typeIssue(keyPath, value, "an array"));
    return undefined;
  }
  if (field.minItems !== undefined && value.length < field.minItems) {
    const items = field.minItems === 1 ? "entry" : "entries";
    issues.push(valueIssue(keyPath, value, `expected at least ${field.minItems} ${items}`));
  }
  return value.map((item, index) =>
    validateField(field.items, item, `${keyPath}[${index}]`, issues)
  );
}

function validateMap(
  field: MapField,
  value: unknown,
  keyPath: string,
  issues: ConfigIssue[],
): Record<string, unknown> | undefined {
  if (!isTable(value)) {
    issues.push(typeIssue(keyPath, value, "a table"));
    return undefined;
  }
  const names = field.names;
  // Object.fromEntries defines properties, so a user-chosen name like "__proto__" stays data.
  return Object.fromEntries(
    Object.entries(value).map(([name, child]) => {
      const childPath = joinKeyPath(keyPath, name);
      if (names !== undefined && !names.pattern.test(name)) {
        issues.push({
          keyPath: childPath,
          value: plainValue(child),
          message: `${formatKeyPath(childPath)}: invalid name ${formatValue(name)}: ` +
            `expected one or more ${names.rule}`,
        });
      }
      return [name, validateField(field.values, child, childPath, issues)];
    }),
  );
}

function absentValue(field: Field, keyPath: string, issues: ConfigIssue[]): unknown {
  switch (field.kind) {
    case "array":
      if (field.required) break;
      return [];
    case "map":
      return {};
    case "table":
    case "parsed":
    case "secret":
      break;
    default:
      if (field.default !== undefined) return field.default;
  }
  if (field.required) issues.push(missingKeyIssue(keyPath));
  return undefined;
}

function camelCase(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, letter: string) => letter.toUpperCase());
}

/**
 * The issue of a key `table` does not know. `issuesBefore` is how many issues the file has so
 * far: it decides whether a suggestion is looked for.
 */
function unknownKeyIssue(
  keyPath: string,
  key: string,
  value: unknown,
  table: TableField,
  issuesBefore: number,
): ConfigIssue {
  const suggestion = issuesBefore < MAX_SUGGESTED_ISSUES
    ? closestMatch(key, Object.keys(table.fields))
    : undefined;
  const hint = suggestion !== undefined
    ? `: did you mean ${JSON.stringify(suggestion)}?`
    : knownKeysHint(table);
  return {
    keyPath,
    value: plainValue(value),
    message: `unknown key ${JSON.stringify(formatKeyPath(keyPath))}${hint}`,
  };
}

const knownKeysHints = new WeakMap<TableField, string>();

/**
 * ` (known keys: a, b)`, made once per table: a file of unknown keys would otherwise repeat
 * the list in new memory for each of them.
 */
function knownKeysHint(table: TableField): string {
  let hint = knownKeysHints.get(table);
  if (hint === undefined) {
    const knownKeys = Object.keys(table.fields);
    hint = knownKeys.length === 0
      ? " (this table takes no keys)"
      : ` (known keys: ${knownKeys.join(", ")})`;
    knownKeysHints.set(table, hint);
  }
  return hint;
}
