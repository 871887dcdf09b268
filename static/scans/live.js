// The live scan page: a snapshot on connect, then progress messages.
// Rows are filled with textContent only; nothing from a fetched site is parsed as HTML.

const root = document.getElementById("scan");
const el = (name) => root.querySelector(`[data-scan="${name}"]`);
const rows = new Map(
  [...el("rows").querySelectorAll("tr[data-position]")].map((tr) => [Number(tr.dataset.position), tr]),
);

let socket = null;
let lastSeq = -1;
let retries = 0;
let scan = { status: root.dataset.status, started: root.dataset.started || null, done: 0 };
let finished = false;

function formatBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["bytes", "KB", "MB", "GB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

const ms = (value) => (value === null || value === undefined ? "" : `${Math.round(value)} ms`);

function statusText(result) {
  if (result.state === "pending") return "…";
  return result.error ? result.error : String(result.http_status);
}

function detailText(result) {
  if (result.error) return result.error_message;
  if (result.final_url && result.final_url !== result.url) return `→ ${result.final_url}`;
  return "";
}

function updateRow(result) {
  const tr = rows.get(result.position);
  if (!tr) return;
  tr.className = `state-${result.state}${result.error ? " has-error" : ""}`;
  const cell = (field) => tr.querySelector(`[data-field="${field}"]`);
  cell("status").textContent = statusText(result);
  cell("size").textContent = formatBytes(result.size);
  cell("size").title = result.size === null ? "" : `${result.size} bytes`;
  cell("ttfb_ms").textContent = ms(result.ttfb_ms);
  cell("elapsed_ms").textContent = ms(result.elapsed_ms);
  cell("detail").textContent = detailText(result);
}

function elapsedMs() {
  if (scan.wall_ms !== null && scan.wall_ms !== undefined) return scan.wall_ms;
  if (!scan.started) return null;
  return Date.now() - Date.parse(scan.started);
}

function updateScan(next) {
  // Messages from several workers may arrive out of order: never count backwards.
  const done = Math.max(next.done, scan.done);
  scan = { ...next, done };
  el("status").textContent = scan.status;
  el("status").className = `badge status-${scan.status}`;
  el("done").textContent = String(done);
  el("bar").style.width = `${scan.total ? (100 * done) / scan.total : 100}%`;
  root.querySelector(".progress").setAttribute("aria-valuenow", String(done));
  el("sum").textContent = ms(scan.sum_ms);
  el("bytes").textContent = formatBytes(scan.total_bytes);
  el("bytes").title = `${scan.total_bytes} bytes`;
  finished = scan.status === "done" || scan.status === "cancelled";
  if (finished && el("cancel")) el("cancel").remove();
  tick();
}

function tick() {
  const elapsed = elapsedMs();
  el("elapsed").textContent = elapsed === null ? "–" : ms(elapsed);
  if (finished && scan.wall_ms) {
    el("speedup").textContent = `${(scan.sum_ms / scan.wall_ms).toFixed(1)}× faster than one after another`;
  }
}

function handle(message) {
  if (message.type === "progress" && message.seq > lastSeq + 1) {
    // A message was lost (the layer drops, never retries): the database has it.
    socket.send(JSON.stringify({ type: "snapshot" }));
  }
  lastSeq = Math.max(lastSeq, message.seq);
  message.results.forEach(updateRow);
  updateScan(message.scan);
  root.dataset.seq = String(lastSeq);
  root.dataset.status = scan.status;
}

function setConnection(text) {
  el("connection").textContent = text;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}${root.dataset.socketPath}`);
  socket.addEventListener("open", () => {
    retries = 0;
    setConnection("live");
  });
  socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
  socket.addEventListener("close", () => {
    if (finished) {
      setConnection("");
      return;
    }
    retries += 1;
    const delay = Math.min(10000, 250 * 2 ** retries) * (0.5 + Math.random() / 2);
    setConnection("reconnecting…");
    setTimeout(connect, delay);
  });
}

setInterval(() => {
  if (!finished) tick();
}, 100);
connect();
