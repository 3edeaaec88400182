/**
 * How the proxy tells failures apart: those a peer caused from its own (out of fds, memory,
 * ports or permission), and the transient accept errors that are skipped from those that call
 * for a pause. Also the throttle that keeps a storm of one failure from flooding the log.
 *
 * @module
 */

/**
 * What an `accept()` error means for the accept loop, as Go's net/http and HAProxy read them:
 * - `"transient"`: about one connection only (it was reset or aborted before it was accepted,
 *   or a firewall refused it); skip it and accept the next at once;
 * - `"resources"`: the process or system is out of fds or memory; accepting again at once would
 *   spin on the same error, so pause and retry (neither spinning nor stopping);
 * - `"other"`: unexpected; treated like `"resources"`, so that nothing spins and nothing stops.
 */
export type AcceptErrorKind = "transient" | "resources" | "other";

/** accept(2) errors that concern one client only: it is skipped, the next one accepted. */
export const TRANSIENT_ACCEPT_CODES: readonly string[] = [
  "ECONNABORTED",
  "ECONNRESET",
  "ENOTCONN",
  "EPROTO",
  "EPERM",
  "EINTR",
  "EAGAIN",
  "ENETDOWN",
  "ENOPROTOOPT",
  "EHOSTDOWN",
  "ENONET",
  "EHOSTUNREACH",
  "EOPNOTSUPP",
  "ENETUNREACH",
];
/** Errors that say the process is short of a resource (fds, buffers, memory). */
export const RESOURCE_CODES: readonly string[] = ["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"];
const TRANSIENT_ACCEPT = new Set(TRANSIENT_ACCEPT_CODES);
const RESOURCES = new Set(RESOURCE_CODES);

/** The errno name of an error from Deno (`code`), or the error's class name when it has none. */
export function errorCode(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string" && code !== "") return code;
    // Deno's classes for the errno values that carry none.
    if (error instanceof Deno.errors.NotConnected) return "ENOTCONN";
    if (error instanceof Deno.errors.ConnectionAborted) return "ECONNABORTED";
    if (error instanceof Deno.errors.ConnectionReset) return "ECONNRESET";
    if (error instanceof Deno.errors.Interrupted) return "EINTR";
    if (error instanceof Deno.errors.NotCapable) return "permission";
    return error.name;
  }
  return "unknown";
}

/** How the accept loop treats an error of `accept()` on a listener it did not close. */
export function acceptErrorKind(code: string): AcceptErrorKind {
  if (TRANSIENT_ACCEPT.has(code)) return "transient";
  return RESOURCES.has(code) ? "resources" : "other";
}

/**
 * Whether a failed connect to a backend was the proxy's own failure rather than the backend's:
 * out of fds or memory, no local port left, or refused by Deno's permissions. Such failures
 * never count toward a backend's ejection. Returns the reason, or `null` for the backend's.
 */
export function localConnectFailure(code: string): string | null {
  if (RESOURCES.has(code) || code === "EADDRNOTAVAIL" || code === "permission") return code;
  return null;
}

/** Whether a local connect failure would fail the same way on any backend. */
export function failsEveryBackend(reason: string): boolean {
  return RESOURCES.has(reason) || reason === "EADDRNOTAVAIL";
}

/** First back-off after an accept error that calls for a pause, in ms (Go's net/http: 5 ms). */
export const ACCEPT_BACKOFF_MIN_MS = 5;
/** The back-off doubles up to this (Go's and HAProxy's bound: about a second). */
export const ACCEPT_BACKOFF_MAX_MS = 1_000;

/** The next back-off after `previous` ms (0: none yet), doubling from `min` up to `max`. */
export function nextBackoff(
  previous: number,
  min = ACCEPT_BACKOFF_MIN_MS,
  max = ACCEPT_BACKOFF_MAX_MS,
): number {
  return previous === 0 ? min : Math.min(previous * 2, max);
}

/** An engine that dies within this long of its start is restarted after a back-off. */
export const ENGINE_STABLE_MS = 10_000;
/** The first and the largest wait before an engine that keeps dying is restarted, in ms. */
export const ENGINE_RESTART_MIN_MS = 100;
export const ENGINE_RESTART_MAX_MS = 30_000;

/**
 * How long to wait before restarting an engine that died after `livedMs`, when the wait before
 * its last restart was `previous` ms: at once after a life of ENGINE_STABLE_MS or more (a rare
 * bug), else doubling from ENGINE_RESTART_MIN_MS to ENGINE_RESTART_MAX_MS, so that an engine
 * killed by what it is given at each start does not take the control plane's thread and the
 * log with it.
 */
export function engineRestartDelay(previous: number, livedMs: number): number {
  if (livedMs >= ENGINE_STABLE_MS) return 0;
  return nextBackoff(previous, ENGINE_RESTART_MIN_MS, ENGINE_RESTART_MAX_MS);
}

/** Keys a {@linkcode Throttle} tracks by default. */
const THROTTLE_MAX_KEYS = 1024;
/**
 * Sources whose refusals (allow/deny, per-address limit) are reported one by one in a second;
 * past them, one report a second stands for the rest (each still counted on /metrics).
 */
export const REFUSAL_REPORT_KEYS = 256;
/** A refusal is reported at most this often per listener, client address and reason. */
export const REFUSAL_REPORT_MS = 1_000;

/**
 * At most one report per key per interval: the first occurrence is reported at once, the
 * following ones within the interval are counted, and the next report carries their count.
 *
 * At most `maxKeys` keys are tracked. Quiet keys are swept out when the table is full, at most
 * once an interval, so each occurrence costs O(1) however many keys arrive. While the table is
 * full of keys seen within the interval (a flood from many sources), new keys share one overflow
 * key: the flood is reported once an interval in all, not once per key, and none is lost from
 * the counts.
 */
export class Throttle {
  #last = new Map<string, { at: number; suppressed: number }>();
  #overflow = { at: -Infinity, suppressed: 0 };
  #swept = -Infinity;
  constructor(readonly intervalMs: number, readonly maxKeys: number = THROTTLE_MAX_KEYS) {}

  /**
   * Whether to report an occurrence of `key` now; `suppressed` is how many were held back since
   * the last report of that key (of any overflowing key, when the table is full). `weight` is how
   * many occurrences this one stands for (a report that another throttle already thinned
   * carries its own count).
   */
  pass(key: string, now: number, weight = 1): { report: boolean; suppressed: number } {
    let last = this.#last.get(key);
    if (last === undefined && this.#last.size >= this.maxKeys) {
      if (now - this.#swept >= this.intervalMs) {
        this.#swept = now;
        for (const [k, v] of this.#last) if (now - v.at >= this.intervalMs) this.#last.delete(k);
      }
      if (this.#last.size >= this.maxKeys) last = this.#overflow;
    }
    if (last !== undefined && now - last.at < this.intervalMs) {
      last.suppressed += weight;
      return { report: false, suppressed: 0 };
    }
    const suppressed = last?.suppressed ?? 0;
    if (last === undefined) {
      this.#last.set(key, { at: now, suppressed: 0 });
    } else {
      last.at = now;
      last.suppressed = 0;
    }
    return { report: true, suppressed };
  }
}
