/**
 * One connection of proxy/http.ts's server: request heads read against a deadline and a size
 * bound, bodies streamed to the handler as it pulls them, responses written against a deadline,
 * and refusals answered so that the client can read them before the connection closes.
 *
 * @module
 */

import {
  type BodyFraming,
  bodyFraming,
  ChunkedDecoder,
  closeRequested,
  findHeadEnd,
  headerValues,
  HttpParseError,
  latin1Bytes,
  parseRequestHead,
  type RequestHead,
  requestUrl,
  serializeResponse,
} from "./http_parse.ts";

/** Answers a request; the same shape as a `Deno.serve` handler. */
export type HttpHandler = (
  request: Request,
  info: { remoteAddr: Deno.NetAddr },
) => Response | Promise<Response>;

/**
 * Why the server refused a connection or request before (or instead of) the handler:
 * - `"slow"`: the head (or body) did not arrive within its deadline, or no request came at all on
 *   a new connection (408, or closed without an answer when nothing was sent);
 * - `"head-too-large"`: the request line and headers passed `maxHeadBytes` (431);
 * - `"malformed"`: not HTTP/1.x syntax, ambiguous framing, a bad chunked body (400);
 * - `"unsupported"`: a version, method or transfer coding this server does not do (505, 501);
 * - `"too-many"`: `maxConnections` were open already (503, closed at once).
 */
export type HttpRefusal = "slow" | "head-too-large" | "malformed" | "unsupported" | "too-many";

/** Deadlines and bounds of the server (`serveHttp` in proxy/http.ts) and each connection. */
export interface HttpLimits {
  /** The request head must be complete this long after accept, or after the previous response. */
  readonly headTimeoutMs: number;
  /** A kept-alive connection that sends nothing for this long after a response is closed. */
  readonly idleTimeoutMs: number;
  /** A request body must be complete this long after its head. */
  readonly bodyTimeoutMs: number;
  /** A response (or a 100 Continue) must be written within this long. */
  readonly writeTimeoutMs: number;
  /** The largest request head (request line and headers, and a chunked body's trailer). */
  readonly maxHeadBytes: number;
  /** Connections served at once; further ones get 503 and are closed. */
  readonly maxConnections: number;
}

/** What a connection needs from its server. */
export interface ConnectionHost {
  /** The deadlines and bounds every connection keeps to. */
  readonly limits: HttpLimits;
  /** Answers the requests. */
  readonly handler: HttpHandler;
  /** The listener's address: the URL's authority when the Host cannot be. */
  readonly addr: Deno.NetAddr;
  /** Counts and reports a refusal (`status` null: closed without an answer). */
  count(reason: HttpRefusal, conn: Deno.TcpConn, status: number | null, message: string): void;
  /** Reports a handler's exception or a bug. */
  report(type: "handler-error" | "internal-error", error: unknown): void;
}

/** After a refusal is answered, input is read and dropped this long before closing (Go's). */
const LINGER_MS = 500;
/** ... and at most this much of it. */
const LINGER_BYTES = 64 * 1024;
const READ_CHUNK = 16 * 1024;
const CR = 0x0d;
const LF = 0x0a;
/** A refusal: counted under `reason` (null: the peer's doing, not counted), answered `status`. */
interface Failure {
  readonly reason: HttpRefusal | null;
  readonly status: number;
  readonly message: string;
}

/**
 * One client connection: requests read and answered in turn until either side closes, a
 * deadline passes, or a refusal ends it. Invariant: exactly one task reads from the socket at a
 * time (the head reader, or the body stream the handler pulls), so no bytes are lost between
 * requests.
 */
export class Connection {
  #server: ConnectionHost;
  #conn: Deno.TcpConn;
  #input: Input;
  /** "head": waiting for a request, so stopping may close at once; "busy": a request is served. */
  #phase: "head" | "busy" = "head";
  #stopping = false;
  #closed = false;

  /** Takes `conn` over; {@linkcode Connection.serve} serves it. */
  constructor(server: ConnectionHost, conn: Deno.TcpConn) {
    this.#server = server;
    this.#conn = conn;
    this.#input = new Input(conn);
    try {
      // A keep-alive response is one write; Nagle would hold it for the client's delayed ACK.
      conn.setNoDelay(true);
    } catch {
      // reset already: the first read will say so
    }
  }

  /**
   * Ends the connection as soon as it is not serving a request: at once while it waits for a
   * head (even one half sent), or after the response in flight, which says `Connection: close`.
   */
  stop(): void {
    this.#stopping = true;
    if (this.#phase === "head") this.#close();
  }

  /** Serves requests until the connection ends; never rejects, and closes the socket. */
  async serve(): Promise<void> {
    try {
      let since = performance.now();
      for (let first = true; !this.#stopping; first = false) {
        this.#phase = "head";
        const head = await this.#readHead(since, first);
        if (head === null) return;
        this.#phase = "busy";
        if (!await this.#exchange(head)) return;
        // The next head's deadline starts now: a slow handler does not shorten it.
        since = performance.now();
      }
    } catch (error) {
      // Resets, broken pipes, and reads cut short by stop() are the peer's or ours to end;
      // anything else is a bug.
      if (!isIoError(error) && !this.#closed) this.#server.report("internal-error", error);
    } finally {
      this.#close();
      await this.#input.settle();
    }
  }

  /**
   * The next request head, or null once the connection is to close (answered if need be). The
   * head deadline starts at accept or at the previous response, not at the last byte, so a
   * client that trickles one byte a second still ends within it.
   */
  async #readHead(since: number, first: boolean): Promise<RequestHead | null> {
    const { headTimeoutMs, idleTimeoutMs, maxHeadBytes } = this.#server.limits;
    const headDeadline = since + headTimeoutMs;
    const idleDeadline = first ? headDeadline : Math.min(headDeadline, since + idleTimeoutMs);
    let scanned = 0;
    for (;;) {
      // Empty lines before a request line are ignored (RFC 9112 2.2); clients send one after a
      // body now and then. They count toward no limit, but the deadline still runs.
      let view = this.#input.view();
      while (view.length >= 2 && view[0] === CR && view[1] === LF) {
        this.#input.consume(2);
        view = this.#input.view();
        scanned = 0;
      }
      let end: number;
      try {
        end = findHeadEnd(view, scanned);
        if (end > maxHeadBytes || (end < 0 && view.length > maxHeadBytes)) {
          return await this.#refuse({
            reason: "head-too-large",
            status: 431,
            message: `Request head larger than ${maxHeadBytes} bytes`,
          });
        }
        if (end > 0) return parseRequestHead(this.#input.take(end));
      } catch (error) {
        if (!(error instanceof HttpParseError)) throw error;
        return await this.#refuse(parseFailure(error));
      }
      scanned = view.length;
      const partial = view.length > 0;
      const outcome = await this.#input.fill(partial ? headDeadline : idleDeadline);
      if (outcome === "eof") return null;
      if (outcome === "data") continue;
      if (partial) {
        return await this.#refuse({
          reason: "slow",
          status: 408,
          message: `Request head not complete within ${headTimeoutMs} ms`,
        });
      }
      // Nothing sent on a new connection holds an fd as surely as a slow head: counted. An idle
      // kept-alive connection is ordinary, and closed silently.
      if (first) {
        this.#server.count("slow", this.#conn, null, `No request within ${headTimeoutMs} ms`);
      }
      return null;
    }
  }

  /** Serves one request; whether the connection may carry another. */
  async #exchange(head: RequestHead): Promise<boolean> {
    const server = this.#server;
    let framing: BodyFraming;
    let url: string;
    try {
      framing = bodyFraming(head);
      url = requestUrl(head, server.addr);
    } catch (error) {
      if (!(error instanceof HttpParseError)) throw error;
      await this.#refuse(parseFailure(error));
      return false;
    }
    const limits = server.limits;
    const expectsContinue = head.minor === 1 &&
      headerValues(head, "expect").some((v) => v.toLowerCase() === "100-continue");
    const body = framing.kind === "none" ? null : new BodyReader(
      this.#input,
      framing,
      performance.now() + limits.bodyTimeoutMs,
      limits,
      // Sent only when the handler reads the body: a refusal from the headers alone (413)
      // spares the client sending it.
      expectsContinue
        ? () => this.#write(latin1Bytes("HTTP/1.1 100 Continue\r\n\r\n"))
        : () => Promise.resolve(),
      // Counted when it happens: the handler may catch the error and answer by itself.
      (failure) => this.#count(failure),
    );
    // A Request cannot carry a GET or HEAD body: such a body is left unread, and the
    // connection closes after the response. (Request uppercases these two names, so "head"
    // is HEAD here too.)
    const method = head.method.toUpperCase();
    const carriesBody = body !== null && method !== "GET" && method !== "HEAD";
    let response: Response;
    let bytes: Uint8Array;
    let failed = false;
    try {
      const request = new Request(url, {
        method: head.method,
        headers: head.headers as Array<[string, string]>,
        body: carriesBody ? body.stream() : null,
      });
      response = await server.handler(request, { remoteAddr: this.#conn.remoteAddr });
      if (!(response instanceof Response)) {
        const got: unknown = response;
        const kind = got === null ? "null" : typeof got;
        throw new TypeError(
          `Cannot answer the request: the handler returned ${kind}, not a Response`,
        );
      }
      bytes = new Uint8Array(await response.arrayBuffer());
    } catch (error) {
      if (body?.failure) {
        await this.#answer(body.failure);
        return false;
      }
      server.report("handler-error", error);
      response = new Response(null, { status: 500 });
      bytes = latin1Bytes("Internal Server Error\n");
      failed = true;
    }
    const keep = !failed && !this.#stopping && !closeRequested(head) && !body?.failure &&
      (body === null || body.complete);
    await this.#write(serializeResponse(response, bytes, method === "HEAD", keep));
    // A body left unread (a 413 from the headers alone) is still arriving: as after a refusal,
    // the client gets time to read the answer before the close can reset the connection.
    if (body !== null && !body.complete) await this.#linger();
    return keep;
  }

  /** Counts a refusal and answers it; always null (the connection ends). */
  #refuse(failure: Failure): Promise<null> {
    this.#count(failure);
    return this.#answer(failure);
  }

  #count(failure: Failure): void {
    if (failure.reason === null) return;
    this.#server.count(failure.reason, this.#conn, failure.status, failure.message);
  }

  /** Answers a refusal, lingers, and leaves the connection to close. */
  async #answer(failure: Failure): Promise<null> {
    try {
      await this.#write(responseBytes(failure.status, failure.message));
    } catch {
      return null; // the peer is gone: nothing more to tell it
    }
    await this.#linger();
    return null;
  }

  /**
   * Closing with unread input would reset the connection, and a reset can destroy the answer
   * before the client reads it (not on Linux, on other stacks): the write side is closed first,
   * and what the client still sends is read and dropped for a bounded time (as Go's and nginx's
   * servers do). The caller closes the connection after.
   */
  async #linger(): Promise<void> {
    try {
      await this.#conn.closeWrite();
      await this.#input.discard(performance.now() + LINGER_MS, LINGER_BYTES);
    } catch {
      // reset, or closed by stop(): ended either way
    }
  }

  async #write(bytes: Uint8Array): Promise<void> {
    const timer = setTimeout(() => this.#close(), this.#server.limits.writeTimeoutMs);
    try {
      await writeAll(this.#conn, bytes);
    } finally {
      clearTimeout(timer);
    }
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#conn);
  }
}

/**
 * A request body as the handler pulls it, never ahead of it (high-water mark 0): unread, the
 * body stays in the socket and the connection closes after the response. A failure (deadline,
 * malformed chunk, early end) errors the stream and is kept for the connection to answer.
 */
class BodyReader {
  failure: Failure | null = null;
  #input: Input;
  #framing: BodyFraming;
  #deadline: number;
  #remaining: number;
  #decoder: ChunkedDecoder | null;
  #done = false;
  #beforeRead: (() => Promise<void>) | null;
  #onFailure: (failure: Failure) => void;
  #timeoutMs: number;

  constructor(
    input: Input,
    framing: BodyFraming,
    deadline: number,
    limits: HttpLimits,
    beforeRead: () => Promise<void>,
    onFailure: (failure: Failure) => void,
  ) {
    this.#input = input;
    this.#framing = framing;
    this.#deadline = deadline;
    this.#timeoutMs = limits.bodyTimeoutMs;
    this.#remaining = framing.kind === "length" ? framing.length : 0;
    this.#decoder = framing.kind === "chunked"
      ? new ChunkedDecoder({ maxLineBytes: 4096, maxTrailerBytes: limits.maxHeadBytes })
      : null;
    this.#beforeRead = beforeRead;
    this.#onFailure = onFailure;
  }

  /** Whether the whole body has been read, so the next request starts at the next byte. */
  get complete(): boolean {
    return this.#done;
  }

  stream(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        const chunk = await this.#next();
        if (chunk === null) controller.close();
        else controller.enqueue(chunk);
      },
    }, { highWaterMark: 0 });
  }

  async #next(): Promise<Uint8Array | null> {
    if (this.#beforeRead) {
      const send = this.#beforeRead;
      this.#beforeRead = null;
      if (this.#input.length === 0) await send();
    }
    for (;;) {
      if (this.failure) throw new Error(this.failure.message);
      if (this.#done) return null;
      if (this.#framing.kind === "length") {
        if (this.#input.length > 0) {
          const chunk = this.#input.take(Math.min(this.#remaining, this.#input.length));
          this.#remaining -= chunk.length;
          this.#done = this.#remaining === 0;
          return chunk;
        }
      } else {
        let step;
        try {
          step = this.#decoder!.next(this.#input.view());
        } catch (error) {
          if (!(error instanceof HttpParseError)) throw error;
          throw this.#fail(parseFailure(error));
        }
        // Copied: the input's buffer is reused once consumed.
        const data = step.data?.slice() ?? null;
        this.#input.consume(step.consumed);
        this.#done = step.done;
        if (data !== null && data.length > 0) return data;
        if (step.consumed > 0 || step.done) continue;
      }
      const outcome = await this.#input.fill(this.#deadline);
      if (outcome === "timeout") {
        throw this.#fail({
          reason: "slow",
          status: 408,
          message: `Request body not complete within ${this.#timeoutMs} ms`,
        });
      }
      if (outcome === "eof") {
        // The client stopped sending: its own doing, not a refusal.
        throw this.#fail({ reason: null, status: 400, message: "Request body cut short" });
      }
    }
  }

  #fail(failure: Failure): Error {
    this.failure = failure;
    this.#onFailure(failure);
    return new Error(failure.message);
  }
}

/**
 * Buffered input from a connection, read against deadlines. A read outlives a deadline that
 * passes (Deno cannot cancel it); it is kept and used by the next fill, or settled at close.
 */
class Input {
  #conn: Deno.TcpConn;
  #scratch = new Uint8Array(READ_CHUNK);
  #data = new Uint8Array(0);
  #start = 0;
  #end = 0;
  #pending: Promise<number | null> | null = null;

  constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
  }

  get length(): number {
    return this.#end - this.#start;
  }

  /** The unread bytes; valid until the next fill or consume. */
  view(): Uint8Array {
    return this.#data.subarray(this.#start, this.#end);
  }

  consume(n: number): void {
    this.#start += n;
    if (this.#start === this.#end) this.#start = this.#end = 0;
  }

  /** Removes and returns the first `n` bytes, copied. */
  take(n: number): Uint8Array {
    const bytes = this.#data.slice(this.#start, this.#start + n);
    this.consume(n);
    return bytes;
  }

  /** Reads once more, unless `deadline` (a performance.now() time) passes first. */
  async fill(deadline: number): Promise<"data" | "eof" | "timeout"> {
    const wait = deadline - performance.now();
    if (wait <= 0) return "timeout";
    if (this.#pending === null) {
      this.#pending = this.#conn.read(this.#scratch);
      // Handled here too: after a timeout nobody may await it before the close rejects it.
      this.#pending.catch(() => {});
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), wait);
    });
    try {
      const result = await Promise.race([this.#pending, timeout]);
      if (result === "timeout") return "timeout";
      this.#pending = null;
      if (result === null) return "eof";
      this.#append(this.#scratch.subarray(0, result));
      return "data";
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reads and drops input until the peer closes, `deadline` passes or `limit` bytes came. */
  async discard(deadline: number, limit: number): Promise<void> {
    for (let dropped = 0; dropped <= limit;) {
      dropped += this.length;
      this.consume(this.length);
      if (await this.fill(deadline) !== "data") return;
    }
  }

  /** Waits for a read still in flight (the connection is closed, so it ends at once). */
  async settle(): Promise<void> {
    await this.#pending?.catch(() => {});
    this.#pending = null;
  }

  #append(bytes: Uint8Array): void {
    if (this.#end + bytes.length > this.#data.length) {
      const live = this.length;
      // Doubling keeps a head trickled one byte at a time linear, not quadratic, in copies.
      if (live + bytes.length <= this.#data.length) {
        this.#data.copyWithin(0, this.#start, this.#end);
      } else {
        const next = new Uint8Array(Math.max(live + bytes.length, this.#data.length * 2, 4096));
        next.set(this.#data.subarray(this.#start, this.#end));
        this.#data = next;
      }
      this.#start = 0;
      this.#end = live;
    }
    this.#data.set(bytes, this.#end);
    this.#end += bytes.length;
  }
}

function parseFailure(error: HttpParseError): Failure {
  return {
    reason: error.status === 400 ? "malformed" : "unsupported",
    status: error.status,
    message: error.message,
  };
}

/** A refusal's response: one line saying why, and the connection closes. */
export function responseBytes(
  status: number,
  message: string,
  extra: Record<string, string> = {},
): Uint8Array {
  const headers = new Headers({ "content-type": "text/plain; charset=utf-8", ...extra });
  return serializeResponse(
    new Response(null, { status, headers }),
    new TextEncoder().encode(message + "\n"),
    false,
    false,
  );
}

/** Writes all of `bytes` (a write may take part of them). */
export async function writeAll(conn: Deno.TcpConn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

/** Closes a socket or listener that may be closed already. */
export function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch {
    // already closed
  }
}

const IO_ERRORS = Object.values(Deno.errors) as Array<new (...args: never[]) => Error>;

/** Whether an error came from the socket (the peer, or our own close) rather than from code. */
function isIoError(error: unknown): boolean {
  return IO_ERRORS.some((type) => error instanceof type) ||
    (error instanceof Error && typeof (error as { code?: unknown }).code === "string");
}
