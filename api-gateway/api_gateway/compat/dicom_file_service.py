"""Seed 003's file service, a thin layer over our own routes: its paths and JSON shapes.

``POST /dicom-image`` stores a file (multipart field ``file``) and answers ``{"file_id"}``:
the upload id, so every route of ours works with it too. The file goes through the pipeline
first, so ``GET /dicom-image/{file_id}`` and its ``/png`` answer 409 until it is archived
(poll ``GET /status/{file_id}``, usually well under a second).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from api_gateway.access import Scope, needs
from api_gateway.deps import Settings, Store
from api_gateway.routes import uploads
from api_gateway.routes.upload import accept_uploads

router = APIRouter(prefix="/dicom-image", tags=["seed 003: file service"])


class FileStored(BaseModel):
    file_id: str


@router.post("", status_code=201, response_model=FileStored, openapi_extra=needs(Scope.WRITE))
async def store(request: Request, settings: Settings, jobs: Store) -> FileStored:
    """Store one DICOM file; its ``file_id`` is our upload id."""
    accepted, _, _ = await accept_uploads(request, settings, jobs)
    return FileStored(file_id=str(accepted[0].study_id))


@router.get(
    "/{file_id}", response_model=None, openapi_extra=needs(Scope.READ, audit="download.original")
)
async def get_file(
    file_id: str,
    store: Store,
    dicom_tag: Annotated[list[str] | None, Query(description="e.g. (0010,0010)")] = None,
) -> FileResponse | dict[str, object]:
    """The stored file, or with ``dicom_tag`` the attributes it names."""
    if dicom_tag is None:
        return await uploads.original(file_id, store)
    answer = await uploads.tags(file_id, store, dicom_tag)
    return {"file_id": file_id, "tags": answer["tags"]}


@router.get("/{file_id}/png", response_class=FileResponse, openapi_extra=needs(Scope.READ))
async def get_png(file_id: str, store: Store) -> FileResponse:
    """A PNG of the file's first frame for the browser."""
    return await uploads.image(file_id, store, 1, None, None, "png")
