// Small helpers shared by the views: building elements (text always goes in as text, never
// as markup), talking to the gateway (every request with the tab's credential, if any),
// formatting, and the job states.

import { authorization, mayNot, unauthorized } from "./session.js";

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
  return url.startsWith("/") && !url.startsWith("//") || url.startsWith("#") ||
    url.startsWith(`blob:${location.origin}/`); // made here, from a response of ours
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
  /** `action`, what was asked ("list the jobs"): a 403 says this credential may not do it. */
  constructor(status, problem, action = null) {
    super(status === 403 && action ? refusal(problem, action) : problemText(status, problem));
    this.status = status;
    this.problem = problem;
  }
}

/** A refusal as a notice says it: "This key may not list the jobs (…)." */
export function sentence(text) {
  const t = String(text);
  return `${t.charAt(0).toUpperCase()}${t.slice(1)}${/[.!?]$/.test(t) ? "" : "."}`;
}

/** "this key may not upload files (this needs the write scope)". */
export function refusal(problem, action) {
  const why = problem?.detail ? ` (${problem.detail})` : "";
  return `${mayNot(action)}${why}`;
}

/** The human part of a problem+json answer (RFC 9457): its detail, else its title. */
export function problemText(status, problem) {
  if (problem && typeof problem === "object") {
    const text = problem.detail || problem.title || problem.error;
    if (text) return String(text);
  }
  return status ? `the gateway answered ${status}` : "the gateway did not answer";
}

/**
 * fetch() to the gateway, the one way every request goes: with the tab's credential as
 * `Authorization: Bearer`, and a 401 answered with the sign-in view (session.js).
 */
export async function request(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...authorization(), ...options.headers } });
  if (res.status === 401) unauthorized();
  return res;
}

/** JSON from the gateway, or an ApiError carrying the problem it answered. `options.action`
 * says what the request does, for the words of a 403 ("this key may not …"). */
export async function api(path, { action = null, ...options } = {}) {
  let res;
  try {
    res = await request(path, { ...options, headers: { Accept: "application/json", ...options.headers } });
  } catch {
    throw new ApiError(0, null);
  }
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json().catch(() => null) : null;
  if (!res.ok) throw new ApiError(res.status, body, action);
  return body;
}

/** Whether requests carry a credential: images and downloads are then fetched here, since
 * the browser sends no Authorization header for an <img> or a link. */
export function withCredential() {
  return "Authorization" in authorization();
}

const objectUrls = new WeakMap(); // an <img> -> the blob: URL it shows, freed when replaced

/**
 * Show one of the gateway's images in `img`: the URL as it is without a credential (the
 * browser fetches it; its load and error events say how it went), else fetched with it and
 * shown from a blob: URL; a refusal then throws an ApiError (`action` for a 403's words).
 */
export async function showImage(img, url, action = "see this image") {
  if (!withCredential()) {
    img.src = url;
    return;
  }
  let res;
  try {
    res = await request(url, { headers: { Accept: "image/*" } });
  } catch {
    throw new ApiError(0, null);
  }
  if (!res.ok) {
    const type = res.headers.get("content-type") || "";
    throw new ApiError(res.status, type.includes("json") ? await res.json().catch(() => null) : null, action);
  }
  const blob = URL.createObjectURL(await res.blob());
  const before = objectUrls.get(img);
  objectUrls.set(img, blob);
  img.src = blob;
  if (before) URL.revokeObjectURL(before);
}

let lazy = null; // one observer for every image shown when it comes near the screen

/** showImage once `img` is near the screen (as loading="lazy" does for a plain src). */
export function showImageLater(img, url, failed) {
  if (!withCredential()) {
    img.loading = "lazy";
    img.addEventListener("error", failed);
    img.src = url;
    return;
  }
  lazy ??= new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      lazy.unobserve(entry.target);
      const { url: wanted, failed: fail } = entry.target.lazyImage;
      showImage(entry.target, wanted).catch(fail);
    }
  }, { rootMargin: "300px" });
  img.lazyImage = { url, failed };
  img.addEventListener("error", failed);
  lazy.observe(img);
}

/** Save one of the gateway's files (an original, a de-identified copy) with the credential:
 * fetched, then handed to the browser as a download of a blob: URL. */
export async function download(url, action = "download this file") {
  const res = await request(url);
  if (!res.ok) {
    const type = res.headers.get("content-type") || "";
    throw new ApiError(res.status, type.includes("json") ? await res.json().catch(() => null) : null, action);
  }
  const named = /filename="?([^";]+)"?/i.exec(res.headers.get("content-disposition") || "");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await res.blob());
  link.download = named ? named[1] : url.split("/").filter(Boolean).pop();
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000); // the browser has it by then
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
