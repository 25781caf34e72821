"""The gateway's own routes: ``POST /upload`` and the service description at ``GET /``."""

from __future__ import annotations

import errno
from typing import Literal
from uuid import UUID

import structlog
from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from api_gateway import intake
from api_gateway.receive import MultipartReceiver, boundary_of
from api_gateway.settings import GatewaySettings
from shared import metrics
from shared.errors import AppError, BadRequest, InsufficientStorage, NoFilePart, ServiceUnavailable

log = structlog.get_logger()
router = APIRouter()

ACCEPTED_MESSAGE = "DICOM file uploaded successfully and queued for processing"


class UploadAccepted(BaseModel):
    """One accepted file: the seed's fields first, then what we know of the bytes."""

    study_id: UUID
    status: Literal["accepted"] = "accepted"
    message: str = ACCEPTED_MESSAGE
    filename: str | None
    size: int
    sha256: str


class UploadsAccepted(UploadAccepted):
    """The seed's answer for the first file, and every file of the request in ``uploads``."""

    uploads: list[UploadAccepted]


@router.post(
    "/upload",
    status_code=202,
    response_model=UploadsAccepted,
    responses={
        400: {"description": "No 'file' part, or a malformed multipart body"},
        413: {"description": "A file is larger than MAX_FILE_SIZE"},
        415: {"description": "The body is not multipart/form-data"},
        503: {"description": "Redis is unreachable; nothing was accepted"},
        507: {"description": "The uploads folder is full; nothing was accepted"},
    },
    openapi_extra={
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
                            }
                        },
                        "required": ["file"],
                    }
                }
            },
        }
    },
)
async def upload(request: Request) -> UploadsAccepted:
    """Accept one or more DICOM files (multipart field ``file``, repeatable): one job each.

    The bytes are streamed to disk and hashed as they arrive; the answer comes once every file
    is safely on disk and queued. Validation happens next, asynchronously: poll
    ``GET /status/{study_id}``.
    """
    accepted = await accept_uploads(request)
    return UploadsAccepted(**accepted[0].model_dump(), uploads=accepted)


async def accept_uploads(request: Request) -> list[UploadAccepted]:
    """Stream every ``file`` part of a multipart request to disk and queue each as a job."""
    settings: GatewaySettings = request.app.state.settings
    receiver = MultipartReceiver(
        boundary_of(request.headers.get("content-type")),
        settings.uploads_path,
        settings.max_file_size,
        fsync=settings.fsync_uploads,
    )
    try:
        async for chunk in request.stream():
            receiver.feed(chunk)
        files = receiver.finish()
        if not files:
            raise NoFilePart("the request has no 'file' part: send the DICOM file as field 'file'")
        await intake.queue(
            request.app.state.store,
            [intake.received(f.upload_id, f.path, f.sha256, f.size) for f in files],
        )
    except ClientDisconnect:
        receiver.abort()
        metrics.UPLOADS.labels("aborted").inc()
        raise BadRequest("the client went away before the upload was complete") from None
    except AppError as exc:
        receiver.abort()
        metrics.UPLOADS.labels(exc.code).inc()
        raise
    except OSError as exc:
        receiver.abort()
        metrics.UPLOADS.labels("storage-error").inc()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage("the uploads folder is full; nothing was kept") from None
        raise ServiceUnavailable("the uploads folder cannot be written; nothing was kept") from None
    accepted = [
        UploadAccepted(study_id=f.upload_id, filename=f.filename, size=f.size, sha256=f.sha256)
        for f in files
    ]
    for f in files:
        metrics.UPLOADS.labels("accepted").inc()
        metrics.UPLOAD_BYTES.inc(f.size)
        log.info("upload.accepted", upload_id=str(f.upload_id), size=f.size)
    return accepted


@router.get("/", include_in_schema=False)
async def index() -> dict[str, object]:
    return {
        "service": "api-gateway",
        "description": "dicomflow: upload DICOM, follow it through validation, description "
        "and archiving",
        "endpoints": {
            "POST /upload": "multipart field 'file' (repeatable)",
            "GET /status/{study_id}": "where an upload stands",
            "GET /health": "liveness",
            "GET /ready": "readiness",
            "GET /metrics": "Prometheus",
            "GET /docs": "OpenAPI",
        },
    }
