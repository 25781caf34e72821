"""The one intake: a complete file, durable on the uploads volume, becomes a job.

Every way in (a multipart or raw upload, a batch, STOW-RS, a presigned S3 upload, a WADO-RS
retrieval, a file Redis forgot, a C-STORE to dimse-service) ends here, so a job is always
created the same way: its record, its queue entry and its label, user and batch entries in one
transaction, all the files of a request or none. Nothing here is HTTP's or DIMSE's (the gateway's
``http_intake`` holds the screening and the refusals of the HTTP ways in; dimse-service's
``c_store`` its status codes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID, uuid4

from redis.exceptions import WatchError

from shared import audit, catalog
from shared import redis_names as names
from shared.audit import Caller
from shared.bus import REDIS_DOWN, add_event
from shared.errors import ServiceUnavailable
from shared.events import AnyEvent, FileReceived, FileRef, Origin
from shared.files import sha256_of
from shared.jobs import JobStore


async def queue(
    store: JobStore,
    events: Sequence[AnyEvent],
    batch: tuple[str, str | None] | None = None,
    by: Caller | None = None,
) -> set[UUID]:
    """Create each job, queue its event, file it and record it in the audit trail, in one
    transaction: all or none.

    A labelled file whose name is already filed under its label (or earlier in the same
    request) is not queued: its upload id is returned, for the caller to refuse it.
    ``batch`` is (batch id, user id) when the files are one batch. ``by``: who sent them (it
    goes into each job's origin); without it, the origin says (a DIMSE peer's AE title).
    """
    events = [_sent_by(e, by) for e in events] if by else list(events)
    labelled = [e for e in events if isinstance(e, FileReceived) and e.origin and e.origin.label]
    try:
        async with store.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    taken: set[UUID] = set()
                    if labelled:
                        await pipe.watch(*{names.label_key(_label(e)) for e in labelled})
                        taken = await _taken(pipe, labelled)
                        pipe.multi()
                    for event in events:
                        if event.upload_id in taken:
                            continue
                        await store.queue_create(pipe, event)
                        add_event(pipe, event)
                        audit.queue(pipe, _audit_entry(event, by))
                        if isinstance(event, FileReceived):
                            catalog.queue_file(pipe, event)
                    if batch is not None and events:
                        batch_id, user_id = batch
                        total = len(events) - len(taken)
                        catalog.queue_batch(pipe, batch_id, user_id, total, events[0].occurred_at)
                    await pipe.execute()
                    return taken
                except WatchError:
                    continue  # someone filed under the same label meanwhile: look again
    except REDIS_DOWN:
        raise ServiceUnavailable(
            "the queue (Redis) is unreachable; nothing was accepted, send the file again"
        ) from None


def _sent_by(event: AnyEvent, by: Caller) -> AnyEvent:
    if not isinstance(event, FileReceived):
        return event
    origin = event.origin or Origin()
    sender = {"actor": by.actor, "peer": origin.peer or by.client or None}
    return event.model_copy(update={"origin": origin.model_copy(update=sender)})


def _audit_entry(event: AnyEvent, by: Caller | None) -> dict[str, str]:
    """An accepted upload (or a copy asked for) in the audit trail: by whom, from where."""
    origin = event.origin if isinstance(event, FileReceived) else None
    client = (origin.peer if origin else None) or (by.client if by else None)
    if by is not None:
        actor = by.actor
    elif origin is not None and origin.calling_ae:
        actor = f"ae:{origin.calling_ae}"
    else:
        actor = audit.ANONYMOUS
    action = "upload" if isinstance(event, FileReceived) else event.type
    return audit.fields(actor, action, "accepted", client, upload_id=str(event.upload_id))


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
