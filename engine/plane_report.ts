/**
 * What an engine of the proxy's data plane tells the main thread: a record per finished
 * connection and the rarer events, queued and sent in batches. Each message wakes the main
 * thread; under churn a message per loop turn would cost it a wake-up per connection or two, so
 * records wait for company (up to {@linkcode RECORD_BATCH}, or {@linkcode RECORD_DELAY_MS} after
 * the first), while events and acknowledgements go at once.
 *
 * @module
 */

import type { PlaneEvent, PlaneRecord } from "./plane_layout.ts";
import type { Relay } from "./pump.ts";

/** Records sent in one message at most; more wait for the next. */
const RECORD_BATCH = 512;
/** How long a record may wait for others to share its message (the access log's delay). */
const RECORD_DELAY_MS = 20;

/** A relay's first failure, as the loop recorded it. */
export interface Failure {
  errno: number;
  syscall: string;
  side: number;
}

/** The report an engine posts. */
export interface Report {
  records: PlaneRecord[];
  events: PlaneEvent[];
  applied?: number;
}

/** An engine's queue of records and events not yet posted. */
export class ReportQueue {
  #records: PlaneRecord[] = [];
  #events: PlaneEvent[] = [];
  #applied: number | undefined;
  /** When the oldest record waiting was queued (the loop's clock). */
  #firstRecordAt = Infinity;

  /** Whether anything waits to be posted. */
  get pending(): boolean {
    return this.#records.length > 0 || this.#events.length > 0 || this.#applied !== undefined;
  }

  /**
   * When the queue must go: now (`0`), at a time of the loop's clock (the oldest record's
   * deadline), or never (`Infinity`: nothing waits).
   */
  dueAt(): number {
    if (this.#events.length > 0 || this.#applied !== undefined) return 0;
    if (this.#records.length === 0) return Infinity;
    if (this.#records.length >= RECORD_BATCH) return 0;
    return this.#firstRecordAt + RECORD_DELAY_MS;
  }

  record(record: PlaneRecord, now: number): void {
    if (this.#records.length === 0) this.#firstRecordAt = now;
    this.#records.push(record);
  }

  event(event: PlaneEvent): void {
    this.#events.push(event);
  }

  /** The routes generation applied, acknowledged with the next message. */
  applied(generation: number): void {
    this.#applied = generation;
  }

  /** Takes what is to be posted. */
  take(): Report {
    const report: Report = { records: this.#records, events: this.#events };
    if (this.#applied !== undefined) report.applied = this.#applied;
    this.#records = [];
    this.#events = [];
    this.#applied = undefined;
    this.#firstRecordAt = Infinity;
    return report;
  }
}

/** The record of a proxied relay that ended with `end` (and `failure`) at `now`. */
export function recordOf(
  relay: Relay,
  end: PlaneRecord["end"],
  failure: Failure | null,
  now: number,
): PlaneRecord {
  const proxied = relay.proxied!;
  const relayed = !relay.connecting && proxied.backendSlot >= 0;
  const spliced = relay.aToB.spliced + relay.bToA.spliced;
  const record: PlaneRecord = {
    client: proxied.client,
    listener: proxied.listener,
    cluster: proxied.cluster?.name ?? "",
    backend: relayed ? proxied.backend : null,
    bytesIn: relay.aToB.bytes,
    bytesOut: relay.bToA.bytes,
    durationMs: Math.round(now - proxied.startedAt),
    mode: relayed ? (spliced > 0 ? "splice" : "copy") : "none",
    end,
  };
  if (failure !== null) {
    record.errno = failure.errno;
    record.syscall = failure.syscall;
    if (failure.side !== -1) record.side = failure.side === 0 ? "a" : "b";
  } else if (!relayed && proxied.errno !== 0) {
    record.errno = proxied.errno;
    record.syscall = proxied.syscall;
  }
  if (!relayed && proxied.backend !== null) record.attempted = proxied.backend;
  if (!relayed && proxied.reason !== "") record.reason = proxied.reason;
  return record;
}
