"""The gateway's upload route: ``POST /upload`` in each of its seeds' forms."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

import structlog
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api_gateway import http_intake
from api_gateway.access import Scope, needs
from api_gateway.deps import Settings, Store, caller_of
from api_gateway.receive import (
    MultipartReceiver,
    ReceivedFile,
    RefusedFile,
    boundary_of,
    receive_raw,
)
from api_gateway.settings import GatewaySettings
from shared import catalog, intake, metrics
from shared.errors import NoFilePart
from shared.jobs import JobStore

log = structlog.get_logger()
router = APIRouter()

ACCEPTED_MESSAGE = "DICOM file uploaded successfully and queued for processing"


class UploadAccepted(BaseModel):
    """One accepted file: the seed's fields first, then what we know of the bytes."""

    study_id: UUID
    upload_id: UUID = Field(description="the same id, under seed 002's name")
    status: Literal["accepted"] = "accepted"
    message: str = ACCEPTED_MESSAGE
    filename: str | None
    size: int
    sha256: str
    converted_from: Literal["jpeg", "png"] | None = Field(
        None, description="the upload was an image, stored as a Secondary Capture instance"
    )

    @classmethod
    def of(cls, f: ReceivedFile) -> UploadAccepted:
        return cls(
            study_id=f.upload_id,
            upload_id=f.upload_id,
            filename=f.filename,
            size=f.size,
            sha256=f.sha256,
            converted_from=f.converted_from,
        )


class FileRefused(BaseModel):
    """A file of the request that was not taken (seed 004's ``files[]``)."""

    name: str | None
    reason: str = Field(description="too_large, invalid_type, invalid_image or duplicate")
    message: str


class UploadsAccepted(UploadAccepted):
    """Seed 001's answer for the first file, every accepted file in ``uploads``, and seed
    004's per-file report of the refused ones."""

    uploads: list[UploadAccepted]
    label: str | None = None
    success: bool = Field(description="seed 004: false when any file was refused")
    failedFiles: int  # noqa: N815 (seed 004's name)
    files: list[FileRefused] = Field(description="the refused files, each with its reason")


@router.post(
    "/upload",
    status_code=202,
    response_model=UploadsAccepted,
    responses={
        400: {"description": "No file, a malformed body, or every file refused"},
        409: {"description": "Every file's name is taken under its label"},
        413: {"description": "Every file is larger than MAX_FILE_SIZE"},
        415: {"description": "Every file of a labelled upload is not DICOM"},
        503: {"description": "Redis is unreachable; nothing was accepted"},
        507: {"description": "The uploads folder is full; nothing was accepted"},
    },
    openapi_extra={
        **needs(Scope.WRITE),
        "parameters": [
            {"name": "label", "in": "query", "required": False, "schema": {"type": "string"}},
            {
                "name": "X-File-Name",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            },
            {"name": "X-User-ID", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                            "label": {"type": "string"},
                        },
                        "required": ["file"],
                    }
                },
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    },
)
async def upload(request: Request, settings: Settings, store: Store) -> UploadsAccepted:
    """Accept DICOM files (or JPEG/PNG images, stored as Secondary Capture): one job each.

    Multipart: field ``file`` (or ``files``), repeatable, and an optional ``label`` (or
    ``study``) field or query parameter filing them under a study label. Raw body: the file
    itself with an ``X-File-Name`` header. ``X-User-ID`` names the user either way. The bytes
    are streamed to disk and hashed as they arrive; the answer comes once every file is safely
    on disk and queued. A file over MAX_FILE_SIZE is refused and the others kept; a labelled
    upload also refuses non-DICOM files and names already filed under its label. Validation
    happens next, asynchronously: poll ``GET /status/{study_id}``.
    """
    accepted, refused, label = await accept_uploads(request, settings, store)
    return UploadsAccepted(
        **accepted[0].model_dump(),
        uploads=accepted,
        label=label,
        success=not refused,
        failedFiles=len(refused),
        files=[FileRefused(**vars(r)) for r in refused],
    )


async def accept_uploads(
    request: Request, settings: GatewaySettings, store: JobStore
) -> tuple[list[UploadAccepted], list[RefusedFile], str | None]:
    """Stream the files of an upload request to disk, screen them, and queue each as a job;
    when every file was refused, the refusal (``http_intake.refusal``)."""
    content_type = request.headers.get("content-type", "")
    user_id = catalog.clean_name(request.headers.get("x-user-id"), "X-User-ID header")
    label = catalog.clean_name(request.query_params.get("label"), "label")
    source = "multipart"
    receiver: MultipartReceiver | None = None
    files: list[ReceivedFile] = []
    refused: list[RefusedFile] = []
    with http_intake.undone_on_failure(lambda: _abort(receiver, files)):
        if content_type.lower().startswith("multipart/"):
            receiver = MultipartReceiver(
                boundary_of(content_type),
                settings.uploads_path,
                settings.max_file_size,
                fsync=settings.fsync_uploads,
            )
            async for chunk in request.stream():
                receiver.feed(chunk)
            files, refused = await receiver.finish(), receiver.refused
            label = label or catalog.clean_name(
                receiver.fields.get("label") or receiver.fields.get("study"), "label"
            )
        else:
            filename = request.headers.get("x-file-name")
            if not filename:
                raise NoFilePart(
                    "send the file as multipart/form-data with a 'file' field, or as the raw "
                    "body with an X-File-Name header"
                )
            source = "raw"
            stream = request.stream()
            folder, limit = settings.uploads_path, settings.max_file_size
            files = [await receive_raw(stream, folder, limit, settings.fsync_uploads, filename)]
        if not files and not refused:
            raise NoFilePart("the request has no 'file' part: send the DICOM file as field 'file'")
        files, screened = await http_intake.screen(files, dicom_only=bool(label))
        refused += screened
        events = [http_intake.received_file(f, source, label=label, user_id=user_id) for f in files]
        taken = await intake.queue(store, events, by=caller_of(request))
        files, refused = http_intake.drop_taken(files, taken, refused)
    accepted = [UploadAccepted.of(f) for f in files]
    for f in files:
        metrics.UPLOADS.labels("accepted").inc()
        metrics.UPLOAD_BYTES.inc(f.size)
        log.info("upload.accepted", upload_id=str(f.upload_id), size=f.size)
    for r in refused:
        metrics.UPLOADS.labels(r.reason).inc()
    if not accepted:
        raise http_intake.refusal(refused)
    return accepted, refused, label


def _abort(receiver: MultipartReceiver | None, files: list[ReceivedFile]) -> None:
    if receiver is not None:
        receiver.abort()
    for f in files:
        f.path.unlink(missing_ok=True)
