"""The study, series and instance indexes the status service keeps: each archived instance,
indexed once (what ``/studies``, QIDO-RS and C-FIND answer from).

The layout (key names, how values are normalised) is ``shared.study_index``'s, which the
gateway's search reads; this module only writes new entries (``index.lua`` beside it). Removal
is part of forgetting a job (``shared.jobs.JobStore.forget``), which the gateway also does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import redis_names as names
from shared.events import DicomIds, StudyKeys
from shared.lua import Lua
from shared.study_index import (
    EXACT_INDEXES,
    INSTANCE_ATTRIBUTES,
    SERIES_ATTRIBUTES,
    STUDY_ATTRIBUTES,
    date_score,
    exact_key,
    modality_key,
    name_key,
    value_digest,
)

_INDEX = Lua.of("status_service", "index.lua")


async def queue_index(
    client: Redis | Pipeline,
    upload_id: UUID | str,
    ids: DicomIds,
    study: StudyKeys,
    *,
    now: float | None = None,
) -> None:
    """Index one archived instance (not a duplicate) under its study, its series and its SOP
    Instance UID; with a pipeline, the script is queued and runs when the pipeline does.
    Indexing the same upload again changes nothing."""
    uid = ids.study_uid
    attributes = {k: v for k, v in _clean(study).items() if v}
    score = date_score(attributes.get("study_date"), attributes.get("study_time"))
    if score == 0:
        attributes.pop("study_date", None)  # not a date: neither shown nor searched
    args: list[str | float] = [
        str(upload_id),
        uid,
        ids.series_uid,
        ids.sop_uid,
        modality_key(ids.modality or ""),
        now if now is not None else datetime.now(UTC).timestamp(),
        names.STUDIES_BY_MODALITY_PREFIX,
        str(score) if score else "",
        name_key(attributes.get("patient_name", "")),
        len(EXACT_INDEXES),
    ]
    for field, prefix in EXACT_INDEXES.items():
        value = exact_key(attributes.get(field, ""))
        args += [f"ix:{field}", prefix, value_digest(value) if value else ""]
    for fields in (STUDY_ATTRIBUTES, SERIES_ATTRIBUTES):
        given = [(f, attributes[f]) for f in fields if f in attributes]
        args.append(len(given))
        for field, value in given:
            args += [field, value]
    args += [x for f in INSTANCE_ATTRIBUTES if f in attributes for x in (f, attributes[f])]
    args += ["sop_class_uid", ids.sop_class_uid]
    keys = [
        names.STUDY_OF_UPLOAD,
        names.STUDIES_BY_DATE,
        names.STUDIES_BY_PATIENT_NAME,
        names.STUDIES_BY_UPDATE,
        names.study_key(uid),
        names.study_uploads_key(uid),
        names.study_series_key(uid),
        names.study_instances_key(uid),
        names.study_modalities_key(uid),
        names.series_key(ids.series_uid),
        names.series_instances_key(ids.series_uid),
        names.sop_instance_key(ids.sop_uid),
    ]
    await _INDEX(keys=keys, args=args, client=client)


def _clean(study: StudyKeys) -> dict[str, str]:
    out: dict[str, str] = {}
    for field, value in study.model_dump().items():
        if value is not None:
            out[field] = str(value).replace("\x00", "").strip()
    return out
