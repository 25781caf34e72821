"""The one intake: a complete file, durable on the uploads volume, becomes a job.

Every way in (a multipart or raw upload, a batch, STOW-RS, a presigned S3 upload, a WADO-RS
retrieval, a file Redis forgot, a C-STORE to dimse-service) ends here, so a job is always
created the same way: its record, its queue entry and its label, user and batch entries in one
transaction, all the files of a request or none. Nothing here is HTTP's or DIMSE's (the gateway's
``http_intake`` holds the screening and the refusals of the HTTP ways in; dimse-service's
``c_store`` its status codes).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID, uuid4

from redis.exceptions import WatchError

from shared import audit, catalog
from shared import redis_names as names
from shared.audit import Caller
from shared.bus import REDIS_DOWN, add_event
from shared.errors import QueueOutcomeUnknown, ServiceUnavailable
from shared.events import AnyEvent, FileReceived, FileRef, Origin
from shared.files import sha256_of
from shared.jobs import JobStore
from shared.lua import Lua

SETTLE_TIMEOUT_S = 10.0  # how long settling an unanswered transaction may take, by default
FENCE_LIFETIME_S = 86_400
_SETTLE = Lua.of("shared", "job_scripts/settle.lua")
_NOTHING_ACCEPTED = "the queue (Redis) is unreachable; nothing was accepted, send the file again"


@dataclass
class _Attempt:
    taken: set[UUID] = field(default_factory=set)
    sent: bool = False  # the transaction (MULTI ... EXEC) may have gone out


async def queue(
    store: JobStore,
    events: Sequence[AnyEvent],
    batch: tuple[str, str | None] | None = None,
    transaction_timeout: float | None = None,
    by: Caller | None = None,
) -> set[UUID]:
    """Create each job, queue its event, file it and record it in the audit trail, in one
    transaction: all or none.

    A labelled file whose name is already filed under its label (or earlier in the same
    request) is not queued: its upload id is returned, for the caller to refuse it.
    ``batch`` is (batch id, user id) when the files are one batch. ``by``: who sent them;
    without it, the origin says (a DIMSE peer's AE title). Either goes into each job's origin.
    ``transaction_timeout``
    bounds the transaction (else the Redis client's own timeouts do); settling it, below, may
    take as long again (``SETTLE_TIMEOUT_S`` without one).

    A transaction sent but not answered (a timeout, the connection lost) may have run, or may
    still reach Redis later: it is settled before anything is said (``settle.lua``). If its
    first job exists, it ran, and this returns as if it had answered. If not, the settling sets
    a key the transaction watches, so it never will run, and ``ServiceUnavailable`` says
    nothing was accepted (the caller removes the files), as when Redis cannot be reached at
    all. If Redis cannot be asked either, ``QueueOutcomeUnknown``: the jobs may exist, so the
    caller keeps the files; the late transaction, or the gateway's recovery of files without
    a job (``api_gateway.recovery``), makes them jobs.
    """
    if not events:
        return set()
    events = [_sent_by(e, by) for e in events]
    while True:
        attempt = _Attempt()
        try:
            async with asyncio.timeout(transaction_timeout):
                return await _transaction(store, events, batch, attempt, by)
        except WatchError as exc:
            if not isinstance(exc.__context__, REDIS_DOWN):
                continue  # a watched label changed meanwhile: look again
            if not attempt.sent:
                raise ServiceUnavailable(_NOTHING_ACCEPTED) from None
        except TimeoutError:
            if not attempt.sent:
                raise ServiceUnavailable(_NOTHING_ACCEPTED) from None
        except REDIS_DOWN:
            raise ServiceUnavailable(_NOTHING_ACCEPTED) from None
        if await _settle(store, events, attempt, transaction_timeout or SETTLE_TIMEOUT_S):
            return attempt.taken
        raise ServiceUnavailable(_NOTHING_ACCEPTED)


async def _transaction(
    store: JobStore,
    events: Sequence[AnyEvent],
    batch: tuple[str, str | None] | None,
    attempt: _Attempt,
    by: Caller | None,
) -> set[UUID]:
    """One try: watch the fence (and the labels), then MULTI ... EXEC."""
    labelled = [e for e in events if isinstance(e, FileReceived) and e.origin and e.origin.label]
    async with store.redis.pipeline(transaction=True) as pipe:
        fence = names.intake_fence_key(events[0].upload_id)
        await pipe.watch(fence, *{names.label_key(_label(e)) for e in labelled})
        if labelled:
            attempt.taken = await _taken(pipe, labelled)
        pipe.multi()
        for event in events:
            if event.upload_id in attempt.taken:
                continue
            await store.queue_create(pipe, event)
            add_event(pipe, event)
            audit.queue(pipe, _audit_entry(event, by))
            if isinstance(event, FileReceived):
                catalog.queue_file(pipe, event)
        if batch is not None:
            batch_id, user_id = batch
            total = len(events) - len(attempt.taken)
            catalog.queue_batch(pipe, batch_id, user_id, total, events[0].occurred_at)
        attempt.sent = True
        await pipe.execute()
    return attempt.taken


async def _settle(
    store: JobStore, events: Sequence[AnyEvent], attempt: _Attempt, within: float
) -> bool:
    """Whether the unanswered transaction ran; if it did not, it never will (the fence).
    ``QueueOutcomeUnknown`` when Redis does not answer this either."""
    created = [e for e in events if e.upload_id not in attempt.taken]
    if not created:
        return False  # it would have created no job: nothing refers to a file either way
    try:
        async with asyncio.timeout(within):
            ran = await _SETTLE(
                keys=[
                    names.status_key(created[0].upload_id),
                    names.intake_fence_key(events[0].upload_id),
                ],
                args=[FENCE_LIFETIME_S],
                client=store.redis,
            )
    except (TimeoutError, *REDIS_DOWN):
        raise QueueOutcomeUnknown(
            "the queue (Redis) did not say whether the file was accepted: it is kept, and "
            "becomes a job once Redis answers; sending it again is safe (a duplicate is "
            "recognised)"
        ) from None
    return bool(ran)


def _sender(event: AnyEvent, by: Caller | None) -> Caller | None:
    """Who sent an event's file, and from where: the caller given, else a DIMSE peer by its
    calling AE title; None when nothing says."""
    origin = event.origin if isinstance(event, FileReceived) else None
    client = (origin.peer if origin else None) or (by.client if by else "")
    if by is not None:
        return Caller(by.actor, client)
    if origin is not None and origin.calling_ae:
        return Caller(f"ae:{origin.calling_ae}", client)
    return None


def _sent_by(event: AnyEvent, by: Caller | None) -> AnyEvent:
    """A received file's event with its sender in its origin: the job's details name it."""
    sender = _sender(event, by)
    if not isinstance(event, FileReceived) or sender is None:
        return event
    origin = (event.origin or Origin()).model_copy(
        update={"actor": sender.actor, "peer": sender.client or None}
    )
    return event.model_copy(update={"origin": origin})


def _audit_entry(event: AnyEvent, by: Caller | None) -> dict[str, str]:
    """An accepted upload (or a copy asked for) in the audit trail: by whom, from where."""
    sender = _sender(event, by) or Caller(audit.ANONYMOUS)
    action = "upload" if isinstance(event, FileReceived) else event.type
    return audit.fields(
        sender.actor, action, "accepted", sender.client, upload_id=str(event.upload_id)
    )


def _label(event: FileReceived) -> str:
    label = event.origin.label if event.origin else None
    assert label is not None
    return label


async def _taken(pipe: object, labelled: list[FileReceived]) -> set[UUID]:
    """The labelled events whose filename is taken: filed already, or earlier in this list."""
    taken: set[UUID] = set()
    seen: set[tuple[str, str]] = set()
    by_label: dict[str, list[FileReceived]] = {}
    for e in labelled:
        by_label.setdefault(_label(e), []).append(e)
    for label, group in by_label.items():
        filed = await catalog.taken_names(
            pipe,  # type: ignore[arg-type]
            label,
            [e.origin.filename or str(e.upload_id) for e in group if e.origin],
        )
        for e in group:
            name = (e.origin.filename if e.origin else None) or str(e.upload_id)
            if name in filed or (label, name) in seen:
                taken.add(e.upload_id)
            seen.add((label, name))
    return taken


def received(
    upload_id: UUID, path: Path, sha256: str, size: int, origin: Origin | None = None
) -> FileReceived:
    return FileReceived(
        upload_id=upload_id, file=FileRef(path=str(path), sha256=sha256, size=size), origin=origin
    )


def adopt(path: Path, uploads: Path, origin: Origin | None = None) -> FileReceived:
    """Move a complete file (on the uploads volume) in as a new upload; blocking, for a thread."""
    upload_id = uuid4()
    final = uploads / f"{upload_id}.dcm"
    sha256, size = sha256_of(path), path.stat().st_size
    os.replace(path, final)
    return received(upload_id, final, sha256, size, origin)
