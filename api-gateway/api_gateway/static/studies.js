// The Studies view: search the archive's studies (GET /studies), page through them, see a
// preview of each instance; the viewer of one instance lives here too (#/view/{id}). Each study
// opens in OHIF (/viewer/) too, when the gateway serves it (make viewer).

import { $, api, clear, fmtDate, fmtName, h, notice, sentence, showImageLater } from "./dom.js";
import * as viewer from "./viewer.js";

const PAGE = 24;
const PREVIEWS = 8; // previews shown per study before "show all"

let offset = 0;
let total = 0;
let searched = false;
let asking = 0;
let ohif = null; // whether /viewer/ answers: asked once, with the first search

export function init() {
  viewer.init();
  const form = $("studies-form");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    offset = 0;
    search();
  });
  form.addEventListener("reset", () => {
    setTimeout(() => {
      offset = 0;
      search();
    });
  });
  $("studies-prev").addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE);
    search();
  });
  $("studies-next").addEventListener("click", () => {
    offset += PAGE;
    search();
  });
}

/** `view` set: the viewer of that upload; else the search (run once on first show). */
export function show(view) {
  $("studies-search").hidden = !!view;
  if (view) {
    viewer.open(view);
    return;
  }
  viewer.close();
  if (!searched) search();
}

export function hide() {}

function query() {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("studies-form"))) {
    const text = String(value).trim();
    if (!text) continue;
    // <input type=date> gives YYYY-MM-DD; the API takes DICOM's YYYYMMDD
    params.set(name, name.startsWith("study_date") ? text.replaceAll("-", "") : text);
  }
  params.set("limit", String(PAGE));
  params.set("offset", String(offset));
  return params;
}

async function search() {
  searched = true;
  const mine = ++asking;
  const results = $("studies-results");
  results.setAttribute("aria-busy", "true");
  try {
    const [page, withOhif] = await Promise.all([api(`/studies?${query()}`, { action: "search the studies" }), ohifServed()]);
    if (mine !== asking) return;
    notice($("studies-notice"), null);
    total = Number(page.total) || 0;
    offset = Number(page.offset) || 0;
    clear(results).append(...(page.studies ?? []).map((s) => study(s, withOhif)));
    if (!page.studies?.length) results.append(h("p", { class: "muted" }, total ? "No studies on this page." : "No study matches."));
    const first = total ? offset + 1 : 0;
    const last = offset + (page.studies?.length ?? 0);
    $("studies-count").textContent = total ? `${first}–${last} of ${total} stud${total === 1 ? "y" : "ies"}` : "";
  } catch (err) {
    if (mine !== asking) return;
    clear(results);
    total = 0;
    $("studies-count").textContent = "";
    let text = `Search failed: ${err.message}`;
    if (err.status === 403) text = sentence(err.message);
    if (err.status === 404 || err.status === 405) {
      text = "Study search is not available on this gateway yet (GET /studies is missing). Open archived uploads from the Jobs view meanwhile.";
    }
    notice($("studies-notice"), text);
  } finally {
    if (mine === asking) results.removeAttribute("aria-busy");
    $("studies-prev").disabled = offset <= 0;
    $("studies-next").disabled = offset + PAGE >= total;
  }
}

/** Whether the gateway serves the OHIF viewer: a HEAD of its page, 404 until `make viewer`. */
function ohifServed() {
  ohif ??= fetch("/viewer/", { method: "HEAD" }).then((res) => res.ok, () => false);
  return ohif;
}

function study(s, withOhif) {
  const ids = s.upload_ids ?? [];
  const thumbs = h("div", { class: "thumbs" }, ids.slice(0, PREVIEWS).map(preview));
  if (ids.length > PREVIEWS) {
    const more = h("button", { type: "button", class: "more" }, `+${ids.length - PREVIEWS} more`);
    more.addEventListener("click", () => {
      more.remove();
      thumbs.append(...ids.slice(PREVIEWS).map(preview));
    });
    thumbs.append(more);
  }
  const counts = [
    s.series_count != null ? `${s.series_count} series` : null,
    s.instance_count != null ? `${s.instance_count} instance${s.instance_count === 1 ? "" : "s"}` : null,
  ].filter(Boolean).join(" · ");
  return h("article", { class: "study", dataset: { studyUid: s.study_uid ?? "" } },
    h("header", {},
      h("strong", { class: "patient" }, fmtName(s.patient_name) || "(no name)"),
      s.patient_id ? h("span", { class: "pid" }, s.patient_id) : null,
      h("span", { class: "date" }, fmtDate(s.study_date)),
      h("span", { class: "chips" }, (s.modalities ?? []).map((m) => h("span", { class: "chip" }, m))),
      withOhif && s.study_uid
        ? h("a", {
          class: "ohif",
          href: `/viewer/viewer?StudyInstanceUIDs=${encodeURIComponent(s.study_uid)}`,
          target: "_blank",
          // the new tab starts with a copy of this one's sessionStorage, where the credential
          // is (OHIF sends it: ohif-signin.js), only when it is opened with an opener; the
          // viewer's page (same origin) then cuts that link itself (Cross-Origin-Opener-Policy)
          rel: "opener",
        }, "Open in OHIF")
        : null),
    h("p", { class: "desc" },
      s.study_description || h("span", { class: "muted" }, "(no description)"),
      counts ? h("span", { class: "muted" }, ` · ${counts}`) : null),
    thumbs);
}

function preview(id) {
  const img = h("img", { alt: "preview", width: 128, height: 128 });
  const url = `/uploads/${encodeURIComponent(id)}/image?size=256&format=jpeg`;
  showImageLater(img, url, () => img.replaceWith(h("span", { class: "nopreview" }, "no preview")));
  return h("a", { class: "thumb", href: `#/view/${encodeURIComponent(id)}`, title: `upload ${id}` }, img);
}
