"""Batches: many files in one JSON body (seed 002's base64 batch), and where a batch stands.

``POST /batches`` takes ``{"files": [{"filename": ..., "content": <base64>}, ...]}``. A body
over MAX_BATCH_SIZE is refused before anything is decoded: at once when its Content-Length says
so, else as soon as the bytes spooled to disk pass the limit. The spool is then read with an
incremental JSON parser (ijson), so only one file's content is in memory at a time; each file
is decoded to its own upload file and goes through ``intake`` like any upload (images become
Secondary Capture instances). A batch's state is computed from its jobs' real states.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import datetime
from pathlib import Path
from typing import Literal
from uuid import uuid4

import ijson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api_gateway import http_intake
from api_gateway.access import Scope, needs
from api_gateway.deps import Settings, Store, caller_of
from api_gateway.receive import ReceivedFile, RefusedFile, Sink, keep
from api_gateway.routes.upload import FileRefused, UploadAccepted
from api_gateway.routes.uploads import UploadRecord
from api_gateway.settings import GatewaySettings
from shared import catalog, intake
from shared.errors import BadRequest, BatchNotFound, FileTooLarge, UnsupportedMediaType
from shared.jobs import FINAL, JobStatus, JobStore

router = APIRouter(tags=["batches"])

BatchState = Literal["queued", "processing", "completed", "failed"]


class BatchAccepted(BaseModel):
    batch_id: str
    message: str = "Batch queued for processing"
    total_files: int = Field(description="files queued")
    status: Literal["queued"] = "queued"
    uploads: list[UploadAccepted]
    success: bool
    failedFiles: int  # noqa: N815 (seed 004's name)
    files: list[FileRefused] = Field(description="files not queued, each with its reason")


class BatchStatus(BaseModel):
    batch_id: str
    user_id: str | None
    created_at: datetime
    status: BatchState
    total_files: int
    processed_files: int = Field(description="files in a final state")
    progress_percentage: float
    counts: dict[str, int] = Field(description="files by state")


class BatchFiles(BaseModel):
    batch_id: str
    files: list[UploadRecord]
    count: int


@router.post(
    "/batches",
    status_code=202,
    response_model=BatchAccepted,
    responses={
        400: {"description": "Not the batch JSON, or every file refused"},
        413: {"description": "The batch is larger than MAX_BATCH_SIZE"},
        415: {"description": "The body is not application/json"},
    },
    openapi_extra=needs(Scope.WRITE),
)
async def create(request: Request, settings: Settings, store: Store) -> BatchAccepted:
    """Queue a batch of base64-encoded files (``X-User-ID`` names its user)."""
    return await accept_batch(request, settings, store)


async def accept_batch(
    request: Request, settings: GatewaySettings, store: JobStore
) -> BatchAccepted:
    """Spool, unpack, screen and queue a batch; the files refused are named with the reason."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType('send the batch as application/json: {"files": [...]}')
    user_id = catalog.clean_name(request.headers.get("x-user-id"), "X-User-ID header")
    declared = request.headers.get("content-length")
    if (
        declared
        and declared.isascii()
        and declared.isdigit()
        and int(declared) > settings.max_batch_size
    ):
        raise FileTooLarge(_too_large(settings))
    batch_id = str(uuid4())
    spool = settings.uploads_path / f"{batch_id}.batch.part"
    files: list[ReceivedFile] = []

    def undo() -> None:
        spool.unlink(missing_ok=True)
        for f in files:
            f.path.unlink(missing_ok=True)

    with http_intake.undone_on_failure(undo):
        size = 0
        with spool.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_batch_size:
                    raise FileTooLarge(_too_large(settings))
                out.write(chunk)
        files, refused = await asyncio.to_thread(_unpack, spool, settings)
        spool.unlink()
        files, screened = await http_intake.screen(files, dicom_only=False)
        refused += screened
        if not files:
            raise http_intake.refusal(refused) if refused else BadRequest("the batch has no files")
        events = [
            http_intake.received_file(f, "batch", user_id=user_id, batch_id=batch_id) for f in files
        ]
        await intake.queue(store, events, batch=(batch_id, user_id), by=caller_of(request))
    accepted = [UploadAccepted.of(f) for f in files]
    return BatchAccepted(
        batch_id=batch_id,
        total_files=len(accepted),
        uploads=accepted,
        success=not refused,
        failedFiles=len(refused),
        files=[FileRefused(**vars(r)) for r in refused],
    )


def _too_large(settings: GatewaySettings) -> str:
    return f"the batch exceeds MAX_BATCH_SIZE ({settings.max_batch_size} bytes); nothing was kept"


def _unpack(spool: Path, settings: GatewaySettings) -> tuple[list[ReceivedFile], list[RefusedFile]]:
    """Decode each file of the spooled batch to an upload file; blocking, for a thread."""
    files: list[ReceivedFile] = []
    refused: list[RefusedFile] = []
    try:
        with spool.open("rb") as body:
            for item in ijson.items(body, "files.item"):
                _unpack_one(item, settings, files, refused)
    except ijson.JSONError:
        for f in files:
            f.path.unlink(missing_ok=True)
        raise BadRequest("the batch is not valid JSON") from None
    except BaseException:
        for f in files:
            f.path.unlink(missing_ok=True)
        raise
    if not files and not refused:
        raise BadRequest('the batch has no files: send {"files": [{"filename", "content"}]}')
    return files, refused


def _unpack_one(
    item: object, settings: GatewaySettings, files: list[ReceivedFile], refused: list[RefusedFile]
) -> None:
    if not isinstance(item, dict) or not isinstance(item.get("content"), str):
        name = item.get("filename") if isinstance(item, dict) else None
        message = "each file needs a 'content' string (base64) and a 'filename'"
        refused.append(
            RefusedFile(name if isinstance(name, str) else None, "invalid_entry", message)
        )
        return
    name = item.get("filename") if isinstance(item.get("filename"), str) else None
    try:
        data = base64.b64decode(item["content"], validate=True)
    except (binascii.Error, ValueError):
        refused.append(RefusedFile(name, "invalid_base64", "the content is not valid base64"))
        return
    sink = Sink(settings.uploads_path, settings.max_file_size, name)
    try:
        sink.write(data)
    except BaseException:
        sink.abort()
        raise
    if sink.too_large:
        refused.append(sink.refusal())
    elif not data:
        sink.abort()
        refused.append(RefusedFile(name, "empty", "the file is empty"))
    else:
        files.append(received := sink.close())
        keep(received, settings.fsync_uploads)  # in _unpack's thread


@router.get("/batches/{batch_id}", response_model=BatchStatus, openapi_extra=needs(Scope.READ))
async def status(batch_id: str, store: Store) -> BatchStatus:
    """Where a batch stands, from its files' real states."""
    record, jobs = await _batch(store, batch_id)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    total = len(jobs)
    processed = sum(n for state, n in counts.items() if state in FINAL)
    state: BatchState
    if processed == total:  # also when every file was deleted: nothing is left to do
        state = "completed" if counts.get("archived") or not total else "failed"
    elif counts.get("accepted", 0) == total:
        state = "queued"
    else:
        state = "processing"
    return BatchStatus(
        batch_id=batch_id,
        user_id=record.get("user_id"),
        created_at=datetime.fromisoformat(record["created_at"]),
        status=state,
        total_files=total,
        processed_files=processed,
        progress_percentage=round(100 * processed / total, 1) if total else 100.0,
        counts=counts,
    )


@router.get("/batches/{batch_id}/files", response_model=BatchFiles, openapi_extra=needs(Scope.READ))
async def batch_files(batch_id: str, store: Store) -> BatchFiles:
    """The files of a batch, in order, each with its status."""
    _, jobs = await _batch(store, batch_id)
    records = [UploadRecord.of(j) for j in jobs]
    return BatchFiles(batch_id=batch_id, files=records, count=len(records))


async def _batch(store: JobStore, batch_id: str) -> tuple[dict[str, str], list[JobStatus]]:
    found = await catalog.batch(store.redis, batch_id)
    if found is None:
        raise BatchNotFound(f"no batch has id {batch_id}")
    record, ids = found
    jobs = [j for j in await store.read_many(ids) if j is not None]
    return record, jobs
