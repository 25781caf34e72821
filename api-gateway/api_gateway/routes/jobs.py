"""Operations on jobs: ``POST /jobs/{id}/retry`` runs a failed job's failed stage again;
``GET /jobs/audit.csv`` is one row per job and target, streamed (UIDs, never patient data)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Annotated, Literal, cast
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from redis.asyncio import Redis

from api_gateway.access import Scope, needs
from api_gateway.deps import RedisClient, Store
from shared import redis_names as names
from shared.errors import JobNotFailed
from shared.jobs import State
from shared.status_api import find_job

router = APIRouter(tags=["jobs"])


class JobRequeued(BaseModel):
    study_id: UUID
    status: State
    message: Literal["the failed stage was queued again"] = "the failed stage was queued again"


@router.post(
    "/jobs/{study_id}/retry",
    status_code=202,
    responses={404: {"description": "No such job"}, 409: {"description": "The job is not failed"}},
    openapi_extra=needs(Scope.WRITE, audit="retry"),
)
async def retry(study_id: str, store: Store) -> JobRequeued:
    """Queue a failed job's failed stage again. Targets that already hold the file keep it:
    the uploader copies only to the ones that did not."""
    upload_id, job = await find_job(store, study_id)
    back_to = await store.retry(upload_id)
    if back_to is None:
        raise JobNotFailed(f"the job is {job.status}; only a failed job can be retried")
    return JobRequeued(study_id=upload_id, status=back_to)


COLUMNS = [
    "job_id",
    "state",
    "created_at",
    "updated_at",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "modality",
    "sha256",
    "size",
    "source",
    "actor",
    "target",
    "outcome",
    "location",
    "checksum",
    "seconds",
    "error",
]
PAGE = 500


@router.get(
    "/jobs/audit.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "One row per job and target"}},
    openapi_extra=needs(Scope.ADMIN, audit="audit.export"),
)
async def audit(
    redis: RedisClient,
    since: Annotated[datetime | None, Query(description="accepted at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="accepted before (ISO 8601)")] = None,
) -> StreamingResponse:
    """Every job accepted in the window, oldest first, with each target's outcome."""
    low = since.timestamp() if since else "-inf"
    high = f"({until.timestamp()}" if until else "+inf"
    return StreamingResponse(
        _rows(redis, low, high),
        media_type="text/csv",
        headers={"content-disposition": 'attachment; filename="dicomflow-audit.csv"'},
    )


async def _rows(redis: Redis, low: float | str, high: float | str) -> AsyncIterator[str]:
    yield _line(COLUMNS)
    offset = 0
    while page := cast(
        list[str], await redis.zrangebyscore(names.JOBS_BY_TIME, low, high, offset, PAGE)
    ):
        async with redis.pipeline(transaction=False) as pipe:
            for upload_id in page:
                pipe.hgetall(names.status_key(upload_id))
            hashes = await pipe.execute()
        for upload_id, fields in zip(page, hashes, strict=True):
            for row in _job_rows(upload_id, fields) if fields else []:
                yield _line(row)
        offset += len(page)


def _job_rows(upload_id: str, h: dict[str, str]) -> list[list[object]]:
    common = [
        upload_id,
        h.get("state"),
        h.get("created_at"),
        h.get("updated_at"),
        h.get("study_uid"),
        h.get("series_uid"),
        h.get("sop_uid"),
        h.get("modality"),
        h.get("sha256"),
        h.get("size"),
        h.get("source"),
        h.get("actor") or (f"ae:{h['calling_ae']}" if h.get("calling_ae") else ""),
    ]
    targets = json.loads(h.get("targets", "[]"))
    if not targets:
        reasons = "; ".join(r["code"] for r in json.loads(h.get("reasons", "[]")))
        return [[*common, "", h.get("state"), "", "", "", h.get("error") or reasons]]
    return [
        [
            *common,
            t["target"],
            "ok" if t["ok"] else "error",
            t.get("location"),
            t.get("checksum"),
            t.get("seconds"),
            t.get("error"),
        ]
        for t in targets
    ]


def _line(values: Sequence[object]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(["" if v is None else v for v in values])
    return out.getvalue()
