// The live scan page: a snapshot on connect, then progress messages.
// Everything is built with createElement and textContent: nothing from a fetched
// site is ever parsed as HTML.

import { exactBytes, formatBytes, ms } from "./format.js";
import { ResultsTable } from "./table.js";
import { Waterfall } from "./waterfall.js";

const WATERFALL_EVERY_MS = 100;

const root = document.getElementById("scan");
const el = (name) => root.querySelector(`[data-scan="${name}"]`);
const table = new ResultsTable(el("table"));
const waterfall = new Waterfall(el("waterfall"), el("axis"), table.total);

let socket = null;
let lastSeq = -1;
let retries = 0;
let scan = { status: root.dataset.status, started: root.dataset.started || null, done: 0 };
let finished = ["done", "cancelled"].includes(scan.status);
let gone = false; // deleted, or no longer this visitor's
let frame = 0;
let waterfallDrawnAt = -Infinity;
let waterfallStale = true;

function elapsedMs() {
  if (scan.wall_ms !== null && scan.wall_ms !== undefined) return scan.wall_ms;
  if (!scan.started) return null;
  return Math.max(0, Date.now() - Date.parse(scan.started));
}

// Rows change as messages arrive; the sort order and the waterfall follow in the
// next animation frame, and the waterfall at most every WATERFALL_EVERY_MS.
function requestDraw() {
  if (!frame) frame = requestAnimationFrame(draw);
}

function draw(now) {
  frame = 0;
  table.sort();
  showCounts();
  if (!waterfallStale) return;
  if (now - waterfallDrawnAt < WATERFALL_EVERY_MS) {
    requestDraw();
    return;
  }
  waterfallDrawnAt = now;
  waterfallStale = false;
  waterfall.draw(finished ? null : elapsedMs(), scan.wall_ms);
}

function showCounts() {
  el("failed").textContent = String(table.failed.size);
  const errorsOnly = el("errors-only").checked;
  const shown = table.failed.size ? `showing ${table.failed.size} of ${table.total}` : "no errors";
  el("shown").textContent = errorsOnly ? shown : "";
}

function updateResults(results) {
  for (const result of results) {
    if (table.update(result)) waterfall.add(result);
  }
  waterfallStale = true;
  requestDraw();
}

function updateScan(next) {
  // Messages from several workers may arrive out of order: never count backwards.
  const done = Math.max(next.done, scan.done);
  scan = { ...next, done };
  showStatus(scan.status);
  // A cancel counts the rows it ended as done; the page counts what was fetched.
  const cancelled = table.cancelled.size;
  const fetched = done - cancelled;
  el("done").textContent = String(fetched);
  el("cancelled").textContent = ` · ${cancelled} cancelled`;
  el("cancelled").hidden = cancelled === 0;
  el("bar").style.width = `${scan.total ? (100 * fetched) / scan.total : 100}%`;
  root.querySelector(".progress").setAttribute("aria-valuenow", String(fetched));
  el("sum").textContent = ms(scan.sum_ms);
  el("bytes").textContent = formatBytes(scan.total_bytes);
  el("bytes").title = exactBytes(scan.total_bytes);
  finished = scan.status === "done" || scan.status === "cancelled";
  if (finished && el("cancel")) el("cancel").remove();
  if (finished) setConnection(""); // nothing more will come: no longer "live"
  tick();
}

function tick() {
  const elapsed = elapsedMs();
  el("elapsed").textContent = elapsed === null ? "–" : ms(elapsed);
  // Of one URL there is nothing to compare: its time and the scan's differ by overhead.
  if (finished && scan.wall_ms && scan.total > 1) {
    const ratio = scan.sum_ms / scan.wall_ms;
    el("speedup").textContent = `${ratio.toFixed(ratio < 1 ? 2 : 1)}×`;
  }
  waterfallStale = true;
  requestDraw();
}

// A scan's last message can be lost too, and no later one would show the gap:
// a running scan whose page hears nothing for a while asks the database.
const QUIET_MS = 5000;
let lastHeard = Date.now();

function askIfQuiet() {
  if (finished || !socket || socket.readyState !== WebSocket.OPEN) return;
  if (Date.now() - lastHeard < QUIET_MS) return;
  lastHeard = Date.now();
  socket.send(JSON.stringify({ type: "snapshot" }));
}

function handle(message) {
  lastHeard = Date.now();
  if (message.type === "progress" && message.seq > lastSeq + 1) {
    // A message was lost (the layer drops, never retries): the database has it.
    socket.send(JSON.stringify({ type: "snapshot" }));
  }
  // Two workers' messages may cross on the way: the scan's state comes from the newest,
  // so an older "running" arriving after "done" does not bring the scan back to life.
  const newest = message.seq >= lastSeq;
  lastSeq = Math.max(lastSeq, message.seq);
  updateResults(message.results);
  for (const [position, startMs] of message.fetching ?? []) waterfall.started(position, startMs);
  if (newest) updateScan(message.scan);
  root.dataset.seq = String(lastSeq);
  root.dataset.status = scan.status;
}

function showStatus(status) {
  el("status").textContent = status;
  el("status").className = `badge status-${status}`;
}

function setConnection(text) {
  el("connection").textContent = text;
}

// A socket refused before it opened: the scan may have been deleted (or its owner logged
// out). The page itself says which; a server that is down says nothing, and is tried again.
async function stopIfGone() {
  try {
    const response = await fetch(location.pathname, { method: "HEAD" });
    if (response.status !== 404) return;
  } catch {
    return;
  }
  gone = finished = true;
  showStatus("gone");
  el("cancel")?.remove();
  el("again").remove();
  setConnection("this scan is no longer available");
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}${root.dataset.socketPath}`);
  let opened = false;
  socket.addEventListener("open", () => {
    opened = true;
    retries = 0;
    setConnection("live");
  });
  socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
  socket.addEventListener("close", async () => {
    if (!opened && !finished) await stopIfGone();
    if (finished) {
      if (!gone) setConnection("");
      return;
    }
    retries += 1;
    const delay = Math.min(10000, 250 * 2 ** retries) * (0.5 + Math.random() / 2);
    setConnection("reconnecting…");
    setTimeout(connect, delay);
  });
}

el("errors-only").addEventListener("change", (event) => {
  table.showErrorsOnly(event.target.checked);
  showCounts();
});
table.showErrorsOnly(el("errors-only").checked);
setInterval(() => {
  if (!finished) tick();
}, 100);
setInterval(askIfQuiet, 1000);
showCounts();
connect();
