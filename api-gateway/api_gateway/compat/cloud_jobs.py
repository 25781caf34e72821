"""Seed 000's job API, a thin layer over our own: its paths, parameters and JSON shapes.

Its job states map from ours: ``accepted`` is QUEUED; ``validating`` to ``uploading`` are
IN_PROGRESS; ``archived`` is COMPLETED; ``rejected`` and ``failed`` are FAILED. A job's
``platform`` is the targets that hold (or were asked to hold) the file.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from api_gateway import removal
from api_gateway.access import Scope, needs
from api_gateway.deps import Settings, Store
from shared.status_api import find_job

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
    status: Literal["deleted", "deleting"] = "deleted"
    removed: list[str]
    cloud: list[str] = Field(default_factory=list, description="targets whose copies go")


@router.get(
    "/status/{job_id}",
    response_model=SeedJobStatus,
    response_model_by_alias=True,
    openapi_extra=needs(Scope.READ),
)
async def status(job_id: str, store: Store) -> SeedJobStatus:
    """The seed's job status: QUEUED, IN_PROGRESS, COMPLETED or FAILED."""
    upload_id, job = await find_job(store, job_id)
    targets = [t["target"] for t in job.details.get("targets", [])]
    return SeedJobStatus(
        job_id=upload_id,
        status=seed_state(job.status),
        platform=",".join(targets) or None,
        created_at=job.details.get("created_at") or job.timestamp,
        updated_at=job.timestamp,
    )


@router.delete(
    "/delete",
    response_model=SeedJobDeleted,
    response_model_by_alias=True,
    responses={202: {"description": "Local files removed; the cloud copies are being removed"}},
    openapi_extra=needs(Scope.ADMIN, audit="delete"),
)
async def delete(
    store: Store,
    settings: Settings,
    response: Response,
    job_id: Annotated[str, Query(alias="jobId")],
    delete_cloud: Annotated[bool, Query(alias="deleteCloud")] = False,
) -> SeedJobDeleted:
    """Remove a finished job's local files (archive folder, upload) and its record.

    Copies on cloud targets stay unless ``deleteCloud=true``: then the uploader removes them
    from every target that holds them (they are the instance's copies, shared by every job
    of the same instance), the answer is 202 ``deleting``, and the record goes once they are
    gone (``GET /dicom/status/{jobId}`` is 404 then). A job still in the pipeline cannot be
    deleted (409): its stages would write to it again.
    """
    upload_id, job = await find_job(store, job_id)
    done = await removal.remove(store, settings, upload_id, job, delete_cloud)
    if done.status == "deleting":
        response.status_code = 202
    return SeedJobDeleted(job_id=upload_id, **done.model_dump(exclude={"upload_id"}))
