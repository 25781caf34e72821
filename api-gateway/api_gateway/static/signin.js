// Signing in to the dashboard when the gateway asks for a credential (GET /auth/config says
// whether it does): the sign-in view (paste an API key, or sign in at the OpenID Connect
// issuer), who is signed in, and Sign out. Nothing changes where access control is off.
//
// The credential is checked with GET /auth/whoami, which answers any valid one whatever it may
// do (a key that may only upload signs in too), and kept for this tab (session.js).

import { $, notice } from "./dom.js";
import * as oidc from "./oidc.js";
import { forget, held, keep } from "./session.js";

// A page of the OHIF viewer to go back to once signed in: the viewer sends the browser here
// when the gateway refuses it (ohif-signin.js), and says where it was.
const RETURN = "dicomflow.return";
const RETURN_PATH = /^\/viewer\//; // only the viewer's own pages: never elsewhere

let config = { access_control: false, oidc: null };
let waiting = null; // the resolve of the sign-in the view is showing

export function init() {
  $("signin-key").addEventListener("submit", (e) => {
    e.preventDefault();
    withKey($("signin-key-input").value.trim());
  });
  $("signin-oidc-button").addEventListener("click", async () => {
    const button = $("signin-oidc-button");
    button.disabled = true;
    try {
      await oidc.start(config.oidc); // the page goes to the issuer
    } catch (err) {
      notice($("signin-notice"), `Could not sign in at the issuer: ${err.message}`);
      button.disabled = false;
    }
  });
  $("signout").addEventListener("click", signOut);
}

/**
 * What the page needs before its first view: whether the gateway asks for a credential and
 * how, the end of a sign-in at the issuer if the browser just came back from it, and whether
 * the credential held still works. Returns null when the views may go on, else the words for
 * the sign-in view ("" for none).
 */
export async function begin() {
  config = await readConfig();
  let trouble = "";
  if (oidc.returning() && config.oidc) {
    try {
      const credential = await oidc.finish(config.oidc);
      trouble = await accept(credential, "the issuer's token is not taken by this gateway");
      if (trouble === null && goBack()) return new Promise(() => {}); // leaving for the viewer
    } catch (err) {
      trouble = `Signing in at the issuer failed: ${err.message}.`;
    }
  }
  if (!config.access_control) {
    shown(null);
    return null;
  }
  if (trouble) return trouble;
  const credential = held();
  if (!credential) return "";
  const who = await whoami(credential.token);
  if (who.status === 401) {
    forget();
    return "Your sign-in is no longer valid (expired or revoked): sign in again.";
  }
  shown({ ...credential, ...(who.body ? described(credential, who.body) : {}) });
  // a viewer that sent the browser here while this credential works was not refused for
  // want of one: going back would only bring it here again
  sessionStorage.removeItem(RETURN);
  return null;
}

/** Show the sign-in view (with `message`), and resolve once signed in. */
export function ask(message) {
  config.access_control = true; // a 401 says so, whatever /auth/config said (or could not)
  forget();
  shown(null);
  $("signin-oidc").hidden = !config.oidc;
  if (config.oidc) {
    $("signin-oidc-button").textContent = `Sign in with ${hostOf(config.oidc.issuer)}`;
    $("signin-oidc-button").disabled = false;
  }
  notice($("signin-notice"), message || null, "info");
  $("view-signin").hidden = false;
  $("signin-key-input").value = "";
  $("signin-key-input").focus();
  return new Promise((resolve) => {
    waiting = resolve;
  });
}

async function withKey(key) {
  if (!key) return;
  const form = $("signin-key");
  form.querySelector("button").disabled = true;
  try {
    const trouble = await accept({ kind: "key", token: key }, "This key is not valid: unknown, revoked or mistyped.");
    if (trouble !== null) {
      notice($("signin-notice"), trouble);
      $("signin-key-input").select();
      return;
    }
    if (goBack()) return;
    $("view-signin").hidden = true;
    $("signin-key-input").value = "";
    waiting?.();
    waiting = null;
  } finally {
    form.querySelector("button").disabled = false;
  }
}

/** Keep a credential the gateway takes; null, or the words of why it was not kept. */
async function accept(credential, invalid) {
  const who = await whoami(credential.token);
  if (who.status === 401) return invalid;
  if (!who.body) return `The gateway could not check it: ${who.status ? `it answered ${who.status}` : "no answer"}.`;
  const kept = { ...credential, ...described(credential, who.body) };
  keep(kept);
  shown(kept);
  return null;
}

async function whoami(token) {
  try {
    const res = await fetch("/auth/whoami", {
      headers: { Accept: "application/json", Authorization: `Bearer ${token}` },
    });
    return { status: res.status, body: res.ok ? await res.json() : null };
  } catch {
    return { status: 0, body: null };
  }
}

function described(credential, identity) {
  const actor = String(identity.actor ?? "");
  return {
    who: credential.who ?? actor.replace(/^(key|oidc):/, ""),
    actor,
    scopes: Array.isArray(identity.scopes) ? identity.scopes : [],
  };
}

/** The header's "signed in as", or nothing (signed out, or no access control). */
function shown(credential) {
  $("session").hidden = !credential;
  $("nav-tabs").hidden = Boolean(config.access_control && !credential);
  if (!credential) return;
  const kind = credential.kind === "oidc" ? "signed in" : "API key";
  const may = credential.scopes?.includes("admin") ? "admin" : (credential.scopes ?? []).join(", ");
  $("session-who").textContent = credential.who ?? "";
  $("session-who").title = `${credential.actor ?? ""} · ${kind}${may ? ` · may ${may}` : ""}`;
  $("session-scopes").textContent = may;
}

function signOut() {
  forget();
  // a fresh page: nothing of what was shown stays in memory, and the sign-in view comes
  location.replace(location.pathname);
}

/** Back to the viewer page that sent the browser here to sign in, if one did. */
function goBack() {
  const path = sessionStorage.getItem(RETURN);
  sessionStorage.removeItem(RETURN);
  if (!path || !RETURN_PATH.test(path)) return false;
  location.replace(path);
  return true;
}

async function readConfig() {
  try {
    const res = await fetch("/auth/config", { headers: { Accept: "application/json" } });
    if (res.ok) {
      const body = await res.json();
      return { access_control: body.access_control === true, oidc: body.oidc ?? null };
    }
  } catch {
    // below
  }
  // A gateway without it (or none answering): no sign-in until an answer asks for one (401).
  return { access_control: false, oidc: null };
}

function hostOf(url) {
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}
