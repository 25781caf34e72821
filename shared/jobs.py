"""The job record of one upload: its states, the one store that writes it, how to read it.

Design rule: who writes job records and who publishes which events.
Job records (``dcm:status:*``, with their counts, their place in time and the status feed) are
changed only here, by the atomic scripts in ``job_scripts/`` (each script's KEYS and ARGV are
spelled out at its top). Two services call them. The gateway writes a record only for its own
facts and commands, in the same transaction that publishes them: it creates a job with its
first event (``file.received`` for every way in, ``copy.requested`` for a copy of an archived
upload), notes a deletion request (``copies.deletion-requested``), retries a failed job
(``job.retried``, which queues the failed entry again) and forgets a job. Every other change
is the status service applying an event a stage published (``status_service.apply``). Each
service publishes only its own events: a stage its start and its outcome, the bus a dead
letter, the gateway its intake and its commands; no one makes up another stage's event.

A transition only ever moves forward, an event applied twice changes nothing, an event that
does not move the job writes nothing a later state owns, and each change is announced on
``dcm:notify:status`` and the capped feed ``dcm:feeds:status`` (``shared.status_feed``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal, cast
from uuid import UUID

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import catalog, study_index
from shared import redis_names as names
from shared.events import (
    STAGES,
    AnyEvent,
    CopiesDeletionRequested,
    CopyRequested,
    DicomIds,
    FileReceived,
    JobRetried,
    parse_event,
    utcnow,
)
from shared.lua import Lua

State = Literal[
    "accepted",
    "validating",
    "validated",
    "describing",
    "described",
    "uploading",
    "archived",
    "rejected",
    "failed",
]
RANK: dict[str, int] = {
    "accepted": 0,
    "validating": 1,
    "validated": 2,
    "describing": 3,
    "described": 4,
    "uploading": 5,
    "archived": 9,
    "rejected": 9,
    "failed": 9,
    "deletion-requested": -1,  # a note in the history; the state stays
    "retried": -1,  # a note, written by the retry itself
    "command-failed": -1,  # a note: a command on the job (a deletion) gave up; the state stays
}
FINAL: frozenset[str] = frozenset({"archived", "rejected", "failed"})
HISTORY_MAX = 50
# Fields more than one state writes (``uploading``'s attempts, ``archived``'s copies): an event
# behind the job's state never writes them, so a late one cannot overwrite a later state's.
SHARED_FIELDS: frozenset[str] = frozenset({"targets"})

# a failed stage -> the state its work starts from, where a retry sends the job back
RETRY_FROM: dict[str, State] = {s: cast(State, states.start) for s, states in STAGES.items()}
# a failed stage -> the fields its work writes, forgotten when it runs again
_RESET: dict[str, list[str]] = {
    stage: [f"at:{states.working}", f"at:{states.done}"] for stage, states in STAGES.items()
}
_RESET["validator"].append("at:rejected")
_RESET["uploader"].append("targets")

Change = tuple[str, dict[str, str]]  # the state (or note) an event leads to, its fields


def own_change(event: AnyEvent) -> Change:
    """What the gateway's own events write into a job, when it publishes them (and the status
    service again, to no effect, when it reads them back)."""
    match event:
        case FileReceived(file=f, origin=origin):
            fields = {"sha256": f.sha256, "size": str(f.size)}
            if origin is not None:
                fields.update({k: v for k, v in origin.model_dump().items() if v is not None})
            return event.resulting_state() or "accepted", fields
        case CopyRequested() as e:
            fields = {"sha256": e.file.sha256, "size": str(e.file.size), "source": "copy"}
            fields |= ids_fields(e.ids)
            fields |= {"archive_path": e.archive_path, "metadata_file": e.metadata_file}
            if e.preview_file:
                fields["preview_file"] = e.preview_file
            fields["duplicate_of"] = str(e.copy_of)  # the upload it copies
            return e.resulting_state() or "described", fields
        case CopiesDeletionRequested(targets=targets):
            return "deletion-requested", {"deletion": to_json({"targets": targets})}
    raise TypeError(f"{type(event).__name__} is not the gateway's own event")


def ids_fields(ids: DicomIds) -> dict[str, str]:
    """The DICOM identifiers as job fields."""
    return {k: v for k, v in ids.model_dump().items() if v is not None}


def to_json(value: Any) -> str:
    """A JSON field of the job hash, compact."""
    return json.dumps(value, separators=(",", ":"))


_APPLY = Lua.of("shared", "job_scripts/announce.lua", "job_scripts/apply.lua")
_RETRY = Lua.of("shared", "job_scripts/announce.lua", "job_scripts/retry.lua")
_FORGET = Lua.of("shared", "job_scripts/announce.lua", "job_scripts/forget.lua")


class JobStore:
    """The one writer of job records (see the design rule above), and their reader."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    # -- the gateway's own facts and commands ------------------------------------------------

    async def queue_create(self, pipe: Pipeline, event: AnyEvent) -> None:
        """Add a job's creation to the transaction that publishes its first event
        (``FileReceived`` or ``CopyRequested``): its first state and fields, and its place in
        time."""
        await self.queue_transition(pipe, event, own_change(event))
        pipe.zadd(
            names.JOBS_BY_TIME, {str(event.upload_id): event.occurred_at.timestamp()}, nx=True
        )

    async def queue_deletion_request(self, pipe: Pipeline, event: CopiesDeletionRequested) -> None:
        """Add the note of a deletion request to the transaction that publishes it."""
        await self.queue_transition(pipe, event, own_change(event))

    async def retry(self, upload_id: UUID) -> State | None:
        """Queue a failed job's failed stage again and publish ``job.retried``; the state it
        went back to, or None when the job is not failed or its stage cannot be retried."""
        state, stage, entry = cast(
            list[str | None],
            await self.redis.hmget(
                names.status_key(upload_id), ["state", "failed_stage", "failed_event"]
            ),
        )
        if state != "failed" or stage not in RETRY_FROM or not entry:
            return None
        back_to = RETRY_FROM[stage]
        retried = JobRetried(upload_id=upload_id, stage=stage)  # type: ignore[arg-type]
        done = await _RETRY(
            keys=[
                names.status_key(upload_id),
                parse_event(entry).published_on,
                names.STATUS_CHANNEL,
                names.STATUS_FEED,
                names.STATE_COUNTS,
                retried.published_on,
            ],
            args=[
                str(retried.event_id),
                back_to,
                RANK[back_to],
                retried.occurred_at.isoformat(),
                str(upload_id),
                entry,
                to_json(_RESET[stage]),
                names.STATUS_FEED_MAX,
                HISTORY_MAX,
                retried.model_dump_json(),
            ],
            client=self.redis,
        )
        return back_to if done else None

    async def forget(self, upload_id: UUID) -> list[str]:
        """Forget an upload everywhere: its record and counts, its label entry, its user's and
        batch's lists, its search entry. Says what it removed; safe to run twice."""
        wanted = ("state", "sha256", "source_sha256", "label", "filename", "user_id", "batch_id")
        values = cast(list[str | None], await self.redis.hmget(names.status_key(upload_id), wanted))
        job = {k: v for k, v in zip(wanted, values, strict=True) if v is not None}
        if "state" not in job:
            return await study_index.unindex(self.redis, upload_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await _FORGET(
                keys=[
                    names.status_key(upload_id),
                    names.targets_key(upload_id),
                    names.JOBS_BY_TIME,
                    names.STATUS_CHANNEL,
                    names.STATUS_FEED,
                    names.STATE_COUNTS,
                    names.MODALITY_COUNTS,
                ],
                args=[str(upload_id), utcnow().isoformat(), names.STATUS_FEED_MAX],
                client=pipe,
            )
            removed = catalog.queue_unfile(pipe, upload_id, job)
            await study_index.queue_unindex(pipe, upload_id)
            forgotten, *_, unindexed = await pipe.execute()
        mine = ["job record", *removed] if forgotten else []  # else a twin forgot it first
        return [*mine, *unindexed]

    # -- any event (the status service applies the stages' events through this) -------------

    async def queue_transition(
        self, pipe: Pipeline | Redis, event: AnyEvent, change: Change
    ) -> None:
        """Add one event's change (the state or note it leads to, and its fields, all strings)
        to a pipeline: forward only, once per event, announced (``job_scripts/apply.lua``)."""
        state, fields = change
        await _APPLY(
            keys=[
                names.status_key(event.upload_id),
                names.STATUS_CHANNEL,
                names.STATUS_FEED,
                names.STATE_COUNTS,
                names.MODALITY_COUNTS,
            ],
            args=[
                str(event.event_id),
                state,
                RANK[state],
                event.occurred_at.isoformat(),
                to_json(fields),
                HISTORY_MAX,
                str(event.upload_id),
                names.STATUS_FEED_MAX,
                RANK["archived"],
                to_json(sorted(SHARED_FIELDS)),
            ],
            client=pipe,
        )

    # -- reading -----------------------------------------------------------------------------

    async def read(self, upload_id: UUID) -> JobStatus | None:
        """One job, or None when there is none."""
        raw = cast(dict[str, str], await self.redis.hgetall(names.status_key(upload_id)))
        if not raw:
            return None
        return JobStatus.from_hash(upload_id, raw)

    async def read_many(self, upload_ids: list[UUID]) -> list[JobStatus | None]:
        """Several jobs in one round trip, in order; None for those that do not exist."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for upload_id in upload_ids:
                pipe.hgetall(names.status_key(upload_id))
            found = await pipe.execute()
        return [
            JobStatus.from_hash(u, raw) if raw else None
            for u, raw in zip(upload_ids, found, strict=True)
        ]


_ID_FIELDS = {
    "study_uid": "study_instance_uid",
    "series_uid": "series_instance_uid",
    "sop_uid": "sop_instance_uid",
    "sop_class_uid": "sop_class_uid",
    "transfer_syntax_uid": "transfer_syntax_uid",
    "modality": "modality",
}
_PLAIN_FIELDS = (
    "filename",
    "label",
    "user_id",
    "batch_id",
    "source",
    "sha256",
    "source_sha256",
    "calling_ae",
    "peer",
    "actor",
    "archive_path",
    "metadata_file",
    "preview_file",
    "preview_note",
    "duplicate_of",
    "error",
    "failed_stage",
    "created_at",
    "updated_at",
)
_JSON_FIELDS = ("reasons", "warnings", "targets", "history", "deletion")
# a stage's working state -> (the state it starts in, the state it ends in): timings' names
_STAGES = {s.working: (s.working, s.done) for s in STAGES.values()}


class JobStatus(BaseModel):
    """The status answer of the seed: ``{study_id, status, timestamp, details}``."""

    study_id: UUID
    status: State
    timestamp: datetime
    details: dict[str, Any]

    @classmethod
    def from_hash(cls, upload_id: UUID, h: dict[str, str]) -> JobStatus:
        details: dict[str, Any] = {k: h[k] for k in _PLAIN_FIELDS if k in h}
        details.update({out: h[k] for k, out in _ID_FIELDS.items() if k in h})
        details.update({k: json.loads(h[k]) for k in _JSON_FIELDS if k in h})
        if "history" in details:  # event ids are for idempotence, not for readers
            details["history"] = [{"state": e["state"], "at": e["at"]} for e in details["history"]]
        for number in ("size", "deliveries"):
            if number in h:
                details[number] = int(h[number])
        if "has_pixels" in h:
            details["has_pixels"] = h["has_pixels"] == "1"
        details["timings_ms"] = _timings(h)
        return cls(
            study_id=upload_id,
            status=h.get("state", "accepted"),  # type: ignore[arg-type]
            timestamp=datetime.fromisoformat(h.get("updated_at") or h["created_at"]),
            details=details,
        )

    def dicom_ids(self) -> DicomIds:
        """The instance's identifiers as the validator found them (a job validated at least)."""
        return DicomIds(
            **{k: self.details[out] for k, out in _ID_FIELDS.items() if out in self.details}
        )


def _timings(h: dict[str, str]) -> dict[str, float]:
    """Milliseconds spent waiting for and inside each stage, and in all, from state times."""
    at = {k[3:]: datetime.fromisoformat(v) for k, v in h.items() if k.startswith("at:")}

    def ms(a: str, b: str) -> float | None:
        if a in at and b in at:
            return round((at[b] - at[a]).total_seconds() * 1000, 1)
        return None

    final = next((s for s in ("archived", "rejected", "failed") if s in at), None)
    out: dict[str, float | None] = {}
    previous_end = "accepted"
    for stage, (start, end) in _STAGES.items():
        if start not in at:
            break
        out[f"queued_{stage}"] = ms(previous_end, start)
        stop = end if end in at else final  # a stage can end the job (rejected, failed)
        out[stage] = ms(start, stop) if stop else None
        previous_end = end
    out["total"] = ms("accepted", final) if final else None
    return {k: v for k, v in out.items() if v is not None}
