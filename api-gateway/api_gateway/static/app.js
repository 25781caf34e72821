// The dicomflow dashboard: four views behind hash routes, each a module of its own.
//   #/upload  #/jobs  #/studies  #/view/{upload id} (in Studies)  #/health

import { $, nav } from "./dom.js";
import * as health from "./health.js";
import * as jobs from "./jobs.js";
import * as studies from "./studies.js";
import * as upload from "./upload.js";

const VIEWS = { upload, jobs, studies, health };
let current = null;

function route() {
  const match = /^#\/([a-z]+)(?:\/(.+))?$/.exec(location.hash);
  let name = match?.[1] ?? "upload";
  let arg = match?.[2] ? decodeURIComponent(match[2]) : null;
  if (name === "view") {
    name = "studies";
  } else {
    arg = null;
  }
  if (!VIEWS[name]) name = "upload";
  if (current && current !== name) VIEWS[current].hide();
  for (const key of Object.keys(VIEWS)) $(`view-${key}`).hidden = key !== name;
  for (const tab of document.querySelectorAll("[data-tab]")) {
    if (tab.dataset.tab === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  current = name;
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · dicomflow`;
  VIEWS[name].show(arg);
}

for (const view of Object.values(VIEWS)) view.init();
window.addEventListener("hashchange", () => {
  nav.moved = true;
  route();
});
route();
