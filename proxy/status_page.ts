/**
 * The admin endpoint's status page (`GET /`), in the spirit of HAProxy's stats page: the
 * listeners, and each cluster's backends with their state, weight, health check, connections,
 * failures and bytes, refreshed every few seconds from `/status`. One self-contained document:
 * no external asset, so it works offline and its Content-Security-Policy allows nothing but
 * itself and `/status`. Values are put in as text, never as markup.
 *
 * @module
 */

/** How often the page reads `/status`, in ms. */
export const STATUS_REFRESH_MS = 2000;

/** The headers the page is served with. */
export const STATUS_PAGE_HEADERS: Record<string, string> = {
  "content-type": "text/html; charset=utf-8",
  "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; " +
    "style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "cache-control": "no-store",
};

/** The page. */
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>splice proxy status</title>
<style>
  body { font: 13px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
  table { border-collapse: collapse; min-width: 40em; }
  th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
  th { background: #eee; }
  td.text, th.text { text-align: left; }
  tr.down td { background: #fdd; }
  tr.drain td, tr.maint td { background: #ffe9b3; }
  tr.ejected td { background: #fec; }
  #summary span { margin-right: 1.5em; }
  #error { color: #a00; }
</style>
</head>
<body>
<h1>splice proxy</h1>
<div id="summary"></div>
<div id="error"></div>
<h2>Listeners</h2>
<table id="listeners"><thead><tr>
  <th class="text">address</th><th>port</th>
</tr></thead><tbody></tbody></table>
<h2>Backends</h2>
<table id="backends"><thead><tr>
  <th class="text">cluster</th><th class="text">backend</th><th class="text">state</th>
  <th>weight</th><th class="text">check</th><th>active</th><th>connections</th>
  <th>failures</th><th>bytes in</th><th>bytes out</th><th class="text">last check</th>
</tr></thead><tbody></tbody></table>
<script>
"use strict";
const REFRESH_MS = ${STATUS_REFRESH_MS};

function cell(row, field, value, text) {
  const td = document.createElement("td");
  td.dataset.field = field;
  if (text) td.className = "text";
  td.textContent = String(value);
  row.appendChild(td);
}

function render(status) {
  const summary = document.getElementById("summary");
  summary.replaceChildren();
  for (const [label, value] of [
    ["open", status.connectionsOpen],
    ["total", status.connectionsTotal],
    ["rejected", status.connectionsRejected],
    ["bytes in", status.bytesIn],
    ["bytes out", status.bytesOut],
    ["reloads", status.reloads],
  ]) {
    const span = document.createElement("span");
    span.dataset.field = label.replace(" ", "_");
    span.textContent = label + ": " + value;
    summary.appendChild(span);
  }
  const listeners = document.querySelector("#listeners tbody");
  listeners.replaceChildren();
  for (const listener of status.listeners ?? []) {
    const row = document.createElement("tr");
    row.dataset.key = listener.address;
    cell(row, "address", listener.address, true);
    cell(row, "port", listener.port);
    listeners.appendChild(row);
  }
  const backends = document.querySelector("#backends tbody");
  backends.replaceChildren();
  for (const [key, b] of Object.entries(status.backends ?? {})) {
    const row = document.createElement("tr");
    row.dataset.key = key;
    row.className = !b.up ? "down" : b.state !== "ready" ? b.state : b.ejected ? "ejected" : "";
    cell(row, "cluster", b.cluster, true);
    cell(row, "backend", b.backend, true);
    cell(row, "state", b.state, true);
    cell(row, "weight", b.weight);
    cell(row, "up", b.lastCheck === null ? "-" : (b.up ? "up" : "down"), true);
    cell(row, "active", b.active);
    cell(row, "connections", b.connections);
    cell(row, "failures", b.failures);
    cell(row, "bytesIn", b.bytesIn);
    cell(row, "bytesOut", b.bytesOut);
    cell(
      row,
      "lastCheck",
      b.lastCheck === null || b.lastCheck.lastCheckAt === 0
        ? "-"
        : new Date(b.lastCheck.lastCheckAt).toISOString() + " " + b.lastCheck.lastResult,
      true,
    );
    backends.appendChild(row);
  }
  document.body.dataset.rendered = String(Date.now());
}

async function refresh() {
  try {
    const response = await fetch("/status", { cache: "no-store" });
    if (!response.ok) throw new Error("/status answered " + response.status);
    render(await response.json());
    document.getElementById("error").textContent = "";
  } catch (error) {
    document.getElementById("error").textContent = "Cannot read /status: " + error.message;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
</script>
</body>
</html>
`;
