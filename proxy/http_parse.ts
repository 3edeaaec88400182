/**
 * The pure part of the admin endpoint's HTTP/1.1 server (proxy/http.ts): parsing a request head,
 * deciding how its body is framed, decoding a chunked body, the request's URL, and a response's
 * bytes. No I/O here, so that every rule can be tested with a table of byte strings.
 *
 * The parser is strict where leniency lets two parsers read one message two ways (request
 * smuggling): lines end with CRLF only, a header name is a token directly followed by ":",
 * obs-fold is refused, Content-Length is digits and appears once, and a request with both
 * Content-Length and Transfer-Encoding is refused rather than resolved.
 *
 * @module
 */

/** A request that cannot be served: the status to answer, and a sentence saying why. */
export class HttpParseError extends Error {
  /**
   * A refusal of a request.
   *
   * @param status 400 (malformed), 501 (a method or transfer coding not implemented) or 505
   * (an HTTP version other than 1.x)
   * @param message what is wrong, as one sentence for the client
   */
  constructor(readonly status: 400 | 501 | 505, message: string) {
    super(message);
    this.name = "HttpParseError";
  }
}

/** A parsed request line and header section. */
export interface RequestHead {
  /** As sent (methods are case-sensitive). */
  readonly method: string;
  /** The request-target as sent: origin-form (`/path?q`), absolute-form, or `*`. */
  readonly target: string;
  /** The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1 (and for any later 1.x). */
  readonly minor: 0 | 1;
  /** Field lines in order, names lowercased, values without surrounding whitespace. */
  readonly headers: ReadonlyArray<readonly [string, string]>;
}

/** How a request's body is delimited. */
export type BodyFraming =
  | { readonly kind: "none" }
  | { readonly kind: "length"; readonly length: number }
  | { readonly kind: "chunked" };

const CR = 0x0d;
const LF = 0x0a;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Field values: visible ASCII, obs-text, space and tab; in particular no CR, LF or NUL. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const TARGET = /^[\x21-\x7e]+$/;
/** Methods the WHATWG Request refuses to represent; a handler could never see them. */
const FORBIDDEN_METHODS = new Set(["CONNECT", "TRACE", "TRACK"]);
/** Content-Length values are bounded to safe integers (15 digits is under 2^53). */
const CONTENT_LENGTH = /^[0-9]{1,15}$/;

/** The bytes as a string of the same length, one char per byte (ISO-8859-1). */
export function latin1(bytes: Uint8Array): string {
  let text = "";
  // In slices: fromCharCode takes its bytes as arguments, and the argument count is bounded.
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return text;
}

/**
 * The index just past the first empty line (CRLF CRLF) in `bytes`, searching from `from`, or -1.
 * Throws on an LF without its CR, so that a client sending bare LFs is refused at once rather
 * than left waiting for a terminator it will never send.
 */
export function findHeadEnd(bytes: Uint8Array, from = 0): number {
  for (let i = from; i < bytes.length; i++) {
    if (bytes[i] !== LF) continue;
    if (i === 0 || bytes[i - 1] !== CR) {
      throw new HttpParseError(400, "Line ended by LF without CR");
    }
    if (i >= 3 && bytes[i - 2] === LF && bytes[i - 3] === CR) return i + 1;
  }
  return -1;
}

/**
 * Parses a request head: the request line and the field lines, ending with the empty line.
 * Throws {@linkcode HttpParseError}.
 */
export function parseRequestHead(bytes: Uint8Array): RequestHead {
  const text = latin1(bytes);
  if (!text.endsWith("\r\n\r\n")) throw new HttpParseError(400, "Request head not terminated");
  const lines = text.slice(0, -4).split("\r\n");
  // A CR that is not part of a CRLF survives the split; no line may contain one.
  if (lines.some((line) => line.includes("\r") || line.includes("\n"))) {
    throw new HttpParseError(400, "Stray CR or LF in the request head");
  }
  const requestLine = lines[0];
  const parts = requestLine.split(" ");
  if (parts.length !== 3) {
    throw new HttpParseError(400, 'Request line is not "METHOD target HTTP/1.x"');
  }
  const [method, target, version] = parts;
  if (!TOKEN.test(method)) throw new HttpParseError(400, "Method is not a token");
  if (!TARGET.test(target)) throw new HttpParseError(400, "Request target has bad characters");
  const versionMatch = /^HTTP\/(\d)\.(\d)$/.exec(version);
  if (!versionMatch) throw new HttpParseError(400, "Not an HTTP version");
  if (versionMatch[1] !== "1") {
    throw new HttpParseError(505, `HTTP/${versionMatch[1]}.${versionMatch[2]} not supported`);
  }
  if (FORBIDDEN_METHODS.has(method.toUpperCase())) {
    throw new HttpParseError(501, `Method ${method} not implemented`);
  }
  if (!(target.startsWith("/") || /^https?:\/\//i.test(target) || target === "*")) {
    throw new HttpParseError(400, "Request target is neither a path nor an absolute URL");
  }
  const headers: Array<[string, string]> = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    // obs-fold: RFC 9112 lets a server refuse it, and a folded line read as a new field by one
    // parser and as a continuation by another is how smuggling starts.
    if (line.startsWith(" ") || line.startsWith("\t")) {
      throw new HttpParseError(400, "Folded header line (obs-fold)");
    }
    const colon = line.indexOf(":");
    // No whitespace between name and colon (RFC 9112 5.1: a server MUST refuse it).
    const name = colon > 0 ? line.slice(0, colon) : "";
    if (!TOKEN.test(name)) throw new HttpParseError(400, "Header line without a token name");
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (!FIELD_VALUE.test(value)) {
      throw new HttpParseError(400, `Header ${name} has control characters`);
    }
    headers.push([name.toLowerCase(), value]);
  }
  return { method, target, minor: versionMatch[2] === "0" ? 0 : 1, headers };
}

/** The values of header `name` (lowercase) in order. */
export function headerValues(head: RequestHead, name: string): string[] {
  return head.headers.filter(([n]) => n === name).map(([, v]) => v);
}

/** How the body of `head` is delimited (RFC 9112 6.3), or throws {@linkcode HttpParseError}. */
export function bodyFraming(head: RequestHead): BodyFraming {
  const lengths = headerValues(head, "content-length");
  const codings = headerValues(head, "transfer-encoding");
  if (lengths.length > 0 && codings.length > 0) {
    throw new HttpParseError(400, "Both Content-Length and Transfer-Encoding");
  }
  if (codings.length > 0) {
    // HTTP/1.0 has no chunked coding: a 1.0 message with one is faulty (RFC 9112 6.1).
    if (head.minor === 0) throw new HttpParseError(400, "Transfer-Encoding in an HTTP/1.0 request");
    const list = codings.join(",").split(",").map((c) => c.trim().toLowerCase());
    if (list.length === 1 && list[0] === "chunked") return { kind: "chunked" };
    if (list.at(-1) !== "chunked") {
      throw new HttpParseError(400, "Transfer-Encoding does not end with chunked");
    }
    throw new HttpParseError(501, `Transfer-Encoding ${codings.join(", ")} not implemented`);
  }
  if (lengths.length > 1) throw new HttpParseError(400, "More than one Content-Length");
  if (lengths.length === 1) {
    if (!CONTENT_LENGTH.test(lengths[0])) {
      throw new HttpParseError(400, "Content-Length is not a number of at most 15 digits");
    }
    const length = Number(lengths[0]);
    return length === 0 ? { kind: "none" } : { kind: "length", length };
  }
  return { kind: "none" };
}

/** Whether the connection is to close after the response to `head`. */
export function closeRequested(head: RequestHead): boolean {
  const tokens = headerValues(head, "connection").join(",").toLowerCase().split(",")
    .map((t) => t.trim());
  // HTTP/1.0 keep-alive is not offered: such clients are rare, and closing is always correct.
  return head.minor === 0 || tokens.includes("close");
}

/** Limits of {@linkcode ChunkedDecoder}. */
export interface ChunkedLimits {
  /** The longest chunk-size line (size and extensions), in bytes. */
  readonly maxLineBytes: number;
  /** The largest trailer section, in bytes. */
  readonly maxTrailerBytes: number;
}

/** A step of {@linkcode ChunkedDecoder.next}. */
export interface ChunkedStep {
  /** Input bytes used; the caller drops them before the next call. */
  readonly consumed: number;
  /** Body bytes decoded (a view into the input: copy it before the input changes), or null. */
  readonly data: Uint8Array | null;
  /** True once the last chunk and the trailer section have been read. */
  readonly done: boolean;
}

/**
 * An incremental decoder of the chunked transfer coding (RFC 9112 7.1). Strict: chunk sizes are
 * 1 to 8 hex digits (under 4 GiB; nothing is allocated by size, the bound is on the line), every
 * chunk ends with CRLF, extensions are tokens or quoted strings and bounded with the size line,
 * and trailers are well-formed field lines, bounded, and discarded.
 */
export class ChunkedDecoder {
  #state: "size" | "data" | "data-end" | "trailer" | "done" = "size";
  #remaining = 0;
  #trailerBytes = 0;

  /**
   * A decoder for one body.
   *
   * @param limits bounds of a size line and of the trailer section
   */
  constructor(readonly limits: ChunkedLimits) {}

  /** Whether the whole body, trailer included, has been decoded. */
  get done(): boolean {
    return this.#state === "done";
  }

  /**
   * Decodes what it can from the start of `input`. `consumed` 0 with no data means that more
   * input is needed. Throws {@linkcode HttpParseError} when the coding is malformed.
   */
  next(input: Uint8Array): ChunkedStep {
    switch (this.#state) {
      case "data": {
        const n = Math.min(this.#remaining, input.length);
        this.#remaining -= n;
        if (this.#remaining === 0) this.#state = "data-end";
        return { consumed: n, data: n > 0 ? input.subarray(0, n) : null, done: false };
      }
      case "data-end": {
        if (input.length < 2) return this.#more();
        if (input[0] !== CR || input[1] !== LF) {
          throw new HttpParseError(400, "Chunk data not followed by CRLF");
        }
        this.#state = "size";
        return { consumed: 2, data: null, done: false };
      }
      case "size": {
        const end = this.#line(input, this.limits.maxLineBytes, "Chunk size line");
        if (end < 0) return this.#more();
        const match = /^([0-9A-Fa-f]{1,8})((?:[ \t]*;.*)?)$/.exec(latin1(input.subarray(0, end)));
        if (!match || !validExtensions(match[2])) {
          throw new HttpParseError(400, "Malformed chunk size line");
        }
        this.#remaining = parseInt(match[1], 16);
        this.#state = this.#remaining === 0 ? "trailer" : "data";
        return { consumed: end + 2, data: null, done: false };
      }
      case "trailer": {
        const room = this.limits.maxTrailerBytes - this.#trailerBytes;
        const end = this.#line(input, room, "Trailer section");
        if (end < 0) return this.#more();
        this.#trailerBytes += end + 2;
        if (end === 0) {
          this.#state = "done";
          return { consumed: 2, data: null, done: true };
        }
        const line = latin1(input.subarray(0, end));
        const colon = line.indexOf(":");
        if (colon <= 0 || !TOKEN.test(line.slice(0, colon))) {
          throw new HttpParseError(400, "Malformed trailer line");
        }
        if (!FIELD_VALUE.test(line.slice(colon + 1))) {
          throw new HttpParseError(400, "Trailer line has control characters");
        }
        return { consumed: end + 2, data: null, done: false };
      }
      case "done":
        return { consumed: 0, data: null, done: true };
    }
  }

  #more(): ChunkedStep {
    return { consumed: 0, data: null, done: false };
  }

  /** The index of the CRLF ending the first line of `input`, -1 if it has not arrived yet. */
  #line(input: Uint8Array, limit: number, what: string): number {
    for (let i = 0; i < input.length; i++) {
      if (input[i] === LF) {
        if (i === 0 || input[i - 1] !== CR) throw new HttpParseError(400, `${what}: LF without CR`);
        return i - 1;
      }
      // The line may hold `limit` bytes and its CR.
      if (i > limit) throw new HttpParseError(400, `${what} longer than ${limit} bytes`);
    }
    if (input.length > limit + 1) {
      throw new HttpParseError(400, `${what} longer than ${limit} bytes`);
    }
    return -1;
  }
}

/** `;name` or `;name=token` or `;name="quoted"` extensions, with optional whitespace. */
function validExtensions(text: string): boolean {
  const extension =
    /^[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+[ \t]*(?:=[ \t]*(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|"(?:[\t\x20-\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*")[ \t]*)?/;
  let rest = text;
  while (rest.length > 0) {
    const match = extension.exec(rest);
    if (!match) return false;
    rest = rest.slice(match[0].length);
  }
  return true;
}

/** Headers this server writes itself: a handler's would contradict the framing. */
const FRAMING_HEADERS = new Set([
  "connection",
  "content-length",
  "keep-alive",
  "transfer-encoding",
]);
/** A Host that can be put in a URL as is; others keep the header but not the URL's authority. */
const URL_HOST = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(:[0-9]{1,5})?$/;
const REASONS: Record<number, string> = {
  200: "OK",
  201: "Created",
  204: "No Content",
  301: "Moved Permanently",
  302: "Found",
  304: "Not Modified",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  413: "Content Too Large",
  421: "Misdirected Request",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

/**
 * The request's URL: the target, with the Host as authority when it is a plain host (else the
 * listener's address). Throws {@linkcode HttpParseError} for two Hosts or a target that is no
 * URL.
 */
export function requestUrl(head: RequestHead, addr: Deno.NetAddr): string {
  const hosts = headerValues(head, "host");
  if (hosts.length > 1) throw new HttpParseError(400, "More than one Host");
  if (/^https?:\/\//i.test(head.target)) {
    try {
      return new URL(head.target).href;
    } catch {
      throw new HttpParseError(400, "Request target is not a URL");
    }
  }
  // A Host with a path or userinfo in it must not move the target's path: the URL is built
  // from the listener's address instead, and the header goes to the handler as sent (the admin
  // endpoint refuses such a Host itself). No Host at all (HTTP/1.0) is served, as Deno.serve did.
  const authority = hosts.length === 1 && URL_HOST.test(hosts[0])
    ? hosts[0]
    : addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
  const path = head.target === "*" ? "/*" : head.target;
  try {
    // Concatenated, not resolved: a target like "//other/x" must stay a path.
    return new URL(`http://${authority}${path}`).href;
  } catch {
    throw new HttpParseError(400, "Request target is not a valid path");
  }
}

/**
 * A response as bytes: status line, the response's headers except those of framing, `date`,
 * `content-length` from `body`, `connection: close` unless `keep`; no body for HEAD.
 */
export function serializeResponse(
  response: Response,
  body: Uint8Array,
  isHead: boolean,
  keep: boolean,
): Uint8Array {
  const status = response.status;
  let head = `HTTP/1.1 ${status} ${response.statusText || REASONS[status] || ""}\r\n`;
  for (const [name, value] of response.headers) {
    if (!FRAMING_HEADERS.has(name)) head += `${name}: ${value}\r\n`;
  }
  if (!response.headers.has("date")) head += `date: ${new Date().toUTCString()}\r\n`;
  // 204 and 304 have no body and no length (RFC 9110 8.6); HEAD is told the length GET has.
  const bodiless = status === 204 || status === 304;
  if (!bodiless) head += `content-length: ${body.length}\r\n`;
  if (!keep) head += "connection: close\r\n";
  const headBytes = latin1Bytes(head + "\r\n");
  if (isHead || bodiless || body.length === 0) return headBytes;
  const bytes = new Uint8Array(headBytes.length + body.length);
  bytes.set(headBytes);
  bytes.set(body, headBytes.length);
  return bytes;
}

/** Header text is bytes (ByteString): one byte per char, not UTF-8. */
export function latin1Bytes(text: string): Uint8Array {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}
