/**
 * A raw HTTP/1.1 client connection for tests that need full control of the bytes sent (Host,
 * Origin, framing, a head sent one byte at a time). Responses are parsed by their
 * Content-Length, so several can be read from one kept-alive connection. A read that takes
 * longer than {@linkcode RAW_HTTP_TIMEOUT_MS} closes the socket and fails.
 */

import { closeQuietly } from "./_helpers.ts";

/** How long a read may take before the test gives up on the server. */
export const RAW_HTTP_TIMEOUT_MS = 5_000;

/** One response. */
export interface Reply {
  status: number;
  headers: Headers;
  body: string;
}

const decoder = new TextDecoder();

/** Strings are sent byte for byte (ISO-8859-1), so tests can send any octet. */
function latin1(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

function indexOf(bytes: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= bytes.length; i++) {
    for (let j = 0; j < needle.length; j++) if (bytes[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

const HEAD_END = latin1("\r\n\r\n");

/** A raw HTTP/1.1 client connection. */
export class RawHttp {
  #buffered = new Uint8Array(0);
  #eof = false;
  private constructor(readonly conn: Deno.TcpConn) {}

  /** Connects to 127.0.0.1:`port`. */
  static async open(port: number): Promise<RawHttp> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return new RawHttp(conn);
  }

  /** Sends all of `text` (a string byte for byte, or bytes). */
  async send(text: string | Uint8Array): Promise<void> {
    const bytes = typeof text === "string" ? latin1(text) : text;
    for (let off = 0; off < bytes.length;) off += await this.conn.write(bytes.subarray(off));
  }

  /** Sends `text` one byte per `gapMs`; stops quietly once the server stops reading. */
  async trickle(text: string, gapMs: number): Promise<void> {
    for (const byte of latin1(text)) {
      if (this.#eof) return;
      try {
        await this.conn.write(new Uint8Array([byte]));
      } catch {
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, gapMs));
    }
  }

  /** The next response; `head` for a response to HEAD, which has no body. */
  async reply(head = false): Promise<Reply> {
    let end: number;
    while ((end = indexOf(this.#buffered, HEAD_END)) < 0) await this.#fill();
    const [statusLine, ...fields] = decoder.decode(this.#buffered.subarray(0, end)).split("\r\n");
    const headers = new Headers();
    for (const field of fields) {
      const colon = field.indexOf(":");
      headers.append(field.slice(0, colon).trim(), field.slice(colon + 1).trim());
    }
    const length = head ? 0 : Number(headers.get("content-length") ?? 0);
    while (this.#buffered.length < end + 4 + length) await this.#fill();
    const body = decoder.decode(this.#buffered.subarray(end + 4, end + 4 + length));
    this.#buffered = this.#buffered.slice(end + 4 + length);
    return { status: Number(statusLine.split(" ")[1]), headers, body };
  }

  /** Resolves with what was left unread once the server has closed (an end or a reset). */
  async closed(): Promise<string> {
    while (!this.#eof) await this.#fill(true);
    return decoder.decode(this.#buffered);
  }

  /** Waits until the server has closed the connection; fails if it sent more first. */
  async end(): Promise<void> {
    const rest = await this.closed();
    if (rest !== "") throw new Error(`${rest.length} more bytes instead of the end`);
  }

  close(): void {
    closeQuietly(this.conn);
  }

  async #fill(toEnd = false): Promise<void> {
    if (this.#eof) throw new Error("The server closed the connection before a full response");
    const chunk = new Uint8Array(64 * 1024);
    const timer = setTimeout(() => this.close(), RAW_HTTP_TIMEOUT_MS);
    let n: number | null;
    try {
      n = await this.conn.read(chunk);
    } catch (error) {
      // A reset is an end too; a read cut short by the timer is not.
      if (error instanceof Deno.errors.ConnectionReset) n = null;
      else {
        const what = toEnd ? "the connection to end" : "a complete response";
        throw new Error(`No ${what} within ${RAW_HTTP_TIMEOUT_MS} ms`, { cause: error });
      }
    } finally {
      clearTimeout(timer);
    }
    if (n === null) {
      this.#eof = true;
      return;
    }
    const joined = new Uint8Array(this.#buffered.length + n);
    joined.set(this.#buffered);
    joined.set(chunk.subarray(0, n), this.#buffered.length);
    this.#buffered = joined;
  }
}
