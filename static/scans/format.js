// How numbers read on the live page: the same words the server's templates use.

const UNITS = ["bytes", "KB", "MB", "GB"];
const NBSP = "\u00a0";

export function formatBytes(n) {
  if (n === null || n === undefined) return "";
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n}${NBSP}bytes` : `${value.toFixed(1)}${NBSP}${UNITS[unit]}`;
}

export function exactBytes(n) {
  return n === null || n === undefined ? "" : `${n.toLocaleString("en-US")} bytes`;
}

export function ms(value) {
  return value === null || value === undefined ? "" : `${Math.round(value)} ms`;
}

// The exact figure, as measured: one decimal, the precision the worker stores.
export function exactMs(value) {
  return value === null || value === undefined ? "–" : `${value.toFixed(1)} ms`;
}
