/**
 * An engine's gate: what a proxied connection goes through, on a listener with stages, before
 * its backend is tried (the reading of engine/plane_stages.ts's steps, the per-address counts,
 * the refusals and their reports), and the PROXY header a backend gets first. Kept apart from
 * plane.ts, whose connections on plain listeners never come here.
 *
 * @module
 */

import { errno, libc } from "../ffi/libc.ts";
import { formatSockaddr, SOCKADDR_MAX } from "../ffi/net.ts";
import { CLIENT_HELLO_MAX_BYTES } from "../protocol/client_hello.ts";
import { parseIp } from "../protocol/ip.ts";
import { formatAddress } from "../proxy/config_address.ts";
import { REFUSAL_REPORT_KEYS, REFUSAL_REPORT_MS, Throttle } from "../proxy/faults.ts";
import { ACQUIRED, AT_LIMIT, IpTable } from "./ip_table.ts";
import { ENGINE_REFUSED, type PlaneEnd, REFUSAL_CODES } from "./plane_layout.ts";
import type { ReportQueue } from "./plane_report.ts";
import {
  admitted,
  parseEndpoint,
  proxyHeaderFor,
  readPreface,
  type Refusal,
  STAGE_PROXY,
  type Stages,
} from "./plane_stages.ts";
import { failRead, type Relay } from "./pump.ts";
import { syscallNumber } from "./wire.ts";

const WRITE = syscallNumber("write");
/** I/O error: a PROXY header that could not be made or written whole. */
const EIO = 5;

/** What the gate needs of the engine's loop (plane.ts's PlaneHost has it all). */
export interface GateHost {
  now(): number;
  finishNow(relay: Relay, end: PlaneEnd): void;
  wakeAt(at: number): void;
  timed: Set<Relay>;
}

/** One engine's gate. */
export class Gate {
  #host: GateHost;
  #counters: Float64Array;
  #report: ReportQueue;
  #ipTable: IpTable | null = null;
  /** Per refusal key, when it was last reported and how many were not since. */
  #refusals = new Throttle(REFUSAL_REPORT_MS, REFUSAL_REPORT_KEYS);
  /** Where first bytes are looked at; made on first use, so a proxy without stages pays none. */
  #peekBuffer: Uint8Array | null = null;
  #addr = new Uint8Array(SOCKADDR_MAX);
  #addrLength = new Uint32Array(1);

  constructor(host: GateHost, counters: Float64Array, report: ReportQueue) {
    this.#host = host;
    this.#counters = counters;
    this.#report = report;
  }

  /** The shared per-address table, once the main thread made one; it never changes after. */
  useTable(buffer: SharedArrayBuffer): void {
    this.#ipTable ??= new IpTable(buffer);
  }

  /**
   * Reads a relay's first bytes through its pending stages. True when all are passed (its
   * cluster is chosen and the caller connects); false while it waits for more bytes or when it
   * was refused (and finished).
   */
  read(relay: Relay): boolean {
    const proxied = relay.proxied!;
    const stages = proxied.stages!;
    this.#peekBuffer ??= new Uint8Array(CLIENT_HELLO_MAX_BYTES);
    while (stages.pending !== 0) {
      const step = readPreface(relay.a.fd, stages, this.#peekBuffer, relay.a.hangUp);
      if (step.kind === "wait") return false;
      if (step.kind === "refuse") {
        this.#refuse(relay, step);
        return false;
      }
      if (step.kind === "route") {
        proxied.cluster = step.cluster;
        continue;
      }
      const { source, destination } = step.header;
      // LOCAL (a balancer's health check) and unknown families keep the socket's address.
      if (source !== null) {
        proxied.client = formatAddress(source);
        stages.ip = parseIp(source.hostname) ?? stages.ip;
        stages.destination = destination;
      }
      if (!admitted(stages.rules, stages.ip)) {
        this.refused(proxied.listener, proxied.client, stages.ip, "denied");
        this.#host.finishNow(relay, "refused");
        return false;
      }
      const over = this.countAddress(proxied.listenerSlot, stages);
      if (over !== null) {
        this.refused(proxied.listener, proxied.client, stages.ip, over);
        this.#host.finishNow(relay, "refused");
        return false;
      }
      if (stages.pending !== 0) this.stageDeadline(relay, stages);
    }
    relay.connectDeadline = 0;
    this.#host.timed.delete(relay);
    return true;
  }

  /** Sets the deadline of the stage a relay waits in. */
  stageDeadline(relay: Relay, stages: Stages): void {
    const rules = stages.rules;
    const ms = (stages.pending & STAGE_PROXY) !== 0 ? rules.headerTimeoutMs : rules.sniTimeoutMs;
    relay.connectDeadline = this.#host.now() + ms;
    this.#host.timed.add(relay);
    this.#host.wakeAt(relay.connectDeadline);
  }

  /** A relay's stage ran past its deadline: closed, counted. */
  timedOut(relay: Relay): void {
    const stages = relay.proxied!.stages!;
    const header = (stages.pending & STAGE_PROXY) !== 0;
    const ms = header ? stages.rules.headerTimeoutMs : stages.rules.sniTimeoutMs;
    this.#refuse(relay, {
      kind: "refuse",
      end: "header-timeout",
      code: header ? "proxy_header_timeout" : "client_hello_timeout",
      error: `No whole ${header ? "PROXY header" : "TLS ClientHello"} within ${ms} ms`,
    });
  }

  /**
   * Counts the stage's client address on listener `slot`: null, or why it was not (the address
   * is at its limit, or the table has no room for another address).
   */
  countAddress(slot: number, stages: Stages): "per_ip_limit" | "per_ip_table_full" | null {
    const limit = stages.rules.maxPerIp;
    if (limit === 0 || this.#ipTable === null) return null;
    const result = this.#ipTable.acquire(slot, stages.ip, limit);
    if (result === AT_LIMIT) return "per_ip_limit";
    if (result !== ACQUIRED) return "per_ip_table_full";
    stages.counted = stages.ip;
    return null;
  }

  /** Gives back what {@linkcode countAddress} counted for a connection that ended. */
  release(slot: number, stages: Stages): void {
    if (stages.counted !== null) this.#ipTable?.release(slot, stages.counted);
    stages.counted = null;
  }

  /**
   * Counts a connection refused by the source rules or the per-address limit, and reports it
   * at most once a second per listener, address and reason (with how many were not).
   */
  refused(
    listener: string,
    client: string,
    ip: Uint8Array,
    reason: "denied" | "per_ip_limit" | "per_ip_table_full",
  ): void {
    this.#counters[ENGINE_REFUSED + REFUSAL_CODES.indexOf(reason)]++;
    const key = `${reason} ${listener} ${ip.join(".")}`;
    const { report, suppressed } = this.#refusals.pass(key, this.#host.now());
    if (!report) return;
    this.#report.event({
      type: "refused",
      listener,
      client,
      reason,
      suppressed,
    });
  }

  /** Ends a relay its stages refused; counted by reason. */
  #refuse(relay: Relay, refusal: Refusal): void {
    if (refusal.code !== null) {
      this.#counters[ENGINE_REFUSED + REFUSAL_CODES.indexOf(refusal.code)]++;
    }
    relay.proxied!.reason = refusal.error;
    this.#host.finishNow(relay, refusal.end);
  }

  /**
   * Writes the PROXY header to a backend that just connected, before any client byte: its
   * send buffer is empty, so the whole header (at most 232 bytes) goes in one write or the
   * socket failed. A failure ends the relay as the write's error.
   */
  sendProxyHeader(relay: Relay, version: number): void {
    const proxied = relay.proxied!;
    let destination = proxied.stages?.destination ?? null;
    if (destination === null) {
      this.#addrLength[0] = SOCKADDR_MAX;
      if (libc().getsockname(relay.a.fd, this.#addr, this.#addrLength) === 0) {
        destination = parseEndpoint(formatSockaddr(this.#addr));
      }
    }
    const header = proxyHeaderFor(version, proxied.client, destination);
    const written = header === null
      ? -1
      : Number(libc().write(relay.b.fd, header, BigInt(header.byteLength)));
    if (header !== null && written === header.byteLength) return;
    failRead(relay, relay.b, written < 0 ? errno() : EIO, WRITE);
  }
}
