"""The job record of one upload: its states, its hash, how an event changes it, how to read it.

The gateway creates the record (state ``accepted``) in the same transaction that queues the
upload, so a 202 is always followed by a readable status; from then on only the status service
changes it, one event at a time, through ``apply``. A transition only ever moves forward, an
event applied twice changes nothing, and each change is announced on ``dcm:notify:status``.
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
    CopiesDeleted,
    CopiesDeletionRequested,
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
}
FINAL: frozenset[str] = frozenset({"archived", "rejected", "failed"})
HISTORY_MAX = 50
# Fields more than one state writes (``uploading``'s attempts, ``archived``'s copies): an event
# behind the job's state never writes them, so a late one cannot overwrite a later state's.
SHARED_FIELDS: frozenset[str] = frozenset({"targets"})

# Every status change is announced the same way: appended to the capped feed stream (which
# gives it its id) and published on the change channel. Prepended to each script below.
_ANNOUNCE = """
local function announce(feed, channel, feed_max, change)
  change.id = redis.call('XADD', feed, 'MAXLEN', '~', feed_max, '*', 'data', cjson.encode(change))
  redis.call('PUBLISH', channel, cjson.encode(change))
end
"""

# Atomic, forward-only transition, counted and announced. KEYS: job hash, channel, feed
# stream, state counts, modality counts. ARGV: event id, state, rank, at, fields (JSON object
# of strings), history max, upload id, feed max, the rank of final states, the fields several
# states write (JSON list).
_APPLY = (
    _ANNOUNCE
    + """
local history = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
for _, h in ipairs(history) do
  if h.event_id == ARGV[1] then return 0 end
end
local rank = tonumber(redis.call('HGET', KEYS[1], 'rank') or '-1')
local before = redis.call('HMGET', KEYS[1], 'state', 'modality')
local mine = tonumber(ARGV[3])
local shared = {}
for _, f in ipairs(cjson.decode(ARGV[10])) do shared[f] = true end
-- An event that moves the job forward, keeps it in its state (another attempt) or is a note
-- writes all its fields. One behind the job's state writes none that several states write; one
-- that comes after another event made the job final writes nothing.
local behind = mine >= 0 and mine < rank
local ended = mine >= 0 and mine == rank and rank >= tonumber(ARGV[9])
if not ended then
  for k, v in pairs(cjson.decode(ARGV[5])) do
    if not (behind and shared[k]) then redis.call('HSET', KEYS[1], k, v) end
  end
end
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[4])
local moved = 0
if tonumber(ARGV[3]) >= 0 then  -- a negative rank is a note in the history, not a state
  redis.call('HSETNX', KEYS[1], 'at:' .. ARGV[2], ARGV[4])
  if tonumber(ARGV[3]) > rank then
    redis.call('HSET', KEYS[1], 'state', ARGV[2], 'rank', ARGV[3], 'updated_at', ARGV[4])
    if before[1] then redis.call('HINCRBY', KEYS[4], before[1], -1) end
    redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
    moved = 1
  end
end
local after = redis.call('HMGET', KEYS[1], 'state', 'modality', 'label', 'batch_id')
if after[2] and not before[2] then redis.call('HINCRBY', KEYS[5], after[2], 1) end
table.insert(history, {event_id = ARGV[1], state = ARGV[2], at = ARGV[4]})
while #history > tonumber(ARGV[6]) do table.remove(history, 1) end
redis.call('HSET', KEYS[1], 'history', cjson.encode(history))
announce(KEYS[3], KEYS[2], ARGV[8], {upload_id = ARGV[7], status = after[1], event = ARGV[2],
  at = ARGV[4], label = after[3] or nil, batch_id = after[4] or nil})
return moved
"""
)

# Forget a job: its hash, its copies' record, its place in time, its counts; announced.
# KEYS: job hash, targets hash, jobs by time, channel, feed, state counts, modality counts.
# ARGV: upload id, at, feed max.
_FORGET = (
    _ANNOUNCE
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'modality', 'label', 'batch_id')
if not h[1] then return 0 end
redis.call('HINCRBY', KEYS[6], h[1], -1)
if h[2] then redis.call('HINCRBY', KEYS[7], h[2], -1) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
announce(KEYS[5], KEYS[4], ARGV[3], {upload_id = ARGV[1], status = 'deleted',
  event = 'deleted', at = ARGV[2], label = h[3] or nil, batch_id = h[4] or nil})
return 1
"""
)


# Retry of a failed job: back to where its failed stage starts, and its entry queued again,
# in one step, so the worker it wakes can never overtake the reset.
# KEYS: job hash, stream, channel, feed, state counts. ARGV: event id, state, rank, at,
# upload id, entry JSON, state-time fields to forget (JSON list), feed max, history max.
_RETRY = (
    _ANNOUNCE
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'failed' then return 0 end
redis.call('HDEL', KEYS[1], 'error', 'failed_stage', 'failed_event', 'deliveries', 'at:failed')
for _, f in ipairs(cjson.decode(ARGV[7])) do redis.call('HDEL', KEYS[1], f) end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'rank', ARGV[3], 'updated_at', ARGV[4])
redis.call('HINCRBY', KEYS[5], 'failed', -1)
redis.call('HINCRBY', KEYS[5], ARGV[2], 1)
local history = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
table.insert(history, {event_id = ARGV[1], state = 'retried', at = ARGV[4]})
while #history > tonumber(ARGV[9]) do table.remove(history, 1) end
redis.call('HSET', KEYS[1], 'history', cjson.encode(history))
redis.call('XADD', KEYS[2], '*', 'data', ARGV[6])
local filed = redis.call('HMGET', KEYS[1], 'label', 'batch_id')
announce(KEYS[4], KEYS[3], ARGV[8], {upload_id = ARGV[5], status = ARGV[2], event = 'retried',
  at = ARGV[4], label = filed[1] or nil, batch_id = filed[2] or nil})
return 1
"""
)
# a failed stage (its consumer group) -> the state its work starts from
RETRY_FROM: dict[str, State] = {s: cast(State, states.start) for s, states in STAGES.items()}
# a failed stage -> the fields its work writes, forgotten when it runs again
_RESET: dict[str, list[str]] = {
    stage: [f"at:{states.working}", f"at:{states.done}"] for stage, states in STAGES.items()
}
_RESET["validator"].append("at:rejected")
_RESET["uploader"].append("targets")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def changes(event: AnyEvent) -> tuple[str, dict[str, str]]:
    """The state an event moves a job to, and the fields it records (all as strings)."""
    match event:
        case FileReceived(file=f, origin=origin):
            fields = {"sha256": f.sha256, "size": str(f.size)}
            if origin is not None:
                fields.update({k: v for k, v in origin.model_dump().items() if v is not None})
            return "accepted", fields
        case StageStarted(stage=stage, delivery=n):
            return event.resulting_state(), {f"deliveries:{stage}": str(n)}
        case FileValidated(ids=ids, has_pixels=has_pixels, warnings=warnings):
            fields = {k: v for k, v in ids.model_dump().items() if v is not None}
            fields["has_pixels"] = "1" if has_pixels else "0"
            if warnings:
                fields["warnings"] = _json([w.model_dump() for w in warnings])
            return "validated", fields
        case FileRejected(reasons=reasons):
            return "rejected", {"reasons": _json([r.model_dump() for r in reasons])}
        case FileDescribed() as e:
            fields = {"archive_path": e.archive_path, "metadata_file": e.metadata_file}
            if e.preview_file:
                fields["preview_file"] = e.preview_file
            if e.preview_note:
                fields["preview_note"] = e.preview_note
            if e.duplicate_of:
                fields["duplicate_of"] = str(e.duplicate_of)
            return "described", fields
        case FileUploaded(targets=targets):
            return "archived", {"targets": _json([t.model_dump() for t in targets])}
        case CopiesDeletionRequested(targets=targets):
            return "deletion-requested", {"deletion": _json({"targets": targets})}
        case UploadAttempted(targets=targets):
            return "uploading", {"targets": _json([t.model_dump() for t in targets])}
        case JobFailed(stage=stage, error=error, deliveries=n, event=entry):
            fields = {"error": error, "failed_stage": stage, "deliveries": str(n)}
            if entry:
                fields["failed_event"] = entry
            return "failed", fields
    raise TypeError(f"no transition for {type(event).__name__}")  # JobRetried: see retry()


Transition = tuple[AnyEvent, tuple[str, dict[str, str]]]  # an event and its ``changes``


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


class JobStore:
    """Reads and writes job hashes. Writers: the gateway (create) and the status service."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._apply = Lua(_APPLY)
        self._retry = Lua(_RETRY)
        self._forget = Lua(_FORGET)

    async def queue_apply(
        self, pipe: Pipeline, event: AnyEvent, change: tuple[str, dict[str, str]] | None = None
    ) -> None:
        """Add the transition for ``event`` (its ``changes``, when already known) to a
        pipeline (``CopiesDeleted``: see ``forget``); an instance newly archived goes into the
        study search indexes in the same step."""
        state, fields = change or changes(event)
        await self._apply(
            keys=self._keys(event), args=self._args(event, state, fields), client=pipe
        )
        if isinstance(event, FileDescribed) and event.study and event.duplicate_of is None:
            await study_index.queue_index(pipe, event.upload_id, event.ids, event.study)

    async def queue_create(self, pipe: Pipeline, event: AnyEvent) -> None:
        """Add a job's creation to a transaction: its first state, and its place in time."""
        await self.queue_apply(pipe, event)
        pipe.zadd(
            names.JOBS_BY_TIME, {str(event.upload_id): event.occurred_at.timestamp()}, nx=True
        )

    async def apply(self, event: AnyEvent) -> bool:
        """Apply one event to its job; True when the state moved forward."""
        if isinstance(event, CopiesDeleted):  # the copies are gone: forget the job
            return bool(await self.forget(event.upload_id))
        async with self.redis.pipeline(transaction=True) as pipe:
            await self.queue_apply(pipe, event)
            return bool((await pipe.execute())[0])

    async def apply_all(self, events: list[AnyEvent]) -> None:
        """Apply several events in one round trip, in the order they happened to each job
        (``in_order``); raises if any of them failed."""
        transitions: list[Transition] = [
            (e, changes(e)) for e in events if not isinstance(e, CopiesDeleted)
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for event, change in in_order(transitions):
                await self.queue_apply(pipe, event, change)
            await pipe.execute()
        for event in events:
            if isinstance(event, CopiesDeleted):
                await self.forget(event.upload_id)

    async def forget(self, upload_id: UUID) -> list[str]:
        """Forget an upload everywhere: its record and counts, its label entry, its user's and
        batch's lists, its search entry. Says what it removed; safe to run twice."""
        wanted = ("state", "sha256", "source_sha256", "label", "filename", "user_id", "batch_id")
        values = await self.redis.hmget(names.status_key(upload_id), wanted)
        job = {k: names.text(v) for k, v in zip(wanted, values, strict=True) if v is not None}
        if "state" not in job:
            return await study_index.unindex(self.redis, upload_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await self._forget(
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
        return [*mine, *(names.text(r) for r in unindexed)]

    async def retry(self, upload_id: UUID) -> State | None:
        """Queue a failed job's failed stage again; the state it went back to, or None when
        the job is not failed or its stage cannot be retried."""
        fields = await self.redis.hmget(
            names.status_key(upload_id), ["state", "failed_stage", "failed_event"]
        )
        state, stage, entry = (names.text(v) if v is not None else None for v in fields)
        if state != "failed" or stage not in RETRY_FROM or not entry:
            return None
        back_to = RETRY_FROM[stage]
        retried = JobRetried(upload_id=upload_id, stage=stage)  # type: ignore[arg-type]
        stream = parse_event(entry).published_on
        done = await self._retry(
            keys=[
                names.status_key(upload_id),
                stream,
                names.STATUS_CHANNEL,
                names.STATUS_FEED,
                names.STATE_COUNTS,
            ],
            args=[
                str(retried.event_id),
                back_to,
                RANK[back_to],
                retried.occurred_at.isoformat(),
                str(upload_id),
                entry,
                _json(_RESET[stage]),
                names.STATUS_FEED_MAX,
                HISTORY_MAX,
            ],
            client=self.redis,
        )
        return back_to if done else None

    async def read_many(self, upload_ids: list[UUID]) -> list[JobStatus | None]:
        """Several jobs in one round trip, in order; None for those that do not exist."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for upload_id in upload_ids:
                pipe.hgetall(names.status_key(upload_id))
            found = await pipe.execute()
        return [
            JobStatus.from_hash(u, {names.text(k): names.text(v) for k, v in raw.items()})
            if raw
            else None
            for u, raw in zip(upload_ids, found, strict=True)
        ]

    async def read(self, upload_id: UUID) -> JobStatus | None:
        raw = await self.redis.hgetall(names.status_key(upload_id))
        if not raw:
            return None
        return JobStatus.from_hash(
            upload_id, {names.text(k): names.text(v) for k, v in raw.items()}
        )

    @staticmethod
    def _keys(event: AnyEvent) -> list[str]:
        return [
            names.status_key(event.upload_id),
            names.STATUS_CHANNEL,
            names.STATUS_FEED,
            names.STATE_COUNTS,
            names.MODALITY_COUNTS,
        ]

    @staticmethod
    def _args(event: AnyEvent, state: str, fields: dict[str, str]) -> list[str | int]:
        return [
            str(event.event_id),
            state,
            RANK[state],
            event.occurred_at.isoformat(),
            _json(fields),
            HISTORY_MAX,
            str(event.upload_id),
            names.STATUS_FEED_MAX,
            RANK["archived"],
            _json(sorted(SHARED_FIELDS)),
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
# stage -> (the state it starts in, the state it ends in)
_STAGES = {
    "validating": ("validating", "validated"),
    "describing": ("describing", "described"),
    "uploading": ("uploading", "archived"),
}


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
