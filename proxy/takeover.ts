/**
 * Upgrades that drop nothing: a new proxy process takes the listening sockets of the running
 * one, serves them, then has it drain and exit (`proxy.ts --takeover ADMIN_ADDRESS`).
 *
 * The exchange, over the running proxy's admin endpoint (token and cross-site checks as for
 * every route that changes state; proxy.ts also refuses takeovers on an endpoint without a
 * token):
 *
 * 1. The new process listens on a Unix socket with a random abstract name and asks
 *    `POST /takeover` with `{"socket": "@<name>"}`.
 * 2. The running one connects to it, checks that its owner has this process's uid
 *    (`SO_PEERCRED`), and sends one message: a length-prefixed JSON list of its listeners with
 *    their sockets attached (`SCM_RIGHTS`); it answers with its pid and an id for step 3. The
 *    new process takes the message only from a connection whose peer has that pid and its own
 *    uid (abstract names are listed in /proc/net/unix: anyone may connect first). Both
 *    processes now hold the same sockets and both accept from them: a connection is taken by
 *    whichever engine wakes, and none is refused. From now on neither shuts a shared socket
 *    down: a listener either one lets go of is released (its engines accept what they queued).
 * 3. The new process serves them (every engine has them in its epoll), then asks
 *    `POST /takeover/finish` with the id; the running one releases its listeners, stops its
 *    admin endpoint so the new process can bind the address, drains its connections up to
 *    `drain_timeout_ms` and exits; the new process owns the sockets alone.
 *
 * A new process that fails before step 2 ends exits, and the running one serves on. One whose
 * step 3 fails (or that is stopped before it) serves beside the running one, or releases the
 * sockets as it stops: stopping either process then leaves the other serving.
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
  peerCredentials,
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

/** A listening socket as TcpProxy.handOver gives it. */
type HandedSocket = { address: string; port: number; fd: number };

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
  /**
   * 400: a bad request; 403: the socket's owner is another user, or no admin token is set;
   * 409: cannot hand over now, or no such handover to finish.
   */
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

/** What the running proxy answers to `POST /takeover`. */
export interface Handover {
  /** The listener addresses whose sockets were sent. */
  listeners: string[];
  /** The running proxy's pid: the new process takes the sockets only from it. */
  pid: number;
  /** What `POST /takeover/finish` must carry: only this handover can be finished. */
  id: string;
}

/**
 * The running proxy's side of step 2: sends the sockets that `handOver` gives to `send`
 * (TcpProxy.handOver, which marks them shared once `send` returned) to the Unix socket that the
 * body of `POST /takeover` names. Throws {@linkcode TakeoverRefused}, with nothing marked
 * shared.
 *
 * @example
 * ```ts ignore
 * const { listeners, id } = sendListeners((send) => proxy.handOver(send), body);
 * ```
 */
export function sendListeners(
  handOver: (send: (sockets: HandedSocket[]) => void) => void,
  body: string,
): Handover {
  const socket = bodyField(body, "socket");
  if (typeof socket !== "string" || !SOCKET_NAME.test(socket)) {
    throw new TakeoverRefused(
      400,
      'Cannot take over: the body must be {"socket": "@splice-takeover-<pid>-<32 hex digits>"}',
    );
  }
  const name = socket;
  let addresses: string[] = [];
  try {
    handOver((sockets) => {
      if (sockets.length > MAX_FDS) {
        throw new TakeoverRefused(409, `Cannot hand over ${sockets.length} listeners at once`);
      }
      sendTo(name, sockets);
      addresses = sockets.map((s) => s.address);
    });
  } catch (error) {
    if (error instanceof TakeoverRefused) throw error;
    throw new TakeoverRefused(409, (error as Error).message);
  }
  return { listeners: addresses, pid: Deno.pid, id: randomHex(16) };
}

/**
 * The running proxy's check of `POST /takeover/finish`: the id its body names, when it is one
 * of `handovers`; throws {@linkcode TakeoverRefused} (409) otherwise.
 *
 * @example
 * ```ts
 * import { finishedHandover } from "./takeover.ts";
 *
 * console.log(finishedHandover('{"id": "ab12"}', new Set(["ab12"]))); // "ab12"
 * ```
 */
export function finishedHandover(body: string, handovers: ReadonlySet<string>): string {
  const id = bodyField(body, "id");
  if (typeof id !== "string" || !handovers.has(id)) {
    throw new TakeoverRefused(
      409,
      'Cannot finish a takeover: the body must be {"id": ...} of a handover',
    );
  }
  return id;
}

/** A field of a JSON object body; `undefined` when the body is no JSON object. */
function bodyField(body: string, name: string): unknown {
  try {
    const parsed: unknown = JSON.parse(body);
    return typeof parsed === "object" && parsed !== null
      ? (parsed as Record<string, unknown>)[name]
      : undefined;
  } catch {
    return undefined;
  }
}

function sendTo(socket: string, sockets: HandedSocket[]): void {
  const fd = connectAbstract(socket.slice(1));
  if (typeof fd !== "number") {
    throw new TakeoverRefused(400, failure(`Cannot connect to ${socket}`, fd));
  }
  try {
    // Anyone who can reach the admin endpoint could name a socket: only one made by this
    // user may receive the listeners (the kernel recorded its owner at listen()).
    const owner = peerCredentials(fd);
    if ("syscall" in owner) {
      throw new TakeoverRefused(400, failure(`Cannot check who listens on ${socket}`, owner));
    }
    const uid = effectiveUid();
    if (owner.uid !== uid) {
      throw new TakeoverRefused(
        403,
        `Cannot hand the listeners to ${socket}: it belongs to uid ${owner.uid}, not ${uid}`,
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
  } finally {
    closeFd(fd);
  }
}

/** What the new process received in a takeover. */
export interface TakenOver {
  /** The running proxy's pid. */
  pid: number;
  /** The handover's id, for {@linkcode finishTakeover}. */
  id: string;
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
 * const { pid, id, sockets } = await receiveListeners({ address: "127.0.0.1:9901" });
 * ```
 */
export async function receiveListeners(target: AdminTarget): Promise<TakenOver> {
  const name = `splice-takeover-${Deno.pid}-${randomHex(16)}`;
  const listener = listenAbstract(name);
  if (typeof listener !== "number") {
    throw new Error(failure("Cannot take over: cannot listen on a Unix socket", listener));
  }
  const received: number[] = [];
  let connection = -1;
  try {
    const answer = await post(target, "/takeover", JSON.stringify({ socket: `@${name}` })) as
      | Partial<Handover>
      | null;
    if (typeof answer?.pid !== "number" || typeof answer.id !== "string") {
      throw new Error(`Cannot take over from ${target.address}: an answer without pid and id`);
    }
    const deadline = performance.now() + STEP_TIMEOUT_MS;
    connection = await acceptFrom(listener, answer.pid, deadline);
    const message = await readMessage(connection, received, deadline);
    const parsed = JSON.parse(new TextDecoder().decode(message)) as HandoverMessage;
    if (parsed.version !== 1 || parsed.listeners?.length !== received.length) {
      throw new Error(
        `Cannot take over: ${received.length} sockets came for ` +
          `${parsed.listeners?.length} listeners (message version ${parsed.version})`,
      );
    }
    const sockets = new Map(parsed.listeners.map((l, i) => [l.address, received[i]]));
    if (sockets.size !== received.length) {
      throw new Error("Cannot take over: the running proxy sent an address twice");
    }
    return { pid: answer.pid, id: answer.id, sockets };
  } catch (error) {
    received.forEach(closeFd);
    throw error;
  } finally {
    if (connection >= 0) closeFd(connection);
    closeFd(listener);
  }
}

/**
 * The connection of process `pid` (with this uid) on abstract listener `fd`. The answer to
 * `POST /takeover` came after the send, so it is queued already, maybe behind connections of
 * others, which are closed unread.
 */
async function acceptFrom(fd: number, pid: number, deadline: number): Promise<number> {
  const uid = effectiveUid();
  for (;;) {
    const accepted = acceptUnix(fd);
    if (typeof accepted === "number") {
      const peer = peerCredentials(accepted);
      if (!("syscall" in peer) && peer.pid === pid && peer.uid === uid) return accepted;
      closeFd(accepted);
    } else if (errnoName(accepted.errno) !== "EAGAIN" || performance.now() > deadline) {
      throw new Error(failure(`Cannot take over: no connection from pid ${pid}`, accepted));
    } else {
      await delay(POLL_MS);
    }
  }
}

/** Reads one length-prefixed message from `fd`, pushing the fds that come with it. */
async function readMessage(fd: number, fds: number[], deadline: number): Promise<Uint8Array> {
  const buffer = new Uint8Array(64 * 1024);
  let message = new Uint8Array(0);
  let length = -1;
  while (length < 0 || message.length < 4 + length) {
    const got = receiveWithFds(fd, buffer, MAX_FDS);
    if ("syscall" in got) {
      if (errnoName(got.errno) !== "EAGAIN" || performance.now() > deadline) {
        throw new Error(failure("Cannot take over: receiving the listeners", got));
      }
      await delay(POLL_MS);
      continue;
    }
    fds.push(...got.fds);
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
  return message.subarray(4, 4 + length);
}

/**
 * Step 3: tells the running proxy that this process serves, so that it lets go of its
 * listeners, drains and exits. Resolves with the connections it has open to drain.
 *
 * @example
 * ```ts ignore
 * const taken = await receiveListeners({ address: "127.0.0.1:9901" });
 * const { draining } = await finishTakeover({ address: "127.0.0.1:9901" }, taken.id);
 * ```
 */
export async function finishTakeover(
  target: AdminTarget,
  id: string,
): Promise<{ draining: number }> {
  const answer = await post(target, "/takeover/finish", JSON.stringify({ id })) as
    | { draining?: number }
    | null;
  return { draining: answer?.draining ?? 0 };
}

function randomHex(bytes: number): string {
  return [...crypto.getRandomValues(new Uint8Array(bytes))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
