"""The one intake against a real Redis whose answers a proxy holds back: a transaction that ran
is known to have run, one that did not never will, whatever the timeouts (the HTTP ways in
rely on the Redis client's own; dimse-service gives one, see test_dimse)."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from shared import intake
from shared import redis_names as names
from shared.errors import QueueOutcomeUnknown, ServiceUnavailable
from shared.events import FileReceived
from shared.jobs import JobStore
from testbed.processes import free_port
from tests.redis_proxy import HoldingProxy


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _received(folder: Path) -> FileReceived:
    path = folder / f"{uuid4()}.dcm"
    path.write_bytes(b"\0" * 132)
    return intake.received(uuid4(), path, "0" * 64, 132)


async def test_a_transaction_answered_after_the_client_timed_out_counts_as_done(
    redis: Redis, flushed_redis: str, tmp_path: Path
) -> None:
    event = _received(tmp_path)
    async with HoldingProxy(_port(flushed_redis)) as proxy:
        client = Redis.from_url(proxy.url, decode_responses=True, socket_timeout=0.5)
        try:
            proxy.hold(b"EXEC", "replies")
            assert await intake.queue(JobStore(client), [event]) == set()
        finally:
            await client.aclose()
    job = await JobStore(redis).read(event.upload_id)
    assert job is not None
    assert job.status == "accepted"
    assert await redis.xlen(names.FILE_RECEIVED) == 1  # not sent again: queued once


async def test_a_transaction_that_reaches_redis_after_it_was_given_up_runs_nothing(
    redis: Redis, flushed_redis: str, tmp_path: Path
) -> None:
    event = _received(tmp_path)
    async with HoldingProxy(_port(flushed_redis)) as proxy:
        client = Redis.from_url(proxy.url, decode_responses=True, socket_timeout=0.5)
        try:
            proxy.hold(b"EXEC", "request")
            with pytest.raises(ServiceUnavailable) as refused:
                await intake.queue(JobStore(client), [event])
            late = await proxy.late()
        finally:
            await client.aclose()
    assert not isinstance(refused.value, QueueOutcomeUnknown)
    assert late.endswith((b"\r\n*-1\r\n", b"\r\n_\r\n"))  # EXEC: nil
    assert await JobStore(redis).read(event.upload_id) is None
    assert await redis.zcard(names.JOBS_BY_TIME) == 0
    assert await redis.exists(names.intake_fence_key(event.upload_id))


async def test_an_outcome_redis_cannot_tell_is_unknown(
    redis: Redis, flushed_redis: str, tmp_path: Path
) -> None:
    event = _received(tmp_path)
    async with HoldingProxy(_port(flushed_redis)) as proxy:
        client = Redis.from_url(proxy.url, decode_responses=True)
        try:
            proxy.hold(b"EXEC", "replies", every_connection=True)
            with pytest.raises(QueueOutcomeUnknown):
                await intake.queue(JobStore(client), [event], transaction_timeout=0.3)
        finally:
            await client.aclose()
    assert await JobStore(redis).read(event.upload_id) is not None  # it had run


async def test_redis_gone_is_refused_at_once_and_nothing_is_created(tmp_path: Path) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        with pytest.raises(ServiceUnavailable) as refused:
            await intake.queue(JobStore(client), [_received(tmp_path)])
    finally:
        await client.aclose()
    assert not isinstance(refused.value, QueueOutcomeUnknown)
