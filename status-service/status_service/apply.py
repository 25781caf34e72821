"""How the status service applies events to job records: which events, what each one writes.

Every stage's event leads its job to a state (``Event.leads_to``, declared on the class) and
records what the stage learned (``changes``); the gateway's own events write what the job
store wrote when it published them (``shared.jobs.own_change``), so applying them again
changes nothing. The dead letter of a stage's work fails its job; that of a command on a job
(a deletion of its copies) is a note: the job keeps its state and says why. A batch read from
several streams is applied in the order things happened to each job (``in_order``), in one
round trip; an instance newly described goes into the study search indexes in the same step;
``copies.deleted`` forgets the job.
"""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from shared.events import (
    AnyEvent,
    CopiesDeleted,
    CopiesDeletionRequested,
    CopyRequested,
    FileDescribed,
    FileReceived,
    FileRejected,
    FileUploaded,
    FileValidated,
    JobFailed,
    JobRetried,
    StageStarted,
    UploadAttempted,
    parse_event,
)
from shared.jobs import RANK, Change, JobStore, ids_fields, own_change, to_json
from status_service import indexes


def changes(event: AnyEvent) -> Change:
    """The state (or note) an event leads a job to, and the fields it records (all strings).
    ``CopiesDeleted`` has none: it forgets the job."""
    state = event.resulting_state()
    match event:
        case FileReceived() | CopyRequested() | CopiesDeletionRequested():
            return own_change(event)
        case StageStarted(stage=stage, delivery=n):
            fields = {f"deliveries:{stage}": str(n)}  # per stage: a late start may write it
        case FileValidated(ids=ids, has_pixels=has_pixels, warnings=warnings):
            fields = ids_fields(ids)
            fields["has_pixels"] = "1" if has_pixels else "0"
            if warnings:
                fields["warnings"] = to_json([w.model_dump() for w in warnings])
        case FileRejected(reasons=reasons):
            fields = {"reasons": to_json([r.model_dump() for r in reasons])}
        case FileDescribed() as e:
            fields = {"archive_path": e.archive_path, "metadata_file": e.metadata_file}
            if e.preview_file:
                fields["preview_file"] = e.preview_file
            if e.preview_note:
                fields["preview_note"] = e.preview_note
            if e.duplicate_of:
                fields["duplicate_of"] = str(e.duplicate_of)
        case FileUploaded(targets=targets) | UploadAttempted(targets=targets):
            fields = {"targets": to_json([t.model_dump() for t in targets])}
        case JobFailed(stage=stage, error=error, deliveries=n, event=entry):
            fields = {"error": error, "failed_stage": stage, "deliveries": str(n)}
            if entry and _moves_no_job(entry):  # a command on a job, e.g. a deletion
                return "command-failed", fields  # a note: the job stays and says why
            if entry:
                fields["failed_event"] = entry
        case JobRetried():
            return "retried", {}  # the retry wrote it, with the job's reset, when it was asked
        case _:
            raise TypeError(f"no transition for {type(event).__name__}")
    assert state is not None  # every stage's event leads somewhere
    return state, fields


def _moves_no_job(entry: str) -> bool:
    """Whether a dead-lettered entry is a command that leads its job to no state."""
    try:
        return parse_event(entry).resulting_state() is None
    except ValueError:
        return False


Transition = tuple[AnyEvent, Change]  # an event and its ``changes``


def in_order(transitions: list[Transition]) -> list[Transition]:
    """Transitions as they happened to each job: by the rank of the state each one leads to.

    A batch read from several streams comes stream by stream, so a job's outcome can come
    before the start of its stage, or its receipt, and would be applied (and announced, and
    kept in its history) in that order. Each job's states follow their ranks, so a stable sort
    by rank restores each job's order and keeps every other; notes (a negative rank) go last.
    """

    def rank(transition: Transition) -> int:
        value = RANK[transition[1][0]]
        return value if value >= 0 else 99

    return sorted(transitions, key=rank)


async def queue_apply(
    store: JobStore, pipe: Pipeline, event: AnyEvent, change: Change | None = None
) -> None:
    """Add an event's transition to a pipeline (its ``changes``, when already known); an
    instance newly described, not a duplicate, goes into the study search indexes with it."""
    await store.queue_transition(pipe, event, change or changes(event))
    if isinstance(event, FileDescribed) and event.study and event.duplicate_of is None:
        await indexes.queue_index(pipe, event.upload_id, event.ids, event.study)


async def apply(store: JobStore, event: AnyEvent) -> bool:
    """Apply one event to its job; True when the state moved forward."""
    if isinstance(event, CopiesDeleted):  # the copies are gone: forget the job
        return bool(await store.forget(event.upload_id))
    async with store.redis.pipeline(transaction=True) as pipe:
        await queue_apply(store, pipe, event)
        return bool((await pipe.execute())[0])


async def apply_all(store: JobStore, events: list[AnyEvent]) -> None:
    """Apply several events in one round trip, in the order they happened to each job
    (``in_order``); raises if any of them failed."""
    transitions: list[Transition] = [
        (e, changes(e)) for e in events if not isinstance(e, CopiesDeleted)
    ]
    async with store.redis.pipeline(transaction=False) as pipe:
        for event, change in in_order(transitions):
            await queue_apply(store, pipe, event, change)
        await pipe.execute()
    for event in events:
        if isinstance(event, CopiesDeleted):
            await store.forget(event.upload_id)
