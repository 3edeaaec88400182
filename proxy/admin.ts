/**
 * The admin endpoint: Prometheus text on `/metrics`, JSON on `/status`, `POST /reload` to
 * reload the config file, `GET` / `PUT /clusters/{cluster}/backends/{address}` to see and
 * change a backend at run time, and `POST /takeover` and `/takeover/finish` for a new process
 * taking over (proxy/takeover.ts).
 *
 * Every request is checked before it reaches a route, because a browser on the same machine is
 * a client too: a page it shows can send simple cross-site POSTs, and after DNS rebinding its
 * reads as well. So the Host must name this endpoint (421 otherwise), bodies are small (413),
 * and routes that change state refuse cross-site requests (403) and, when a token is set,
 * requests without it (401).
 *
 * @module
 */

import { Throttle } from "./faults.ts";
import { describeHttpEvent, type HttpLimits, type HttpRefusal, serveHttp } from "./http.ts";
import type { BackendView, ProxyStats } from "./types.ts";
import { type BackendChange, parseBackendChange } from "./control.ts";
import { prometheusText } from "./metrics.ts";
import { TakeoverRefused } from "./takeover.ts";
import { STATUS_PAGE, STATUS_PAGE_HEADERS } from "./status_page.ts";

/** Why the admin endpoint refused a request: the `reason` label of its refusal counter. */
export type AdminRefusal = "host" | "cross-site" | "token" | "too-large" | "method";

/** Options of {@linkcode serveAdmin}. */
export interface AdminOptions {
  /**
   * The token that state-changing routes require as `Authorization: Bearer <token>`. The
   * environment variable `SPLICE_ADMIN_TOKEN` takes precedence when it is set, not empty, and
   * readable without a prompt (`--allow-env=SPLICE_ADMIN_TOKEN`). Without either, those routes
   * need no token. An empty string here matches no request.
   */
  token?: string;
  /**
   * Receives a line per refused request, at most one a second for each reason (with a count of
   * the ones left out), and a line at start when `POST /reload` is unguarded although
   * `SPLICE_ADMIN_TOKEN` might be set but not granted.
   */
  log?: (line: string) => void;
  /**
   * Deadlines and bounds of the HTTP server under the endpoint (see `DEFAULT_HTTP_LIMITS` in
   * ./http.ts: 10 s for a request head, 16 KiB of it, 64 connections); for tests, mostly.
   */
  limits?: Partial<HttpLimits>;
}

/** A running admin endpoint. */
export interface AdminServer {
  /** The address it listens on: with port 0 asked, the port it got. */
  readonly addr: Deno.NetAddr;
  /** Settles when the server has stopped, after the signal aborted. */
  readonly finished: Promise<void>;
  /** Requests refused so far, by reason; also on `/metrics`. */
  readonly refused: Readonly<Record<AdminRefusal, number>>;
  /**
   * Connections and requests the HTTP server refused before they reached the checks above
   * (too slow, head too large, malformed, unsupported, over the connection limit); also on
   * `/metrics`, in the same family as `refused`.
   */
  readonly refusedByServer: Readonly<Record<HttpRefusal, number>>;
}

/** The environment variable that sets the admin token. */
export const ADMIN_TOKEN_ENV = "SPLICE_ADMIN_TOKEN";

/**
 * The largest request body accepted, in bytes. No route reads a body today; the limit exists so
 * that a client cannot make the endpoint hold or drain an unbounded one.
 */
const MAX_BODY_BYTES = 4096;

/** How often each refusal reason may be logged: a flood of refusals must not flood the log. */
const LOG_INTERVAL_MS = 1000;

interface Route {
  readonly method: "GET" | "POST" | "PUT" | "DELETE";
  /** The path, or a pattern whose groups are the route's parameters (URL-decoded). */
  readonly path: string | RegExp;
  /**
   * Whether the route changes state. Such routes are refused to cross-site requests and need
   * the token when one is set; the others must be safe to answer to anyone who passes the Host
   * check. There is no default: each route says which it is.
   */
  readonly changesState: boolean;
  /** Whether the route takes the body (as text, at most MAX_BODY_BYTES); others discard it. */
  readonly readsBody?: boolean;
  readonly handle: (params: string[], body: string) => Response | Promise<Response>;
}

/** The backend routes' path: `/clusters/{cluster}/backends/{address}`. */
const BACKEND_PATH = /^\/clusters\/([^/]+)\/backends\/([^/]+)$/;

/**
 * Serves `GET /metrics`, `GET /status`, `POST /reload` and the backend routes on `address`
 * until `signal` aborts.
 *
 * Each request passes, in order: a Host check (421: the Host must be an IP literal, `localhost`
 * or `address.hostname`, on the port served, so that DNS rebinding cannot reach the endpoint),
 * a Content-Length check (413 past 4096 bytes, before the body is read), the route (404, or 405
 * with `Allow`), for routes that change state (`POST /reload`, `PUT` of a backend) a cross-site check (403 when
 * `Origin` is not this request's own origin or `Sec-Fetch-Site` is neither `same-origin` nor
 * `none`) and the token check (401), then the body is read up to the limit (413 past it): discarded, or given to a route that takes one. Refusals are counted
 * in `refused` and on `/metrics` as `splice_admin_requests_refused_total{reason}`. Before any of
 * that, the HTTP server under it (./http.ts) bounds each connection's time and head size and the
 * number of connections; its refusals are in `refusedByServer` and the same metric family.
 *
 * @example
 * ```ts
 * import { serveAdmin } from "./admin.ts";
 *
 * const stop = new AbortController();
 * const admin = serveAdmin({ hostname: "127.0.0.1", port: 0 }, {
 *   stats: () => ({
 *     connectionsOpen: 0, connectionsTotal: 0, connectionsRejected: 0, connectionsRefused: {}, bytesIn: 0,
 *   bytesOut: 0,
 *     splicedConnections: 0, copiedConnections: 0, connectFailures: 0, acceptErrors: {},
 *     localErrors: {}, internalErrors: 0, reloads: 0, engines: [], backends: {},
 *   }),
 *   reload: () => Promise.resolve(null),
 * }, stop.signal, { token: "change-me", log: (line) => console.log(line) });
 *
 * const url = `http://127.0.0.1:${admin.addr.port}/reload`;
 * const refused = await fetch(url, { method: "POST" });
 * console.log(refused.status, admin.refused.token); // 401 1
 * await refused.body?.cancel();
 * const reloaded = await fetch(url, {
 *   method: "POST",
 *   headers: { authorization: "Bearer change-me" },
 * });
 * console.log(await reloaded.json()); // { reloaded: true }
 * stop.abort();
 * await admin.finished;
 * ```
 */
export function serveAdmin(
  address: { hostname: string; port: number },
  handlers: {
    stats: () => ProxyStats;
    reload: () => Promise<string | null>;
    /** `GET /status`: by default the stats; a proxy adds its listeners and backends' views. */
    status?: () => unknown;
    /** `GET /clusters/{cluster}/backends/{address}`; null: no such backend (404). */
    backend?: (cluster: string, backend: string) => BackendView | null;
    /** `PUT` of the same path: a runtime change; null: no such backend (404). */
    setBackend?: (cluster: string, backend: string, change: BackendChange) => BackendView | null;
    /**
     * `POST /takeover`: hands the listening sockets to the Unix socket the body names
     * (proxy/takeover.ts); throws `TakeoverRefused` with the status to answer. The two routes
     * exist only when both handlers are given.
     */
    takeover?: (body: string) => unknown;
    /**
     * `POST /takeover/finish`: the new process serves; this one drains and exits. Takes the
     * body (the handover's id); throws `TakeoverRefused` as `takeover` does.
     */
    finishTakeover?: (body: string) => unknown;
  },
  signal: AbortSignal,
  options: AdminOptions = {},
): AdminServer {
  const refused: Record<AdminRefusal, number> = {
    host: 0,
    "cross-site": 0,
    token: 0,
    "too-large": 0,
    method: 0,
  };
  const token = adminToken(options.token);
  const tokenCheck = bearerCheck(token);
  if (token === undefined && !envGranted()) {
    // Said once, at start: an operator who exported the variable but did not grant it would
    // otherwise believe the endpoint is guarded.
    options.log?.(
      `Admin endpoint: no token set and ${ADMIN_TOKEN_ENV} not readable ` +
        `(--allow-env=${ADMIN_TOKEN_ENV}): POST /reload needs no token`,
    );
  }
  const routes: Route[] = [
    {
      method: "GET",
      path: "/metrics",
      changesState: false,
      handle: () =>
        new Response(prometheusText(handlers.stats()) + refusalText(refused, server.refused), {
          headers: { "content-type": "text/plain; version=0.0.4" },
        }),
    },
    {
      method: "GET",
      path: "/status",
      changesState: false,
      handle: () => Response.json(handlers.status?.() ?? handlers.stats()),
    },
    {
      method: "GET",
      path: "/",
      changesState: false,
      handle: () => new Response(STATUS_PAGE, { headers: STATUS_PAGE_HEADERS }),
    },
    {
      method: "POST",
      path: "/reload",
      changesState: true,
      handle: async () => {
        const error = await handlers.reload();
        return error === null
          ? Response.json({ reloaded: true })
          : Response.json({ reloaded: false, error }, { status: 400 });
      },
    },
    {
      method: "GET",
      path: BACKEND_PATH,
      changesState: false,
      handle: ([cluster, backend]) => {
        const view = handlers.backend?.(cluster, backend) ?? null;
        return view === null ? noBackend(cluster, backend) : Response.json(view);
      },
    },
    {
      method: "PUT",
      path: BACKEND_PATH,
      changesState: true,
      readsBody: true,
      handle: ([cluster, backend], body) => {
        let change: BackendChange;
        try {
          change = parseBackendChange(body);
        } catch (error) {
          return new Response(`${(error as Error).message}\n`, { status: 400 });
        }
        const view = handlers.setBackend?.(cluster, backend, change) ?? null;
        return view === null ? noBackend(cluster, backend) : Response.json(view);
      },
    },
  ];
  const { takeover, finishTakeover } = handlers;
  if (takeover !== undefined && finishTakeover !== undefined) {
    routes.push({
      method: "POST",
      path: "/takeover",
      changesState: true,
      readsBody: true,
      handle: (_, body) => takeoverAnswer(() => takeover(body)),
    }, {
      method: "POST",
      path: "/takeover/finish",
      changesState: true,
      readsBody: true,
      handle: (_, body) => takeoverAnswer(() => finishTakeover(body)),
    });
  }

  const logged = new Throttle(LOG_INTERVAL_MS);
  const refuse = (
    reason: AdminRefusal,
    context: { request: Request; remote: string },
    response: { status: number; message: string; headers?: HeadersInit },
  ): Response => {
    refused[reason]++;
    const { report, suppressed } = logged.pass(reason, performance.now());
    if (options.log && report) {
      const { request, remote } = context;
      const skipped = suppressed > 0 ? `; ${suppressed} more refused for ${reason}` : "";
      options.log(
        `Admin endpoint: refused ${request.method} ${new URL(request.url).pathname} from ` +
          `${remote} (${reason}, ${response.status}): ${response.message}${skipped}`,
      );
    }
    return new Response(response.message + "\n", {
      status: response.status,
      headers: response.headers,
    });
  };

  // The server says each kind of failure or refusal at most once a second, like the ones below.
  const server = serveHttp({
    ...address,
    signal,
    limits: options.limits,
    onEvent: (event) => options.log?.(`Admin endpoint: ${describeHttpEvent(event)}`),
  }, async (request, info) => {
    const context = { request, remote: formatRemote(info.remoteAddr) };
    const host = request.headers.get("host");
    // A browser always sends Host; only a non-browser client (HTTP/1.0) can leave it out, and
    // DNS rebinding needs a browser.
    if (host !== null && !hostAllowed(host, address.hostname, server.addr.port)) {
      return refuse("host", context, {
        status: 421,
        message: `Misdirected request: Host ${JSON.stringify(host)} is not this admin ` +
          `endpoint; use its IP address or localhost and port ${server.addr.port}`,
      });
    }
    const declared = request.headers.get("content-length");
    if (declared !== null && Number(declared) > MAX_BODY_BYTES) {
      // Not read: the server answers and then closes the connection instead of keeping it alive.
      return refuse("too-large", context, {
        status: 413,
        message: `Request body too large: ${declared} bytes, the limit is ${MAX_BODY_BYTES}`,
      });
    }
    const path = new URL(request.url).pathname;
    const onPath = routes.filter((r) =>
      typeof r.path === "string" ? r.path === path : r.path.test(path)
    );
    if (onPath.length === 0) {
      return new Response(
        "Not found: try /, /metrics, /status, POST /reload or " +
          "/clusters/{cluster}/backends/{address}\n",
        { status: 404 },
      );
    }
    // HEAD is answered as GET; the server leaves the body out.
    const method = request.method === "HEAD" ? "GET" : request.method;
    const route = onPath.find((r) => r.method === method);
    if (!route) {
      const allow = onPath.flatMap((r) => r.method === "GET" ? ["GET", "HEAD"] : [r.method]);
      return refuse("method", context, {
        status: 405,
        message: `Method ${request.method} not allowed on ${path}: use ${allow.join(" or ")}`,
        headers: { allow: allow.join(", ") },
      });
    }
    if (route.changesState) {
      const crossSite = crossSiteReason(request, host);
      if (crossSite !== undefined) {
        return refuse("cross-site", context, {
          status: 403,
          message: `Forbidden: ${route.method} ${path} is refused to cross-site requests ` +
            `(${crossSite})`,
        });
      }
      if (!await tokenCheck(request.headers.get("authorization"))) {
        return refuse("token", context, {
          status: 401,
          message: `Unauthorized: ${route.method} ${path} needs "Authorization: Bearer <token>" ` +
            `with the admin token`,
          headers: { "www-authenticate": "Bearer" },
        });
      }
    }
    const body = route.readsBody
      ? await readBody(request, MAX_BODY_BYTES)
      : await discardBody(request, MAX_BODY_BYTES)
      ? ""
      : null;
    if (body === null) {
      return refuse("too-large", context, {
        status: 413,
        message: `Request body too large: the limit is ${MAX_BODY_BYTES} bytes`,
      });
    }
    const params = typeof route.path === "string"
      ? []
      : route.path.exec(path)!.slice(1).map((part) => safeDecode(part));
    return await route.handle(params, body);
  });
  return {
    addr: server.addr,
    finished: server.finished,
    refused,
    refusedByServer: server.refused,
  };
}

/**
 * `splice_admin_requests_refused_total`, one line per reason, zeros included: the endpoint's own
 * reasons, then the server's.
 */
function refusalText(
  refused: Readonly<Record<AdminRefusal, number>>,
  byServer: Readonly<Record<HttpRefusal, number>>,
): string {
  const name = "splice_admin_requests_refused_total";
  const lines = [
    `# HELP ${name} Admin endpoint requests refused, by reason.`,
    `# TYPE ${name} counter`,
  ];
  for (const [reason, count] of [...Object.entries(refused), ...Object.entries(byServer)]) {
    lines.push(`${name}{reason="${reason}"} ${count}`);
  }
  return lines.join("\n") + "\n";
}

/**
 * Whether a Host header names this endpoint. IP literals are accepted whatever the address: DNS
 * rebinding works by pointing a name the attacker controls at this machine, so the Host of such
 * a request is that name, never a literal. `localhost` and the configured host name cannot be
 * rebound by a web page.
 */
function hostAllowed(host: string, hostname: string, port: number): boolean {
  const match = /^(\[[0-9A-Fa-f:.]+\]|[^\[\]:]+)(?::(\d{1,5}))?$/.exec(host);
  if (!match) return false;
  const name = match[1].toLowerCase();
  // No port in Host means the default one of http.
  if (Number(match[2] ?? 80) !== port) return false;
  return isIpv4(name) || (name.startsWith("[") && isIpv6(name.slice(1, -1))) ||
    name === "localhost" || name === hostname.toLowerCase();
}

function isIpv4(text: string): boolean {
  const octet = "(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
  return new RegExp(`^${octet}(\\.${octet}){3}$`).test(text);
}

function isIpv6(text: string): boolean {
  if (!text.includes(":")) return false;
  try {
    new URL(`http://[${text}]/`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Why a request counts as cross-site, or `undefined`. A browser marks its requests with
 * `Sec-Fetch-Site` (current ones) or `Origin` (every POST from a page), and a page cannot remove
 * or forge either; clients that send neither are not browsers, and not what this check is for.
 * `same-site` is refused too: any other port on localhost is the same site.
 */
function crossSiteReason(request: Request, host: string | null): string | undefined {
  const site = request.headers.get("sec-fetch-site");
  if (site !== null && site !== "same-origin" && site !== "none") {
    return `Sec-Fetch-Site ${JSON.stringify(site)}`;
  }
  const origin = request.headers.get("origin");
  if (origin === null) return undefined;
  // The Host passed hostAllowed(), so it parses; URL also drops the default port as Origin does.
  const own = host === null ? undefined : new URL(`http://${host}`).origin;
  return origin.toLowerCase() === own ? undefined : `Origin ${JSON.stringify(origin)}`;
}

/**
 * The admin token in force: `SPLICE_ADMIN_TOKEN` when it is set, not empty and granted, else
 * `configured` (see {@linkcode AdminOptions.token}).
 *
 * @example
 * ```ts
 * import { adminToken } from "./admin.ts";
 *
 * console.log(adminToken("from-the-config")); // the variable's value when granted and set
 * ```
 */
export function adminToken(configured: string | undefined): string | undefined {
  return tokenFromEnvironment() ?? configured;
}

/** The token from `SPLICE_ADMIN_TOKEN`, or `undefined` when it is unset, empty or not granted. */
function tokenFromEnvironment(): string | undefined {
  // Deno.env.get() without the grant would prompt (or throw): a token has to be granted
  // explicitly, and otherwise the configured one (if any) applies.
  return envGranted() ? Deno.env.get(ADMIN_TOKEN_ENV) || undefined : undefined;
}

function envGranted(): boolean {
  return Deno.permissions.querySync({ name: "env", variable: ADMIN_TOKEN_ENV }).state ===
    "granted";
}

/**
 * A check of `Authorization` headers against `token` (everything passes without one). The
 * comparison is of HMACs under a random per-process key: their length is fixed and an attacker
 * cannot choose their bytes, so neither the token's length nor its prefix leaks through timing.
 */
function bearerCheck(token: string | undefined): (header: string | null) => Promise<boolean> {
  if (token === undefined) return () => Promise.resolve(true);
  const encoder = new TextEncoder();
  const key = crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = async (text: string): Promise<Uint8Array> =>
    new Uint8Array(await crypto.subtle.sign("HMAC", await key, encoder.encode(text)));
  const expected = mac(token);
  return async (header) => {
    const presented = /^Bearer +(.+)$/i.exec(header ?? "")?.[1];
    // Unequal to any MAC; also what an empty configured token is compared with.
    if (presented === undefined || token === "") return false;
    const [want, got] = await Promise.all([expected, mac(presented)]);
    let difference = 0;
    for (let i = 0; i < want.length; i++) difference |= want[i] ^ got[i];
    return difference === 0;
  };
}

/**
 * Reads and discards the request body; `false` as soon as it passes `limit` bytes. A chunked
 * body is not declared in advance, so only reading it finds out. Discarding keeps the connection
 * usable for the next request.
 */
/** The body as text, or null when it is over `limit` bytes (the rest left unread). */
async function readBody(request: Request, limit: number): Promise<string | null> {
  if (request.body === null) return "";
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > limit) return null;
      chunks.push(value);
    }
  } finally {
    reader.releaseLock();
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new TextDecoder().decode(bytes);
}

/** A URL path segment decoded; as it is when it is not valid percent-encoding. */
function safeDecode(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

/** A takeover step's answer: its JSON, or the status its `TakeoverRefused` carries. */
function takeoverAnswer(step: () => unknown): Response {
  try {
    return Response.json(step());
  } catch (error) {
    const status = error instanceof TakeoverRefused ? error.status : 500;
    return new Response(`${(error as Error).message}\n`, { status });
  }
}

function noBackend(cluster: string, backend: string): Response {
  return new Response(`Not found: cluster "${cluster}" has no backend "${backend}"\n`, {
    status: 404,
  });
}

async function discardBody(request: Request, limit: number): Promise<boolean> {
  if (request.body === null) return true;
  const reader = request.body.getReader();
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return true;
      total += value.byteLength;
      if (total > limit) return false;
    }
  } finally {
    // Released, not cancelled: either way the server closes the connection after the response
    // instead of draining the rest of an oversized body, but release says "unread" plainly.
    reader.releaseLock();
  }
}

function formatRemote(address: Deno.Addr): string {
  if (address.transport !== "tcp" && address.transport !== "udp") return address.transport;
  return address.hostname.includes(":")
    ? `[${address.hostname}]:${address.port}`
    : `${address.hostname}:${address.port}`;
}
