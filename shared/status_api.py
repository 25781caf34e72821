"""``GET /status/{study_id}``: the seed's status answer, served by gateway and status service."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request

from shared.errors import UploadNotFound
from shared.jobs import JobStatus, JobStore


def upload_id_of(text: str) -> UUID:
    """The upload id in a path, or a 404 that says what an upload id looks like."""
    try:
        return UUID(text)
    except ValueError:
        raise UploadNotFound("that is not an upload id: upload ids are UUIDs") from None


async def job_of(request: Request, text: str) -> tuple[UUID, JobStatus]:
    """The job a path or body names, or a 404 that says why."""
    upload_id = upload_id_of(text)
    store: JobStore = request.app.state.store
    job = await store.read(upload_id)
    if job is None:
        raise UploadNotFound(f"no upload has id {upload_id}")
    return upload_id, job


def status_router() -> APIRouter:
    router = APIRouter(tags=["status"])

    @router.get(
        "/status/{study_id}",
        response_model=JobStatus,
        responses={404: {"description": "No upload has this id"}},
    )
    async def get_status(study_id: str, request: Request) -> JobStatus:
        """Where an upload stands: its state, when it last changed, and what is known of it."""
        _, job = await job_of(request, study_id)
        return job

    return router
