"""Seed 002's upload service, a thin layer over our own routes: its paths and JSON shapes.

Its ``POST /upload`` (raw body, ``X-File-Name``, ``X-User-ID``) is our ``POST /upload``; the
answer has its ``upload_id`` and ``message``. Its mocked ``diagnosis`` and ``confidence`` are
left out: nothing here is fake. Batches, users, details, the de-identified ("preprocessed")
copy, ``/save-upload`` and ``/stats`` map onto ``batches`` and ``uploads``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from api_gateway.access import Scope, needs
from api_gateway.deps import Settings, Store
from api_gateway.routes import batches, uploads, users
from shared.status_api import find_job

router = APIRouter(tags=["seed 002: upload service"])


@router.post(
    "/upload/batch",
    status_code=202,
    response_model=batches.BatchAccepted,
    openapi_extra=needs(Scope.WRITE),
)
async def upload_batch(request: Request, settings: Settings, store: Store) -> batches.BatchAccepted:
    """Queue a batch of base64 files: ``{"files": [{"filename", "content"}]}``."""
    return await batches.accept_batch(request, settings, store)


@router.get(
    "/upload/batch/{batch_id}/status",
    response_model=batches.BatchStatus,
    openapi_extra=needs(Scope.READ),
)
async def batch_status(batch_id: str, store: Store) -> batches.BatchStatus:
    return await batches.status(batch_id, store)


@router.get(
    "/upload/batch/{batch_id}/files",
    response_model=batches.BatchFiles,
    openapi_extra=needs(Scope.READ),
)
async def batch_files(batch_id: str, store: Store) -> batches.BatchFiles:
    return await batches.batch_files(batch_id, store)


@router.get("/user/{user_id}/batches", openapi_extra=needs(Scope.READ))
async def user_batches(user_id: str, store: Store) -> dict[str, object]:
    return await users.list_user_batches(user_id, store)


@router.get("/user/{user_id}/uploads", openapi_extra=needs(Scope.READ))
async def user_uploads(user_id: str, store: Store) -> dict[str, object]:
    found = await users.user_uploads(user_id, store)
    return {"user_id": user_id, "uploads": found.uploads, "count": found.count}


class UploadDetails(BaseModel):
    """The upload record, flat as seed 002's table row, with our status details."""

    upload_id: UUID
    filename: str | None
    user_id: str | None
    batch_id: str | None
    label: str | None
    status: str
    created_at: datetime | None
    updated_at: datetime
    details: dict[str, Any]


@router.get(
    "/upload/{upload_id}/details", response_model=UploadDetails, openapi_extra=needs(Scope.READ)
)
async def details(upload_id: str, store: Store) -> UploadDetails:
    _, job = await find_job(store, upload_id)
    d = job.details
    return UploadDetails(
        upload_id=job.study_id,
        filename=d.get("filename"),
        user_id=d.get("user_id"),
        batch_id=d.get("batch_id"),
        label=d.get("label"),
        status=job.status,
        created_at=d.get("created_at"),
        updated_at=job.timestamp,
        details=d,
    )


@router.get(
    "/upload/{upload_id}/preprocessed-dicom",
    response_class=FileResponse,
    responses={200: {"content": {"application/dicom": {}}}},
    openapi_extra=needs(Scope.READ, audit="download.deidentified"),
)
async def preprocessed(upload_id: str, store: Store, settings: Settings) -> FileResponse:
    """The de-identified copy (PS3.15 Annex E basic profile)."""
    return await uploads.deidentified(upload_id, store, settings)


@router.post("/save-upload", openapi_extra=needs(Scope.WRITE))
async def save_upload(
    store: Store,
    user_id: Annotated[str, Query()],
    upload_id: Annotated[str, Query()],
) -> dict[str, str]:
    """List an existing upload among a user's uploads."""
    user, found = await users.save_to_user(store, user_id, upload_id, "user_id query parameter")
    return {"message": "Upload saved to user uploads", "user_id": user, "upload_id": str(found)}
