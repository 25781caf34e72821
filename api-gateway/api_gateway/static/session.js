// The credential this tab signed in with: an API key, or an access token from the OpenID
// Connect issuer. It lives in sessionStorage (this tab only, gone when it closes; never
// localStorage, never a URL) under one key, which the OHIF viewer's configuration reads too
// (api_gateway/static/ohif-signin.js), so a viewer opened from here sends it as well.

export const KEY = "dicomflow.credential";
export const UNAUTHORIZED = "dicomflow:unauthorized"; // a 401 came back: sign in again
const SIGNED_IN = "dicomflow:signed-in";

/** The credential held: {kind: "key"|"oidc", token, who, scopes, expires_at}, or null. */
export function held() {
  let credential = null;
  try {
    credential = JSON.parse(sessionStorage.getItem(KEY));
  } catch {
    return null; // storage refused (a sandboxed frame) or not ours: no credential
  }
  if (!credential || typeof credential.token !== "string" || !credential.token) return null;
  return credential;
}

/** Keep a credential for this tab, and tell whoever waits for one. */
export function keep(credential) {
  sessionStorage.setItem(KEY, JSON.stringify(credential));
  window.dispatchEvent(new CustomEvent(SIGNED_IN));
}

export function forget() {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // nothing was kept
  }
}

/** The Authorization header of every request to the gateway: none without a credential. */
export function authorization() {
  const credential = held();
  return credential ? { Authorization: `Bearer ${credential.token}` } : {};
}

/** The gateway answered 401: the credential is gone (revoked, expired) or there never was
 * one. The dashboard shows its sign-in view (app.js). */
export function unauthorized() {
  window.dispatchEvent(new CustomEvent(UNAUTHORIZED));
}

/** Resolves at the next sign-in. */
export function nextSignIn() {
  return new Promise((resolve) => window.addEventListener(SIGNED_IN, () => resolve(), { once: true }));
}

/** "this key may not list the jobs": the words for a 403, naming what was refused. */
export function mayNot(what) {
  const credential = held();
  const who = credential?.kind === "oidc" ? "your account" : "this key";
  return `${who} may not ${what}`;
}
