// The dicomflow dashboard: four views behind hash routes, each a module of its own.
//   #/upload  #/jobs  #/studies  #/view/{upload id} (in Studies)  #/health
// With access control on, the sign-in view comes first, and again whenever the gateway
// answers 401 (the credential expired or was revoked): signin.js.

import { $, nav } from "./dom.js";
import * as health from "./health.js";
import * as jobs from "./jobs.js";
import { UNAUTHORIZED } from "./session.js";
import * as signin from "./signin.js";
import * as studies from "./studies.js";
import * as upload from "./upload.js";

const VIEWS = { upload, jobs, studies, health };
let current = null;
let signingIn = false;

function route() {
  if (signingIn) return;
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

/** The sign-in view in place of the views, until signed in; then the view of the URL. */
async function signIn(message) {
  if (signingIn) return;
  signingIn = true;
  if (current) VIEWS[current].hide();
  current = null;
  for (const key of Object.keys(VIEWS)) $(`view-${key}`).hidden = true;
  document.title = "Sign in · dicomflow";
  await signin.ask(message);
  signingIn = false;
  route();
}

signin.init();
for (const view of Object.values(VIEWS)) view.init();
window.addEventListener("hashchange", () => {
  nav.moved = true;
  route();
});
window.addEventListener(UNAUTHORIZED, () => {
  signIn("The gateway asks for a credential (none, or yours expired or was revoked): sign in.");
});
const needed = await signin.begin();
if (needed === null) route();
else signIn(needed);
