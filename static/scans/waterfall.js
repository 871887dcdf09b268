// The waterfall: each fetch a bar from its start to its end on one shared time axis.
// The SVG's user units are milliseconds across and rows down, so a growing axis only
// changes the viewBox: a bar, once drawn, is never touched again.

import { exactBytes, exactMs, formatBytes } from "./format.js";
import { isFailed } from "./table.js";

const SVG = "http://www.w3.org/2000/svg";
const BAR_HEIGHT = 0.7;
const TICKS = 5;

function svg(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

function niceStep(roughMs) {
  const power = 10 ** Math.floor(Math.log10(roughMs));
  const step = [1, 2, 5, 10].find((m) => m * power >= roughMs);
  return step * power;
}

function tickLabel(t, span) {
  return span >= 2000 ? `${(t / 1000).toFixed(t % 1000 ? 1 : 0)} s` : `${t} ms`;
}

function tooltip(result) {
  const status = result.error
    ? `${result.error}: ${result.error_message}`
    : `HTTP ${result.http_status}`;
  const size =
    result.size === null ? "" : ` · ${formatBytes(result.size)} (${exactBytes(result.size)})`;
  return [
    `#${result.position + 1} ${result.url}`,
    `starts at ${exactMs(result.start_ms)} · first byte after ${exactMs(result.ttfb_ms)}` +
      ` · done after ${exactMs(result.elapsed_ms)}`,
    `${status}${size}`,
  ].join("\n");
}

export class Waterfall {
  constructor(root, axis, rowCount) {
    this.root = root;
    this.axis = axis;
    this.rowCount = Math.max(rowCount, 1);
    this.layer = (name) => root.querySelector(`[data-layer="${name}"]`);
    this.bars = new Map();
    this.queued = new Map();
    this.inFlight = new Map();
    this.endMs = 0;
    this.span = 0;
    root.style.height = `${Math.min(600, Math.max(48, this.rowCount * 12))}px`;
  }

  add(result) {
    this.queued.set(result.position, result);
  }

  // A fetch under way: a bar from its start that grows with the clock until its result
  // replaces it.
  started(position, startMs) {
    if (this.bars.has(position) || this.queued.has(position) || this.inFlight.has(position)) return;
    const y = position + (1 - BAR_HEIGHT) / 2;
    const bar = svg("rect", { class: "running", x: startMs, y, width: 0, height: BAR_HEIGHT });
    bar.dataset.position = String(position);
    this.layer("bars").append(bar);
    this.inFlight.set(position, { bar, startMs });
  }

  growInFlight(nowMs) {
    for (const [position, { bar, startMs }] of this.inFlight) {
      if (nowMs === null) {
        bar.remove();
        this.inFlight.delete(position);
      } else {
        bar.setAttribute("width", String(Math.max(0, nowMs - startMs)));
      }
    }
  }

  // nowMs: how long the scan has run, while it runs; null once it has ended.
  draw(nowMs, wallMs) {
    for (const result of this.queued.values()) this.drawBar(result);
    this.queued.clear();
    this.growInFlight(nowMs);
    const span = Math.max(this.endMs, nowMs ?? 0, wallMs ?? 0, 1);
    this.root.setAttribute("viewBox", `0 0 ${span} ${this.rowCount}`);
    if (span !== this.span) this.drawAxis(span);
    this.span = span;
    this.drawNow(nowMs);
  }

  drawBar(result) {
    this.bars.get(result.position)?.remove();
    this.bars.delete(result.position);
    this.inFlight.get(result.position)?.bar.remove();
    this.inFlight.delete(result.position);
    const { start_ms: start, elapsed_ms: elapsed } = result;
    if (start === null || elapsed === null) return;
    const wait = Math.min(result.ttfb_ms ?? elapsed, elapsed);
    const y = result.position + (1 - BAR_HEIGHT) / 2;
    const bar = svg("g", { class: isFailed(result) ? "fetch failed" : "fetch" });
    bar.dataset.position = String(result.position);
    const title = svg("title", {});
    title.textContent = tooltip(result);
    bar.append(title, svg("rect", { class: "wait", x: start, y, width: wait, height: BAR_HEIGHT }));
    if (elapsed > wait) {
      const body = { class: "body", x: start + wait, y, width: elapsed - wait, height: BAR_HEIGHT };
      bar.append(svg("rect", body));
    }
    if (result.ttfb_ms !== null) {
      const x = start + result.ttfb_ms;
      bar.append(svg("line", { class: "ttfb", x1: x, x2: x, y1: y, y2: y + BAR_HEIGHT }));
    }
    this.layer("bars").append(bar);
    this.bars.set(result.position, bar);
    this.endMs = Math.max(this.endMs, start + elapsed);
  }

  drawAxis(span) {
    // Whole milliseconds: a fifth of a 1 ms axis would add up to 0.6000000000000001.
    const step = niceStep(Math.max(1, span / TICKS));
    const lines = [];
    const labels = [];
    for (let t = 0; t <= span; t += step) {
      lines.push(svg("line", { class: "grid", x1: t, x2: t, y1: 0, y2: this.rowCount }));
      const label = document.createElement("span");
      label.style.left = `${(100 * t) / span}%`;
      // Centred under its line, a label near the right edge would stick out: it ends there.
      if (t / span > 0.9 && t > 0) label.className = "end";
      label.textContent = tickLabel(t, span);
      labels.push(label);
    }
    this.layer("grid").replaceChildren(...lines);
    this.axis.replaceChildren(...labels);
  }

  drawNow(nowMs) {
    const layer = this.layer("now");
    if (nowMs === null) {
      layer.replaceChildren();
      return;
    }
    const line = { class: "now", x1: nowMs, x2: nowMs, y1: 0, y2: this.rowCount };
    layer.replaceChildren(svg("line", line));
  }
}
