"""The gateway under test, built one way for every integration test: ``create_app`` on the
session's Redis, with its lifespan run, reached in-process (``client``) or over a socket
(``served_gateway``).

A module changes the gateway's settings by overriding ``gateway_env`` (a fixture, or
``@pytest.mark.parametrize("gateway_env", [...])`` for one test); a test may replace a
dependency with ``gateway_app.dependency_overrides``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from api_gateway.app import create_app
from api_gateway.settings import GatewaySettings
from fastapi import FastAPI

from shared.http_limits import server_config
from tests.support import free_port


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    """The gateway's uploads folder (made by its lifespan)."""
    return tmp_path / "uploads"


@pytest.fixture
def gateway_env() -> dict[str, Any]:
    """Settings of the gateway under test beyond the defaults (by their variable names)."""
    return {}


@pytest.fixture
def gateway_settings(
    flushed_redis: str, uploads: Path, gateway_env: dict[str, Any]
) -> GatewaySettings:
    defaults: dict[str, Any] = {
        "REDIS_URL": flushed_redis,
        "UPLOADS_PATH": uploads,
        "ARCHIVE_PATH": uploads.parent / "archive",
        "FSYNC_UPLOADS": False,
    }
    return GatewaySettings(**{**defaults, **gateway_env})


@pytest.fixture
def gateway_app(gateway_settings: GatewaySettings) -> FastAPI:
    """The gateway's app as ``__main__`` builds it (no I/O until its lifespan runs)."""
    return create_app(gateway_settings)


@pytest.fixture
async def client(gateway_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway in-process, its lifespan started before and stopped after."""
    async with gateway_app.router.lifespan_context(gateway_app):
        transport = httpx.ASGITransport(app=gateway_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            yield c


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handling alone
        yield


@pytest.fixture
async def served_gateway(
    gateway_app: FastAPI, gateway_settings: GatewaySettings
) -> AsyncIterator[str]:
    """The gateway served by uvicorn on a free port as every service is (``server_config``:
    its HTTP limits from the settings), lifespan on: its base URL."""
    port = free_port()
    config = server_config(
        gateway_app, gateway_settings, port, host="127.0.0.1", timeout_graceful_shutdown=2
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task
