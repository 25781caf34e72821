"""Every route of the gateway behind the door (issue 12): walked from the app's own route list,
so a route added later cannot slip through.

With access control on, each route is asked without a credential (401 and a Bearer challenge,
unless it declared itself open), and with a key of each scope (403 without the scope, never 401
nor 403 with it). The gateway is served by uvicorn and each answer's status read without its
body, so the live feed's endless stream is asked like any other route.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_gateway.access import KeyStore, Scope, needed
from api_gateway.app import create_app
from api_gateway.settings import GatewaySettings
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from redis.asyncio import Redis
from structlog.testing import capture_logs


@pytest.fixture
def gateway_env() -> dict[str, Any]:
    return {"ACCESS_CONTROL": "on"}


UUID = "7c0e8a1e-5a8b-4a53-9a38-3b1e6f0d2c11"
SAMPLES = {  # a value for each path parameter, by name; any other gets "x"
    "study_id": UUID,
    "upload_id": UUID,
    "job_id": UUID,
    "file_id": UUID,
    "study": "1.2",
    "series": "1.3",
    "sop": "1.4",
    "frames": "1",
    "tag_path": "7FE00010",
    "path": "app.js",
    "file": "a/b.dcm",
}


# the routes anyone may call: the probes, the metrics (METRICS_PUBLIC), the dashboard's page
# and its files, the OHIF viewer's files (they hold no data: the pages ask for a credential,
# then call the API with it)
OPEN = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/ui/app.js"),
    ("GET", "/viewer"),
    ("GET", "/viewer/app.js"),
    # the dashboard's sign-in: whether access control is on and the OIDC issuer's public
    # client (nothing secret); and whom a credential names, which checks the credential itself
    # so that a key of any scope may sign in (401 without a valid one: the test below)
    ("GET", "/auth/config"),
    ("GET", "/auth/whoami"),
}


# the policy, stated apart from the routes' own declarations: reading is GET, writing is POST
# and PUT, deleting is admin; and these, which the method does not tell
ADMIN = {
    ("GET", "/system"),
    ("GET", "/jobs/audit.csv"),
    ("GET", "/audit"),
    ("GET", "/keys"),
    ("POST", "/keys"),
}


def policy(method: str, path: str) -> Scope | None:
    if (method, path) in OPEN:
        return None
    if (method, path) in ADMIN or method == "DELETE":
        return Scope.ADMIN
    return Scope.WRITE if method in ("POST", "PUT") else Scope.READ


def walk(app: FastAPI) -> list[tuple[str, str, Scope | None]]:
    """(method, a path it answers, the scope it needs) for every route and method."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.route
        if not isinstance(route, APIRoute):
            continue
        path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: SAMPLES.get(m[1], "x"), context.path)
        for method in sorted(route.methods - {"HEAD"}):
            found.append((method, path, needed(route)))
    return found


@pytest.fixture
async def keys(flushed_redis: str, served_gateway: str) -> AsyncIterator[dict[Scope, str]]:
    """A key of each scope (made after the gateway started: its lifespan flushes nothing)."""
    redis = Redis.from_url(flushed_redis, decode_responses=True)
    store = KeyStore(redis)
    made = {scope: (await store.create(f"{scope}-key", [scope]))[1] for scope in Scope}
    yield made
    await redis.aclose()


async def status_of(client: httpx.AsyncClient, method: str, path: str, **headers: str) -> int:
    async with client.stream(method, path, headers=headers) as response:
        return response.status_code


async def test_every_route_refuses_the_anonymous_and_serves_each_scope_what_it_may_have(
    gateway_app: FastAPI, served_gateway: str, keys: dict[Scope, str]
) -> None:
    routes = walk(gateway_app)
    assert len(routes) > 70  # the walk found the routes: upload, DICOMweb, seeds', probes...
    # each route declares what the policy says (a route that opens itself, or needs another
    # scope than its method says, is added to the policy above, knowingly)
    assert {(m, p): s for m, p, s in routes} == {(m, p): policy(m, p) for m, p, _ in routes}
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=served_gateway, timeout=10) as client:
        for method, path, scope in routes:
            anonymous = await client.request(method, path) if scope else None
            if anonymous is not None and (
                anonymous.status_code != 401
                or not anonymous.headers.get("www-authenticate", "").startswith("Bearer")
                or anonymous.json()["type"] != "/problems/unauthenticated"
            ):
                problems.append(f"{method} {path} anonymous: {anonymous.status_code}")
            for held, key in keys.items():
                may = scope is None or held in (scope, Scope.ADMIN)
                status = await status_of(client, method, path, Authorization=f"Bearer {key}")
                if (may and status in (401, 403)) or (not may and status != 403):
                    problems.append(f"{method} {path} with a {held} key: {status}")
    assert problems == []


async def test_a_refusal_does_not_say_whether_the_thing_exists(
    served_gateway: str, keys: dict[Scope, str]
) -> None:
    write = {"Authorization": f"Bearer {keys[Scope.WRITE]}"}
    async with httpx.AsyncClient(base_url=served_gateway) as client:
        answers: list[dict[str, Any]] = []
        for upload_id in (UUID, "00000000-0000-0000-0000-000000000000", "not-an-id"):
            anonymous = await client.get(f"/uploads/{upload_id}")
            forbidden = await client.get(f"/uploads/{upload_id}", headers=write)
            assert (anonymous.status_code, forbidden.status_code) == (401, 403)
            answers.append({"anonymous": anonymous.json(), "forbidden": forbidden.json()})
    # the same problem whatever the id, but for the path it names
    for answer in answers:
        for body in answer.values():
            body.pop("instance")
    assert answers[0] == answers[1] == answers[2]


async def test_keys_are_made_listed_and_revoked_by_an_admin_and_a_revoked_key_is_refused(
    served_gateway: str, keys: dict[Scope, str]
) -> None:
    admin = {"Authorization": f"Bearer {keys[Scope.ADMIN]}"}
    async with httpx.AsyncClient(base_url=served_gateway) as client:
        made = await client.post(
            "/keys", json={"name": "ct-scanner", "scopes": ["write"]}, headers=admin
        )
        assert made.status_code == 201, made.text
        new = made.json()
        assert new["key"].startswith("dfk_")
        assert new["scopes"] == ["write"]
        listed = (await client.get("/keys", headers=admin)).json()
        assert new["id"] in {k["id"] for k in listed["keys"]}
        assert all("key" not in k and "digest" not in k for k in listed["keys"])
        scanner = {"X-API-Key": new["key"]}
        assert (await client.post("/upload", headers=scanner)).status_code == 400  # no file
        assert (await client.get("/uploads", headers=scanner)).status_code == 403
        bad = await client.post("/keys", json={"name": "x", "scopes": ["delete"]}, headers=admin)
        assert bad.status_code == 400
        revoked = await client.delete(f"/keys/{new['id']}", headers=admin)
        assert revoked.status_code == 200
        assert (await client.post("/upload", headers=scanner)).status_code == 401
        again = await client.delete(f"/keys/{new['id']}", headers=admin)
        assert again.status_code == 404
        assert again.json()["type"] == "/problems/key-not-found"


def test_a_route_that_declares_no_scope_needs_admin() -> None:
    app = FastAPI()

    @app.get("/forgotten")
    async def forgotten() -> None: ...

    route = next(r for r in app.routes if isinstance(r, APIRoute))
    assert needed(route) is Scope.ADMIN


@pytest.mark.parametrize("gateway_env", [{"ACCESS_CONTROL": "on", "METRICS_PUBLIC": "false"}])
async def test_metrics_can_be_closed(served_gateway: str, keys: dict[Scope, str]) -> None:
    async with httpx.AsyncClient(base_url=served_gateway) as client:
        assert (await client.get("/metrics")).status_code == 401
        admin = {"Authorization": f"Bearer {keys[Scope.ADMIN]}"}
        assert (await client.get("/metrics", headers=admin)).status_code == 200
        assert (await client.get("/health")).status_code == 200


async def test_the_dashboard_learns_how_to_sign_in_and_whom_a_credential_names(
    served_gateway: str, keys: dict[Scope, str]
) -> None:
    async with httpx.AsyncClient(base_url=served_gateway) as client:
        config = await client.get("/auth/config")
        assert config.json() == {"access_control": True, "oidc": None}
        nobody = await client.get("/auth/whoami")
        assert nobody.status_code == 401
        assert nobody.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.get("/auth/whoami", headers={"Authorization": "Bearer dfk_x_y"})
        assert wrong.status_code == 401
        named = {}
        for scope, key in keys.items():
            answer = await client.get("/auth/whoami", headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200, answer.text
            named[scope] = answer.json()
    assert named[Scope.WRITE] == {
        "actor": "key:write-key",
        "scopes": ["write"],
        "access_control": True,
    }
    assert named[Scope.READ]["scopes"] == ["read"]
    assert named[Scope.ADMIN]["scopes"] == ["read", "write", "admin"]  # admin holds the others


@pytest.mark.parametrize(
    "gateway_env",
    [
        {
            "ACCESS_CONTROL": "on",
            "OIDC_ISSUER": "https://sso.example.org:8443/realms/hospital",
            "OIDC_AUDIENCE": "dicomflow",
            "OIDC_CLIENT_ID": "dicomflow-dashboard",
            "OIDC_SCOPES": "openid dicomflow.read",
        }
    ],
)
async def test_with_a_public_client_the_dashboard_signs_in_at_the_issuer(
    served_gateway: str,
) -> None:
    async with httpx.AsyncClient(base_url=served_gateway) as client:
        config = (await client.get("/auth/config")).json()
        page = await client.get("/", headers={"Accept": "text/html"})
    assert config == {
        "access_control": True,
        "oidc": {
            "issuer": "https://sso.example.org:8443/realms/hospital",
            "client_id": "dicomflow-dashboard",
            "scopes": ["openid", "dicomflow.read"],
        },
    }
    # the page may fetch from the issuer's origin (discovery, the token), and nothing else new
    csp = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
    assert csp["connect-src"] == "'self' https://sso.example.org:8443"
    assert csp["script-src"] == "'self'"
    assert "unsafe" not in page.headers["content-security-policy"]


@pytest.mark.parametrize("gateway_env", [{"ACCESS_CONTROL": "off"}])
async def test_without_access_control_nobody_signs_in(served_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=served_gateway) as client:
        config = (await client.get("/auth/config")).json()
        who = (await client.get("/auth/whoami")).json()
    assert config == {"access_control": False, "oidc": None}
    assert who == {
        "actor": "anonymous",
        "scopes": ["read", "write", "admin"],
        "access_control": False,
    }


@pytest.mark.parametrize(
    ("host", "control", "on", "warned"),
    [
        ("127.0.0.1", "auto", False, False),  # make run: the README's curl works as it is
        ("0.0.0.0", "auto", True, False),  # compose, a server: a credential for everything
        ("0.0.0.0", "off", False, True),  # off where others reach it: said at start
        ("127.0.0.1", "on", True, False),
    ],
)
async def test_access_control_is_on_wherever_others_can_reach_the_gateway(
    gateway_settings: GatewaySettings, host: str, control: str, on: bool, warned: bool
) -> None:
    settings = gateway_settings.model_copy(update={"host": host, "access_control": control})
    assert settings.access_enabled is on
    app = create_app(settings)
    with capture_logs() as logs:
        async with app.router.lifespan_context(app):
            pass
    said = [line for line in logs if line["event"] == "access_control.off"]
    assert bool(said) is warned
    started = next(line for line in logs if line["event"] == "gateway.started")
    assert started["access_control"] is on
