// The results table: rows rendered by the server, then kept up to date here.
// Only rows whose result changed are touched; sorting moves rows, it never rebuilds them.

import { exactBytes, formatBytes, ms } from "./format.js";

// A row a cancel ended before it was fetched: not a site that failed.
export function isCancelled(result) {
  return result.error === "cancelled";
}

export function isFailed(result) {
  if (isCancelled(result)) return false;
  return result.state === "error" || (result.http_status ?? 0) >= 400;
}

// The error classes people read, where the API's names read poorly: scans/models.py's
// ERROR_LABELS, which the page carries.
const ERROR_LABELS = JSON.parse(document.getElementById("error-labels")?.textContent ?? "{}");

export function errorLabel(error) {
  return ERROR_LABELS[error] ?? error.replaceAll("_", " ");
}

function statusText(result) {
  if (result.state === "pending") return "…";
  return result.error ? errorLabel(result.error) : String(result.http_status);
}

// Against the owner's previous scan of the same URL, from the row's data-prev-* attributes.
function changeText(result, previous) {
  if (result.state !== "ok" || previous.prevSize === undefined) return ["", ""];
  const parts = [];
  const sizeChange = result.size - Number(previous.prevSize);
  if (sizeChange !== 0) parts.push(`${sizeChange > 0 ? "+" : "−"}${formatBytes(Math.abs(sizeChange))}`);
  const timeChange = Math.round(result.elapsed_ms - Number(previous.prevMs));
  const sign = timeChange > 0 ? "+" : timeChange < 0 ? "−" : "±";
  parts.push(`${sign}${ms(Math.abs(timeChange))}`);
  const title = `last scan: ${exactBytes(Number(previous.prevSize))} in ${ms(Number(previous.prevMs))}`;
  return [parts.join(", "), title];
}

function detailText(result) {
  if (result.error) return result.error_message;
  // Where redirects ended; not the URL as sent, which may differ only in its encoding.
  if (result.redirects && result.final_url) return `→ ${result.final_url}`;
  return "";
}

// A row's key for each sortable column; null or undefined means "not known yet".
// Status: answers by HTTP status first, then failed fetches by error name.
const SORT_KEYS = {
  position: (result) => result.position,
  status: (result) => (result.state === "pending" ? null : (result.error ?? result.http_status)),
  size: (result) => result.size,
  ttfb_ms: (result) => result.ttfb_ms,
  elapsed_ms: (result) => result.elapsed_ms,
};

function compareKeys(a, b) {
  if (typeof a !== typeof b) return typeof a === "number" ? -1 : 1;
  if (a === b) return 0;
  return a < b ? -1 : 1;
}

const unknown = (key) => key === null || key === undefined;

// A row's mark, kept in its attribute (for CSS and a reload) and in the table's set of them.
function mark(tr, attribute, positions, on) {
  tr.toggleAttribute(attribute, on);
  const position = Number(tr.dataset.position);
  if (on) positions.add(position);
  else positions.delete(position);
}

export class ResultsTable {
  constructor(table) {
    this.table = table;
    this.tbody = table.tBodies[0];
    this.rows = new Map();
    this.cells = new Map();
    this.results = new Map();
    this.failed = new Set();
    this.cancelled = new Set();
    for (const tr of this.tbody.rows) {
      const position = Number(tr.dataset.position);
      this.rows.set(position, tr);
      if (tr.hasAttribute("data-failed")) this.failed.add(position);
      if (tr.hasAttribute("data-cancelled")) this.cancelled.add(position);
    }
    this.order = [...this.rows.keys()];
    this.sortKey = "position";
    this.descending = false;
    this.unsorted = false;
    table.tHead.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-sort]");
      if (button) this.sortBy(button.dataset.sort);
    });
  }

  get total() {
    return this.rows.size;
  }

  // Returns whether anything changed: a snapshot repeats rows a page already shows.
  update(result) {
    const known = this.results.get(result.position);
    if (known && known.state === result.state && known.finished_at === result.finished_at) {
      return false;
    }
    // A row ends once: a snapshot read before its result may arrive after it.
    if (known && known.state !== "pending" && result.state === "pending") return false;
    this.results.set(result.position, result);
    const tr = this.rows.get(result.position);
    if (!tr) return false;
    this.fill(tr, result);
    if (this.sortKey !== "position") this.unsorted = true;
    return true;
  }

  fill(tr, result) {
    const cell = this.cellsOf(tr);
    tr.className = `state-${result.state}`;
    mark(tr, "data-failed", this.failed, isFailed(result));
    mark(tr, "data-cancelled", this.cancelled, isCancelled(result));
    cell.status.textContent = statusText(result);
    cell.size.textContent = formatBytes(result.size);
    cell.size.title = exactBytes(result.size);
    cell.ttfb_ms.textContent = ms(result.ttfb_ms);
    cell.elapsed_ms.textContent = ms(result.elapsed_ms);
    cell.detail.textContent = detailText(result);
    [cell.change.textContent, cell.change.title] = changeText(result, tr.dataset);
  }

  cellsOf(tr) {
    const position = Number(tr.dataset.position);
    if (!this.cells.has(position)) {
      const cells = {};
      for (const td of tr.querySelectorAll("[data-field]")) cells[td.dataset.field] = td;
      this.cells.set(position, cells);
    }
    return this.cells.get(position);
  }

  sortBy(key) {
    this.descending = key === this.sortKey ? !this.descending : false;
    this.sortKey = key;
    for (const button of this.table.tHead.querySelectorAll("button[data-sort]")) {
      const th = button.closest("th");
      if (button.dataset.sort === key) {
        th.setAttribute("aria-sort", this.descending ? "descending" : "ascending");
      } else {
        th.removeAttribute("aria-sort");
      }
    }
    this.unsorted = true;
    this.sort();
  }

  // Rows whose key is not known yet stay last whichever way the column sorts.
  sort() {
    if (!this.unsorted) return;
    this.unsorted = false;
    const keyOf = SORT_KEYS[this.sortKey];
    const sign = this.descending ? -1 : 1;
    const keys = new Map();
    for (const position of this.rows.keys()) {
      const result = this.results.get(position) ?? { position, state: "pending" };
      keys.set(position, keyOf(result));
    }
    const order = [...this.rows.keys()].sort((a, b) => {
      const [ka, kb] = [keys.get(a), keys.get(b)];
      if (unknown(ka) || unknown(kb)) return unknown(ka) - unknown(kb) || a - b;
      return sign * compareKeys(ka, kb) || a - b;
    });
    if (order.every((position, i) => position === this.order[i])) return;
    this.order = order;
    const fragment = document.createDocumentFragment();
    for (const position of order) fragment.append(this.rows.get(position));
    this.tbody.append(fragment);
  }

  showErrorsOnly(on) {
    this.table.classList.toggle("errors-only", on);
  }
}
