/** Test helpers: loopback socket pairs, hashing, fd counting, bounded waiting, subprocesses. */

/** A connected TCP pair on loopback: `client` from Deno.connect, `server` from accept. */
export interface TcpPair {
  client: Deno.TcpConn;
  server: Deno.TcpConn;
  close(): void;
}

/** Opens a connected loopback TCP pair. */
export async function tcpPair(): Promise<TcpPair> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [client, server] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  return {
    client,
    server,
    close(): void {
      closeQuietly(client);
      closeQuietly(server);
    },
  };
}

/** Closes a resource that may already be closed. */
export function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch {
    // already closed
  }
}

/** Number of fds this process holds. */
export function openFdCount(): number {
  let count = 0;
  for (const _ of Deno.readDirSync("/proc/self/fd")) count++;
  // readDirSync holds one fd of its own while it lists.
  return count - 1;
}

/** Waits until `predicate` holds, retrying every few ms, failing after `timeoutMs`. */
export async function waitFor(
  predicate: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; Date.now() < deadline; attempt++) {
    if (await predicate()) return;
    await new Promise((resolve) => setTimeout(resolve, Math.min(1 + attempt, 20)));
  }
  throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
}

/**
 * An echo backend on 127.0.0.1: each connection gets back what it sent, then end of input;
 * `accepted()` counts the connections it took.
 * `close()` stops it and waits for the connections it serves to end.
 */
export function echoBackend(): { port: number; accepted(): number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served = serveEach(listener, async (conn) => {
    try {
      const buffer = new Uint8Array(64 * 1024);
      for (let n; (n = await conn.read(buffer)) !== null;) {
        for (let off = 0; off < n;) off += await conn.write(buffer.subarray(off, n));
      }
      await conn.closeWrite();
    } catch {
      // the client went away
    } finally {
      closeQuietly(conn);
    }
  });
  return { port: listener.addr.port, ...served };
}

/**
 * Serves each conn `listener` accepts with `serve` (which must not reject: it catches what its
 * client does). `accepted()` counts the conns taken; `close()` stops the listener and waits for
 * every conn being served to end (closing twice is closing once).
 */
export function serveEach<C extends Deno.Conn>(
  listener: Deno.Listener<C>,
  serve: (conn: C) => Promise<void>,
): { accepted(): number; close(): Promise<void> } {
  const served = new Set<Promise<void>>();
  let accepted = 0;
  const loop = acceptEach(listener, (conn) => {
    accepted++;
    const one = serve(conn);
    served.add(one);
    one.finally(() => served.delete(one));
  });
  let closed = false;
  return {
    accepted: () => accepted,
    async close(): Promise<void> {
      // Idempotent: a test may stop a backend, then close it again in its cleanup.
      if (!closed) listener.close();
      closed = true;
      await loop.catch(() => {});
      await Promise.all([...served]);
    },
  };
}

/**
 * A loopback port nothing listens on now (it was free a moment ago): connects to it are refused,
 * and a process told to listen there finds it free unless another took it meanwhile.
 */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}

/**
 * Accepts from `listener` until it is closed, handing each conn to `serve`. A client that is
 * gone before its accept (a proxy passed a reset on) fails that accept alone: Deno's async
 * iterator would end the loop there, and every later client would hang.
 */
export async function acceptEach<C extends Deno.Conn>(
  listener: Deno.Listener<C>,
  serve: (conn: C) => void,
): Promise<void> {
  for (;;) {
    let conn: C;
    try {
      conn = await listener.accept();
    } catch (error) {
      if (error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted) {
        return; // closed
      }
      continue;
    }
    serve(conn);
  }
}

/** A child process's output, line by line, as it arrives. */
export interface OutputLines {
  /** The stdout and stderr lines so far, in order of arrival per stream. */
  lines: string[];
  /** Resolves when both streams have ended. */
  done: Promise<void>;
  /** Waits (bounded) for a line matching `pattern`; the failure quotes all output so far. */
  line(pattern: RegExp, what: string, timeoutMs?: number): Promise<string>;
}

/** Collects `child`'s piped stdout and stderr as lines. */
export function outputLines(child: Deno.ChildProcess): OutputLines {
  const lines: string[] = [];
  const collect = async (stream: ReadableStream<Uint8Array>): Promise<void> => {
    let rest = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      lines.push(...parts);
    }
    if (rest) lines.push(rest);
  };
  const done = Promise.all([collect(child.stdout), collect(child.stderr)]).then(() => {});
  return {
    lines,
    done,
    async line(pattern, what, timeoutMs = 15_000): Promise<string> {
      let found: string | undefined;
      await waitFor(
        () => (found = lines.find((l) => pattern.test(l))) !== undefined,
        what,
        timeoutMs,
      )
        .catch((error) => {
          throw new Error(`${error.message}; the process said:\n${lines.join("\n")}`);
        });
      return found!;
    },
  };
}

/** proxy.ts as a subprocess, its output collected as lines. */
export interface ProxyProcess {
  child: Deno.ChildProcess;
  output: OutputLines;
  /** Kills it if it still runs, and waits for it and its output to end. */
  kill(): Promise<void>;
  /** Sends `signal` if it still runs (SIGKILL by default); resolves with its exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
}

/**
 * proxy.ts on `configPath` as a subprocess with --allow-net and --allow-read, and --allow-ffi
 * unless `ffi` is false (then on its Deno-conn path); `args` follow `--config FILE`. With
 * `wrap`, that command runs deno (its arguments follow), and must exec it.
 */
export function spawnProxy(
  configPath: string,
  options: { ffi?: boolean; args?: string[]; wrap?: string[] } = {},
): ProxyProcess {
  const [program, ...prefix] = [...(options.wrap ?? []), Deno.execPath()];
  const child = new Deno.Command(program, {
    args: [
      ...prefix,
      "run",
      "--config",
      new URL("../deno.json", import.meta.url).pathname,
      ...(options.ffi === false ? [] : ["--allow-ffi"]),
      "--allow-net",
      "--allow-read",
      new URL("../proxy.ts", import.meta.url).pathname,
      "--config",
      configPath,
      ...(options.args ?? []),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const output = outputLines(child);
  const stop = async (signal: Deno.Signal = "SIGKILL"): Promise<number> => {
    try {
      child.kill(signal);
    } catch {
      // already exited
    }
    const { code } = await child.status;
    await output.done;
    return code;
  };
  return { child, output, stop, kill: async () => void await stop() };
}

/**
 * proxy.ts on `configPath` as a subprocess without --allow-ffi (so on its Deno-conn path), with
 * --allow-net and --allow-read only; its output collected as lines.
 */
export function spawnProxyWithoutFfi(configPath: string): ProxyProcess {
  return spawnProxy(configPath, { ffi: false });
}

export { fillPattern, receiveAll, sendPattern } from "../demo/payload.ts";

/** The result of a Deno subprocess. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

const CONFIG = new URL("../deno.json", import.meta.url).pathname;

/**
 * Runs `source` as a Deno module in a subprocess with the given permission flags. The module
 * can import the project through `MOD` and `ROOT` placeholders (absolute URLs).
 */
export async function runDeno(
  source: string,
  flags: string[],
  options?: { prefix?: string[]; timeoutMs?: number },
): Promise<RunResult> {
  const root = new URL("../", import.meta.url).href;
  const file = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(file, source.replaceAll("ROOT/", root));
    const denoArgs = ["run", "--quiet", "--config", CONFIG, ...flags, file];
    const [command, args] = options?.prefix?.length
      ? [options.prefix[0], [...options.prefix.slice(1), Deno.execPath(), ...denoArgs]]
      : [Deno.execPath(), denoArgs];
    const child = new Deno.Command(command, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const timer = setTimeout(() => child.kill("SIGKILL"), options?.timeoutMs ?? 60_000);
    try {
      const output = await child.output();
      const decoder = new TextDecoder();
      return {
        code: output.code,
        stdout: decoder.decode(output.stdout),
        stderr: decoder.decode(output.stderr),
      };
    } finally {
      clearTimeout(timer);
    }
  } finally {
    await Deno.remove(file);
  }
}

/** Resolves like `promise`, or rejects after `ms` naming `what`: no wait in the tests is open. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The bytes of `parts`, one after another. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * One connection to 127.0.0.1:`port`: sends `first` then `payload`, half-closes, and returns
 * everything that came back until the other end closed (empty when it closed or reset at once).
 */
export async function exchangeBytes(
  port: number,
  first: Uint8Array,
  payload: Uint8Array = new Uint8Array(0),
): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    if (first.length > 0) await conn.write(first);
    const chunks: Uint8Array[] = [];
    const reading = (async () => {
      const buffer = new Uint8Array(64 * 1024);
      try {
        for (let n; (n = await conn.read(buffer)) !== null;) chunks.push(buffer.slice(0, n));
      } catch {
        // reset: what came is kept
      }
    })();
    try {
      for (let off = 0; off < payload.length;) off += await conn.write(payload.subarray(off));
      await conn.closeWrite();
    } catch {
      // closed by the other end
    }
    await within(reading, 10_000, "the answer to end");
    return concat(...chunks);
  } finally {
    closeQuietly(conn);
  }
}

/**
 * One connection to 127.0.0.1:`port` that sends 3 bytes: whether the same 3 came back (false
 * when it was refused, reset or ended first).
 */
export async function echoes(port: number): Promise<boolean> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
  } catch {
    return false; // refused
  }
  try {
    await conn.write(new Uint8Array([7, 8, 9]));
    const back = new Uint8Array(3);
    for (let got = 0; got < 3;) {
      const n = await conn.read(back.subarray(got));
      if (n === null) return false;
      got += n;
    }
    return back.join() === "7,8,9";
  } catch {
    return false; // reset
  } finally {
    closeQuietly(conn);
  }
}
