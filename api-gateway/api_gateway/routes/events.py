"""``GET /events``: every status change, live, as server-sent events.

Why the feed reads the stream ``dcm:feeds:status`` and not the pub/sub channel (which stays,
for watchers that can miss a message): a stream entry has an id, so a client that reconnects
with ``Last-Event-ID`` is sent exactly the changes it missed, and reading one ordered log from
a cursor leaves no gap between that catch-up and the live changes (subscribing to pub/sub and
reading a backlog are two sources, and changes fall between them). The stream is capped; a
client whose id is older than what it still holds is told with ``event: gap`` to read its
statuses again, and is followed from now. The cursor is set before the answer's headers go,
so a client that reads the statuses once the stream is open (a browser's ``open`` event)
misses no change between that read and the stream.

Connections: the process's one ``StatusFeed`` (``shared.status_feed``) reads the stream with a
single ``XREAD BLOCK`` and every client reads from it by cursor, so a thousand watchers hold one
blocking Redis connection, not a thousand; catch-ups use short ``XRANGE`` calls.

Each event: ``id:`` the stream entry id, ``event: status``, ``data:`` the change's JSON
(``id``, ``upload_id``, ``status``, ``event``, ``at``, and ``label``/``batch_id`` when filed).
Filters ``upload_id``, ``batch``, ``label`` may repeat or be comma-separated: any value of one
filter, every filter given. A ``: ping`` comment comes every 15 s of silence; it carries the
cursor as an ``id:`` line when filtered-out changes moved it, so a reconnect does not scan them
again. If Redis does not answer, the stream sends ``event: error`` and ends; the browser
reconnects after ``retry`` (2 s). When the server stops, the stream ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

import structlog
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from api_gateway.access import Scope, needs
from api_gateway.deps import Feed
from shared.errors import BadRequest, safe_error
from shared.status_feed import Change, FeedClosed, FeedUnavailable, StatusFeed, entry_key

log = structlog.get_logger()
router = APIRouter(tags=["status"])

PING_S = 15.0
RETRY = "retry: 2000\n"  # how long a browser waits before it reconnects (a line of a block)
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class Filters:
    """Which changes a client wants: any of each set given, all sets given."""

    upload_ids: frozenset[str]
    batches: frozenset[str]
    labels: frozenset[str]

    def match(self, change: Change) -> bool:
        data = change.data
        return (
            (not self.upload_ids or data.get("upload_id") in self.upload_ids)
            and (not self.batches or data.get("batch_id") in self.batches)
            and (not self.labels or data.get("label") in self.labels)
        )


def _values(values: list[str] | None) -> frozenset[str]:
    return frozenset(v.strip() for text in values or () for v in text.split(",") if v.strip())


def _upload_ids(values: list[str] | None) -> frozenset[str]:
    ids = set()
    for value in _values(values):
        try:
            ids.add(str(UUID(value)))
        except ValueError:
            raise BadRequest(
                "the upload_id parameter must hold upload ids (UUIDs)",
                invalidParams=[{"param": "upload_id", "msg": "not a UUID"}],
            ) from None
    return frozenset(ids)


def _message(event: str, data: object, entry_id: str | None = None) -> str:
    head = f"id: {entry_id}\n" if entry_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-sent events: status, gap, error",
        },
        400: {"description": "A filter or the last event id is not valid"},
    },
    openapi_extra=needs(Scope.READ),
)
async def events(
    feed: Feed,
    upload_id: Annotated[list[str] | None, Query(description="upload ids to follow")] = None,
    batch: Annotated[list[str] | None, Query(description="batch ids to follow")] = None,
    label: Annotated[list[str] | None, Query(description="study labels to follow")] = None,
    last_event_id: Annotated[
        str | None, Query(description="resume after this entry id (or the header)")
    ] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Every status change from now, or after ``Last-Event-ID``, as server-sent events."""
    filters = Filters(_upload_ids(upload_id), _values(batch), _values(label))
    resume = last_event_id_header or last_event_id
    if resume is not None:
        key = entry_key(resume)
        if key is None:
            raise BadRequest(
                "Last-Event-ID must be a status feed entry id, e.g. 1700000000000-0",
                invalidParams=[{"param": "last_event_id", "msg": "not a stream entry id"}],
            )
        resume = f"{key[0]}-{key[1]}"
    try:  # before the headers go: a client that reads statuses once it is open misses nothing
        now = await feed.position()
        gap = resume is not None and await feed.missed(resume)
    except FeedClosed:
        return _response(_ended())
    except (FeedUnavailable, RedisError, OSError) as exc:
        return _response(_unavailable(exc))
    cursor = now if gap or resume is None else resume
    return _response(_stream(feed, filters, cursor, resume if gap else None))


def _response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=HEADERS)


async def _stream(
    feed: StatusFeed, filters: Filters, cursor: str, gap_since: str | None
) -> AsyncIterator[str]:
    """The event stream of one client from ``cursor``; ends when the client goes, the server
    stops, or Redis does not answer. (Starlette notices a client going and cancels this.)"""
    try:
        async with feed.listening():
            if gap_since is not None:
                message = "changes after Last-Event-ID are no longer kept: read the statuses"
                yield (
                    RETRY + "\n" + _message("gap", {"message": message, "since": gap_since}, cursor)
                )
            else:
                yield f"{RETRY}id: {cursor}\n\n"  # a reconnect resumes from here
            sent = cursor  # the client's last event id
            while True:
                changes = await feed.after(cursor, PING_S)
                if not changes:
                    yield (f"id: {cursor}\n" if cursor != sent else "") + ": ping\n\n"
                    sent = cursor
                    continue
                cursor = changes[-1].id
                wanted = [c for c in changes if filters.match(c)]
                if wanted:
                    yield "".join(_message("status", c.data, c.id) for c in wanted)
                    sent = wanted[-1].id
    except FeedClosed:
        return
    except (FeedUnavailable, RedisError, OSError) as exc:
        async for text in _unavailable(exc):
            yield text


async def _ended() -> AsyncIterator[str]:
    yield RETRY + "\n"


async def _unavailable(exc: BaseException) -> AsyncIterator[str]:
    log.warning("events.unavailable", error=safe_error(exc))
    message = "the status feed is unavailable (Redis does not answer); reconnect later"
    yield RETRY + "\n" + _message("error", {"message": message})
