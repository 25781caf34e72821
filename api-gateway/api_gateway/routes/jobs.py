"""Operations on jobs: ``POST /jobs/{id}/retry`` runs a failed job's failed stage again."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel

from shared.errors import JobNotFailed
from shared.jobs import State
from shared.status_api import job_of

router = APIRouter(tags=["jobs"])


class JobRequeued(BaseModel):
    study_id: UUID
    status: State
    message: Literal["the failed stage was queued again"] = "the failed stage was queued again"


@router.post(
    "/jobs/{study_id}/retry",
    status_code=202,
    responses={404: {"description": "No such job"}, 409: {"description": "The job is not failed"}},
)
async def retry(study_id: str, request: Request) -> JobRequeued:
    """Queue a failed job's failed stage again. Targets that already hold the file keep it:
    the uploader copies only to the ones that did not."""
    upload_id, job = await job_of(request, study_id)
    back_to = await request.app.state.store.retry(upload_id)
    if back_to is None:
        raise JobNotFailed(f"the job is {job.status}; only a failed job can be retried")
    return JobRequeued(study_id=upload_id, status=back_to)
