"""A tiny OpenID Connect provider for browser tests: the few routes a public client's sign-in
uses, with real redirects and real signatures.

- ``/.well-known/openid-configuration``: the discovery document;
- ``/authorize``: the Authorization Code request of a registered client and redirect URI, with a
  PKCE challenge (S256 only); nobody to ask, so it redirects back at once with a one-time code
  for ``user``;
- ``/token``: that code, with the verifier whose SHA-256 is the challenge, for an access token:
  an RS256 JWT of this issuer for ``audience``, with the scopes asked for that it grants;
- ``/jwks``: the public key that verifies it.

Browsers reach the discovery document and the token endpoint from the client's page (another
origin): both answer with CORS for the origins of the registered redirect URIs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

KID = "test-rsa-1"


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    scopes: list[str]


@dataclass
class OidcProvider:
    """Serves on 127.0.0.1 until ``stop``; ``issuer`` is its URL."""

    client_id: str
    audience: str
    user: str = "alice"
    grants: Iterable[str] = ("openid", "dicomflow.read", "dicomflow.write")
    lifetime_s: int = 300
    redirect_uris: set[str] = field(default_factory=set)  # registered: exact matches only
    issued: list[dict[str, Any]] = field(default_factory=list)  # each token's claims
    refused: list[str] = field(default_factory=list)  # why each refused request was refused

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.codes: dict[str, Grant] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["none"],
        }

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": KID, "use": "sig", "alg": "RS256"}]}

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """(status, where to redirect, or why not): an unregistered client or redirect URI is
        refused here, never redirected to."""
        redirect = query.get("redirect_uri", "")
        if query.get("client_id") != self.client_id or redirect not in self.redirect_uris:
            return self._refuse(400, "unknown client or redirect_uri")
        problem = None
        if query.get("response_type") != "code":
            problem = "unsupported_response_type"
        elif query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            problem = "invalid_request"  # PKCE with S256, nothing else
        if problem:
            self.refused.append(problem)
            return 302, _with(redirect, error=problem, state=query.get("state", ""))
        code = secrets.token_urlsafe(24)
        granted = [s for s in query.get("scope", "").split() if s in self.grants]
        self.codes[code] = Grant(self.client_id, redirect, query["code_challenge"], granted)
        return 302, _with(redirect, code=code, state=query.get("state", ""), iss=self.issuer)

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = self.codes.pop(form.get("code", ""), None)  # a code is good once
        verifier = form.get("code_verifier", "")
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        if (
            form.get("grant_type") != "authorization_code"
            or grant is None
            or form.get("client_id") != grant.client_id
            or form.get("redirect_uri") != grant.redirect_uri
            or not secrets.compare_digest(challenge, grant.challenge)
        ):
            self.refused.append("invalid_grant")
            return 400, {"error": "invalid_grant"}
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": f"{self.user}-subject",
            "preferred_username": self.user,
            "iat": now,
            "exp": now + self.lifetime_s,
            "scope": " ".join(grant.scopes),
            "azp": grant.client_id,
        }
        self.issued.append(claims)
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.lifetime_s,
            "scope": claims["scope"],
        }
        return 200, body

    def allowed_origin(self, origin: str | None) -> str | None:
        origins = {f"{p.scheme}://{p.netloc}" for p in map(urlsplit, self.redirect_uris)}
        return origin if origin in origins else None

    def _refuse(self, status: int, why: str) -> tuple[int, str]:
        self.refused.append(why)
        return status, why


def _with(url: str, **params: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _handler(provider: OidcProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/.well-known/openid-configuration":
                self._json(200, provider.discovery())
            elif parts.path == "/jwks":
                self._json(200, provider.jwks())
            elif parts.path == "/authorize":
                status, where = provider.authorize(query)
                if status != 302:
                    self._send(status, where.encode(), "text/plain")
                    return
                self.send_response(302)
                self.send_header("Location", where)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/token":
                self._send(404, b"not found", "text/plain")
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            self._json(*provider.token(form))

        def do_OPTIONS(self) -> None:  # a CORS preflight
            self.send_response(204)
            self._cors()
            self.send_header("Access-Control-Allow-Methods", "GET, POST")
            self.send_header("Access-Control-Allow-Headers", "Content-Type, Accept")
            self.end_headers()

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, data: bytes, media: str) -> None:
            self.send_response(status)
            self._cors()
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _cors(self) -> None:
            if origin := provider.allowed_origin(self.headers.get("Origin")):
                self.send_header("Access-Control-Allow-Origin", origin)
                self.send_header("Vary", "Origin")

        def log_message(self, *args: object) -> None:
            pass

    return Handler
