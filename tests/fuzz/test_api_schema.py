"""Every operation of the running gateway's OpenAPI document, fuzzed by schemathesis.

The gateway runs as ``make run`` runs it (uvicorn, its lifespan, a Redis of its own), with
access control on, and schemathesis sends every operation of ``/openapi.json`` requests built
from its documented parameters and bodies, with an admin API key. Each answer must not be a
server error and must match the schema documented for its status code (and its status code
and content type must be documented ones). The live feed ``GET /events`` is an endless stream:
it is left out here (``test_access_routes`` and ``test_feed`` ask it). Deletions run like the
rest: against random ids they are 404s.

The gateway is served from a thread of its own, since schemathesis calls it synchronously
(``requests``) from the test; ``served_gateway`` serves from the test's own event loop, which
would then never run. The operations are read from the document of an app built as the served
one is, so that pytest lists each as a test of its own (schemathesis's loader from a fixture
does not run on pytest 9.2); ``test_the_served_document_is_the_one_fuzzed`` holds them equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import schemathesis.checks
import uvicorn
from api_gateway.access import KeyStore, Scope
from api_gateway.app import create_app
from api_gateway.settings import GatewaySettings
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis

from tests.fuzz.bounds import CASES
from tests.fuzz.conftest import PROFILE
from tests.support import free_port

# examples per operation: the whole run well under a minute in CI, minutes in make fuzz
EXAMPLES = 250 if PROFILE == "fuzz" else 8
LIVE_FEED = "/events"
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.response_schema_conformance,  # type: ignore[attr-defined]
    schemathesis.checks.status_code_conformance,  # type: ignore[attr-defined]
    schemathesis.checks.content_type_conformance,  # type: ignore[attr-defined]
]


# the raw upload's body is the file's bytes, sent as any binary body is
schemathesis.serializer.alias("application/dicom", "application/octet-stream")
STOW_BOUNDARY = "dicomflow-fuzz"


@schemathesis.serializer("multipart/related")
def stow_body(_context: Any, value: Any) -> dict[str, Any]:
    """STOW-RS's body: what schemathesis made of the documented binary, as one part."""
    data = value if isinstance(value, bytes) else str(value).encode()
    part = b"Content-Type: application/dicom\r\n\r\n" + data
    return {
        "data": b"--%s\r\n%s\r\n--%s--" % (STOW_BOUNDARY.encode(), part, STOW_BOUNDARY.encode()),
        "headers": {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'
        },
    }


NOT_CONFIGURED = "/problems/not-configured"  # 501: S3 or DICOMweb routes, none set up here


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # signals stay pytest's
        yield


def gateway_settings(**more: Any) -> GatewaySettings:
    return GatewaySettings(ACCESS_CONTROL="on", FSYNC_UPLOADS=False, **more)


DOCUMENT = create_app(gateway_settings()).openapi()  # builds the app only: no I/O
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path=LIVE_FEED)


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway with access control on, served by uvicorn in a thread: its base URL."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    folder = tmp_path_factory.mktemp("api")
    served = gateway_settings(
        REDIS_URL=redis_url, UPLOADS_PATH=folder / "uploads", ARCHIVE_PATH=folder / "archive"
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(served),
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        threading.Event().wait(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def admin_key(gateway: str, redis_url: str) -> str:
    async def make() -> str:
        redis = Redis.from_url(redis_url, decode_responses=True)
        try:
            return (await KeyStore(redis).create("schemathesis", [Scope.ADMIN]))[1]
        finally:
            await redis.aclose()

    return asyncio.run(make())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,  # a request's time is the server's; the hard bound is the client timeout
    derandomize=PROFILE != "fuzz",
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case: Any, gateway: str, admin_key: str) -> None:
    CASES["API operations (schemathesis)"] += 1
    headers = {"Authorization": f"Bearer {admin_key}"}
    response = case.call(base_url=gateway, headers=headers, timeout=10)
    if response.status_code == 501 and response.json()["type"] == NOT_CONFIGURED:
        return  # documented (README): S3 and DICOMweb routes need their variables set
    case.validate_response(response, checks=CHECKS, headers=headers)


def test_the_served_document_is_the_one_fuzzed(gateway: str) -> None:
    """The operations fuzzed are the running gateway's, and there are many of them."""
    import httpx

    assert httpx.get(f"{gateway}/openapi.json", timeout=10).json() == DOCUMENT
    paths = set(DOCUMENT["paths"])
    assert {"/upload", "/status/{study_id}", "/dicomweb/studies", "/keys"} <= paths
    assert len(paths) > 50
