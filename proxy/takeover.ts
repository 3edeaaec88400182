/**
 * Upgrades that drop nothing: a new proxy process takes the listening sockets of the running
 * one, serves them, then has it drain and exit (`proxy.ts --takeover ADMIN_ADDRESS`).
 *
 * The exchange, over the running proxy's admin endpoint (token and cross-site checks as for
 * every route that changes state):
 *
 * 1. The new process listens on a Unix socket with a random abstract name and asks
 *    `POST /takeover` with `{"socket": "@<name>"}`.
 * 2. The running one connects to it, checks that its owner has this process's uid
 *    (`SO_PEERCRED`), and sends one message: a length-prefixed JSON list of its listeners with
 *    their sockets attached (`SCM_RIGHTS`). Both processes now hold the same sockets and both
 *    accept from them: a connection is taken by whichever engine wakes, and none is refused.
 * 3. The new process serves them, then asks `POST /takeover/finish`; the running one lets go
 *    of its listeners without shutting them down (what its engines had queued they accept and
 *    serve), stops its admin endpoint so the new process can bind the address, drains its
 *    connections up to `drain_timeout_ms` and exits.
 *
 * Until step 3 the running process serves as before: a new process that fails at any step
 * exits, and nothing changes for clients.
 *
 * @module
 */

import { errnoName } from "../ffi/errno.ts";
import { closeFd } from "../ffi/pipe.ts";
import {
  acceptUnix,
  connectAbstract,
  effectiveUid,
  listenAbstract,
  MAX_FDS,
  peerUid,
  receiveWithFds,
  sendWithFds,
  type UnixFailure,
} from "../ffi/unix.ts";

/** What a takeover message carries beside the fds, in the order of the fds. */
interface HandoverMessage {
  version: 1;
  pid: number;
  listeners: { address: string; port: number }[];
}

/** The abstract socket names a running proxy agrees to send its sockets to. */
const SOCKET_NAME = /^@splice-takeover-[0-9]{1,10}-[0-9a-f]{32}$/;
/** How long the new process waits for each step of the running one. */
const STEP_TIMEOUT_MS = 10_000;
/** How often the new process looks for what the running one sent (it is there at once). */
const POLL_MS = 5;
/** The largest handover message: 253 listeners' addresses fit many times over. */
const MAX_MESSAGE_BYTES = 1 << 20;

/** A takeover request the running proxy refused, with the HTTP status that says why. */
export class TakeoverRefused extends Error {
  /** 400: a bad request; 403: the socket's owner is another user; 409: cannot hand over now. */
  readonly status: number;

  /**
   * @example
   * ```ts
   * import { TakeoverRefused } from "./takeover.ts";
   *
   * const refused = new TakeoverRefused(409, "Cannot hand the listeners over: stopping");
   * console.log(refused.status); // 409
   * ```
   */
  constructor(status: number, message: string) {
    super(message);
    this.name = "TakeoverRefused";
    this.status = status;
  }
}

function failure(what: string, failed: UnixFailure): string {
  return `${what}: ${failed.syscall} failed with ${errnoName(failed.errno)}`;
}

/**
 * The running proxy's side of step 2: sends `sockets` (from `TcpProxy.handOver()`) to the Unix
 * socket that the body of `POST /takeover` names. Throws {@linkcode TakeoverRefused}.
 *
 * @example
 * ```ts ignore
 * const { addresses } = sendListeners(proxy.handOver, '{"socket": "@splice-takeover-..."}');
 * ```
 */
export function sendListeners(
  handOver: () => { address: string; port: number; fd: number }[],
  body: string,
): { addresses: string[] } {
  let socket: unknown;
  try {
    socket = (JSON.parse(body) as { socket?: unknown })?.socket;
  } catch {
    socket = undefined;
  }
  if (typeof socket !== "string" || !SOCKET_NAME.test(socket)) {
    throw new TakeoverRefused(
      400,
      'Cannot take over: the body must be {"socket": "@splice-takeover-<pid>-<32 hex digits>"}',
    );
  }
  let sockets: { address: string; port: number; fd: number }[];
  try {
    sockets = handOver();
  } catch (error) {
    throw new TakeoverRefused(409, (error as Error).message);
  }
  if (sockets.length > MAX_FDS) {
    throw new TakeoverRefused(409, `Cannot hand over ${sockets.length} listeners at once`);
  }
  const fd = connectAbstract(socket.slice(1));
  if (typeof fd !== "number") {
    throw new TakeoverRefused(400, failure(`Cannot connect to ${socket}`, fd));
  }
  try {
    // Anyone who can reach the admin endpoint could name a socket: only one made by this
    // user may receive the listeners (the kernel recorded its owner at listen()).
    const owner = peerUid(fd);
    if (typeof owner !== "number") {
      throw new TakeoverRefused(400, failure(`Cannot check who listens on ${socket}`, owner));
    }
    const uid = effectiveUid();
    if (owner !== uid) {
      throw new TakeoverRefused(
        403,
        `Cannot hand the listeners to ${socket}: it belongs to uid ${owner}, not ${uid}`,
      );
    }
    const message: HandoverMessage = {
      version: 1,
      pid: Deno.pid,
      listeners: sockets.map(({ address, port }) => ({ address, port })),
    };
    const json = new TextEncoder().encode(JSON.stringify(message));
    const bytes = new Uint8Array(4 + json.length);
    new DataView(bytes.buffer).setUint32(0, json.length, false);
    bytes.set(json, 4);
    // A fresh socket's buffer takes the whole message: a short or failed send is an error,
    // not something to wait for (this runs on the control plane's thread).
    const sent = sendWithFds(fd, bytes, sockets.map((s) => s.fd));
    if (typeof sent !== "number") {
      throw new TakeoverRefused(400, failure(`Cannot send the listeners to ${socket}`, sent));
    }
    if (sent !== bytes.length) {
      throw new TakeoverRefused(400, `Cannot send the listeners to ${socket}: a short send`);
    }
    return { addresses: sockets.map((s) => s.address) };
  } finally {
    closeFd(fd);
  }
}

/** What the new process received in a takeover. */
export interface TakenOver {
  /** The running proxy's pid. */
  pid: number;
  /** The listening sockets, by listener address; the caller's to close. */
  sockets: Map<string, number>;
}

/** How to reach the running proxy's admin endpoint. */
export interface AdminTarget {
  /** `host:port` or `[v6]:port`. */
  address: string;
  /** The admin token, when the running proxy has one. */
  token?: string;
}

async function post(target: AdminTarget, path: string, body: string): Promise<unknown> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (target.token !== undefined) headers.authorization = `Bearer ${target.token}`;
  let response: Response;
  try {
    response = await fetch(`http://${target.address}${path}`, {
      method: "POST",
      headers,
      body,
      signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
    });
  } catch (error) {
    throw new Error(
      `Cannot take over from ${target.address}: POST ${path} failed: ${(error as Error).message}`,
    );
  }
  const text = await response.text();
  if (!response.ok) {
    throw new Error(
      `Cannot take over from ${target.address}: POST ${path} answered ${response.status}: ` +
        text.trim(),
    );
  }
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/**
 * The new process's side of steps 1 and 2: asks the proxy at `target` for its listening
 * sockets and receives them. Throws, with nothing left open, when any step fails; the running
 * proxy keeps serving either way.
 *
 * @example
 * ```ts ignore
 * const { pid, sockets } = await receiveListeners({ address: "127.0.0.1:9901" });
 * ```
 */
export async function receiveListeners(target: AdminTarget): Promise<TakenOver> {
  const random = crypto.getRandomValues(new Uint8Array(16));
  const hex = [...random].map((b) => b.toString(16).padStart(2, "0")).join("");
  const name = `splice-takeover-${Deno.pid}-${hex}`;
  const listener = listenAbstract(name);
  if (typeof listener !== "number") {
    throw new Error(failure("Cannot take over: cannot listen on a Unix socket", listener));
  }
  const received: number[] = [];
  let connection = -1;
  try {
    await post(target, "/takeover", JSON.stringify({ socket: `@${name}` }));
    // The answer came after the send: the connection and the message are already queued.
    const deadline = performance.now() + STEP_TIMEOUT_MS;
    while (connection < 0) {
      const accepted = acceptUnix(listener);
      if (typeof accepted === "number") connection = accepted;
      else if (errnoName(accepted.errno) !== "EAGAIN" || performance.now() > deadline) {
        throw new Error(
          failure("Cannot take over: no connection from the running proxy", accepted),
        );
      } else await delay(POLL_MS);
    }
    const buffer = new Uint8Array(64 * 1024);
    let message = new Uint8Array(0);
    let length = -1;
    while (length < 0 || message.length < 4 + length) {
      const got = receiveWithFds(connection, buffer, MAX_FDS);
      if ("syscall" in got) {
        if (errnoName(got.errno) !== "EAGAIN" || performance.now() > deadline) {
          throw new Error(failure("Cannot take over: receiving the listeners", got));
        }
        await delay(POLL_MS);
        continue;
      }
      received.push(...got.fds);
      if (got.truncated) throw new Error("Cannot take over: more sockets came than fit");
      if (got.bytes === 0) throw new Error("Cannot take over: the message was cut short");
      const joined = new Uint8Array(message.length + got.bytes);
      joined.set(message);
      joined.set(buffer.subarray(0, got.bytes), message.length);
      message = joined;
      if (length < 0 && message.length >= 4) {
        length = new DataView(message.buffer).getUint32(0, false);
        if (length > MAX_MESSAGE_BYTES) throw new Error("Cannot take over: a message too large");
      }
    }
    const parsed = JSON.parse(
      new TextDecoder().decode(message.subarray(4, 4 + length)),
    ) as HandoverMessage;
    if (parsed.version !== 1 || parsed.listeners.length !== received.length) {
      throw new Error(
        `Cannot take over: ${received.length} sockets came for ` +
          `${parsed.listeners?.length} listeners (message version ${parsed.version})`,
      );
    }
    const sockets = new Map(parsed.listeners.map((l, i) => [l.address, received[i]]));
    return { pid: parsed.pid, sockets };
  } catch (error) {
    received.forEach(closeFd);
    throw error;
  } finally {
    if (connection >= 0) closeFd(connection);
    closeFd(listener);
  }
}

/**
 * Step 3: tells the running proxy that this process serves, so that it lets go of its
 * listeners, drains and exits. Resolves with the connections it has open to drain.
 *
 * @example
 * ```ts ignore
 * const { draining } = await finishTakeover({ address: "127.0.0.1:9901" });
 * ```
 */
export async function finishTakeover(target: AdminTarget): Promise<{ draining: number }> {
  const answer = await post(target, "/takeover/finish", "{}") as { draining?: number } | null;
  return { draining: answer?.draining ?? 0 };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
