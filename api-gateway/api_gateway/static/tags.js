// The tag table of one instance, from the DICOM JSON model (PS3.18 Annex F) of its
// metadata.json: tag, keyword (from the gateway's copy of pydicom's dictionary), VR, value;
// sequences fold; a filter keeps the rows (and the sequences around them) whose tag, keyword
// or value holds the text.

import { api, fmtBytes, h } from "./dom.js";

/** pydicom's data dictionary, from the gateway: {tags: {ggggeeee: keyword}, repeaters: {...}} */
let dictionary = { tags: {}, repeaters: {} };
let loading = null;

/** Load the keyword dictionary once (a failure leaves keywords blank, and tries again later). */
export function loadDictionary() {
  loading ??= api("/ui/dictionary.json")
    .then((d) => {
      dictionary = { tags: d?.tags ?? {}, repeaters: d?.repeaters ?? {} };
    })
    .catch(() => {
      loading = null;
    });
  return loading;
}

const MAX_SHOWN = 400; // characters of a value shown in the cell; the title has them all

export function keywordOf(tag) {
  if (dictionary.tags[tag]) return dictionary.tags[tag];
  for (const [mask, keyword] of Object.entries(dictionary.repeaters)) {
    if ([...mask].every((c, i) => c === "x" || c === tag[i])) return keyword; // e.g. 60xx3000
  }
  const group = parseInt(tag.slice(0, 4), 16);
  if (group % 2 === 1) return parseInt(tag.slice(4, 6), 16) === 0 ? "(private creator)" : "(private)";
  if (tag.endsWith("0000")) return "(group length)";
  return "";
}

export class TagTable {
  /** @param {HTMLElement} tbody @param {HTMLInputElement} filter @param {HTMLElement} count */
  constructor(tbody, filter, count) {
    this.tbody = tbody;
    this.filter = filter;
    this.count = count;
    this.rows = [];
    filter.addEventListener("input", () => this.apply());
  }

  /** Fill the table from a metadata.json: file meta information first, then the dataset. */
  show(metadata) {
    this.rows = [];
    this.bulk = metadata?.bulk_data ?? {};
    const fragment = document.createDocumentFragment();
    this.walk(metadata?.file_meta ?? {}, 0, null, "", fragment);
    this.walk(metadata?.dataset ?? {}, 0, null, "", fragment);
    this.tbody.replaceChildren(fragment);
    this.apply();
  }

  walk(dataset, depth, parent, path, out) {
    for (const tag of Object.keys(dataset).sort()) {
      const element = dataset[tag] ?? {};
      const row = this.add(out, parent, depth, this.cells(tag, element, path + tag));
      if (element.vr !== "SQ") continue;
      row.sequence = true;
      row.open = false;
      (element.Value ?? []).forEach((item, i) => {
        const itemRow = this.add(out, row, depth + 1, [
          h("td", { colspan: 4, class: "item" }, `Item ${i + 1}`),
        ]);
        itemRow.text = "";
        this.walk(item ?? {}, depth + 2, itemRow, `${path}${tag}/${i}/`, out);
      });
      const n = (element.Value ?? []).length;
      if (n) {
        const toggle = h("button", { type: "button", class: "fold", "aria-expanded": "false" }, `${n} item${n === 1 ? "" : "s"}`);
        toggle.addEventListener("click", () => {
          row.open = !row.open;
          toggle.setAttribute("aria-expanded", String(row.open));
          this.apply();
        });
        row.tr.lastElementChild.replaceChildren(toggle);
      }
    }
  }

  cells(tag, element, path) {
    const keyword = keywordOf(tag);
    const value = this.valueOf(element, path);
    const shown = value.length > MAX_SHOWN ? `${value.slice(0, MAX_SHOWN)}…` : value;
    const cells = [
      h("td", { class: "tag" }, `(${tag.slice(0, 4)},${tag.slice(4)})`),
      h("td", { class: "keyword" }, keyword),
      h("td", { class: "vr" }, element.vr ?? ""),
      h("td", { class: "value", title: value.length > MAX_SHOWN ? value : null }, shown),
    ];
    cells.text = `${tag} (${tag.slice(0, 4)},${tag.slice(4)}) ${keyword} ${element.vr ?? ""} ${value}`.toLowerCase();
    return cells;
  }

  valueOf(element, path) {
    if (element.vr === "SQ") return "";
    if ("BulkDataURI" in element) {
      const size = this.bulk[path]?.size;
      return `bulk data${Number.isFinite(size) ? `, ${fmtBytes(size)}` : ""}`;
    }
    if ("InlineBinary" in element) {
      const b64 = String(element.InlineBinary ?? "");
      const bytes = Math.floor((b64.replace(/=+$/, "").length * 3) / 4);
      return `binary, ${bytes} bytes`;
    }
    return (element.Value ?? []).map((v) => {
      if (v === null || v === undefined) return "";
      if (element.vr === "PN" && typeof v === "object") {
        return [v.Alphabetic, v.Ideographic, v.Phonetic].filter((x) => x !== undefined).join("=");
      }
      return typeof v === "object" ? JSON.stringify(v) : String(v);
    }).join("\\");
  }

  add(out, parent, depth, cells) {
    const tr = h("tr", { class: depth ? "nested" : null }, cells);
    tr.firstElementChild.style.paddingInlineStart = `${0.5 + depth * 1.1}rem`;
    const row = { tr, parent, depth, text: cells.text ?? "", sequence: false, open: true };
    this.rows.push(row);
    out.append(tr);
    return row;
  }

  /** Show what the filter and the folds let through, and count it. */
  apply() {
    const q = this.filter.value.trim().toLowerCase();
    let shown = 0;
    if (!q) {
      for (const row of this.rows) {
        row.tr.hidden = !this.unfolded(row);
        row.tr.classList.remove("match");
      }
      shown = this.rows.filter((r) => r.depth === 0).length;
      this.count.textContent = `${shown} attributes`;
      return;
    }
    const hit = new Set();
    for (const row of this.rows) {
      if (!row.text.includes(q)) continue;
      shown += 1;
      for (let r = row; r && !hit.has(r); r = r.parent) hit.add(r); // and the sequences around it
    }
    for (const row of this.rows) {
      row.tr.hidden = !hit.has(row);
      row.tr.classList.toggle("match", hit.has(row) && row.text.includes(q));
    }
    this.count.textContent = `${shown} of ${this.rows.filter((r) => r.text).length} match`;
  }

  unfolded(row) {
    for (let r = row.parent; r; r = r.parent) if (!r.open) return false;
    return true;
  }
}
