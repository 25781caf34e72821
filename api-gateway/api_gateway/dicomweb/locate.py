"""Where archived instances are, found by their UIDs through Redis, never by scanning folders.

The status service indexes every archived instance that is not a duplicate under its study
(``dcm:study-uploads:{study}``: upload id -> ``series TAB sop TAB modality``), and the
descriptor records which upload holds each SOP Instance UID (``dcm:instances:{sop}``: ``upload
id SPACE sha256``). An instance is served only once it is in the study index (archived and
indexed), from ``ARCHIVE_PATH/{upload id}/original.dcm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from redis.asyncio import Redis

from shared import redis_names as names
from shared.errors import InstanceNotFound


@dataclass(frozen=True, order=True)
class Instance:
    """One archived instance: its UIDs and the archive folder holding its files."""

    series: str
    sop: str
    upload_id: str
    folder: Path

    @property
    def original(self) -> Path:
        return self.folder / "original.dcm"

    @property
    def metadata(self) -> Path:
        return self.folder / "metadata.json"


def _entry(upload_id: str, value: str, root: Path) -> Instance | None:
    series, _, rest = value.partition("\t")
    sop, _, _ = rest.partition("\t")
    if not series or not sop:
        return None
    return Instance(series=series, sop=sop, upload_id=upload_id, folder=root / upload_id)


async def instances(
    redis: Redis, root: Path, study: str, series: str | None = None
) -> list[Instance]:
    """The archived instances of a study (of one series of it), in series then SOP UID order,
    one per SOP Instance UID. ``InstanceNotFound`` when there is none."""
    entries = cast(dict[str, str], await redis.hgetall(names.study_uploads_key(study)))
    found: dict[str, Instance] = {}
    for upload_id, value in entries.items():
        instance = _entry(upload_id, value, root)
        if instance is None or (series is not None and instance.series != series):
            continue
        kept = found.get(instance.sop)
        if kept is None or await _holds(redis, instance):  # the newest version of a UID wins
            found[instance.sop] = instance
    if not found:
        what = f"series {series} of study {study}" if series else f"study {study}"
        raise InstanceNotFound(f"no archived instance of {what}")
    return sorted(found.values())


async def instance(redis: Redis, root: Path, study: str, series: str, sop: str) -> Instance:
    """One archived instance, by its three UIDs. ``InstanceNotFound`` when it is not archived
    (or not in that study and series)."""
    holder = cast(str | None, await redis.get(names.instance_key(sop)))
    if holder:
        upload_id = holder.partition(" ")[0]
        value = cast(str | None, await redis.hget(names.study_uploads_key(study), upload_id))
        found = _entry(upload_id, value, root) if value else None
        if found is not None and found.series == series and found.sop == sop:
            return found
    # the holder is a newer version not indexed yet, or was removed: look through the study
    try:
        candidates = await instances(redis, root, study, series)
    except InstanceNotFound:
        candidates = []
    for candidate in candidates:
        if candidate.sop == sop:
            return candidate
    raise InstanceNotFound(f"instance {sop} is not archived in series {series} of study {study}")


async def _holds(redis: Redis, instance: Instance) -> bool:
    holder = cast(str | None, await redis.get(names.instance_key(instance.sop)))
    return holder is not None and holder.partition(" ")[0] == instance.upload_id
