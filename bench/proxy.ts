// deno-lint-ignore-file no-console -- a benchmark process: printing is its interface
/**
 * A TCP proxy for the benchmark: `deno run -A bench/proxy.ts IMPL LISTEN_PORT BACKEND_PORT`.
 * IMPL is `relay` (this module, connecting to the backend itself: `relay(client, { hostname,
 * port })`), `relayconn` (relay() of two Deno conns, the backend from Deno.connect), `pipeto`
 * (Deno streams) or `copy` (a Deno read/write loop).
 * Prints "ready" once listening.
 *
 * @module
 */

import { copyBidirectional, relay } from "../mod.ts";

const [impl, listenPort, backendPort] = Deno.args;
const listener = Deno.listen({ hostname: "127.0.0.1", port: Number(listenPort) });
console.log("ready");

const held: Deno.TcpConn[] = [];

const target = { hostname: "127.0.0.1", port: Number(backendPort) };

function serve(client: Deno.TcpConn): void {
  if (impl === "relay" || impl.startsWith("relay:")) {
    // relay, or relay:MODE (auto, splice, copy) to compare the engine's paths.
    const mode = (impl.split(":")[1] ?? "auto") as "auto" | "splice" | "copy";
    const pipeCapacity = Number(Deno.env.get("SPLICE_BENCH_PIPE") ?? 0);
    relay(client, target, { mode, pipeCapacity }).then((result) => {
      if (result.end !== "done" && result.end !== "reset") console.error("relay ended:", result);
    }, (error) => console.error(error));
    return;
  }
  Deno.connect({ hostname: "127.0.0.1", port: Number(backendPort) }).then((backend) => {
    if (impl === "relayconn") {
      relay(client, backend).then((result) => {
        // Only the unusual ends: a benchmark that loses a connection must say why.
        if (result.end !== "done" && result.end !== "reset") console.error("relay ended:", result);
      }, (error) => console.error(error));
    } else if (impl === "hold") {
      // Accept and connect, move nothing: Deno's own cost of two open conns, for reference.
      held.push(client, backend);
    } else if (impl === "copy") {
      copyBidirectional(client, backend).catch((error) => console.error(error));
    } else {
      client.readable.pipeTo(backend.writable).catch(() => {});
      backend.readable.pipeTo(client.writable).catch(() => {});
    }
  }, () => client.close());
}

for await (const client of listener) serve(client);
