"""Fixtures every test layer shares: a Redis of our own for the session."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from redis.asyncio import Redis

from tests.support import RedisServer, docker_answers


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of our own: TEST_REDIS_URL if given, else a fresh redis-server on a free port.

    A Docker engine is not needed (there is none on the development machines): the same
    redis-server binary runs as a process. A Redis of our own keeps tests off the machine's
    Redis on 6379 and lets several runs go in parallel.
    """
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    if docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def flushed_redis(redis_url: str) -> str:
    """The session's Redis, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    client.close()
    return redis_url


@pytest.fixture
async def redis(flushed_redis: str) -> AsyncIterator[Redis]:
    """An asyncio client of the emptied Redis, closed after the test."""
    client = Redis.from_url(flushed_redis, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The logging set-up as it was before the test configured the services' own."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = handlers, level
    logging.getLogger("pydicom").disabled = False
