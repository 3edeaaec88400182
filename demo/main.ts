// deno-lint-ignore-file no-console -- a CLI: printing is its job
/**
 * The demo: moves one payload between two loopback sockets twice, once through `relay()`
 * splicing in the kernel and once through the userspace copy loop (`copyBidirectional`),
 * checks that both arrive intact (SHA-256), and prints both throughputs.
 *
 *     deno task demo [--size MiB]
 *
 * The sender and the receiver run in this same process and hash every byte, so the numbers are
 * end to end through JavaScript and understate the relay itself; `deno task bench` measures the
 * relay alone against baselines.
 *
 * @module
 */

import { copyBidirectional, relay, shutdownRelayEngine, spliceAvailable } from "../mod.ts";
import { receiveAll, sendPattern } from "./payload.ts";

const DEFAULT_SIZE_MIB = 512;

interface PassResult {
  mode: string;
  bytes: number;
  seconds: number;
  intact: boolean;
}

function parseSize(args: string[]): number {
  const index = args.indexOf("--size");
  if (index === -1) return DEFAULT_SIZE_MIB;
  const value = Number(args[index + 1]);
  if (!Number.isInteger(value) || value <= 0 || value > 65_536) {
    throw new RangeError(`Invalid --size "${args[index + 1]}": expected MiB from 1 to 65536`);
  }
  return value;
}

async function connectedPair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const pair = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  return pair;
}

const encoder = new TextEncoder();
const TERMINAL = Deno.stderr.isTerminal();

function progress(mode: string, done: number, total: number, started: number): void {
  const seconds = (performance.now() - started) / 1000;
  const rate = seconds > 0 ? done / seconds / 2 ** 20 : 0;
  const percent = Math.floor((done / total) * 100);
  const line = `  ${mode.padEnd(6)} ${String(percent).padStart(3)}%  ${rate.toFixed(0)} MiB/s`;
  // On a terminal the line redraws itself; in a log it is one line per report.
  Deno.stderr.writeSync(encoder.encode(TERMINAL ? `\r${line} ` : `${line}\n`));
}

/**
 * sender -> [a] ... relay ... [b] -> receiver: the relay reads the accepted end of the first
 * pair and writes the connected end of the second.
 */
async function pass(mode: "splice" | "copy", total: number): Promise<PassResult> {
  const [sender, relayIn] = await connectedPair();
  const [relayOut, receiver] = await connectedPair();
  const started = performance.now();
  let lastReport = 0;
  const onProgress = (sent: number): void => {
    if (sent === total || performance.now() - lastReport > (TERMINAL ? 200 : 1000)) {
      lastReport = performance.now();
      progress(mode, sent, total, started);
    }
  };
  try {
    // The receiver sends nothing back: its FIN lets the relay finish once the payload is through.
    await receiver.closeWrite();
    let used: string = mode;
    const forward = async (): Promise<void> => {
      // relay() owns both conns from here and closes them when it ends.
      const result = mode === "splice"
        ? await relay(relayIn, relayOut, { mode: "splice" })
        : await copyBidirectional(relayIn, relayOut).then((r) => ({
          end: r.aToB.status === "end" && r.bToA.status === "end" ? "done" : "error",
        }));
      if (result.end !== "done") throw new Error(`the ${mode} relay ended: ${result.end}`);
      // "fallback" when the engine could not run (e.g. no read access to its module).
      if ("mode" in result && result.mode !== "splice") used = `${mode}:${result.mode}`;
    };
    const [sentHash, , received] = await Promise.all([
      sendPattern(sender, total, 42, 256 * 1024, onProgress).then(async (hash) => {
        await sender.closeWrite();
        return hash;
      }),
      forward(),
      receiveAll(receiver),
    ]);
    const seconds = (performance.now() - started) / 1000;
    if (TERMINAL) Deno.stderr.writeSync(encoder.encode("\r\x1b[K"));
    return {
      mode: used,
      bytes: received.bytes,
      seconds,
      intact: received.bytes === total && received.sha256 === sentHash,
    };
  } finally {
    for (const conn of [sender, relayIn, relayOut, receiver]) {
      try {
        conn.close();
      } catch {
        // already closed by the relay
      }
    }
  }
}

async function main(): Promise<number> {
  const sizeMiB = parseSize(Deno.args);
  const total = sizeMiB * 2 ** 20;
  const available = spliceAvailable();
  console.log(`Moving ${sizeMiB} MiB over loopback, sender -> relay -> receiver.`);
  if (!available) {
    console.log("splice is unavailable here (needs Linux and --allow-ffi): copy loop only.");
  }
  const results: PassResult[] = [];
  if (available) results.push(await pass("splice", total));
  results.push(await pass("copy", total));
  await shutdownRelayEngine();
  for (const r of results) {
    const rate = r.bytes / r.seconds / 2 ** 20;
    console.log(
      `${r.mode.padEnd(6)} ${rate.toFixed(0).padStart(6)} MiB/s  ${r.seconds.toFixed(2)} s  ` +
        (r.intact ? "SHA-256 equal at both ends" : "DATA MISMATCH"),
    );
  }
  if (results.length === 2) {
    const ratio = (results[1].seconds / results[0].seconds).toFixed(2);
    console.log(`splice / copy throughput: ${ratio}x (end to end, hashing included)`);
  }
  return results.every((r) => r.intact) ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
