/**
 * What the engines report, as the proxy reports it: their records as {@linkcode ConnectionRecord}s
 * with the error texts the Deno-conn path gives, and their events as {@linkcode ProxyEvent}s,
 * throttled as proxy/server.ts throttles its own.
 *
 * @module
 */

import { errnoDescription } from "../ffi/errno.ts";
import { SyscallError } from "../errors.ts";
import type { PlaneEvent, PlaneRecord } from "../engine/plane_layout.ts";
import type { Throttle } from "./faults.ts";
import type { ConnectionRecord, ProxyEvent, ProxySpec } from "./types.ts";

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
    // Each engine reports a key at most once a second; the proxy, once for all of them.
    const { report, suppressed } = throttle.pass(
      `refused ${event.reason} ${event.listener} ${event.client.replace(/:\d+$/, "")}`,
      performance.now(),
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
