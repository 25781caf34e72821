"""The live status feed (``GET /events``) and long-polled status, on a real gateway and Redis.

The gateway runs in uvicorn on a free port (an ASGI transport buffers whole responses, so it
cannot show a stream), and the changes are made as the status service makes them, through
``status_service.apply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from api_gateway.routes import events as feed
from fastapi import FastAPI
from redis.asyncio import Redis
from status_service.apply import apply

from shared import redis_names as names
from shared.events import (
    FileReceived,
    FileRef,
    FileRejected,
    FileValidated,
    Origin,
    Reason,
    StageStarted,
)
from shared.jobs import JobStore
from shared.status_feed import StatusFeed
from tests.support import dicom_ids, free_port

pytestmark = pytest.mark.timeout(30)

FILE = FileRef(path="/u/x.dcm", sha256="ab" * 32, size=10)
IDS = dicom_ids()


@dataclass
class Gateway:
    url: str
    app: FastAPI
    store: JobStore

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)


@pytest.fixture
async def gateway(
    flushed_redis: str, gateway_app: FastAPI, served_gateway: str
) -> AsyncIterator[Gateway]:
    redis = Redis.from_url(flushed_redis, decode_responses=True)
    yield Gateway(served_gateway, gateway_app, JobStore(redis))
    await redis.aclose()


@dataclass
class Sse:
    """One server-sent event block as a client sees it."""

    event: str | None = None
    id: str | None = None
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.data))


class Stream:
    """An open /events response, read block by block."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def block(self, seconds: float = 5) -> Sse | None:
        """The next block; None when the stream ended."""
        sse = Sse()
        seen = False
        async with asyncio.timeout(seconds):
            async for line in self.lines:
                if line == "":
                    if seen:
                        return sse
                    continue
                seen = True
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    sse.comments.append(value)
                elif name == "data":
                    sse.data = f"{sse.data}\n{value}" if sse.data else value
                elif name == "event":
                    sse.event = value
                elif name == "id":
                    sse.id = value
                elif name == "retry":
                    sse.retry = int(value)
        return sse if seen else None

    async def events(self, count: int, seconds: float = 5) -> list[Sse]:
        """The next ``count`` named events, pings skipped."""
        found: list[Sse] = []
        deadline = time.monotonic() + seconds
        while len(found) < count:
            block = await self.block(max(deadline - time.monotonic(), 0.01))
            assert block is not None, f"the stream ended after {found}"
            if block.event:
                found.append(block)
        return found

    async def nothing_for(self, seconds: float) -> None:
        """No named event arrives within ``seconds``."""
        with contextlib.suppress(TimeoutError):
            block = await self.block(seconds)
            assert block is None or not block.event, f"unexpected {block}"


@contextlib.asynccontextmanager
async def listen(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[Stream]:
    async with client.stream("GET", "/events", params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        stream = Stream(response)
        first = await stream.block()  # sent once the server's cursor is set
        assert first is not None
        assert first.retry == 2000
        yield stream


async def _received(store: JobStore, **origin: str) -> uuid.UUID:
    upload_id = uuid.uuid4()
    await apply(store, FileReceived(upload_id=upload_id, file=FILE, origin=Origin(**origin)))
    return upload_id


async def _feed_ids(store: JobStore) -> list[str]:
    entries: Any = await store.redis.xrange(names.STATUS_FEED)
    return [i for i, _ in entries]


# --- GET /events ------------------------------------------------------------------------------


async def test_every_change_applied_arrives_live_with_its_entry_id(gateway: Gateway) -> None:
    async with gateway.client() as client, listen(client) as stream:
        upload_id = await _received(gateway.store, label="knee", filename="a.dcm")
        await apply(gateway.store, StageStarted(upload_id=upload_id, stage="validator"))
        await apply(
            gateway.store, FileValidated(upload_id=upload_id, file=FILE, ids=IDS, has_pixels=True)
        )
        got = await stream.events(3)
    assert [e.event for e in got] == ["status"] * 3
    assert [e.id for e in got] == await _feed_ids(gateway.store)
    first = got[0].json
    assert first["id"] == got[0].id
    assert first["upload_id"] == str(upload_id)
    assert first["label"] == "knee"
    assert [(e.json["status"], e.json["event"]) for e in got] == [
        ("accepted", "accepted"),
        ("validating", "validating"),
        ("validated", "validated"),
    ]


async def test_a_stream_starts_from_now_when_no_id_is_given(gateway: Gateway) -> None:
    await _received(gateway.store)  # before: not sent
    async with gateway.client() as client, listen(client) as stream:
        later = await _received(gateway.store)
        (got,) = await stream.events(1)
    assert got.json["upload_id"] == str(later)


async def test_a_change_right_after_the_headers_is_sent(gateway: Gateway) -> None:
    """The cursor is set before the headers: a client may read statuses once it is open."""
    async with gateway.client() as client, client.stream("GET", "/events") as response:
        upload_id = await _received(gateway.store)  # before the first block was read
        (got,) = await Stream(response).events(1)
    assert got.json["upload_id"] == str(upload_id)


async def test_filters_pick_uploads_batches_and_labels(gateway: Gateway) -> None:
    store = gateway.store
    async with (
        gateway.client() as client,
        listen(client, upload_id=[str(uuid.uuid4())]) as nobody,
        listen(client, label="knee,hip") as by_label,
        listen(client, batch="b-1") as by_batch,
        listen(client, label="knee", batch="b-1") as both,
    ):
        knee = await _received(store, label="knee")
        hip = await _received(store, label="hip", batch_id="b-1")
        spine = await _received(store, label="spine", batch_id="b-1")
        await _received(store)
        async with listen(client, upload_id=f"{knee},{spine}") as by_id:
            await apply(store, StageStarted(upload_id=knee, stage="validator"))
            await apply(store, StageStarted(upload_id=hip, stage="validator"))
            await apply(store, StageStarted(upload_id=spine, stage="validator"))
            ids = [e.json["upload_id"] for e in await by_id.events(2)]
            assert ids == [str(knee), str(spine)]
        labels = [e.json["label"] for e in await by_label.events(4)]
        assert labels == ["knee", "hip", "knee", "hip"]
        batched = [e.json["upload_id"] for e in await by_batch.events(4)]
        assert batched == [str(hip), str(spine), str(hip), str(spine)]
        await both.nothing_for(0.5)  # no knee upload is in batch b-1
        await nobody.nothing_for(0.1)


async def test_last_event_id_replays_exactly_the_missed_changes(gateway: Gateway) -> None:
    store = gateway.store
    upload_id = await _received(store)
    await apply(store, StageStarted(upload_id=upload_id, stage="validator"))
    await apply(store, FileValidated(upload_id=upload_id, file=FILE, ids=IDS, has_pixels=True))
    ids = await _feed_ids(store)
    async with gateway.client() as client:
        async with listen(client, headers={"Last-Event-ID": ids[0]}) as stream:
            replayed = await stream.events(2)
            assert [e.id for e in replayed] == ids[1:]
            await apply(store, StageStarted(upload_id=upload_id, stage="descriptor"))
            (live,) = await stream.events(1)
            assert live.json["status"] == "describing"
        async with listen(client, last_event_id=ids[1]) as stream:  # the query form
            again = await stream.events(2)
            assert [e.id for e in again] == [ids[2], live.id]
            await stream.nothing_for(0.3)


async def test_the_first_block_gives_an_id_to_resume_from(gateway: Gateway) -> None:
    await _received(gateway.store)
    async with gateway.client() as client:
        async with client.stream("GET", "/events") as response:
            first = await Stream(response).block()
        assert first is not None
        assert first.id == (await _feed_ids(gateway.store))[-1]
        upload_id = await _received(gateway.store)  # while disconnected
        async with listen(client, headers={"Last-Event-ID": first.id}) as stream:
            (missed,) = await stream.events(1)
    assert missed.json["upload_id"] == str(upload_id)


async def test_an_id_older_than_the_stream_holds_is_a_gap(gateway: Gateway) -> None:
    store = gateway.store
    for _ in range(3):
        await _received(store)
    ids = await _feed_ids(store)
    await store.redis.xtrim(names.STATUS_FEED, maxlen=1, approximate=False)
    async with gateway.client() as client, listen(client, last_event_id=ids[0]) as stream:
        (gap,) = await stream.events(1)
        assert gap.event == "gap"
        assert gap.json["since"] == ids[0]
        assert gap.id == ids[2]  # from now on
        later = await _received(store)
        (live,) = await stream.events(1)
    assert live.json["upload_id"] == str(later)


async def test_an_id_from_before_a_reset_is_a_gap(gateway: Gateway) -> None:
    await _received(gateway.store)
    async with gateway.client() as client, listen(client, last_event_id="99999999999999-0") as s:
        (gap,) = await s.events(1)
    assert gap.event == "gap"


async def test_an_id_still_held_is_not_a_gap(gateway: Gateway) -> None:
    store = gateway.store
    for _ in range(3):
        await _received(store)
    ids = await _feed_ids(store)
    await store.redis.xtrim(names.STATUS_FEED, maxlen=2, approximate=False)
    async with gateway.client() as client, listen(client, last_event_id=ids[1]) as stream:
        got = await stream.events(1)  # the first entry kept
    assert [e.id for e in got] == ids[2:]


async def test_silence_is_broken_by_pings(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "PING_S", 0.2)
    async with gateway.client() as client, listen(client, label="none") as stream:
        ping = await stream.block(2)
        assert ping is not None
        assert ping.comments == ["ping"]
        assert ping.id is None
        await _received(gateway.store)  # filtered out, but it moves the client's cursor
        ping = await stream.block(2)
    assert ping is not None
    assert ping.comments == ["ping"]
    assert ping.id == (await _feed_ids(gateway.store))[-1]


async def test_bad_parameters_are_400s(gateway: Gateway) -> None:
    async with gateway.client() as client:
        bad_id = await client.get("/events", params={"upload_id": "nope"})
        assert bad_id.status_code == 400
        assert "upload_id" in bad_id.json()["detail"]
        bad_last = await client.get("/events", headers={"Last-Event-ID": "yesterday"})
        assert bad_last.status_code == 400
        assert "Last-Event-ID" in bad_last.json()["detail"]


async def test_a_client_that_goes_away_releases_the_reader(gateway: Gateway) -> None:
    async with gateway.client() as client, listen(client):
        reader = gateway.app.state.status_feed
        assert reader._users == 1
    for _ in range(100):  # the server notices the disconnect a moment later
        if not reader._users:
            break
        await asyncio.sleep(0.05)
    assert reader._users == 0


async def test_streams_end_when_the_server_stops(gateway: Gateway) -> None:
    async with gateway.client() as client, listen(client) as stream:
        gateway.app.state.stopping.set()  # what shared.service.run does on SIGTERM
        assert await stream.block(2) is None


@pytest.mark.parametrize("gateway_env", [{"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}])
async def test_redis_down_sends_an_error_event_and_ends(served_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=served_gateway, timeout=20) as client:
        async with client.stream("GET", "/events") as response:
            assert response.status_code == 200
            stream = Stream(response)
            first = await stream.block(15)
            assert first is not None
            assert first.retry == 2000
            error = first if first.event else await stream.block(15)
            assert error is not None
            assert error.event == "error"
            assert "Redis" in error.json["message"]
            assert await stream.block(5) is None
        status = await client.get(f"/status/{uuid.uuid4()}", params={"wait": "final"})
        assert status.status_code == 503
        assert status.json()["type"] == "/problems/service-unavailable"


async def test_a_waiter_left_behind_the_memory_reads_the_rest_from_redis(
    gateway: Gateway,
) -> None:
    """The reader keeps only recent changes; one who fell behind pages through XRANGE."""
    reader = StatusFeed(gateway.store.redis, keep=4, page=3)
    async with reader.listening() as start:
        for _ in range(10):
            await _received(gateway.store)
        last = (await _feed_ids(gateway.store))[-1]
        for _ in range(200):  # until the reader has them all; memory holds the last 4
            if reader._recent and reader._recent[-1].id == last:
                break
            await asyncio.sleep(0.01)
        cursor, seen = start, []
        while got := await reader.after(cursor, 0.1):
            assert len(got) <= 3
            seen += [c.id for c in got]
            cursor = got[-1].id
    assert seen == await _feed_ids(gateway.store)
    await reader.close()


# --- GET /status/{id}?wait= -------------------------------------------------------------------


async def _listening(gateway: Gateway, seconds: float = 5) -> None:
    """Until a long poll listens to the status feed (then no change can slip by it)."""
    deadline = time.monotonic() + seconds
    while not getattr(getattr(gateway.app.state, "status_feed", None), "_users", 0):
        assert time.monotonic() < deadline, "the long poll never started listening"
        await asyncio.sleep(0.01)


async def test_a_long_poll_answers_when_the_state_arrives(gateway: Gateway) -> None:
    upload_id = await _received(gateway.store)
    async with gateway.client() as client:
        started = time.monotonic()
        poll = asyncio.create_task(
            client.get(f"/status/{upload_id}", params={"wait": "validated", "timeout": 10})
        )
        await _listening(gateway)
        await apply(gateway.store, StageStarted(upload_id=upload_id, stage="validator"))
        await asyncio.sleep(0.2)
        assert not poll.done()  # validating is not what it waits for
        await apply(
            gateway.store, FileValidated(upload_id=upload_id, file=FILE, ids=IDS, has_pixels=True)
        )
        answer = await poll
    assert answer.status_code == 200
    assert answer.json()["status"] == "validated"
    assert "x-wait-timed-out" not in answer.headers
    assert time.monotonic() - started < 5


async def test_a_long_poll_for_final_answers_at_a_rejection(gateway: Gateway) -> None:
    upload_id = await _received(gateway.store)
    async with gateway.client() as client:
        poll = asyncio.create_task(
            client.get(f"/status/{upload_id}", params={"wait": "final", "timeout": 10})
        )
        await _listening(gateway)
        reasons = [Reason(code="not-dicom", message="no DICM")]
        await apply(gateway.store, FileRejected(upload_id=upload_id, file=FILE, reasons=reasons))
        answer = await poll
    assert answer.json()["status"] == "rejected"
    assert answer.json()["details"]["reasons"][0]["code"] == "not-dicom"


async def test_a_long_poll_answers_at_once_when_settled(gateway: Gateway) -> None:
    upload_id = await _received(gateway.store)
    reasons = [Reason(code="not-dicom", message="no DICM")]
    await apply(gateway.store, FileRejected(upload_id=upload_id, file=FILE, reasons=reasons))
    async with gateway.client() as client:
        started = time.monotonic()
        already = await client.get(f"/status/{upload_id}", params={"wait": "rejected"})
        never = await client.get(f"/status/{upload_id}", params={"wait": "archived"})
        repeated = await client.get(
            f"/status/{upload_id}", params=[("wait", "archived"), ("wait", "failed,rejected")]
        )
    assert time.monotonic() - started < 2
    for answer in (already, never, repeated):
        assert answer.status_code == 200
        assert answer.json()["status"] == "rejected"
        assert "x-wait-timed-out" not in answer.headers


async def test_a_long_poll_times_out_with_the_status_as_it_is(gateway: Gateway) -> None:
    upload_id = await _received(gateway.store)
    other = await _received(gateway.store)
    async with gateway.client() as client:
        started = time.monotonic()
        poll = asyncio.create_task(
            client.get(f"/status/{upload_id}", params={"wait": "final", "timeout": 0.8})
        )
        await _listening(gateway)
        await apply(gateway.store, StageStarted(upload_id=other, stage="validator"))
        await apply(gateway.store, StageStarted(upload_id=upload_id, stage="validator"))
        answer = await poll
    assert 0.7 < time.monotonic() - started < 5
    assert answer.status_code == 200
    assert answer.json()["status"] == "validating"
    assert answer.headers["x-wait-timed-out"] == "true"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"wait": "done"}, "wait"),
        ({"wait": ","}, "wait"),
        ({"wait": "final", "timeout": "121"}, "timeout"),
        ({"wait": "final", "timeout": "-1"}, "timeout"),
        ({"wait": "final", "timeout": "soon"}, "timeout"),
    ],
)
async def test_bad_wait_parameters_are_400s_naming_the_parameter(
    gateway: Gateway, params: dict[str, str], named: str
) -> None:
    upload_id = await _received(gateway.store)
    async with gateway.client() as client:
        answer = await client.get(f"/status/{upload_id}", params=params)
    assert answer.status_code == 400
    assert named in json.dumps(answer.json())


async def test_a_long_poll_of_an_unknown_upload_is_404(gateway: Gateway) -> None:
    async with gateway.client() as client:
        answer = await client.get(f"/status/{uuid.uuid4()}", params={"wait": "final"})
    assert answer.status_code == 404
