"""Seed 000's job API, a thin layer over our own: its paths, parameters and JSON shapes.

Its job states map from ours: ``accepted`` is QUEUED; ``validating`` to ``uploading`` are
IN_PROGRESS; ``archived`` is COMPLETED; ``rejected`` and ``failed`` are FAILED. A job's
``platform`` is the targets that hold (or were asked to hold) the file.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from typing import Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from shared import redis_names as names
from shared.errors import JobStateConflict
from shared.jobs import FINAL
from shared.status_api import job_of

router = APIRouter(prefix="/dicom", tags=["seed 000: job API"])

SeedState = Literal["QUEUED", "IN_PROGRESS", "COMPLETED", "FAILED"]


def seed_state(state: str) -> SeedState:
    if state == "accepted":
        return "QUEUED"
    if state == "archived":
        return "COMPLETED"
    return "FAILED" if state in ("rejected", "failed") else "IN_PROGRESS"


class SeedJobStatus(BaseModel):
    job_id: UUID = Field(serialization_alias="jobId")
    status: SeedState
    platform: str | None
    created_at: datetime = Field(serialization_alias="createdAt")
    updated_at: datetime = Field(serialization_alias="updatedAt")


class SeedJobDeleted(BaseModel):
    job_id: UUID = Field(serialization_alias="jobId")
    status: Literal["deleted"] = "deleted"
    removed: list[str]


@router.get("/status/{job_id}", response_model=SeedJobStatus, response_model_by_alias=True)
async def status(job_id: str, request: Request) -> SeedJobStatus:
    """The seed's job status: QUEUED, IN_PROGRESS, COMPLETED or FAILED."""
    upload_id, job = await job_of(request, job_id)
    targets = [t["target"] for t in job.details.get("targets", [])]
    return SeedJobStatus(
        job_id=upload_id,
        status=seed_state(job.status),
        platform=",".join(targets) or None,
        created_at=job.details.get("created_at") or job.timestamp,
        updated_at=job.timestamp,
    )


@router.delete("/delete", response_model=SeedJobDeleted, response_model_by_alias=True)
async def delete(request: Request, job_id: str = Query(alias="jobId")) -> SeedJobDeleted:
    """Remove a finished job's record and its local files (archive folder, upload).

    Copies on cloud targets stay. A job still in the pipeline cannot be deleted (409): its
    stages would write to it again.
    """
    upload_id, job = await job_of(request, job_id)
    if job.status not in FINAL:
        raise JobStateConflict(
            f"the job is {job.status}; wait until it is archived, rejected or failed"
        )
    settings = request.app.state.settings
    redis = request.app.state.store.redis
    removed: list[str] = []
    folder = settings.archive_path / str(upload_id)
    if folder.is_dir():
        shutil.rmtree(folder)
        removed.append(str(folder))
    upload = settings.uploads_path / f"{upload_id}.dcm"
    if upload.exists():
        upload.unlink()
        removed.append(str(upload))
    sop = job.details.get("sop_instance_uid")
    if sop and job.details.get("duplicate_of") is None:
        holder = await redis.get(names.instance_key(sop))
        if holder and holder.decode().split(" ")[0] == str(upload_id):
            await redis.delete(names.instance_key(sop))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(names.status_key(upload_id), names.targets_key(upload_id))
        pipe.zrem(names.JOBS_BY_TIME, str(upload_id))
        await pipe.execute()
    removed.append("job record")
    return SeedJobDeleted(job_id=upload_id, removed=removed)
