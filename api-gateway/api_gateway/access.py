"""Who may do what: three scopes, API keys for machines, OpenID Connect bearer tokens for people.

A request's credential is ``Authorization: Bearer <token>`` (or ``X-API-Key: <key>``). A token
shaped like one of our keys (``dfk_<id>_<secret>``) is looked up among the API keys, which Redis
keeps only as digests; any other is verified as a JWT from the configured OpenID Connect issuer,
against the signing keys of its JWKS. Either way the answer is a ``Principal``: who (a key's
name or a token's subject, never the secret) and the scopes they hold.

- **read**: status, search, images, originals, metadata, the feed, QIDO-RS and WADO-RS;
- **write**: uploads, batches, STOW-RS, retries;
- **admin**: deletes, secrets, the audit trail, ``/system``, key management; it includes the
  other two. Reading and writing are apart: a modality's key may send and see nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, cast

import httpx
import jwt
from fastapi import Request
from fastapi.routing import APIRoute
from redis.asyncio import Redis

from api_gateway.settings import GatewaySettings
from shared import redis_names as names
from shared.errors import AppError
from shared.service import OPEN

KEY_PREFIX = "dfk_"


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


class Unauthenticated(AppError):
    """No credential, or one that is not valid: 401, and a challenge for the client."""

    status, code = 401, "unauthenticated"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="dicomflow"'}


class Forbidden(AppError):
    """A valid credential without the scope the route needs."""

    status, code = 403, "forbidden"


@dataclass(frozen=True)
class Principal:
    """Who made a request and what they may do."""

    actor: str  # "key:<name>", "oidc:<subject>", or "anonymous" when access control is off
    scopes: frozenset[Scope]

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


ANONYMOUS = Principal("anonymous", frozenset(Scope))


def scopes_of(values: Iterable[str]) -> frozenset[Scope]:
    """Scopes from their names; an unknown name is an error, not ignored."""
    try:
        return frozenset(Scope(v.strip().lower()) for v in values if v.strip())
    except ValueError as exc:
        raise ValueError(f"scopes are {', '.join(Scope)}") from exc


# -- API keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    """One API key as listed: never its secret, which exists only in the creator's hands."""

    id: str
    name: str
    scopes: frozenset[Scope]
    created_at: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "created_at": self.created_at,
        }


class KeyStore:
    """API keys in one Redis hash, id → name, scopes, creation time and the key's SHA-256.

    A key is 256 random bits: a fast digest is as safe as a slow one for it (no dictionary to
    try), and a request pays one HGET and one hash to be checked."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def create(self, name: str, scopes: Iterable[Scope]) -> tuple[ApiKey, str]:
        """A new key; the secret is returned once and kept nowhere."""
        if not name.strip() or len(name) > 100:
            raise ValueError("a key's name has 1 to 100 characters")
        chosen = frozenset(scopes)
        if not chosen:
            raise ValueError("a key needs at least one scope")
        key_id = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id, name.strip(), chosen, datetime.now(UTC).isoformat())
        record = {**key.as_json(), "digest": _digest(secret)}
        await self.redis.hset(names.API_KEYS, key_id, json.dumps(record))
        return key, secret

    async def list(self) -> list[ApiKey]:
        records = cast(dict[str, str], await self.redis.hgetall(names.API_KEYS))
        keys = [_key_of(json.loads(raw)) for raw in records.values()]
        return sorted(keys, key=lambda k: k.created_at)

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Remove a key; the key removed, or None if there was none."""
        raw = cast(str | None, await self.redis.hget(names.API_KEYS, key_id))
        if raw is None or not await self.redis.hdel(names.API_KEYS, key_id):
            return None
        return _key_of(json.loads(raw))

    async def authenticate(self, secret: str) -> Principal | None:
        """The key's principal, or None when no key has that secret."""
        key_id = secret.removeprefix(KEY_PREFIX).partition("_")[0]
        raw = cast(str | None, await self.redis.hget(names.API_KEYS, key_id)) if key_id else None
        if raw is None:
            return None
        record = json.loads(raw)
        if not hmac.compare_digest(record["digest"], _digest(secret)):
            return None
        return Principal(f"key:{record['name']}", scopes_of(record["scopes"]))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _key_of(record: Mapping[str, Any]) -> ApiKey:
    return ApiKey(record["id"], record["name"], scopes_of(record["scopes"]), record["created_at"])


# -- OpenID Connect --------------------------------------------------------------------------


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    jwks_url: str | None  # None: from the issuer's /.well-known/openid-configuration
    algorithms: tuple[str, ...]  # asymmetric only: a token says its alg, we say which we take
    scope_claim: str  # a dotted path, e.g. "scope" or Keycloak's "realm_access.roles"
    scope_values: Mapping[Scope, tuple[str, ...]]  # the claim's values that grant each scope
    leeway_s: float = 30.0


class OidcVerifier:
    """Verifies bearer tokens from one issuer: signature (by the JWKS key the token names),
    algorithm, issuer, audience, expiry and not-before; then maps its scope claim to ours.

    The JWKS is fetched once and again only for a key id it does not hold (the issuer rotated
    its keys), at most once every ``refresh_s`` so unknown ids cannot make us hammer it."""

    def __init__(self, config: OidcConfig, refresh_s: float = 60.0) -> None:
        self.config = config
        self.refresh_s = refresh_s
        self._jwks: dict[str, dict[str, Any]] = {}  # the issuer's public keys by key id
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def authenticate(self, token: str) -> Principal | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self.config.algorithms or not isinstance(kid, str):
            return None  # "none", HS256 and any other we did not choose end here
        jwk = await self._jwk(kid)
        if jwk is None:
            return None
        try:
            # bound to the key's own alg when it states one, else to the token's (one we
            # accept): a key never verifies under an algorithm of the token's choosing
            key = jwt.PyJWK(jwk, algorithm=jwk.get("alg") or algorithm)
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self.config.algorithms),
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError:
            return None
        return Principal(f"oidc:{claims['sub']}", self._scopes(claims))

    def _scopes(self, claims: Mapping[str, Any]) -> frozenset[Scope]:
        value: Any = claims
        for part in self.config.scope_claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        held = set(value.split() if isinstance(value, str) else value or ())
        return frozenset(s for s, grants in self.config.scope_values.items() if held & set(grants))

    async def _jwk(self, kid: str) -> dict[str, Any] | None:
        if kid not in self._jwks:
            async with self._lock:
                if kid not in self._jwks and time.monotonic() - self._fetched_at >= self.refresh_s:
                    self._fetched_at = time.monotonic()
                    self._jwks = await self._fetch_jwks()
        return self._jwks.get(kid)

    async def _fetch_jwks(self) -> dict[str, dict[str, Any]]:
        """The issuer's public signing keys by id; the ones we had when it cannot be reached.
        Symmetric keys (``oct``) and encryption keys are never signing keys of an issuer."""
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                url = self.config.jwks_url or await self._jwks_url(client)
                reply = await client.get(url)
                reply.raise_for_status()
                keys = reply.json()["keys"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return self._jwks
        return {
            k["kid"]: k
            for k in keys
            if isinstance(k, dict)
            and isinstance(k.get("kid"), str)
            and k.get("kty") in ("RSA", "EC", "OKP")
            and k.get("use", "sig") == "sig"
        }

    async def _jwks_url(self, client: httpx.AsyncClient) -> str:
        issuer = self.config.issuer.rstrip("/")
        reply = await client.get(f"{issuer}/.well-known/openid-configuration")
        reply.raise_for_status()
        return str(reply.json()["jwks_uri"])


# -- the door --------------------------------------------------------------------------------


class Access:
    """How a request's credential becomes a Principal; with access control off, everyone is
    ``ANONYMOUS`` and may do everything (``make run`` on 127.0.0.1)."""

    def __init__(self, enabled: bool, keys: KeyStore, oidc: OidcVerifier | None) -> None:
        self.enabled = enabled
        self.keys = keys
        self.oidc = oidc

    async def principal(self, authorization: str | None, api_key: str | None) -> Principal:
        """The principal of the credential sent in ``Authorization`` or ``X-API-Key``; neither
        401's detail nor its timing says which part of a credential was wrong."""
        if not self.enabled:
            return ANONYMOUS
        token = api_key or _bearer(authorization)
        if not token:
            raise Unauthenticated("send a credential: Authorization: Bearer <API key or token>")
        if token.startswith(KEY_PREFIX):
            found = await self.keys.authenticate(token)
        else:
            found = await self.oidc.authenticate(token) if self.oidc else None
        if found is None:
            raise Unauthenticated("the credential is not valid (unknown, revoked or expired)")
        return found


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def access_of(settings: GatewaySettings, redis: Redis) -> Access:
    """The door the settings describe (OpenID Connect when an issuer and audience are set)."""
    oidc = None
    if settings.oidc_issuer and settings.oidc_audience:
        values = {
            Scope.READ: settings.oidc_read_values,
            Scope.WRITE: settings.oidc_write_values,
            Scope.ADMIN: settings.oidc_admin_values,
        }
        config = OidcConfig(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=str(settings.oidc_jwks_url) if settings.oidc_jwks_url else None,
            algorithms=tuple(a.strip() for a in settings.oidc_algorithms.split(",") if a.strip()),
            scope_claim=settings.oidc_scope_claim,
            scope_values={s: tuple(v.strip() for v in vs.split(",")) for s, vs in values.items()},
        )
        oidc = OidcVerifier(config)
    return Access(settings.access_enabled, KeyStore(redis), oidc)


# -- what each route needs -------------------------------------------------------------------

SECURITY_SCHEME = "bearer"  # the OpenAPI document's name of Authorization: Bearer
AUDIT_KEY = "x-audit"  # the action a route's requests are recorded as, in its OpenAPI operation


def needs(scope: Scope | None, audit: str | None = None) -> dict[str, Any]:
    """A route's ``openapi_extra`` saying the scope it needs in OpenAPI's own terms, which the
    door enforces and the API docs show; ``None``: open to anyone (probes, static pages).
    ``audit``: the action the audit trail records for each request (``api_gateway.auditing``)."""
    extra: dict[str, Any] = (
        {"security": [{SECURITY_SCHEME: [scope.value]}]} if scope else dict(OPEN)
    )
    if audit:
        extra[AUDIT_KEY] = audit
    return extra


def needed(route: APIRoute) -> Scope | None:
    """The scope a route declared with ``needs``; one that declared none needs admin, so a
    route added without thought is closed (and ``tests/unit/gateway/test_access_routes.py``
    fails for it)."""
    security = (route.openapi_extra or {}).get("security")
    if security is None:
        return Scope.ADMIN
    scopes = [scope for requirement in security for scope in requirement.get(SECURITY_SCHEME, [])]
    return Scope(scopes[0]) if scopes else None


async def authorize(request: Request) -> Principal:
    """The app-wide dependency: the request's principal, when it may use the route it asked
    for; kept on ``request.state.principal`` for the audit trail and the job's details."""
    settings: GatewaySettings = request.app.state.settings
    route = request.scope.get("route")
    scope = needed(route) if isinstance(route, APIRoute) else Scope.ADMIN
    if not settings.access_enabled or scope is None:
        principal = ANONYMOUS
    else:
        door: Access = request.app.state.access
        principal = await door.principal(
            request.headers.get("authorization"), request.headers.get("x-api-key")
        )
    request.state.principal = principal  # the audit trail names who was refused, too
    if scope is not None and not principal.may(scope):
        raise Forbidden(f"this needs the {scope} scope")
    return principal
