/**
 * Real programs as peers for the interop tests: HAProxy (PROXY protocol in both directions) and
 * the openssl command line (certificates, TLS clients). Both are found on PATH or in the sbin
 * directories, installed with apt-get once per process when missing (as CI does), and every
 * child is bounded in time and killed by whoever started it.
 *
 * @module
 */

import { type OutputLines, outputLines, waitFor } from "./_helpers.ts";
import { within } from "./_relay_helpers.ts";

/**
 * A command's path: on PATH, or in /usr/sbin or /sbin (Debian's haproxy is there, and a PATH
 * without the sbin directories is common outside a root login shell). Null when it is nowhere.
 */
export function findCommand(name: string): string | null {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":").filter(Boolean), "/usr/sbin", "/sbin"];
  for (const dir of dirs) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
    } catch {
      // not here
    }
  }
  return null;
}

/** The peer programs' paths. */
export interface Peers {
  haproxy: string;
  openssl: string;
}

/** Bound on `apt-get update` and `apt-get install` together. */
const INSTALL_TIMEOUT_MS = 300_000;

let found: Promise<Peers | string> | undefined;

/**
 * HAProxy and openssl, installed with apt-get (`update`, then `install -y`) when either is
 * missing; at most one attempt per process, whoever asks. Resolves to a reason instead when
 * they cannot be found nor installed, so that the caller can skip and say why.
 */
export function ensurePeers(): Promise<Peers | string> {
  found ??= locate();
  return found;
}

async function locate(): Promise<Peers | string> {
  const missing = [["haproxy", "haproxy"], ["openssl", "openssl"]]
    .filter(([command]) => findCommand(command) === null)
    .map(([, pkg]) => pkg);
  if (missing.length > 0) {
    const apt = findCommand("apt-get");
    if (apt === null) return `${missing.join(" and ")} missing, and no apt-get to install them`;
    const deadline = Date.now() + INSTALL_TIMEOUT_MS;
    for (const args of [["update"], ["install", "-y", ...missing]]) {
      const result = await runBounded(apt, args, Math.max(1, deadline - Date.now()), {
        DEBIAN_FRONTEND: "noninteractive",
      }).catch((error: Error) => ({ code: -1, stdout: "", stderr: error.message }));
      if (result.code !== 0) {
        const tail = result.stderr.trim().split("\n").slice(-3).join(" / ");
        return `${missing.join(" and ")} missing; apt-get ${args[0]} failed: ${tail}`;
      }
    }
  }
  const haproxy = findCommand("haproxy");
  const openssl = findCommand("openssl");
  if (haproxy === null || openssl === null) {
    return `${missing.join(" and ")} still missing after apt-get install`;
  }
  return { haproxy, openssl };
}

/** A finished command's exit code and output. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `command` with stdin closed, killing it (SIGKILL) if it has not exited after `timeoutMs`,
 * which then rejects.
 */
export async function runBounded(
  command: string,
  args: string[],
  timeoutMs: number,
  env?: Record<string, string>,
): Promise<CommandResult> {
  const child = new Deno.Command(command, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    ...(env === undefined ? {} : { env }),
  }).spawn();
  try {
    const output = await within(child.output(), timeoutMs, `${command} ${args.join(" ")}`);
    const decoder = new TextDecoder();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  } finally {
    await stopChild(child);
  }
}

/** Kills `child` (SIGKILL) unless it has exited, and waits for its status. */
export async function stopChild(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGKILL");
  } catch {
    // already exited
  }
  await child.status;
}

/**
 * A port on `hostname` (a loopback address) that nothing listens on now: it was free a moment
 * ago, so a program told to listen there finds it free unless another took it meanwhile.
 */
export function freePortOn(hostname: string): number {
  const listener = Deno.listen({ hostname, port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}

/** The inodes of the sockets listening on `port` (IPv4 and IPv6), from /proc/net/tcp{,6}. */
function listeningInodes(port: number): string[] {
  const hexPort = port.toString(16).toUpperCase().padStart(4, "0");
  const inodes: string[] = [];
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = Deno.readTextFileSync(file);
    } catch {
      continue; // no IPv6 here
    }
    for (const line of text.split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields[1]?.endsWith(`:${hexPort}`) && fields[3] === "0A") inodes.push(fields[9]);
    }
  }
  return inodes;
}

/**
 * Whether process `pid` listens on `port`: one of its fds is a socket listening there. Tells
 * that HAProxy, which prints nothing when up, is ready without a probe connection (HAProxy would
 * relay the probe, PROXY header and all, to the proxy under test, and its record would mingle
 * with the test's).
 */
export function listensOn(pid: number, port: number): boolean {
  const inodes = new Set(listeningInodes(port).map((inode) => `socket:[${inode}]`));
  if (inodes.size === 0) return false;
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      if (inodes.has(Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`))) return true;
    } catch {
      // closed while listed
    }
  }
  return false;
}

/** A running HAProxy. */
export interface Haproxy {
  /** What it printed so far (warnings, alerts). */
  output: OutputLines;
  /** Kills it, waits for its exit and removes its config file. */
  stop(): Promise<void>;
}

/**
 * HAProxy in the foreground (`-db`) with `config` as its configuration, `nbthread 1`. Resolves
 * once it listens on `port` (bounded by `timeoutMs`); rejects with its output when it exits or
 * does not listen in time, and is then stopped.
 */
export async function startHaproxy(
  haproxy: string,
  config: string,
  port: number,
  timeoutMs = 5_000,
): Promise<Haproxy> {
  const file = await Deno.makeTempFile({ prefix: "interop-haproxy-", suffix: ".cfg" });
  await Deno.writeTextFile(file, config);
  const child = new Deno.Command(haproxy, {
    args: ["-db", "-f", file],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = outputLines(child);
  const stop = async (): Promise<void> => {
    await stopChild(child);
    await output.done;
    await Deno.remove(file).catch(() => {});
  };
  let exited = false;
  child.status.then(() => exited = true);
  try {
    await waitFor(
      () => {
        if (exited) throw new Error("haproxy exited before listening");
        return listensOn(child.pid, port);
      },
      `haproxy to listen on port ${port}`,
      timeoutMs,
    );
  } catch (error) {
    await stop();
    throw new Error(`${(error as Error).message}; haproxy said:\n${output.lines.join("\n")}`);
  }
  return { output, stop };
}

/**
 * HAProxy's configuration for one TCP frontend on `binds` (each `"127.0.0.1:PORT"` or
 * `"[::1]:PORT"`, with bind options after it such as `accept-proxy`) relaying to one server
 * (`"127.0.0.1:PORT"` with server options such as `send-proxy` or `send-proxy-v2`).
 */
export function haproxyTcpConfig(binds: string[], server: string): string {
  return [
    "global",
    "  nbthread 1",
    "defaults",
    "  mode tcp",
    "  timeout connect 5s",
    "  timeout client 30s",
    "  timeout server 30s",
    "frontend interop",
    ...binds.map((bind) => `  bind ${bind}`),
    "  default_backend interop",
    "backend interop",
    `  server s ${server}`,
    "",
  ].join("\n");
}

/** A certificate and its key, as PEM text and as files. */
export interface Certificate {
  cert: string;
  key: string;
  certFile: string;
  keyFile: string;
}

/**
 * A self-signed certificate for `commonName` (P-256 key, valid one day) made by `openssl req`
 * into `dir`, files named after `tag`.
 */
export async function selfSigned(
  openssl: string,
  dir: string,
  tag: string,
  commonName: string,
): Promise<Certificate> {
  const certFile = `${dir}/${tag}.crt`;
  const keyFile = `${dir}/${tag}.key`;
  const result = await runBounded(openssl, [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-subj",
    `/CN=${commonName}`,
    "-keyout",
    keyFile,
    "-out",
    certFile,
    "-days",
    "1",
  ], 15_000);
  if (result.code !== 0) throw new Error(`openssl req failed: ${result.stderr}`);
  return {
    cert: await Deno.readTextFile(certFile),
    key: await Deno.readTextFile(keyFile),
    certFile,
    keyFile,
  };
}

/**
 * `openssl s_client -quiet` to `port` on 127.0.0.1, with `serverName` as its SNI (`null`: none,
 * `-noservername`): writes `input` to its stdin, then waits (bounded) for it to exit, which it
 * does when the server closes the connection, or on a failed handshake. Its stdout holds what
 * the server sent; its stderr the verification of the server's certificate (`depth=0 CN = ...`).
 */
export async function tlsClient(
  openssl: string,
  port: number,
  serverName: string | null,
  input: string,
  timeoutMs = 10_000,
): Promise<CommandResult> {
  const child = new Deno.Command(openssl, {
    args: [
      "s_client",
      "-connect",
      `127.0.0.1:${port}`,
      ...(serverName === null ? ["-noservername"] : ["-servername", serverName]),
      "-quiet",
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  try {
    const writer = child.stdin.getWriter();
    // -quiet implies -ign_eof: the end of stdin does not end the session, the server does. A
    // client the proxy closed early may be gone before it reads: a broken pipe then.
    await writer.write(new TextEncoder().encode(input)).catch(() => {});
    await writer.close().catch(() => {});
    const output = await within(
      child.output(),
      timeoutMs,
      `openssl s_client -servername ${serverName}`,
    );
    const decoder = new TextDecoder();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  } finally {
    await stopChild(child);
  }
}

/**
 * A real TLS ClientHello for `serverName`: `openssl s_client` connects to a plain listener here,
 * whose first TLS record (read until whole, bounded) is returned; the client is then killed.
 */
export async function captureClientHello(openssl: string, serverName: string): Promise<Uint8Array> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const child = new Deno.Command(openssl, {
    args: [
      "s_client",
      "-connect",
      `127.0.0.1:${listener.addr.port}`,
      "-servername",
      serverName,
      "-quiet",
    ],
    stdin: "piped",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const conn = await within(listener.accept(), 10_000, "openssl s_client to connect");
    try {
      return await within(readRecord(conn), 10_000, "the ClientHello record");
    } finally {
      conn.close();
    }
  } finally {
    await stopChild(child);
  }
}

/** One TLS record: the 5-byte header, then as many bytes as its length field says. */
async function readRecord(conn: Deno.Conn): Promise<Uint8Array> {
  let bytes = new Uint8Array(0);
  const buffer = new Uint8Array(16 * 1024);
  for (;;) {
    if (bytes.length >= 5) {
      const total = 5 + ((bytes[3] << 8) | bytes[4]);
      if (bytes.length >= total) return bytes.slice(0, total);
    }
    const n = await conn.read(buffer);
    if (n === null) throw new Error(`the client closed after ${bytes.length} bytes`);
    const grown = new Uint8Array(bytes.length + n);
    grown.set(bytes);
    grown.set(buffer.subarray(0, n), bytes.length);
    bytes = grown;
  }
}
