// The Upload view: choose or drop files and folders, send each as its own POST /upload
// (a few at a time, with a progress bar), then follow each job live until it is final.

import { $, api, badge, breakable, fmtBytes, fmtMs, h, isNews, pool, FINAL, problemText, refusal, troubles } from "./dom.js";
import { StatusFeed, feedLabel } from "./feed.js";
import { authorization, unauthorized } from "./session.js";

const PARALLEL = 3; // requests in flight at once
const LITTER = /^(\.|thumbs\.db$|desktop\.ini$)/i; // hidden files and OS litter in folders

/** One chosen file: {key, file, path, phase, progress, uploadId, state, at, details, lines} */
const items = [];
const byUpload = new Map(); // upload id -> item
let sending = false;
let nextKey = 1;
let feed;
let rows;
let summaryQueued = false;
let unreadable = 0; // items of the last drop that could not be read

export function init() {
  rows = $("upload-rows");
  feed = new StatusFeed({
    onChange: (change) => {
      const item = byUpload.get(change.upload_id);
      if (item) apply(item, change.status, change.at, null);
    },
    onResync: () => refreshAll(),
    onState: (state) => feedLabel($("upload-feed"), state),
  });

  const files = $("pick-files");
  const folder = $("pick-folder");
  for (const input of [files, folder]) {
    input.addEventListener("change", () => {
      add([...input.files].map((file) => ({ file, path: file.webkitRelativePath || file.name })));
      input.value = "";
    });
  }
  const zone = $("dropzone");
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      files.click();
    }
  });
  // A file dropped anywhere on the page is ours; the browser must not open it instead.
  window.addEventListener("dragover", (e) => {
    e.preventDefault();
    const here = !$("view-upload").hidden;
    e.dataTransfer.dropEffect = here ? "copy" : "none";
    zone.classList.toggle("over", here);
  });
  window.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) zone.classList.remove("over");
  });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (!$("view-upload").hidden) dropped(e.dataTransfer);
  });

  $("upload-form").addEventListener("submit", (e) => {
    e.preventDefault();
    start();
  });
  $("upload-clear").addEventListener("click", clearFinished);
}

// ---- choosing files ----

function add(chosen) {
  const known = new Set(items.filter((i) => i.phase === "ready").map(keyOf));
  for (const { file, path } of chosen) {
    const name = path.split("/").pop();
    if (LITTER.test(name) || known.has(keyOf({ file, path }))) continue;
    const item = { key: nextKey++, file, path, phase: "ready", progress: 0, lines: [] };
    items.push(item);
    paint(item);
  }
  update();
}

function keyOf(item) {
  return `${item.path}\u0000${item.file.size}\u0000${item.file.lastModified}`;
}

/** Files and folders of a drop: entries are taken now (the list dies with the event). */
async function dropped(transfer) {
  const entries = [];
  for (const it of transfer.items ?? []) {
    if (it.kind !== "file") continue;
    const entry = it.webkitGetAsEntry?.();
    const file = entry ? null : it.getAsFile();
    if (entry || file) entries.push(entry ?? file);
  }
  if (!entries.length && transfer.files?.length) entries.push(...transfer.files);
  const found = [];
  unreadable = 0;
  for (const entry of entries) {
    try {
      await walk(entry, found);
    } catch {
      unreadable += 1;
    }
  }
  add(found);
  update();
}

async function walk(entry, out) {
  if (entry instanceof File) {
    out.push({ file: entry, path: entry.name });
  } else if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    out.push({ file, path: entry.fullPath.replace(/^\/+/, "") || file.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break; // readEntries answers in pieces until an empty one
      for (const child of batch) await walk(child, out);
    }
  }
}

function clearFinished() {
  for (let i = items.length - 1; i >= 0; i--) {
    const item = items[i];
    const done = item.phase === "refused" || item.phase === "error" ||
      (item.phase === "sent" && FINAL.has(item.state));
    if (done) {
      item.row?.remove();
      items.splice(i, 1);
      if (item.uploadId) byUpload.delete(item.uploadId);
    }
  }
  update();
}

// ---- sending ----

async function start() {
  if (sending) return;
  const label = $("upload-label").value.trim();
  sending = true;
  update();
  try {
    // A pool that also picks up files chosen while it runs.
    const next = () => items.find((i) => i.phase === "ready");
    const runners = Array.from({ length: PARALLEL }, async () => {
      for (let item = next(); item; item = next()) await send(item, label);
    });
    await Promise.all(runners);
  } finally {
    sending = false;
    update();
  }
}

function send(item, label) {
  item.phase = "sending";
  item.progress = 0;
  item.lines = [];
  paint(item);
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/upload");
    xhr.responseType = "json";
    xhr.setRequestHeader("Accept", "application/json");
    for (const [name, value] of Object.entries(authorization())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      item.progress = e.loaded / e.total;
      if (item.bar) item.bar.value = Math.round(item.progress * 100);
    });
    xhr.addEventListener("load", () => {
      answered(item, xhr.status, xhr.response);
      resolve();
    });
    for (const kind of ["error", "abort", "timeout"]) {
      xhr.addEventListener(kind, () => {
        item.phase = "error";
        item.lines = ["the gateway did not answer; the file was not sent"];
        paint(item);
        update();
        resolve();
      });
    }
    const form = new FormData();
    if (label) form.append("label", label);
    form.append("file", item.file, item.path);
    xhr.send(form);
  });
}

function answered(item, status, body) {
  if (status === 202 && body) {
    const accepted = body.uploads?.[0] ?? body;
    item.phase = "sent";
    item.progress = 1;
    item.uploadId = accepted.study_id ?? accepted.upload_id;
    item.state = "accepted";
    item.at = null;
    if (accepted.converted_from) {
      item.lines = [`a ${accepted.converted_from.toUpperCase()} image, stored as DICOM Secondary Capture`];
    }
    byUpload.set(item.uploadId, item);
    paint(item);
    follow(item);
  } else {
    // 4xx: the file was refused, and the answer says why (seed 004's files[] too); a 401 asks
    // for a sign-in, after which the file may be sent again ("Try again").
    if (status === 401) unauthorized();
    item.phase = status >= 400 && status < 500 && status !== 401 ? "refused" : "error";
    const lines = [status === 403 ? refusal(body, "upload files") : problemText(status, body)];
    for (const f of body?.files ?? []) {
      const reason = f.reason ? ` (${String(f.reason).replaceAll("_", " ")})` : "";
      if (f.message === lines[0]) lines[0] += reason;
      else if (f.message) lines.push(`${f.message}${reason}`);
    }
    item.lines = lines;
    paint(item);
  }
  update();
}

// ---- following the pipeline ----

let followTimer = null;
let unconfirmed = new Set(); // accepted since the feed last (re)opened

/** Follow the unfinished jobs (debounced), and read the newest ones once: their first
 * changes may have gone by before the feed followed them (it resumes only from the last
 * change it showed, and a small file can be archived before its 202 arrives). */
function follow(added = null) {
  if (added) unconfirmed.add(added);
  clearTimeout(followTimer);
  followTimer = setTimeout(() => {
    const open = items.filter((i) => i.phase === "sent" && !FINAL.has(i.state));
    feed.follow(open.map((i) => i.uploadId));
    const check = [...unconfirmed];
    unconfirmed = new Set();
    pool(check, 4, refresh);
  }, 150);
}

function refreshAll() {
  const open = items.filter((i) => i.phase === "sent" && !FINAL.has(i.state));
  unconfirmed = new Set();
  return pool(open, 4, refresh);
}

async function refresh(item) {
  try {
    const job = await api(`/status/${encodeURIComponent(item.uploadId)}`, { action: "follow its progress" });
    apply(item, job.status, job.timestamp, job.details ?? {});
  } catch (err) {
    if (err.status === 404) apply(item, "deleted", new Date().toISOString(), {});
    if (err.status === 403) {
      item.lines = [err.message]; // a key that may send but not read (a modality's)
      paint(item);
    }
  }
}

function apply(item, state, at, details) {
  const news = isNews({ state: item.state, at: item.at }, state, at);
  if (news) {
    item.state = state;
    item.at = at;
  }
  if (details && (news || state === item.state)) item.details = details;
  if (news || details) paint(item);
  if (news) update();
  if (news && FINAL.has(state) && !details) refresh(item); // its reasons, error, modality
  if (news && FINAL.has(state) && !items.some((i) => i.phase === "sent" && !FINAL.has(i.state))) {
    follow(); // nothing left to follow: the feed stops
  }
}

async function retry(item, button) {
  button.disabled = true;
  try {
    const answer = await api(`/jobs/${encodeURIComponent(item.uploadId)}/retry`, { method: "POST", action: "retry a job" });
    item.details = {};
    item.lines = [];
    apply(item, answer.status, new Date().toISOString(), null);
    follow(item);
  } catch (err) {
    item.lines = [`retry refused: ${err.message}`];
    paint(item);
  }
}

// ---- drawing ----

function paint(item) {
  if (!item.row) {
    item.row = h("tr");
    rows.append(item.row);
  }
  const state = item.phase === "sent" ? item.state : item.phase;
  item.bar = h("progress", { max: 100, value: Math.round(item.progress * 100) });
  const details = item.details ?? {};
  const lines = [...item.lines, ...troubles(details)];
  if (FINAL.has(state)) {
    const total = details.timings_ms?.total;
    const facts = [details.modality, Number.isFinite(total) ? `${state} in ${fmtMs(total)}` : null];
    if (facts.some(Boolean)) lines.unshift(facts.filter(Boolean).join(" · "));
  }
  item.row.replaceChildren(
    h("td", { class: "file", title: item.path }, breakable(item.path)),
    h("td", { class: "num" }, fmtBytes(item.file.size)),
    h("td", { class: "sent" }, item.phase === "ready" ? "" : item.bar),
    h("td", {}, badge(state)),
    h("td", { class: "details" }, lines.map((line) => h("div", {}, line))),
    h("td", { class: "actions" }, actions(item, state)),
  );
  item.row.dataset.state = state;
  if (item.uploadId) item.row.dataset.uploadId = item.uploadId;
}

function actions(item, state) {
  if (state === "archived") {
    return h("a", { class: "button small", href: `#/view/${encodeURIComponent(item.uploadId)}` }, "View");
  }
  if (state === "failed") {
    const button = h("button", { type: "button", class: "small" }, "Retry");
    button.addEventListener("click", () => retry(item, button));
    return button;
  }
  if (state === "error") {
    return h("button", { type: "button", class: "small", onclick: () => { item.phase = "ready"; paint(item); update(); start(); } }, "Try again");
  }
  return null;
}

/** The summary line and the buttons, at most once a frame. */
function update() {
  if (summaryQueued) return;
  summaryQueued = true;
  requestAnimationFrame(() => {
    summaryQueued = false;
    const count = {};
    let bytes = 0;
    for (const item of items) {
      const state = item.phase === "sent" ? item.state : item.phase;
      count[state] = (count[state] ?? 0) + 1;
      bytes += item.file.size;
    }
    const ready = count.ready ?? 0;
    const parts = [`${items.length} file${items.length === 1 ? "" : "s"} (${fmtBytes(bytes)})`];
    for (const [state, n] of Object.entries(count)) parts.push(`${n} ${state}`);
    const unread = unreadable ? ` ${unreadable} dropped item(s) could not be read.` : "";
    $("upload-summary").textContent = (items.length ? parts.join(" · ") : "No files chosen yet.") + unread;
    $("upload-table").hidden = !items.length;
    const start = $("upload-start");
    start.disabled = sending || !ready;
    start.textContent = sending ? "Uploading…" : ready ? `Upload ${ready} file${ready === 1 ? "" : "s"}` : "Upload";
    $("upload-clear").disabled = !items.some((i) => i.phase !== "ready" && i.phase !== "sending");
  });
}

export function show() {}
export function hide() {}
