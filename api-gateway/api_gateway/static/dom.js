// Small helpers shared by the views: building elements (text always goes in as text, never
// as markup), talking to the gateway, formatting, and the job states.

/** An element with attributes and children; strings become text nodes. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if ((key === "href" || key === "src") && !safeUrl(String(value))) {
      continue; // only our own paths: never javascript: or another origin
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function safeUrl(url) {
  return url.startsWith("/") && !url.startsWith("//") || url.startsWith("#");
}

export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** A file path that may wrap after each "/" (and only there, unless a part is too long). */
export function breakable(path) {
  const parts = String(path ?? "").split("/");
  return parts.flatMap((part, i) => (i < parts.length - 1 ? [`${part}/`, h("wbr")] : [part]));
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export const $ = (id) => document.getElementById(id);

/** Whether the page went from one view to another (so Back can go back in history). */
export const nav = { moved: false };

/** Show a message in a notice paragraph, or hide it (text null). */
export function notice(el, text, kind = "error") {
  el.hidden = !text;
  el.textContent = text ?? "";
  el.className = `notice ${kind}`;
}

// ---- HTTP ----

export class ApiError extends Error {
  constructor(status, problem) {
    super(problemText(status, problem));
    this.status = status;
    this.problem = problem;
  }
}

/** The human part of a problem+json answer (RFC 9457): its detail, else its title. */
export function problemText(status, problem) {
  if (problem && typeof problem === "object") {
    const text = problem.detail || problem.title || problem.error;
    if (text) return String(text);
  }
  return status ? `the gateway answered ${status}` : "the gateway did not answer";
}

/** JSON from the gateway, or an ApiError carrying the problem it answered. */
export async function api(path, options = {}) {
  let res;
  try {
    res = await fetch(path, { ...options, headers: { Accept: "application/json", ...options.headers } });
  } catch {
    throw new ApiError(0, null);
  }
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json().catch(() => null) : null;
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

/** Run `work` over `items`, at most `limit` at a time. */
export async function pool(items, limit, work) {
  const queue = [...items];
  const runners = Array.from({ length: Math.min(limit, queue.length) }, async () => {
    while (queue.length) await work(queue.shift());
  });
  await Promise.all(runners);
}

// ---- job states ----

export const STATES = [
  "accepted", "validating", "validated", "describing", "described", "uploading",
  "archived", "rejected", "failed",
];
export const FINAL = new Set(["archived", "rejected", "failed", "deleted"]);
const RANK = Object.fromEntries(STATES.map((s, i) => [s, i]));
RANK.archived = RANK.rejected = RANK.failed = 20;
RANK.deleted = 30;

/**
 * Whether a change (state at time) is news for a job last seen in `current`: later in the
 * lifecycle, or later in time (a retry moves a failed job back). Keeps a stale status read
 * from undoing a live change that overtook it.
 */
export function isNews(current, state, at) {
  if (!current || !current.state) return true;
  const rank = RANK[state] ?? -1;
  const was = RANK[current.state] ?? -1;
  if (rank > was) return true;
  const t = Date.parse(at);
  const before = Date.parse(current.at);
  return Number.isFinite(t) && Number.isFinite(before) && t > before && rank !== was;
}

export function badge(state) {
  const known = /^[a-z-]+$/.test(state ?? "") ? state : "unknown";
  return h("span", { class: `badge state-${known}`, text: state ?? "…" });
}

/** The reasons or error of a job's details, as short lines. */
export function troubles(details = {}) {
  const lines = [];
  for (const r of details.reasons ?? []) {
    lines.push(r.message ? `${r.message}${r.code ? ` (${r.code})` : ""}` : String(r.code ?? r));
  }
  if (details.error) lines.push(String(details.error));
  if (details.duplicate_of) lines.push(`duplicate of ${details.duplicate_of}`);
  return lines;
}

// ---- formatting ----

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i += 1;
  } while (v >= 1024 && i < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function fmtMs(ms) {
  if (!Number.isFinite(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export function fmtTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

/** DICOM DA (YYYYMMDD) or ISO date as YYYY-MM-DD. */
export function fmtDate(da) {
  const m = /^(\d{4})-?(\d{2})-?(\d{2})/.exec(String(da ?? ""));
  return m ? `${m[1]}-${m[2]}-${m[3]}` : String(da ?? "");
}

/** A DICOM person name (Family^Given^Middle^Prefix^Suffix) as "Family, Given Middle". */
export function fmtName(pn) {
  if (pn && typeof pn === "object") pn = pn.Alphabetic ?? pn.Ideographic ?? "";
  const [family = "", given = "", middle = "", prefix = "", suffix = ""] = String(pn ?? "").split("=")[0].split("^");
  const rest = [prefix, given, middle, suffix].filter(Boolean).join(" ");
  return family && rest ? `${family}, ${rest}` : family || rest;
}
