"""A user's uploads and batches: those sent with ``X-User-ID``, and uploads saved to them."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response

from api_gateway.access import Scope, needs
from api_gateway.deps import Store
from api_gateway.routes.batches import BatchStatus, status
from api_gateway.routes.uploads import UploadList, UploadRecord
from shared import catalog
from shared.errors import BadRequest, BatchNotFound
from shared.jobs import JobStore
from shared.status_api import find_job

router = APIRouter(tags=["uploads"])


@router.get("/users/{user_id}/uploads", response_model=UploadList, openapi_extra=needs(Scope.READ))
async def user_uploads(user_id: str, store: Store) -> UploadList:
    """A user's uploads (sent with X-User-ID, or saved to them), newest first."""
    ids = await catalog.user_uploads(store.redis, user_id)
    jobs = await store.read_many(ids)
    gone = [u for u, j in zip(ids, jobs, strict=True) if j is None]
    await catalog.drop_missing(store.redis, user_id, gone)
    records = [UploadRecord.of(j) for j in jobs if j]
    return UploadList(uploads=records, count=len(records), next=None)


@router.put(
    "/users/{user_id}/uploads/{study_id}", status_code=204, openapi_extra=needs(Scope.WRITE)
)
async def save_upload(user_id: str, study_id: str, store: Store) -> Response:
    """List an existing upload among a user's uploads."""
    await save_to_user(store, user_id, study_id, "user id")
    return Response(status_code=204)


async def save_to_user(store: JobStore, user_id: str, study_id: str, what: str) -> tuple[str, UUID]:
    """File an existing upload under a user; the user and upload, or a 400 or 404 naming why."""
    user = catalog.clean_name(user_id, what)
    if user is None:
        raise BadRequest(f"the {what} is empty")
    upload_id, _ = await find_job(store, study_id)
    await catalog.save_upload(store.redis, user, upload_id)
    return user, upload_id


async def user_batches(store: JobStore, user_id: str) -> list[BatchStatus]:
    """A user's batches, newest first, each with its status."""
    ids = await catalog.user_batches(store.redis, user_id)
    found = []
    for batch_id in ids:
        try:
            found.append(await status(batch_id, store))
        except BatchNotFound:
            continue
    return found


@router.get("/users/{user_id}/batches", openapi_extra=needs(Scope.READ))
async def list_user_batches(user_id: str, store: Store) -> dict[str, object]:
    """A user's batches, newest first."""
    batches = await user_batches(store, user_id)
    return {"user_id": user_id, "batches": batches, "count": len(batches)}
