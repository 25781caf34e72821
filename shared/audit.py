"""The audit trail: who did what, when, from where, and how it ended, in one append-only stream.

An entry names the actor (an API key's name, a token's subject, a calling AE title, or
``anonymous``), the action, the client's address, the outcome, and what it touched by upload
id and UIDs only: no patient data, no secret, no path a user chose. Uploads are recorded by the
intake in the transaction that creates their jobs (so none is accepted unrecorded, whichever
way it came in); the gateway records downloads, deletions, retries, key changes and refusals.
The stream is never trimmed: an audit trail is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import redis_names as names

ANONYMOUS: Final = "anonymous"
# what an entry may say it touched: the gateway's path parameters map onto these
TARGETS: Final = ("upload_id", "study_uid", "series_uid", "sop_uid", "key_id")
SCAN: Final = 10_000  # entries one read looks through at most; the caller goes on from next


@dataclass(frozen=True)
class Caller:
    """Who asks, and from where: a principal's actor and the client's address."""

    actor: str
    client: str = ""


@dataclass(frozen=True)
class Entry:
    id: str  # the stream entry id: the order, and where to go on from
    at: str
    actor: str
    action: str
    outcome: str
    client: str
    targets: Mapping[str, str]
    method: str = ""
    route: str = ""  # the route's template (``/uploads/{study_id}/original``), never a path

    def as_json(self) -> dict[str, Any]:
        body = {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "outcome": self.outcome,
            "client": self.client,
            **self.targets,
        }
        if self.route:
            body |= {"method": self.method, "route": self.route}
        return body


def fields(
    actor: str,
    action: str,
    outcome: str,
    client: str | None,
    method: str = "",
    route: str = "",
    **targets: str | None,
) -> dict[str, str]:
    """One entry's fields, as stored."""
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise ValueError(f"an audit entry does not name {sorted(unknown)}")
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "actor": actor or ANONYMOUS,
        "action": action,
        "outcome": outcome,
        "client": client or "",
        **{k: v for k, v in targets.items() if v},
    }
    if route:
        entry |= {"method": method, "route": route}
    return entry


def queue(pipe: Pipeline, entry: dict[str, str]) -> None:
    """Add an entry with the rest of a transaction."""
    pipe.xadd(names.AUDIT, entry)  # type: ignore[arg-type]


async def record(redis: Redis, entry: dict[str, str]) -> None:
    await redis.xadd(names.AUDIT, entry)  # type: ignore[arg-type]


async def read(
    redis: Redis,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: str | None = None,
    limit: int = 100,
) -> tuple[list[Entry], str | None]:
    """Entries in time order matching every filter given, at most ``limit``; and the id to go
    on from (``after``) when there may be more, looking through at most ``SCAN`` entries."""
    if after is not None and after == f"{MAX_ID_PART}-{MAX_ID_PART}":
        return [], None  # nothing can come after the last id there is (and Redis says so)
    low = f"({after}" if after else (_ms(since) if since else "-")
    high = _ms(until) if until else "+"
    found: list[Entry] = []
    scanned = 0
    while scanned < SCAN:
        batch = cast(
            list[tuple[str, dict[str, str]]],
            await redis.xrange(names.AUDIT, low, high, count=min(1000, SCAN - scanned)),
        )
        if not batch:
            return found, None
        scanned += len(batch)
        for entry_id, raw in batch:
            if (actor is None or raw.get("actor") == actor) and (
                action is None or raw.get("action") == action
            ):
                found.append(_entry(entry_id, raw))
                if len(found) == limit:
                    return found, entry_id
        low = f"({batch[-1][0]}"
    return found, low[1:]


def _ms(moment: datetime) -> str:
    """The stream id of a moment: its milliseconds since 1970, 0 for any moment before."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return str(max(0, int(moment.timestamp() * 1000)))


MAX_ID_PART = 2**64 - 1  # each half of a stream id is an unsigned 64-bit number


def is_entry_id(text: str) -> bool:
    """Whether text can be a stream entry's id, ``<ms>-<seq>``, as Redis takes it."""
    ms, dash, seq = text.partition("-")
    parts = (ms, seq)
    return bool(dash) and all(p.isascii() and p.isdigit() and int(p) <= MAX_ID_PART for p in parts)


def _entry(entry_id: str, raw: Mapping[str, str]) -> Entry:
    return Entry(
        id=entry_id,
        at=raw.get("at", ""),
        actor=raw.get("actor", ANONYMOUS),
        action=raw.get("action", ""),
        outcome=raw.get("outcome", ""),
        client=raw.get("client", ""),
        targets={k: raw[k] for k in TARGETS if k in raw},
        method=raw.get("method", ""),
        route=raw.get("route", ""),
    )
