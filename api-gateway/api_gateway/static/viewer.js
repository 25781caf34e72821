// The viewer of one archived instance: a frame rendered by the gateway (window presets, a
// frame slider for multi-frame objects), its attributes, and its files to download.

import { $, api, clear, download, fmtDate, fmtName, h, nav, notice, problemText, request, showImage, withCredential } from "./dom.js";
import { TagTable, loadDictionary } from "./tags.js";

const PRESETS = [
  ["Default", null],
  ["Lung", "-600,1500"],
  ["Mediastinum", "40,400"],
  ["Bone", "400,1800"],
  ["Brain", "40,80"],
];
const SIZE = 1024;
const PIXEL_TAGS = ["7FE00010", "7FE00008", "7FE00009"]; // Pixel Data, Float, Double Float

let shown = null; // {id, frames, frame, window, grey, loaded}
let table;
let frameTimer = null;

export function init() {
  table = new TagTable($("tags-rows"), $("tags-filter"), $("tags-count"));
  const presets = $("viewer-presets");
  for (const [name, window] of PRESETS) {
    const button = h("button", { type: "button", dataset: { window: window ?? "" }, "aria-pressed": "false" }, name);
    button.title = window ? `center ${window.split(",")[0]}, width ${window.split(",")[1]}` : "the file's own window, else the full range";
    button.addEventListener("click", () => setWindow(window));
    presets.append(button);
  }
  $("viewer-window").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    setWindow(`${Number(form.get("center"))},${Number(form.get("width"))}`);
  });
  const slider = $("frame-slider");
  slider.addEventListener("input", () => setFrame(Number(slider.value), 120));
  $("frame-prev").addEventListener("click", () => setFrame(shown.frame - 1));
  $("frame-next").addEventListener("click", () => setFrame(shown.frame + 1));
  const img = $("viewer-img");
  img.addEventListener("load", () => {
    $("viewer-loading").hidden = true;
    img.classList.remove("stale");
    notice($("viewer-notice"), null); // a frame that failed before does not stay reported
  });
  img.addEventListener("error", () => imageFailed(img.dataset.url));
  for (const [id, what] of [["viewer-original", "download originals"], ["viewer-deid", "download de-identified copies"]]) {
    // a link sends no credential: with one, the file is fetched here and saved from memory
    $(id).addEventListener("click", (e) => {
      if (!withCredential()) return;
      e.preventDefault();
      download(e.currentTarget.getAttribute("href"), what).catch((err) => notice($("viewer-notice"), err.message));
    });
  }
  $("viewer-back").addEventListener("click", () => {
    if (nav.moved) history.back();
    else location.hash = "#/studies";
  });
}

/** Show upload `id`; showing the one already shown keeps its frame and window. */
export async function open(id) {
  $("viewer").hidden = false;
  if (shown?.id === id && shown.loaded) return;
  shown = { id, frames: 1, frame: 1, window: null, grey: true, loaded: false };
  notice($("viewer-notice"), null);
  clear($("viewer-title")).append(h("span", { class: "muted" }, `Upload ${id}`));
  clear($("viewer-facts"));
  $("tags-filter").value = "";
  table.show({});
  $("viewer-frames").hidden = true;
  $("viewer-picture").hidden = true; // until the metadata says there is a picture
  const base = `/uploads/${encodeURIComponent(id)}`;
  $("viewer-original").href = `${base}/original`;
  $("viewer-deid").href = `${base}/deidentified`;
  $("viewer-img").removeAttribute("src");
  delete $("viewer-img").dataset.url;
  let metadata;
  try {
    [metadata] = await Promise.all([api(`${base}/metadata`, { action: "see this upload" }), loadDictionary()]);
  } catch (err) {
    if (shown?.id !== id) return;
    notice($("viewer-notice"), `This upload cannot be shown: ${err.message}`);
    return;
  }
  if (shown?.id !== id) return; // another one was opened meanwhile
  shown.loaded = true;
  const s = metadata?.summary ?? {};
  shown.frames = Math.max(1, Number(s.number_of_frames) || 1);
  shown.grey = !s.photometric_interpretation || /^MONOCHROME/.test(s.photometric_interpretation);
  const pixels = PIXEL_TAGS.some((tag) => tag in (metadata?.dataset ?? {}));
  title(s);
  facts(s);
  table.show(metadata);
  $("viewer-picture").hidden = !pixels;
  if (!pixels) {
    const what = s.modality ? ` (${s.modality})` : "";
    notice($("viewer-notice"), `This instance${what} has no pixel data: there is no image to show, only its attributes.`, "info");
    return;
  }
  frames();
  presetsState();
  render();
}

export function close() {
  $("viewer").hidden = true;
}

function title(s) {
  const el = clear($("viewer-title"));
  el.append(
    h("strong", {}, fmtName(s.patient_name) || "(no patient name)"),
    s.patient_id ? h("span", {}, ` ${s.patient_id}`) : null,
    h("span", { class: "muted" }, " · ", [s.modality, fmtDate(s.study_date), s.study_description].filter(Boolean).join(" · ")),
  );
}

function facts(s) {
  const list = [
    ["Patient", fmtName(s.patient_name)],
    ["Patient ID", s.patient_id],
    ["Birth date", s.patient_birth_date && fmtDate(s.patient_birth_date)],
    ["Sex", s.patient_sex],
    ["Study", [fmtDate(s.study_date), s.study_description].filter(Boolean).join(" · ")],
    ["Series", [s.series_number, s.series_description].filter((x) => x !== null && x !== undefined && x !== "").join(" · ")],
    ["Instance", s.instance_number],
    ["Modality", [s.modality, s.body_part_examined].filter(Boolean).join(" · ")],
    ["Accession", s.accession_number],
    ["Institution", s.institution_name],
    ["Manufacturer", s.manufacturer],
    ["Image", s.rows && s.columns ? `${s.columns} × ${s.rows}${s.bits_stored ? `, ${s.bits_stored} bit` : ""}` : null],
    ["Frames", shown.frames > 1 ? shown.frames : null],
    ["Photometric", s.photometric_interpretation],
    ["Pixel spacing", Array.isArray(s.pixel_spacing) ? `${s.pixel_spacing.map((v) => +v.toFixed(4)).join(" × ")} mm` : null],
    ["Slice thickness", Number.isFinite(s.slice_thickness) ? `${s.slice_thickness} mm` : null],
    ["Transfer syntax", s.transfer_syntax_uid],
    ["SOP Instance UID", s.sop_instance_uid],
  ];
  const dl = clear($("viewer-facts"));
  for (const [name, value] of list) {
    if (value === null || value === undefined || value === "") continue;
    dl.append(h("dt", {}, name), h("dd", {}, String(value)));
  }
}

function frames() {
  const many = shown.frames > 1;
  $("viewer-frames").hidden = !many;
  const slider = $("frame-slider");
  slider.max = String(shown.frames);
  slider.value = "1";
  frameLabel();
}

function frameLabel() {
  $("frame-label").textContent = `frame ${shown.frame} of ${shown.frames}`;
  $("frame-prev").disabled = shown.frame <= 1;
  $("frame-next").disabled = shown.frame >= shown.frames;
}

function setFrame(n, delay = 0) {
  if (!shown) return;
  shown.frame = Math.min(Math.max(1, n), shown.frames);
  $("frame-slider").value = String(shown.frame);
  frameLabel();
  clearTimeout(frameTimer);
  frameTimer = setTimeout(render, delay); // dragging the slider asks for the frame it stops on
}

function setWindow(window) {
  if (!shown) return;
  shown.window = window;
  presetsState();
  render();
}

function presetsState() {
  for (const button of $("viewer-presets").children) {
    button.setAttribute("aria-pressed", String((button.dataset.window || null) === shown.window));
    button.disabled = !shown.grey && !!button.dataset.window; // a window means nothing in colour
  }
  const custom = $("viewer-window");
  for (const input of custom.querySelectorAll("input, button")) input.disabled = !shown.grey;
  if (shown.window) {
    const [c, w] = shown.window.split(",");
    custom.elements.center.value = c;
    custom.elements.width.value = w;
  }
}

function imageUrl() {
  const params = new URLSearchParams({ frame: String(shown.frame) });
  if (shown.window) params.set("window", shown.window);
  params.set("size", String(SIZE));
  params.set("format", "png");
  return `/uploads/${encodeURIComponent(shown.id)}/image?${params}`;
}

function render() {
  const img = $("viewer-img");
  const url = imageUrl();
  if (img.dataset.url === url) return;
  img.dataset.url = url;
  $("viewer-loading").hidden = false;
  img.hidden = false;
  img.classList.add("stale");
  img.alt = `Frame ${shown.frame} of upload ${shown.id}`;
  showImage(img, url, "see this image").catch((err) => {
    if (img.dataset.url !== url) return; // another frame or window was asked for meanwhile
    $("viewer-loading").hidden = true;
    img.hidden = true;
    notice($("viewer-notice"), `No image: ${err.message}`);
  });
}

/** An image that did not load: ask again for the problem's words, and show them. */
async function imageFailed(url) {
  if (!url || !shown) return;
  $("viewer-loading").hidden = true;
  $("viewer-img").hidden = true; // no broken-image icon
  let status = 0;
  let problem = null;
  try {
    const res = await request(url, { headers: { Accept: "application/json" } });
    status = res.status;
    problem = await res.json().catch(() => null);
  } catch {
    // no answer at all: problemText says so
  }
  notice($("viewer-notice"), `No image: ${problemText(status, problem)}`);
}
