"""``GET /status/{study_id}``, with long-polling on the status feed (``shared.status_feed``).

Mounted by the gateway and the status service. What it reads comes through two dependencies,
``get_store`` and ``get_feed`` (the app that mounts the router puts its ``JobStore`` on
``app.state.store``); a test may override either, and the gateway's ``deps`` uses the same two.

Long-polling: ``?wait=archived,rejected`` (or ``final``) and ``timeout`` seconds. The answer
comes at once when the job is in a wanted state or can no longer reach one (states only move
forward), else when a change brings it there, else at the timeout, with ``X-Wait-Timed-Out``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeAlias, get_args
from uuid import UUID

import structlog
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from redis.exceptions import RedisError

from shared.errors import BadRequest, ServiceUnavailable, UploadNotFound
from shared.jobs import FINAL, RANK, JobStatus, JobStore, State
from shared.status_feed import FeedClosed, FeedUnavailable, StatusFeed, feed_of

log = structlog.get_logger()

STATES: tuple[str, ...] = get_args(State)
WAIT_MAX_S = 120.0
WAIT_DEFAULT_S = 30.0


def upload_id_of(text: str) -> UUID:
    """The upload id in a path, or a 404 that says what an upload id looks like."""
    try:
        return UUID(text)
    except ValueError:
        raise UploadNotFound("that is not an upload id: upload ids are UUIDs") from None


async def get_store(request: Request) -> JobStore:
    """The app's job store: the one place that reads it from the app."""
    store: JobStore = request.app.state.store
    return store


async def get_feed(request: Request) -> StatusFeed:
    """The process's status feed (one ``XREAD BLOCK`` for every watcher), made on first use."""
    return feed_of(request.app)


Store: TypeAlias = Annotated[JobStore, Depends(get_store)]
Feed: TypeAlias = Annotated[StatusFeed, Depends(get_feed)]


async def find_job(store: JobStore, text: str) -> tuple[UUID, JobStatus]:
    """The job a path or body names, or a 404 that says why."""
    upload_id = upload_id_of(text)
    return upload_id, await _read(store, upload_id)


# --- the route -------------------------------------------------------------------------------


def wanted_states(values: list[str], param: str = "wait") -> frozenset[str]:
    """The states a parameter names (repeated or comma-separated; ``final``), or a 400."""
    wanted: set[str] = set()
    for value in (v.strip().lower() for text in values for v in text.split(",")):
        if value == "final":
            wanted |= FINAL
        elif value in STATES:
            wanted.add(value)
        elif value:
            raise BadRequest(
                f"the {param} parameter names an unknown state; use any of "
                f"{', '.join(STATES)} or final",
                invalidParams=[{"param": param, "msg": "unknown state"}],
            )
    if not wanted:
        raise BadRequest(f"the {param} parameter is empty: name a state, e.g. {param}=final")
    return frozenset(wanted)


def reached(state: str, wanted: frozenset[str]) -> bool:
    """In a wanted state, or past every one of them (states only move forward)."""
    return state in wanted or not any(RANK[w] > RANK[state] for w in wanted)


async def _read(store: JobStore, upload_id: UUID) -> JobStatus:
    """The job, a 404 when there is none, a 503 when Redis does not answer."""
    try:
        job = await store.read(upload_id)
    except (RedisError, OSError):
        raise ServiceUnavailable("Redis does not answer; try again shortly") from None
    if job is None:
        raise UploadNotFound(f"no upload has id {upload_id}")
    return job


async def wait_until(
    store: JobStore,
    feed: StatusFeed,
    upload_id: UUID,
    wanted: frozenset[str],
    seconds: float,
) -> tuple[JobStatus, bool]:
    """The job once settled for ``wanted``, or as it is after ``seconds`` (then True); a 404
    when there is no such job."""
    job, timed_out = (await wait_all(store, feed, [upload_id], wanted, seconds))[upload_id]
    if job is None:
        raise UploadNotFound(f"no upload has id {upload_id}")
    return job, timed_out


async def wait_all(
    store: JobStore,
    feed: StatusFeed,
    upload_ids: list[UUID],
    wanted: frozenset[str],
    seconds: float,
) -> dict[UUID, tuple[JobStatus | None, bool]]:
    """Each job once settled for ``wanted``, or as it is after ``seconds`` (then True); None
    for a job that does not exist (or was deleted meanwhile). One watcher of the feed for them
    all, however many: a job is read again only when a change of its own may have settled it
    (its new state is settled, or the change names none: a deletion).
    A 503 when Redis does not answer."""
    done: dict[UUID, tuple[JobStatus | None, bool]] = {}
    latest: dict[UUID, JobStatus] = {}

    async def look(ids: list[UUID]) -> None:
        try:
            jobs = await store.read_many(ids)
        except (RedisError, OSError):
            raise ServiceUnavailable("Redis does not answer; try again shortly") from None
        for upload_id, job in zip(ids, jobs, strict=True):
            if job is None or reached(job.status, wanted):
                done[upload_id] = (job, False)
            else:
                latest[upload_id] = job

    def pending() -> list[UUID]:
        return [i for i in upload_ids if i not in done]

    await look(upload_ids)
    if not pending():
        return done
    deadline = time.monotonic() + seconds
    try:
        async with feed.listening() as cursor:
            await look(pending())  # read after the cursor: no change slips by
            while waiting := {str(i): i for i in pending()}:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                changes = await feed.after(cursor, remaining)
                if changes:
                    cursor = changes[-1].id
                moved = {
                    waiting[c.data["upload_id"]]
                    for c in changes
                    if c.data.get("upload_id") in waiting
                    and (c.data.get("status") not in RANK or reached(c.data["status"], wanted))
                }
                if moved:
                    await look([i for i in upload_ids if i in moved])
    except FeedClosed:
        pass
    except FeedUnavailable:
        raise ServiceUnavailable("Redis does not answer; try again shortly") from None
    if pending():
        await look(pending())  # as they are now: changes that settle nothing were not read
    return done | {i: (latest[i], True) for i in pending()}


def status_router(openapi_extra: dict[str, Any] | None = None) -> APIRouter:
    """``GET /status/{id}``; ``openapi_extra``: what the including app says of the route (the
    gateway: the scope it needs)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        feed: StatusFeed | None = getattr(app.state, "status_feed", None)
        if feed is not None:
            await feed.close()

    router = APIRouter(tags=["status"], lifespan=lifespan)

    @router.get(
        "/status/{study_id}",
        response_model=JobStatus,
        responses={
            200: {
                "description": "The status; with wait, ``X-Wait-Timed-Out: true`` when the "
                "timeout came first",
            },
            400: {"description": "wait names an unknown state, or timeout is out of range"},
            404: {"description": "No upload has this id"},
        },
        openapi_extra=openapi_extra,
    )
    async def get_status(
        study_id: str,
        store: Store,
        feed: Feed,
        response: Response,
        wait: Annotated[
            list[str] | None,
            Query(
                description=f"answer once in one of these states: {', '.join(STATES)}, or "
                "final (archived, rejected, failed); comma-separated or repeated"
            ),
        ] = None,
        wait_s: Annotated[
            float,
            Query(alias="timeout", description=f"seconds to wait, 0 to {WAIT_MAX_S:g}"),
        ] = WAIT_DEFAULT_S,
    ) -> JobStatus:
        """Where an upload stands: its state, when it last changed, and what is known of it.

        With ``wait``, a long poll: the answer comes once the job is in one of the named
        states, or can no longer reach one, or after ``timeout`` seconds with the header
        ``X-Wait-Timed-Out: true``; it is the status as it is then, in every case.
        """
        if not wait:
            _, job = await find_job(store, study_id)
            return job
        wanted = wanted_states(wait)
        if not 0 <= wait_s <= WAIT_MAX_S:
            raise BadRequest(
                f"the timeout parameter must be 0 to {WAIT_MAX_S:g} seconds",
                invalidParams=[{"param": "timeout", "msg": "out of range"}],
            )
        job, timed_out = await wait_until(store, feed, upload_id_of(study_id), wanted, wait_s)
        if timed_out:
            response.headers["X-Wait-Timed-Out"] = "true"
        return job

    return router
