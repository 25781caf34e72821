"""Taking files into the pipeline: each complete file becomes ``UPLOADS_PATH/{id}.dcm`` and a job.

Every way in (a multipart or raw upload, a batch, a presigned S3 upload, a WADO-RS retrieval,
a file Redis forgot) ends here, so a job is always created the same way: its record, its queue
entry and its label, user and batch entries in one transaction, all the files of a request or
none. Files are screened first: an image becomes a Secondary Capture instance, and a labelled
upload takes DICOM only, under names not yet filed under its label (seed 004's rules).
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID, uuid4

from redis.exceptions import WatchError
from starlette.requests import ClientDisconnect

from api_gateway.receive import ReceivedFile, RefusedFile
from api_gateway.secondary_capture import ImageConversionError, Kind, image_to_dicom, sniff
from shared import catalog, metrics
from shared import redis_names as names
from shared.bus import REDIS_DOWN, add_event
from shared.errors import (
    AppError,
    BadRequest,
    FileTooLarge,
    InsufficientStorage,
    ServiceUnavailable,
)
from shared.events import AnyEvent, FileReceived, FileRef, Origin
from shared.files import sha256_of
from shared.jobs import JobStore


class FilesRefused(AppError):
    """Every file of a request was refused; the body lists each with its reason."""

    status, code = 400, "files-refused"


# a request whose files were all refused for one reason answers with that reason's status
_STATUS_OF_REASON = {"too_large": 413, "invalid_type": 415, "duplicate": 409, "invalid_image": 422}


def refusal(refused: list[RefusedFile]) -> FilesRefused:
    """The error for a request none of whose files was taken: seed 004's shape, and ours."""
    reasons = {r.reason for r in refused}
    error = FilesRefused(
        refused[0].message if len(refused) == 1 else f"none of the {len(refused)} files was taken",
        success=False,
        failedFiles=len(refused),
        files=[vars(r) for r in refused],
        error=refused[0].message if len(refused) == 1 else "no file was taken",
    )
    if len(reasons) == 1:
        reason = reasons.pop()
        error.status = _STATUS_OF_REASON.get(reason, 400)
        if reason == "too_large":
            error.code = FileTooLarge.code
    return error


async def screen(
    files: list[ReceivedFile], *, dicom_only: bool
) -> tuple[list[ReceivedFile], list[RefusedFile]]:
    """Convert images to DICOM; with ``dicom_only``, refuse anything else that is not DICOM."""
    kept: list[ReceivedFile] = []
    refused: list[RefusedFile] = []
    for f in files:
        kind = sniff(f.head)
        if kind in ("jpeg", "png"):
            try:
                kept.append(await asyncio.to_thread(_convert, f, kind))
            except ImageConversionError as exc:
                f.path.unlink(missing_ok=True)
                refused.append(RefusedFile(f.filename, "invalid_image", str(exc)))
        elif dicom_only and kind != "dicom":
            f.path.unlink(missing_ok=True)
            message = "the file is not DICOM (no 'DICM' after its 128-byte preamble)"
            refused.append(RefusedFile(f.filename, "invalid_type", message))
        else:
            kept.append(f)
    return kept, refused


@contextmanager
def undone_on_failure(undo: Callable[[], None]) -> Iterator[None]:
    """Run the taking in of a request's files; if it fails, ``undo`` (drop what was written)
    and answer as every upload route does, counted: a client that went away is a 400, a full
    disk a 507, another storage error a 503, and an AppError as it is."""
    try:
        yield
    except ClientDisconnect:
        undo()
        metrics.UPLOADS.labels("aborted").inc()
        raise BadRequest("the client went away before the upload was complete") from None
    except AppError as exc:
        undo()
        metrics.UPLOADS.labels(exc.code).inc()
        raise
    except OSError as exc:
        undo()
        metrics.UPLOADS.labels("storage-error").inc()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage("the uploads folder is full; nothing was kept") from None
        raise ServiceUnavailable("the uploads folder cannot be written; nothing was kept") from None


def _convert(f: ReceivedFile, kind: Kind) -> ReceivedFile:
    """The image as a Secondary Capture instance, in place of the image (the image is read
    whole before the instance replaces it, atomically); blocking."""
    image_to_dicom(f.path, f.path, kind=kind, filename=f.filename)
    return ReceivedFile(
        f.upload_id,
        f.path,
        sha256_of(f.path),
        f.path.stat().st_size,
        f.filename,
        converted_from=kind,
        source_sha256=f.sha256,
    )


async def queue(
    store: JobStore, events: Sequence[AnyEvent], batch: tuple[str, str | None] | None = None
) -> set[UUID]:
    """Create each job, queue its event and file it, in one transaction: all or none.

    A labelled file whose name is already filed under its label (or earlier in the same
    request) is not queued: its upload id is returned, for the caller to refuse it.
    ``batch`` is (batch id, user id) when the files are one batch.
    """
    labelled = [e for e in events if isinstance(e, FileReceived) and e.origin and e.origin.label]
    try:
        async with store.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    taken: set[UUID] = set()
                    if labelled:
                        await pipe.watch(*{names.label_key(_label(e)) for e in labelled})
                        taken = await _taken(pipe, labelled)
                        pipe.multi()
                    for event in events:
                        if event.upload_id in taken:
                            continue
                        await store.queue_create(pipe, event)
                        add_event(pipe, event)
                        if isinstance(event, FileReceived):
                            catalog.queue_file(pipe, event)
                    if batch is not None and events:
                        batch_id, user_id = batch
                        total = len(events) - len(taken)
                        catalog.queue_batch(pipe, batch_id, user_id, total, events[0].occurred_at)
                    await pipe.execute()
                    return taken
                except WatchError:
                    continue  # someone filed under the same label meanwhile: look again
    except REDIS_DOWN:
        raise ServiceUnavailable(
            "the queue (Redis) is unreachable; nothing was accepted, send the file again"
        ) from None


def _label(event: FileReceived) -> str:
    label = event.origin.label if event.origin else None
    assert label is not None
    return label


async def _taken(pipe: object, labelled: list[FileReceived]) -> set[UUID]:
    """The labelled events whose filename is taken: filed already, or earlier in this list."""
    taken: set[UUID] = set()
    seen: set[tuple[str, str]] = set()
    by_label: dict[str, list[FileReceived]] = {}
    for e in labelled:
        by_label.setdefault(_label(e), []).append(e)
    for label, group in by_label.items():
        filed = await catalog.taken_names(
            pipe,  # type: ignore[arg-type]
            label,
            [e.origin.filename or str(e.upload_id) for e in group if e.origin],
        )
        for e in group:
            name = (e.origin.filename if e.origin else None) or str(e.upload_id)
            if name in filed or (label, name) in seen:
                taken.add(e.upload_id)
            seen.add((label, name))
    return taken


def drop_taken(
    files: list[ReceivedFile], taken: set[UUID], refused: list[RefusedFile]
) -> tuple[list[ReceivedFile], list[RefusedFile]]:
    """Remove the files refused as duplicates by ``queue``, and say why."""
    if not taken:
        return files, refused
    kept = []
    for f in files:
        if f.upload_id in taken:
            f.path.unlink(missing_ok=True)
            message = "a file of this name is already filed under this label"
            refused = [*refused, RefusedFile(f.filename, "duplicate", message)]
        else:
            kept.append(f)
    return kept, refused


def received_file(f: ReceivedFile, source: str, **origin: str | None) -> FileReceived:
    """The FileReceived of a file a client sent; an image converted to DICOM is filed under
    its own hash too, so a client that looks the image up finds it."""
    return received(
        f.upload_id,
        f.path,
        f.sha256,
        f.size,
        Origin(
            filename=catalog.clean_filename(f.filename),
            source="image" if f.converted_from else source,
            source_sha256=f.source_sha256,
            **origin,
        ),
    )


def received(
    upload_id: UUID, path: Path, sha256: str, size: int, origin: Origin | None = None
) -> FileReceived:
    return FileReceived(
        upload_id=upload_id, file=FileRef(path=str(path), sha256=sha256, size=size), origin=origin
    )


def adopt(path: Path, uploads: Path, origin: Origin | None = None) -> FileReceived:
    """Move a complete file (on the uploads volume) in as a new upload; blocking, for a thread."""
    upload_id = uuid4()
    final = uploads / f"{upload_id}.dcm"
    sha256, size = sha256_of(path), path.stat().st_size
    os.replace(path, final)
    return received(upload_id, final, sha256, size, origin)
