"""Where uploads are filed for people: study labels, users and batches, and the counts of stats.

The gateway files an upload in the same transaction that creates its job (``queue_file``), so
an accepted upload is always listed where its client put it; ``JobStore.forget`` unfiles it.
A label is a name (seed 004's "study folder"), never a path: under it, each file is known by
its client's filename, unique within the label. Lists that can outlive a job (a user's saved
uploads) are cleaned as they are read: an entry whose job is gone is dropped then.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import redis_names as names
from shared.errors import BadRequest
from shared.events import FileReceived

MAX_NAME = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Remove an upload's label entry if it is still its own, and the label once empty.
# KEYS: label hash, labels set. ARGV: filename, upload id, label.
_UNLABEL = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[3]) end
return 1
"""


def clean_name(text: str | None, what: str) -> str | None:
    """A label or user id as given, trimmed; a 400 naming ``what`` when it cannot be one."""
    if text is None or not text.strip():
        return None
    text = unicodedata.normalize("NFC", text.strip())
    if len(text) > MAX_NAME or _CONTROL.search(text):
        raise BadRequest(f"the {what} must be at most {MAX_NAME} printable characters")
    return text


def clean_filename(text: str | None) -> str | None:
    """The client's file name, relative path kept (folder uploads), never anything above it."""
    if not text:
        return None
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    name = _CONTROL.sub("", "/".join(parts))[-MAX_NAME:]
    return name or None


def queue_file(pipe: Pipeline, event: FileReceived) -> None:
    """Add an upload's entries to a transaction: by its hash, under its label, its user, its
    batch."""
    uid, at = str(event.upload_id), event.occurred_at
    pipe.sadd(names.sha256_key(event.file.sha256), uid)
    origin = event.origin
    if origin is None:
        return
    if origin.source_sha256:
        pipe.sadd(names.sha256_key(origin.source_sha256), uid)
    if origin.label:
        pipe.hset(names.label_key(origin.label), origin.filename or uid, uid)
        pipe.sadd(names.LABELS, origin.label)
    if origin.user_id:
        pipe.zadd(names.user_uploads_key(origin.user_id), {uid: at.timestamp()})
        pipe.sadd(names.USERS, origin.user_id)
    if origin.batch_id:
        pipe.rpush(names.batch_uploads_key(origin.batch_id), uid)


def queue_batch(
    pipe: Pipeline, batch_id: str, user_id: str | None, total: int, at: datetime
) -> None:
    """Add a batch's record to a transaction (its files are filed one by one)."""
    record: dict[str | bytes, str] = {
        "batch_id": batch_id,
        "created_at": at.isoformat(),
        "total_files": str(total),
    }
    if user_id:
        record["user_id"] = user_id
        pipe.zadd(names.user_batches_key(user_id), {batch_id: at.timestamp()})
        pipe.sadd(names.USERS, user_id)
    pipe.hset(names.batch_key(batch_id), mapping=record)  # type: ignore[arg-type]


def queue_unfile(pipe: Pipeline, upload_id: UUID, job: dict[str, str]) -> list[str]:
    """Add the removal of an upload's entries to a transaction; what they were."""
    uid, removed = str(upload_id), []
    for field in ("sha256", "source_sha256"):
        if sha256 := job.get(field):
            pipe.srem(names.sha256_key(sha256), uid)
    if label := job.get("label"):
        keys = [names.label_key(label), names.LABELS]
        pipe.eval(_UNLABEL, 2, *keys, job.get("filename") or uid, uid, label)
        removed.append("label entry")
    if user := job.get("user_id"):
        pipe.zrem(names.user_uploads_key(user), uid)
        removed.append("user's upload list entry")
    if batch := job.get("batch_id"):
        pipe.lrem(names.batch_uploads_key(batch), 0, uid)
        removed.append("batch entry")
    return removed


async def taken_names(redis: Redis | Pipeline, label: str, filenames: list[str]) -> set[str]:
    """Which of these filenames are already filed under the label."""
    if not filenames:
        return set()
    ids = await redis.hmget(names.label_key(label), filenames)  # type: ignore[misc]
    return {name for name, found in zip(filenames, ids, strict=True) if found is not None}


async def known(redis: Redis, hashes: list[str]) -> dict[str, list[UUID]]:
    """The uploads that hold each of these SHA-256 hashes (those with none left out)."""
    async with redis.pipeline(transaction=False) as pipe:
        for sha256 in hashes:
            pipe.smembers(names.sha256_key(sha256))
        found = await pipe.execute()
    return {h: sorted(UUID(v) for v in ids) for h, ids in zip(hashes, found, strict=True) if ids}


async def save_upload(redis: Redis, user_id: str, upload_id: UUID) -> None:
    """List an existing upload among a user's uploads (seed 002's ``/save-upload``)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(names.user_uploads_key(user_id), {str(upload_id): datetime.now(UTC).timestamp()})
        pipe.sadd(names.USERS, user_id)
        await pipe.execute()


async def labels(redis: Redis) -> dict[str, int]:
    """Every label in use and how many files it holds, by name."""
    found = sorted(cast(set[str], await redis.smembers(names.LABELS)))  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        for label in found:
            pipe.hlen(names.label_key(label))
        counts = await pipe.execute()
    return {label: n for label, n in zip(found, counts, strict=True) if n}


async def label_files(redis: Redis, label: str) -> dict[str, UUID]:
    """The files under a label: client filename -> upload id, by name."""
    entries = cast(dict[str, str], await redis.hgetall(names.label_key(label)))  # type: ignore[misc]
    return {k: UUID(v) for k, v in sorted(entries.items())}


async def user_uploads(redis: Redis, user_id: str) -> list[UUID]:
    """A user's uploads, newest first."""
    ids = cast(list[str], await redis.zrevrange(names.user_uploads_key(user_id), 0, -1))
    return [UUID(v) for v in ids]


async def user_batches(redis: Redis, user_id: str) -> list[str]:
    """A user's batch ids, newest first."""
    return cast(list[str], await redis.zrevrange(names.user_batches_key(user_id), 0, -1))


async def batch(redis: Redis, batch_id: str) -> tuple[dict[str, str], list[UUID]] | None:
    """A batch's record and its upload ids, or None when there is no such batch."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(names.batch_key(batch_id))
        pipe.lrange(names.batch_uploads_key(batch_id), 0, -1)
        record, ids = await pipe.execute()
    if not record:
        return None
    return record, [UUID(v) for v in ids]


async def drop_missing(redis: Redis, user_id: str, missing: list[UUID]) -> None:
    """Remove uploads that no longer exist from a user's list (cleaning on read)."""
    if missing:
        await redis.zrem(names.user_uploads_key(user_id), *(str(m) for m in missing))


def positive_counts(raw: dict[str, str]) -> dict[str, int]:
    """A counts hash as read from Redis, by name, without the zeros of things now gone."""
    return {k: int(v) for k, v in sorted(raw.items()) if int(v) > 0}


async def stats(redis: Redis) -> dict[str, Any]:
    """Totals for ``GET /stats``: uploads, users, first and last upload, counts by state and
    by modality, from counters kept as jobs move (nothing is scanned)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(names.JOBS_BY_TIME)
        pipe.zrange(names.JOBS_BY_TIME, 0, 0, withscores=True)
        pipe.zrange(names.JOBS_BY_TIME, -1, -1, withscores=True)
        pipe.scard(names.USERS)
        pipe.hgetall(names.STATE_COUNTS)
        pipe.hgetall(names.MODALITY_COUNTS)
        total, first, last, users, states, modalities = await pipe.execute()

    def when(entry: list[tuple[bytes, float]]) -> str | None:
        return datetime.fromtimestamp(entry[0][1], UTC).isoformat() if entry else None

    return {
        "total_uploads": total,
        "unique_users": users,
        "latest_upload": when(last),
        "earliest_upload": when(first),
        "by_state": positive_counts(states),
        "by_modality": positive_counts(modalities),
    }
