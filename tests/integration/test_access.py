"""Who may do what (issue 12): API keys kept as digests in Redis, and OpenID Connect tokens
really signed, verified against a JWKS this test serves over HTTP itself."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from api_gateway.access import (
    ANONYMOUS,
    Access,
    KeyStore,
    OidcConfig,
    OidcVerifier,
    Principal,
    Scope,
    Unauthenticated,
    scopes_of,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from redis.asyncio import Redis

from shared import redis_names as names
from tests.support import free_port

ISSUER, AUDIENCE = "https://issuer.example", "dicomflow"
ROLES = {
    Scope.READ: ("dicomflow-read",),
    Scope.WRITE: ("dicomflow-write",),
    Scope.ADMIN: ("dicomflow-admin",),
}


# -- API keys ------------------------------------------------------------------------------


async def test_a_key_is_shown_once_kept_as_a_digest_and_names_its_holder(redis: Redis) -> None:
    keys = KeyStore(redis)
    key, secret = await keys.create("modality-ct1", [Scope.WRITE])
    stored = await redis.hget(names.API_KEYS, key.id)
    assert stored is not None
    assert secret not in stored
    assert secret.split("_")[-1] not in stored
    assert json.loads(stored)["scopes"] == ["write"]

    principal = await keys.authenticate(secret)
    assert principal == Principal("key:modality-ct1", frozenset({Scope.WRITE}))
    assert principal.may(Scope.WRITE)
    assert not principal.may(Scope.READ)  # writing does not give reading

    assert [k.name for k in await keys.list()] == ["modality-ct1"]
    assert "digest" not in (await keys.list())[0].as_json()


async def test_a_wrong_unknown_or_revoked_key_is_nobody(redis: Redis) -> None:
    keys = KeyStore(redis)
    key, secret = await keys.create("viewer", [Scope.READ])
    other, other_secret = await keys.create("admin", [Scope.ADMIN])
    assert await keys.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert await keys.authenticate(f"dfk_{other.id}_{secret.split('_', 2)[2]}") is None
    assert await keys.authenticate("dfk_") is None
    assert await keys.authenticate("dfk_000000000000_nothing") is None
    assert (await keys.revoke(key.id)) == key
    assert await keys.revoke(key.id) is None
    assert await keys.authenticate(secret) is None
    assert await keys.authenticate(other_secret) is not None  # the other key still works


async def test_admin_holds_every_scope_and_a_key_needs_a_name_and_a_scope(redis: Redis) -> None:
    keys = KeyStore(redis)
    _, secret = await keys.create("ops", [Scope.ADMIN])
    principal = await keys.authenticate(secret)
    assert principal is not None
    assert all(principal.may(scope) for scope in Scope)
    with pytest.raises(ValueError, match="name"):
        await keys.create(" ", [Scope.READ])
    with pytest.raises(ValueError, match="scope"):
        await keys.create("none", [])
    with pytest.raises(ValueError, match="scopes are"):
        scopes_of(["read", "delete"])


def test_the_first_admin_key_is_made_beside_redis_with_the_gateways_command(
    flushed_redis: str,
) -> None:
    def command(*args: str, redis_url: str = flushed_redis) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "REDIS_URL": redis_url}
        return subprocess.run(
            [sys.executable, "-m", "api_gateway", "keys", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    made = command("create", "ops", "--scope", "admin")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["name"] == "ops"
    assert key["scopes"] == ["admin"]
    assert key["key"].startswith("dfk_")
    listed = command("list")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [key["id"]]
    assert key["key"] not in listed.stdout
    assert command("revoke", key["id"]).returncode == 0
    missing = command("revoke", key["id"])
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        f"api-gateway: no API key has the id {key['id']}",
    )
    assert command("create", "x", "--scope", "delete").returncode == 2  # argparse's usage error
    down = command("list", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 2
    assert down.stderr.strip() == "api-gateway: Redis (REDIS_URL) cannot be reached"


# -- OpenID Connect --------------------------------------------------------------------------


class Issuer:
    """An RSA and an EC signing key, their JWKS served over HTTP (with the discovery document),
    and tokens signed with them."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.kids = {"rsa-1": self.rsa, "ec-1": self.ec}
        self.published = ["rsa-1", "ec-1"]
        self.jwks_requests = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": ISSUER, "jwks_uri": f"{issuer.url}/jwks"}
                elif self.path == "/jwks":
                    issuer.jwks_requests += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            jwk = json.loads(
                jwt.algorithms.get_default_algorithms()[self.alg(kid)].to_jwk(
                    self.kids[kid].public_key()
                )
            )
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    @staticmethod
    def alg(kid: str) -> str:
        return "RS256" if kid.startswith("rsa") else "ES256"

    def token(
        self, kid: str = "rsa-1", headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            "realm_access": {"roles": ["dicomflow-read", "offline_access"]},
            **claims,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(
            payload,
            self.kids[kid],
            algorithm=self.alg(kid),
            headers={"kid": kid, **(headers or {})},
        )

    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    running = Issuer()
    yield running
    running.server.shutdown()


def verifier(jwks_url: str | None, **config: Any) -> OidcVerifier:
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": jwks_url,
        "algorithms": ("RS256", "ES256"),
        "scope_claim": "realm_access.roles",
        "scope_values": ROLES,
        "leeway_s": 5,
        **config,
    }
    return OidcVerifier(OidcConfig(**settings), refresh_s=0)


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_a_token_signed_by_the_issuer_gives_its_subject_and_mapped_roles(
    issuer: Issuer,
) -> None:
    oidc = verifier(f"{issuer.url}/jwks")
    alice = await oidc.authenticate(issuer.token())
    assert alice == Principal("oidc:alice", frozenset({Scope.READ}))
    bob = await oidc.authenticate(
        issuer.token("ec-1", sub="bob", realm_access={"roles": ["dicomflow-write"]})
    )
    assert bob == Principal("oidc:bob", frozenset({Scope.WRITE}))
    # a space-separated scope claim, as OAuth 2.0 servers send it
    spaced = verifier(f"{issuer.url}/jwks", scope_claim="scope")
    carol = await spaced.authenticate(issuer.token(sub="carol", scope="openid dicomflow-admin"))
    assert carol is not None
    assert carol.scopes == {Scope.ADMIN}


async def test_the_jwks_is_found_from_the_issuers_discovery_document(issuer: Issuer) -> None:
    discovered = verifier(None, issuer=issuer.url)
    token = issuer.token(iss=issuer.url)
    assert await discovered.authenticate(token) == Principal("oidc:alice", frozenset({Scope.READ}))


async def test_every_forged_or_stale_token_is_refused(issuer: Issuer) -> None:
    oidc = verifier(f"{issuer.url}/jwks")
    now = int(time.time())
    header, payload, _ = issuer.token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    refused = {
        "expired": issuer.token(exp=now - 60),
        "not yet valid": issuer.token(nbf=now + 60),
        "wrong audience": issuer.token(aud="someone-else"),
        "wrong issuer": issuer.token(iss="https://evil.example"),
        "no subject": issuer.token(sub=None),
        "no expiry": issuer.token(exp=None),
        "unknown key": issuer.token(headers={"kid": "rsa-2"}),
        "alg none": f"{_b64({'alg': 'none', 'kid': 'rsa-1'})}.{payload}.",
        "HS256 with the public key": _hs256_with(issuer.public_pem(), claims),
        "tampered payload": ".".join(
            [header, _b64({**claims, "realm_access": {"roles": ["dicomflow-admin"]}}), _]
        ),
        "EC key named by an RSA token": issuer.token("ec-1", headers={"kid": "rsa-1"}),
        "not a JWT": "hello",
    }
    for reason, token in refused.items():
        assert await oidc.authenticate(token) is None, reason


def _hs256_with(key: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token keyed with the issuer's public key: the classic algorithm confusion
    (PyJWT itself refuses to make one, so it is made by hand)."""
    import hashlib
    import hmac

    signing = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{_b64(claims)}"
    signature = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(signature)}"


async def test_a_rotated_key_is_fetched_once_and_an_unknown_one_does_not_hammer(
    issuer: Issuer,
) -> None:
    oidc = OidcVerifier(verifier(f"{issuer.url}/jwks").config, refresh_s=60)
    before = issuer.jwks_requests
    assert await oidc.authenticate(issuer.token()) is not None
    assert await oidc.authenticate(issuer.token("ec-1")) is not None
    assert issuer.jwks_requests == before + 1  # both keys came in one fetch
    for _ in range(5):
        assert await oidc.authenticate(issuer.token(headers={"kid": "nope"})) is None
    assert issuer.jwks_requests == before + 1  # unknown ids wait for refresh_s


# -- the door --------------------------------------------------------------------------------


async def test_the_door_asks_for_a_credential_and_names_no_part_of_a_wrong_one(
    redis: Redis, issuer: Issuer
) -> None:
    keys = KeyStore(redis)
    _, secret = await keys.create("pacs", [Scope.READ, Scope.WRITE])
    door = Access(True, keys, verifier(f"{issuer.url}/jwks"))
    assert (await door.principal(f"Bearer {secret}", None)).actor == "key:pacs"
    assert (await door.principal(None, secret)).actor == "key:pacs"  # X-API-Key
    assert (await door.principal(f"bearer {issuer.token()}", None)).actor == "oidc:alice"
    for authorization in (None, "", "Bearer", "Basic dXNlcjpwYXNz", f"Token {secret}"):
        with pytest.raises(Unauthenticated, match="send a credential"):
            await door.principal(authorization, None)
    for wrong in (secret + "x", issuer.token(aud="other"), "dfk_garbage"):
        with pytest.raises(Unauthenticated, match="not valid") as refused:
            await door.principal(f"Bearer {wrong}", None)
        assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    without_oidc = Access(True, keys, None)
    with pytest.raises(Unauthenticated):
        await without_oidc.principal(f"Bearer {issuer.token()}", None)
    assert await Access(False, keys, None).principal(None, None) is ANONYMOUS
