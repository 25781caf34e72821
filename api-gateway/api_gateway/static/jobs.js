// The Jobs view: the newest uploads (GET /uploads), filtered by state, kept current from
// the live feed; stage timings, reasons and errors; Retry for a failed job, View for an
// archived one.

import { $, api, badge, breakable, clear, fmtMs, fmtTime, h, isNews, notice, pool, sentence, FINAL, STATES, troubles } from "./dom.js";
import { StatusFeed, feedLabel } from "./feed.js";

const LIMIT = 100;
const STAGES = [
  ["validating", "validate"],
  ["describing", "describe"],
  ["uploading", "upload"],
];

const jobs = new Map(); // upload id -> {id, state, at, details, row}
let rows;
let feed;
let next = null;
let loading = false;
let again = false;
const wanted = new Map(); // upload id -> true when new (read, then shown first)
let wantedTimer = null;

export function init() {
  rows = $("jobs-rows");
  const select = $("jobs-state");
  for (const state of STATES) {
    select.append(h("option", { value: state }, state));
  }
  select.addEventListener("change", () => load());
  $("jobs-refresh").addEventListener("click", () => load());
  $("jobs-more").addEventListener("click", () => load(next));
  feed = new StatusFeed({
    onChange: changed,
    onResync: () => load(),
    onState: (state) => feedLabel($("jobs-feed"), state),
  });
}

export function show() {
  load();
  feed.follow(null); // every upload, while the view is shown
}

export function hide() {
  feed.stop();
}

async function load(cursor = null) {
  if (loading) {
    again ||= cursor === null; // a reload asked for while loading is not lost to a "more"
    return;
  }
  loading = true;
  const state = $("jobs-state").value;
  const params = new URLSearchParams({ limit: String(LIMIT) });
  if (state) params.set("state", state);
  if (cursor !== null) params.set("before", String(cursor)); // the `next` of the page before
  const url = `/uploads?${params}`;
  try {
    const page = await api(url, { action: "list the jobs" });
    notice($("jobs-notice"), null);
    if (cursor === null) {
      jobs.clear();
      clear(rows);
    }
    for (const job of page.uploads ?? []) put(job, false);
    next = page.next ?? null; // a time: older uploads follow
    $("jobs-more").hidden = !next;
    counted();
  } catch (err) {
    let text = `Could not list uploads: ${err.message}`;
    if (err.status === 403) text = sentence(err.message);
    if (err.status === 404 || err.status === 405) {
      text = "This gateway cannot list uploads yet (GET /uploads is missing). Uploads made on this page still show their states on the Upload view.";
    }
    notice($("jobs-notice"), text);
  } finally {
    loading = false;
    if (again) {
      again = false;
      load();
    }
  }
}

function counted() {
  const filter = $("jobs-state").value;
  $("jobs-count").textContent = `${jobs.size} job${jobs.size === 1 ? "" : "s"}${filter ? ` ${filter}` : ""}${next ? " (newest first; more below)" : ""}`;
}

/** Show a job (the status answer's shape), in place or as a new row. */
function put(job, first) {
  const id = job.study_id ?? job.upload_id;
  if (!id) return;
  let entry = jobs.get(id);
  if (!entry) {
    entry = { id, row: h("tr", { dataset: { uploadId: id } }) };
    jobs.set(id, entry);
    if (first) rows.prepend(entry.row);
    else rows.append(entry.row);
    while (first && jobs.size > LIMIT) {
      const last = rows.lastElementChild;
      jobs.delete(last.dataset.uploadId);
      last.remove();
    }
  }
  if (isNews(entry, job.status, job.timestamp) || job.status === entry.state) {
    entry.state = job.status;
    entry.at = job.timestamp;
    entry.details = job.details ?? {};
  }
  paint(entry);
}

function changed(change) {
  const id = change.upload_id;
  const entry = jobs.get(id);
  const filter = $("jobs-state").value;
  if (entry) {
    if (isNews(entry, change.status, change.at)) {
      entry.state = change.status;
      entry.at = change.at;
      paint(entry);
    }
    if (FINAL.has(change.status) && change.status !== "deleted") want(id, false); // timings, reasons
  } else if (change.status !== "deleted" && (!filter || filter === change.status)) {
    want(id, true);
  }
}

/** Read these jobs' status soon, a few at a time (changes come faster than reads). */
function want(id, isNew) {
  wanted.set(id, wanted.get(id) || isNew);
  if (!wantedTimer) wantedTimer = setTimeout(flush, 400);
}

async function flush() {
  const batch = [...wanted].slice(-LIMIT);
  wanted.clear();
  await pool(batch, 4, async ([id, isNew]) => {
    try {
      put(await api(`/status/${encodeURIComponent(id)}`), isNew);
    } catch {
      /* gone meanwhile: the next resync says so */
    }
  });
  counted();
  wantedTimer = wanted.size ? setTimeout(flush, 400) : null;
}

function paint(entry) {
  const d = entry.details ?? {};
  const lines = troubles(d);
  entry.row.dataset.state = entry.state ?? "";
  entry.row.replaceChildren(
    h("td", {}, badge(entry.state)),
    h("td", { class: "file", title: entry.id }, d.filename ? breakable(d.filename) : h("span", { class: "muted" }, entry.id.slice(0, 8))),
    h("td", {}, d.label ?? ""),
    h("td", {}, d.modality ?? ""),
    h("td", { class: "when" }, fmtTime(d.created_at ?? entry.at)),
    h("td", { class: "timings" }, timings(d.timings_ms ?? {})),
    h("td", { class: "details" }, lines.map((line) => h("div", {}, line))),
    h("td", { class: "actions" }, actions(entry)),
  );
  entry.row.classList.toggle("gone", entry.state === "deleted");
}

/** Stage times: a bar (light: waiting in the queue, dark: working) and the numbers. */
function timings(t) {
  const parts = [];
  for (const [stage] of STAGES) {
    parts.push([`queued_${stage}`, t[`queued_${stage}`]], [stage, t[stage]]);
  }
  const known = parts.filter(([, ms]) => Number.isFinite(ms));
  if (!known.length) return "";
  const span = Math.max(t.total ?? 0, known.reduce((sum, [, ms]) => sum + ms, 0), 1);
  const bar = h("div", { class: "tbar", role: "img", "aria-label": "stage times" });
  for (const [key, ms] of known) {
    const seg = h("span", { class: key.startsWith("queued") ? "q" : `w w-${key}`, title: `${label(key)}: ${fmtMs(ms)}` });
    seg.style.width = `${(100 * ms) / span}%`;
    bar.append(seg);
  }
  const words = STAGES.filter(([s]) => Number.isFinite(t[s])).map(([s, short]) => `${short} ${fmtMs(t[s])}`);
  const waited = STAGES.reduce((sum, [s]) => sum + (t[`queued_${s}`] ?? 0), 0);
  return [
    bar,
    h("div", { class: "tnums" },
      Number.isFinite(t.total) ? h("strong", {}, fmtMs(t.total)) : null,
      words.length ? ` ${words.join(" · ")}` : "",
      waited ? h("span", { class: "muted" }, ` · queued ${fmtMs(waited)}`) : ""),
  ];
}

function label(key) {
  return key.startsWith("queued_") ? `waiting for ${key.slice(7)}` : key;
}

function actions(entry) {
  if (entry.state === "archived") {
    return h("a", { class: "button small", href: `#/view/${encodeURIComponent(entry.id)}` }, "View");
  }
  if (entry.state === "failed") {
    const button = h("button", { type: "button", class: "small" }, "Retry");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const answer = await api(`/jobs/${encodeURIComponent(entry.id)}/retry`, { method: "POST", action: "retry a job" });
        entry.state = answer.status;
        entry.at = new Date().toISOString();
        entry.details = { ...entry.details, error: undefined };
        paint(entry);
      } catch (err) {
        button.disabled = false;
        notice($("jobs-notice"), `Retry refused: ${err.message}`);
      }
    });
    return button;
  }
  return null;
}
