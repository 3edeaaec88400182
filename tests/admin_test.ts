/**
 * The admin endpoint's guards, driven over real loopback sockets with hand-written HTTP/1.1, so
 * that Host, Origin, Content-Length and Transfer-Encoding are exactly what a hostile browser page
 * or script would send (fetch() would rewrite some of them).
 */

import assert from "node:assert/strict";
import { type AdminRefusal, serveAdmin } from "../proxy/admin.ts";
import type { HttpLimits, HttpRefusal } from "../proxy/http.ts";
import type { ProxyStats } from "../proxy/types.ts";
import { RawHttp, type Reply } from "./_raw_http.ts";

const STATS: ProxyStats = {
  connectionsOpen: 1,
  connectionsTotal: 2,
  connectionsRejected: 0,
  connectionsRefused: {},
  bytesIn: 3,
  bytesOut: 4,
  splicedConnections: 1,
  copiedConnections: 0,
  connectFailures: 0,
  acceptErrors: {},
  localErrors: {},
  internalErrors: 0,
  reloads: 0,
  engines: [],
  backends: {},
};

interface Admin {
  port: number;
  reloads: number;
  statsCalls: number;
  logged: string[];
  refused: Readonly<Record<AdminRefusal, number>>;
  refusedByServer: Readonly<Record<HttpRefusal, number>>;
}

/** Runs `body` against a fresh admin endpoint on 127.0.0.1 (any free port), then stops it. */
async function withAdmin(
  options: { token?: string; limits?: Partial<HttpLimits> },
  body: (admin: Admin) => Promise<void>,
): Promise<void> {
  const stop = new AbortController();
  const calls = { reloads: 0, statsCalls: 0 };
  const logged: string[] = [];
  const server = serveAdmin(
    { hostname: "127.0.0.1", port: 0 },
    {
      stats: () => {
        calls.statsCalls++;
        return STATS;
      },
      reload: () => {
        calls.reloads++;
        return Promise.resolve(null);
      },
    },
    stop.signal,
    { ...options, log: (line) => logged.push(line) },
  );
  // The handlers count into `calls`, which is the same object.
  const admin: Admin = Object.assign(calls, {
    port: server.addr.port,
    logged,
    refused: server.refused,
    refusedByServer: server.refusedByServer,
  });
  try {
    await body(admin);
  } finally {
    stop.abort();
    await server.finished;
  }
}

/** Sends one request on a new connection and returns the response. */
async function request(port: number, text: string): Promise<Reply> {
  const http = await RawHttp.open(port);
  try {
    await http.send(text);
    return await http.reply(text.startsWith("HEAD "));
  } finally {
    http.close();
  }
}

/** A request's text: `headers` as given (so Host may be anything or absent), then `body`. */
function http11(
  method: string,
  path: string,
  headers: Record<string, string>,
  body = "",
): string {
  const lines = [`${method} ${path} HTTP/1.1`];
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  if (body && !("Content-Length" in headers) && !("Transfer-Encoding" in headers)) {
    lines.push(`Content-Length: ${new TextEncoder().encode(body).length}`);
  }
  return lines.join("\r\n") + "\r\n\r\n" + body;
}

Deno.test("serveAdmin: a Host that is a name other than the admin's gets 421, before any handler", async () => {
  await withAdmin({}, async (admin) => {
    for (
      const host of [
        "evil.example",
        `evil.example:${admin.port}`,
        `rebind.127.0.0.1.nip.io:${admin.port}`,
      ]
    ) {
      for (const [method, path] of [["GET", "/status"], ["GET", "/metrics"], ["POST", "/reload"]]) {
        const reply = await request(admin.port, http11(method, path, { Host: host }));
        assert.equal(reply.status, 421, `${method} ${path} with Host ${host}`);
        assert.match(reply.body, /^[A-Z][^\n]*\n$/, "one capitalised line");
      }
    }
    assert.equal(admin.reloads, 0);
    assert.equal(admin.statsCalls, 0);
  });
});

Deno.test("serveAdmin: IP literals, localhost (any case) and a missing Host are served, on the admin port only", async () => {
  await withAdmin({}, async (admin) => {
    // The same names on another port are not this endpoint.
    const otherPort = admin.port === 65535 ? 65534 : admin.port + 1;
    for (const host of [`127.0.0.1:${otherPort}`, `localhost:${otherPort}`, "localhost"]) {
      const reply = await request(admin.port, http11("GET", "/status", { Host: host }));
      assert.equal(reply.status, 421, `Host ${host}`);
    }
    const hosts = [
      `127.0.0.1:${admin.port}`,
      `localhost:${admin.port}`,
      `LocalHost:${admin.port}`,
      `[::1]:${admin.port}`,
      `10.1.2.3:${admin.port}`,
    ];
    for (const host of hosts) {
      const reply = await request(admin.port, http11("GET", "/status", { Host: host }));
      assert.equal(reply.status, 200, `Host ${host}`);
      assert.deepEqual(JSON.parse(reply.body), STATS);
    }
    const metrics = await request(
      admin.port,
      http11("GET", "/metrics", { Host: `localhost:${admin.port}` }),
    );
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /^splice_bytes_in_total 3$/m);
    const old = await request(admin.port, "GET /status HTTP/1.0\r\n\r\n");
    assert.equal(old.status, 200);
    const reload = await request(
      admin.port,
      http11("POST", "/reload", { Host: `127.0.0.1:${admin.port}` }),
    );
    assert.equal(reload.status, 200);
    assert.deepEqual(JSON.parse(reload.body), { reloaded: true });
    assert.equal(admin.reloads, 1);
  });
});

Deno.test("serveAdmin: a POST with a foreign or null Origin gets 403 and does not reload", async () => {
  await withAdmin({}, async (admin) => {
    const host = `127.0.0.1:${admin.port}`;
    for (
      const origin of [
        "http://evil.example",
        "null",
        `http://localhost:${admin.port}`, // same site, another origin than the Host
        `https://${host}`,
        `http://127.0.0.1:${admin.port + 1}`,
      ]
    ) {
      const reply = await request(
        admin.port,
        http11(
          "POST",
          "/reload",
          { Host: host, Origin: origin, "Content-Type": "text/plain" },
          "x",
        ),
      );
      assert.equal(reply.status, 403, `Origin ${origin}`);
    }
    assert.equal(admin.reloads, 0);
  });
});

Deno.test("serveAdmin: a form or text/plain POST marked Sec-Fetch-Site cross-site or same-site gets 403", async () => {
  await withAdmin({}, async (admin) => {
    const host = `localhost:${admin.port}`;
    for (const site of ["cross-site", "same-site"]) {
      const form = await request(
        admin.port,
        http11("POST", "/reload", {
          Host: host,
          "Sec-Fetch-Site": site,
          "Content-Type": "application/x-www-form-urlencoded",
        }, "a=b"),
      );
      assert.equal(form.status, 403, `form, Sec-Fetch-Site ${site}`);
      const text = await request(
        admin.port,
        http11("POST", "/reload", {
          Host: host,
          "Sec-Fetch-Site": site,
          "Content-Type": "text/plain",
        }, "hi"),
      );
      assert.equal(text.status, 403, `text/plain, Sec-Fetch-Site ${site}`);
    }
    assert.equal(admin.reloads, 0);
  });
});

Deno.test("serveAdmin: a same-origin POST, and one from a script without Origin, reload", async () => {
  await withAdmin({}, async (admin) => {
    for (const host of [`127.0.0.1:${admin.port}`, `localhost:${admin.port}`]) {
      const reply = await request(
        admin.port,
        http11("POST", "/reload", {
          Host: host,
          Origin: `http://${host}`,
          "Sec-Fetch-Site": "same-origin",
        }),
      );
      assert.equal(reply.status, 200, `Origin http://${host}`);
    }
    // The Origin is compared with this request's Host: both loopback, but not the same origin.
    const other = await request(
      admin.port,
      http11("POST", "/reload", {
        Host: `127.0.0.1:${admin.port}`,
        Origin: `http://localhost:${admin.port}`,
      }),
    );
    assert.equal(other.status, 403);
    const typed = await request(
      admin.port,
      http11("POST", "/reload", { Host: `127.0.0.1:${admin.port}`, "Sec-Fetch-Site": "none" }),
    );
    assert.equal(typed.status, 200);
    assert.equal(admin.reloads, 3);
  });
});

Deno.test("serveAdmin: with a token, POST /reload needs the bearer token; reads stay open", async () => {
  await withAdmin({ token: "s3cret-token" }, async (admin) => {
    const host = `127.0.0.1:${admin.port}`;
    const refusedWith: Record<string, string>[] = [
      {},
      { Authorization: "Bearer wrong-token!" }, // same length
      { Authorization: "Bearer s3cret" }, // a prefix
      { Authorization: "Bearer s3cret-token-and-more" },
      { Authorization: "Bearer " },
      { Authorization: "Basic czNjcmV0LXRva2Vu" },
    ];
    for (const headers of refusedWith) {
      const reply = await request(
        admin.port,
        http11("POST", "/reload", { Host: host, ...headers }),
      );
      assert.equal(reply.status, 401, JSON.stringify(headers));
      assert.match(reply.headers.get("www-authenticate") ?? "", /^Bearer\b/);
    }
    assert.equal(admin.reloads, 0);
    for (const scheme of ["Bearer", "bearer"]) {
      const ok = await request(
        admin.port,
        http11("POST", "/reload", { Host: host, Authorization: `${scheme} s3cret-token` }),
      );
      assert.equal(ok.status, 200);
    }
    assert.equal(admin.reloads, 2);
    // The token does not excuse a cross-site request.
    const crossSite = await request(
      admin.port,
      http11("POST", "/reload", {
        Host: host,
        Authorization: "Bearer s3cret-token",
        Origin: "http://evil.example",
      }),
    );
    assert.equal(crossSite.status, 403);
    assert.equal(admin.reloads, 2);
    assert.equal((await request(admin.port, http11("GET", "/status", { Host: host }))).status, 200);
    assert.equal(
      (await request(admin.port, http11("GET", "/metrics", { Host: host }))).status,
      200,
    );
  });
});

Deno.test("serveAdmin: SPLICE_ADMIN_TOKEN guards POST /reload and takes precedence over the config's", async () => {
  Deno.env.set("SPLICE_ADMIN_TOKEN", "from-env");
  try {
    for (const configured of [undefined, "from-config"]) {
      await withAdmin({ token: configured }, async (admin) => {
        const post = (token: string) =>
          request(
            admin.port,
            http11("POST", "/reload", {
              Host: `127.0.0.1:${admin.port}`,
              Authorization: `Bearer ${token}`,
            }),
          );
        assert.equal((await post("from-config")).status, 401);
        assert.equal((await post("from-env")).status, 200);
        assert.equal(admin.reloads, 1);
      });
    }
  } finally {
    Deno.env.delete("SPLICE_ADMIN_TOKEN");
  }
});

Deno.test("serveAdmin: a 10 MB Content-Length gets 413 from the headers alone, without a reload", async () => {
  await withAdmin({}, async (admin) => {
    const http = await RawHttp.open(admin.port);
    try {
      await http.send(
        `POST /reload HTTP/1.1\r\nHost: 127.0.0.1:${admin.port}\r\n` +
          `Content-Type: text/plain\r\nContent-Length: ${10 * 1024 * 1024}\r\n\r\n`,
      );
      const started = Date.now();
      const reply = await http.reply();
      assert.equal(reply.status, 413);
      assert.ok(Date.now() - started < 2_000, "413 without waiting for the body");
    } finally {
      http.close();
    }
    assert.equal(admin.reloads, 0);
  });
});

Deno.test("serveAdmin: a chunked body past the limit gets 413 before it ends; a small one is read", async () => {
  await withAdmin({}, async (admin) => {
    const host = `127.0.0.1:${admin.port}`;
    const http = await RawHttp.open(admin.port);
    try {
      // 12 KiB in chunks and no last chunk: the answer must not wait for the end of the body.
      const chunk = "1000\r\n" + "a".repeat(0x1000) + "\r\n";
      await http.send(
        `POST /reload HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\n\r\n` +
          chunk.repeat(3),
      );
      assert.equal((await http.reply()).status, 413);
    } finally {
      http.close();
    }
    assert.equal(admin.reloads, 0);

    // Small bodies are read and ignored, so the connection stays usable for the next request.
    const kept = await RawHttp.open(admin.port);
    try {
      await kept.send(
        `POST /reload HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\n\r\n` +
          "5\r\nhello\r\n0\r\n\r\n",
      );
      assert.equal((await kept.reply()).status, 200);
      await kept.send(http11("POST", "/reload", { Host: host }, "x".repeat(1000)));
      assert.equal((await kept.reply()).status, 200);
      await kept.send(http11("GET", "/status", { Host: host }));
      assert.equal((await kept.reply()).status, 200);
    } finally {
      kept.close();
    }
    assert.equal(admin.reloads, 2);
  });
});

Deno.test("serveAdmin: a wrong method on a known path gets 405 with Allow; an unknown path 404", async () => {
  await withAdmin({}, async (admin) => {
    const host = `127.0.0.1:${admin.port}`;
    const get = await request(admin.port, http11("GET", "/reload", { Host: host }));
    assert.equal(get.status, 405);
    assert.equal(get.headers.get("allow"), "POST");
    const post = await request(admin.port, http11("POST", "/status", { Host: host }));
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    // A CORS preflight is refused too, so a browser never sends the real request.
    const preflight = await request(
      admin.port,
      http11("OPTIONS", "/reload", {
        Host: host,
        Origin: "http://evil.example",
        "Access-Control-Request-Method": "POST",
      }),
    );
    assert.equal(preflight.status, 405);
    assert.equal(preflight.headers.get("access-control-allow-origin"), null);
    const head = await request(admin.port, http11("HEAD", "/metrics", { Host: host }));
    assert.equal(head.status, 200);
    assert.equal((await request(admin.port, http11("GET", "/nope", { Host: host }))).status, 404);
    assert.equal(admin.reloads, 0);
  });
});

Deno.test("serveAdmin: refusals are counted on /metrics by reason and logged at most once a second each", async () => {
  await withAdmin({ token: "t0ken" }, async (admin) => {
    const host = `127.0.0.1:${admin.port}`;
    for (let i = 0; i < 5; i++) {
      await request(admin.port, http11("GET", "/status", { Host: "evil.example" }));
    }
    await request(admin.port, http11("POST", "/reload", { Host: host, Origin: "null" }));
    await request(admin.port, http11("POST", "/reload", { Host: host }));
    await request(admin.port, http11("POST", "/reload", { Host: host, "Content-Length": "99999" }));
    await request(admin.port, http11("DELETE", "/status", { Host: host }));
    await request(admin.port, http11("GET", "/nope", { Host: host }));

    const metrics = await request(admin.port, http11("GET", "/metrics", { Host: host }));
    assert.equal(metrics.status, 200);
    const name = "splice_admin_requests_refused_total";
    assert.match(metrics.body, new RegExp(`^# HELP ${name} .+$`, "m"));
    assert.match(metrics.body, new RegExp(`^# TYPE ${name} counter$`, "m"));
    const expected = { host: 5, "cross-site": 1, token: 1, "too-large": 1, method: 1 };
    for (const [reason, count] of Object.entries(expected)) {
      assert.match(metrics.body, new RegExp(`^${name}\\{reason="${reason}"\\} ${count}$`, "m"));
    }
    assert.deepEqual(admin.refused, expected);
    // The metrics that were there before are unchanged.
    assert.match(metrics.body, /^splice_connections_open 1$/m);
    assert.match(metrics.body, /^splice_connections_by_mode_total\{mode="splice"\} 1$/m);

    const hostLines = admin.logged.filter((line) => /\bhost\b/i.test(line) && /evil/.test(line));
    assert.ok(hostLines.length >= 1 && hostLines.length < 5, admin.logged.join("\n"));
    for (const reason of ["cross-site", "token", "too-large", "method"]) {
      assert.ok(admin.logged.some((line) => line.includes(reason)), `a line for ${reason}`);
    }
    for (const line of admin.logged) assert.match(line, /^[A-Z]/);
  });
});

Deno.test("serveAdmin: slow, oversized and malformed requests are refused by the server, counted on /metrics and logged", async () => {
  await withAdmin({ limits: { headTimeoutMs: 300 } }, async (admin) => {
    const host = `127.0.0.1:${admin.port}`;
    // Half a head, then nothing: answered 408 and closed at the deadline, however long the
    // client would wait.
    const slow = await RawHttp.open(admin.port);
    try {
      const started = Date.now();
      await slow.send(`GET /metrics HTTP/1.1\r\nHost: ${host}\r\n`);
      assert.equal((await slow.reply()).status, 408);
      await slow.end();
      assert.ok(Date.now() - started < 2_000, "closed at the head deadline");
    } finally {
      slow.close();
    }
    const big = await request(
      admin.port,
      http11("GET", "/status", { Host: host, "X-Big": "a".repeat(20 * 1024) }),
    );
    assert.equal(big.status, 431);
    const malformed = await request(admin.port, `GET /status HTTP/1.1\r\nHost : ${host}\r\n\r\n`);
    assert.equal(malformed.status, 400);
    const ambiguous = await request(
      admin.port,
      http11("POST", "/reload", {
        Host: host,
        "Content-Length": "5",
        "Transfer-Encoding": "chunked",
      }, "0\r\n\r\n"),
    );
    assert.equal(ambiguous.status, 400);
    assert.equal(admin.reloads, 0);
    assert.equal(admin.statsCalls, 0, "no refused request reached a handler");

    const metrics = await request(admin.port, http11("GET", "/metrics", { Host: host }));
    assert.equal(metrics.status, 200);
    const name = "splice_admin_requests_refused_total";
    const expected = {
      host: 0,
      "cross-site": 0,
      token: 0,
      "too-large": 0,
      method: 0,
      slow: 1,
      "head-too-large": 1,
      malformed: 2,
      unsupported: 0,
      "too-many": 0,
    };
    for (const [reason, count] of Object.entries(expected)) {
      assert.match(metrics.body, new RegExp(`^${name}\\{reason="${reason}"\\} ${count}$`, "m"));
    }
    assert.deepEqual(admin.refusedByServer, {
      slow: 1,
      "head-too-large": 1,
      malformed: 2,
      unsupported: 0,
      "too-many": 0,
    });
    for (const reason of ["slow, 408", "head-too-large, 431", "malformed, 400"]) {
      assert.ok(
        admin.logged.some((line) =>
          line.startsWith("Admin endpoint: refused") && line.includes(reason)
        ),
        `a line for ${reason}:\n${admin.logged.join("\n")}`,
      );
    }
  });
});

Deno.test("serveAdmin: past the connection limit, 503 at once and counted, while held connections still scrape", async () => {
  await withAdmin({ limits: { maxConnections: 2 } }, async (admin) => {
    const host = `127.0.0.1:${admin.port}`;
    const held = [await RawHttp.open(admin.port), await RawHttp.open(admin.port)];
    try {
      for (const http of held) {
        await http.send(http11("GET", "/status", { Host: host }));
        assert.equal((await http.reply()).status, 200);
      }
      const extra = await RawHttp.open(admin.port);
      try {
        const reply = await extra.reply();
        assert.equal(reply.status, 503);
        assert.equal(reply.headers.get("connection"), "close");
        await extra.end();
      } finally {
        extra.close();
      }
      await held[0].send(http11("GET", "/metrics", { Host: host }));
      const metrics = await held[0].reply();
      assert.equal(metrics.status, 200);
      assert.match(metrics.body, /^splice_admin_requests_refused_total\{reason="too-many"\} 1$/m);
      assert.equal(admin.refusedByServer["too-many"], 1);
    } finally {
      for (const http of held) http.close();
    }
  });
});
