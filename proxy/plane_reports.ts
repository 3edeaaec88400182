/**
 * What the engines report, as the proxy reports it: their records as {@linkcode ConnectionRecord}s
 * with the error texts the Deno-conn path gives, and their events as {@linkcode ProxyEvent}s,
 * throttled as proxy/server.ts throttles its own, and their shared counters as
 * {@linkcode ProxyStats}.
 *
 * @module
 */

import { errnoDescription } from "../ffi/errno.ts";
import { SyscallError } from "../errors.ts";
import {
  ACCEPT_CODES,
  BACKEND_ACTIVE,
  BACKEND_FIELDS,
  BACKEND_STATE,
  ENGINE_ACCEPT_ERRORS,
  ENGINE_BACKENDS,
  ENGINE_BYTES_IN,
  ENGINE_BYTES_OUT,
  ENGINE_CONNECT_FAILURES,
  ENGINE_COPIED,
  ENGINE_LOCAL_ERRORS,
  ENGINE_OPEN,
  ENGINE_OPENED,
  ENGINE_REFUSED,
  ENGINE_REJECTED,
  ENGINE_SPLICED,
  ENGINE_STRIDE,
  LOCAL_CODES,
  type PlaneEvent,
  type PlaneRecord,
  type PlaneViews,
  REFUSAL_CODES,
} from "../engine/plane_layout.ts";
import { OUT_DOWN } from "./balancer.ts";
import type { Throttle } from "./faults.ts";
import type { ConnectionRecord, ProxyEvent, ProxySpec, ProxyStats } from "./types.ts";

/** A record as proxy/server.ts logs it, with the error text the Deno path would give. */
export function toConnectionRecord(record: PlaneRecord, spec: ProxySpec): ConnectionRecord {
  const out: ConnectionRecord = {
    client: record.client,
    listener: record.listener,
    cluster: record.cluster,
    backend: record.backend,
    bytesIn: record.bytesIn,
    bytesOut: record.bytesOut,
    durationMs: record.durationMs,
    mode: record.mode,
    end: record.end,
  };
  if (record.reason !== undefined && record.attempted !== undefined) {
    out.error = `Cannot connect to ${record.attempted}: ${record.reason}`;
  } else if (record.reason !== undefined) {
    // A listener's stage closed it: the reason is the whole message.
    out.error = record.reason;
  } else if (record.errno !== undefined && record.errno !== 0) {
    if (record.backend === null && record.attempted !== undefined) {
      const reason = record.errno === 110 && record.syscall === "connect"
        ? `Timed out after ${spec.connectTimeoutMs} ms`
        : `${errnoDescription(record.errno)} (os error ${record.errno})`;
      out.error = `Cannot connect to ${record.attempted}: ${reason}`;
    } else {
      out.error = new SyscallError(record.syscall || "relay", record.errno, {
        detail: `side ${record.side ?? "?"}`,
      }).message;
    }
  }
  return out;
}

/** An engine's event as the proxy reports it; null while its kind is throttled. */
export function reportable(event: PlaneEvent, throttle: Throttle): ProxyEvent | null {
  if (event.type === "backend-ejected") return event;
  if (event.type === "refused") {
    // Each engine reports a key at most once a second; the proxy, once for all of them. A
    // report held back here stands for itself and for what its engine held back.
    const { report, suppressed } = throttle.pass(
      `refused ${event.reason} ${event.listener} ${event.client.replace(/:\d+$/, "")}`,
      performance.now(),
      1 + event.suppressed,
    );
    if (!report) return null;
    const { listener, client, reason } = event;
    return {
      type: "connection-refused",
      listener,
      client,
      reason,
      suppressed: suppressed + event.suppressed,
    };
  }
  const key = event.type === "accept-error"
    ? `accept ${event.address} ${event.code}`
    : `local ${event.cluster}/${event.backend} ${event.code}`;
  const { report, suppressed } = throttle.pass(key, performance.now());
  if (!report) return null;
  const error = `${errnoDescription(event.errno)} (os error ${event.errno})`;
  if (event.type === "accept-error") {
    const { address, code, pauseMs } = event;
    return { type: "accept-error", address, code, error, pauseMs, suppressed };
  }
  const { cluster, backend, code } = event;
  const message = `Cannot connect to ${backend}: ${event.reason ?? error}`;
  return { type: "local-error", cluster, backend, code, error: message, suppressed };
}

/**
 * The engines' counters in `views`, summed over `engines`, as {@linkcode ProxyStats} over
 * `base`: a backend is listed while `current` names it (`cluster/address`) or it has counts.
 */
export function planeStats(
  views: PlaneViews,
  engines: number,
  backendSlots: ReadonlyMap<string, number>,
  current: ReadonlySet<string>,
  base: ProxyStats,
): ProxyStats {
  const { counters, ints, ejectedUntil } = views;
  const sum = (field: number): number => {
    let total = 0;
    for (let e = 0; e < engines; e++) total += counters[e * ENGINE_STRIDE + field];
    return total;
  };
  const named = (codes: readonly string[], first: number): Record<string, number> => {
    const out: Record<string, number> = {};
    codes.forEach((code, i) => {
      const n = sum(first + i);
      if (n > 0) out[code] = n;
    });
    return out;
  };
  const now = performance.timeOrigin + performance.now();
  const backends: ProxyStats["backends"] = {};
  for (const [key, slot] of backendSlots) {
    const at = ENGINE_BACKENDS + slot * BACKEND_FIELDS;
    const entry = {
      cluster: key.slice(0, key.indexOf("/")),
      active: Atomics.load(ints, BACKEND_ACTIVE + slot * 2),
      ejected: ejectedUntil[slot] > now,
      up: (Atomics.load(ints, BACKEND_STATE + slot) & OUT_DOWN) === 0,
      connections: sum(at),
      failures: sum(at + 1),
      bytesIn: sum(at + 2),
      bytesOut: sum(at + 3),
    };
    if (current.has(key) || entry.connections > 0 || entry.failures > 0) backends[key] = entry;
  }
  return {
    ...base,
    connectionsOpen: sum(ENGINE_OPEN),
    connectionsTotal: sum(ENGINE_OPENED),
    connectionsRejected: sum(ENGINE_REJECTED),
    connectionsRefused: named(REFUSAL_CODES, ENGINE_REFUSED),
    bytesIn: sum(ENGINE_BYTES_IN),
    bytesOut: sum(ENGINE_BYTES_OUT),
    splicedConnections: sum(ENGINE_SPLICED),
    copiedConnections: sum(ENGINE_COPIED),
    connectFailures: sum(ENGINE_CONNECT_FAILURES),
    acceptErrors: named(ACCEPT_CODES, ENGINE_ACCEPT_ERRORS),
    localErrors: named(LOCAL_CODES, ENGINE_LOCAL_ERRORS),
    backends,
    engines: Array.from({ length: engines }, (_, e) => counters[e * ENGINE_STRIDE + ENGINE_OPENED]),
  };
}
