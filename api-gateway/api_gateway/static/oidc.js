// Signing in at an OpenID Connect issuer as a browser app does (no secret): the Authorization
// Code flow with PKCE (RFC 7636, S256). The dashboard is the issuer's public client
// (OIDC_CLIENT_ID); `start` sends the browser to the issuer's sign-in page, which sends it back
// to this page ("/") with ?code=…&state=…; `finish` checks the state and exchanges the code,
// with the verifier only this tab knows, at the issuer's token endpoint for an access token.
// The endpoints come from the issuer's discovery document.

const PENDING = "dicomflow.oidc-pending"; // sessionStorage: {state, verifier, hash}

/** Whether the issuer just sent the browser back here (with a code, or an error). */
export function returning() {
  const params = new URLSearchParams(location.search);
  return params.has("state") && (params.has("code") || params.has("error"));
}

/** Go to the issuer's sign-in page; the browser comes back to `finish`. */
export async function start(oidc) {
  if (!crypto.subtle) {
    throw new Error("signing in at the issuer needs this page on https (or localhost)");
  }
  const found = await discover(oidc.issuer);
  const verifier = randomText(32);
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const state = randomText(16);
  sessionStorage.setItem(PENDING, JSON.stringify({ state, verifier, hash: location.hash }));
  const url = new URL(found.authorization_endpoint);
  for (const [name, value] of Object.entries({
    response_type: "code",
    client_id: oidc.client_id,
    redirect_uri: redirectUri(),
    scope: oidc.scopes.join(" "),
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  })) {
    url.searchParams.set(name, value);
  }
  location.assign(url.href);
}

/**
 * The issuer's answer in this page's URL, turned into a credential ({kind, token, who,
 * expires_at}); the URL is put back as it was before the sign-in (no code left in it or in
 * the history). Throws an Error saying what went wrong.
 */
export async function finish(oidc) {
  const params = new URLSearchParams(location.search);
  let pending = null;
  try {
    pending = JSON.parse(sessionStorage.getItem(PENDING));
  } catch {
    // none: below
  }
  sessionStorage.removeItem(PENDING);
  history.replaceState(null, "", `${location.pathname}${pending?.hash ?? ""}`);
  if (!pending || params.get("state") !== pending.state) {
    throw new Error("the answer does not belong to a sign-in started in this tab");
  }
  if (params.has("error")) {
    throw new Error(`the issuer said: ${params.get("error_description") || params.get("error")}`);
  }
  if (params.has("iss") && params.get("iss") !== oidc.issuer) {
    throw new Error("the answer comes from another issuer"); // RFC 9207
  }
  const found = await discover(oidc.issuer);
  let res;
  try {
    res = await fetch(found.token_endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
      body: new URLSearchParams({
        grant_type: "authorization_code",
        code: params.get("code") ?? "",
        redirect_uri: redirectUri(),
        client_id: oidc.client_id,
        code_verifier: pending.verifier,
      }),
    });
  } catch {
    throw new Error("the issuer's token endpoint did not answer (is this page's origin allowed there?)");
  }
  const body = await res.json().catch(() => null);
  if (!res.ok || typeof body?.access_token !== "string") {
    throw new Error(`the issuer gave no token: ${body?.error_description || body?.error || res.status}`);
  }
  const lifetime = Number(body.expires_in);
  return {
    kind: "oidc",
    token: body.access_token,
    who: nameIn(body.id_token) ?? nameIn(body.access_token),
    expires_at: Number.isFinite(lifetime) ? Date.now() + lifetime * 1000 : null,
  };
}

/** The issuer's discovery document (its endpoints), checked to be the issuer's own. */
async function discover(issuer) {
  let found = null;
  try {
    const res = await fetch(`${issuer.replace(/\/+$/, "")}/.well-known/openid-configuration`, {
      headers: { Accept: "application/json" },
    });
    found = res.ok ? await res.json() : null;
  } catch {
    // below
  }
  if (!found?.authorization_endpoint || !found.token_endpoint) {
    throw new Error("the issuer's discovery document could not be read");
  }
  if (found.issuer !== issuer) throw new Error("the discovery document names another issuer");
  return found;
}

function redirectUri() {
  return `${location.origin}/`;
}

/** A name to show from a JWT's claims (not verified: only for the eye; the gateway verifies
 * the access token at each request). */
function nameIn(jwt) {
  try {
    const payload = jwt.split(".")[1].replaceAll("-", "+").replaceAll("_", "/");
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(payload), (c) => c.charCodeAt(0))));
    const name = claims.preferred_username || claims.email || claims.name || claims.sub;
    return typeof name === "string" && name ? name : null;
  } catch {
    return null;
  }
}

function randomText(bytes) {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

function base64url(buffer) {
  const bytes = new Uint8Array(buffer);
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}
