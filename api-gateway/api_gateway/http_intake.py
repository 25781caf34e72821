"""The HTTP side of taking files in: screening a request's files, refusing them with the status
of their reason, and removing what a failed request wrote.

``POST /upload``, ``POST /batches`` and STOW-RS stream their files to disk (``receive``), screen
them here (an image becomes a Secondary Capture instance; a labelled upload takes DICOM only,
under names not yet filed under its label: seed 004's rules) and hand them to the one intake
(``intake.queue``), which is not HTTP's.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from uuid import UUID

from starlette.requests import ClientDisconnect

from api_gateway.receive import ReceivedFile, RefusedFile
from api_gateway.secondary_capture import ImageConversionError, Kind, image_to_dicom, sniff
from shared import catalog, metrics
from shared.errors import (
    AppError,
    BadRequest,
    FileTooLarge,
    InsufficientStorage,
    QueueOutcomeUnknown,
    ServiceUnavailable,
)
from shared.events import FileReceived, Origin
from shared.files import sha256_of
from shared.intake import received


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
    disk a 507, another storage error a 503, and an AppError as it is. When the queue could
    not say whether the files were taken (``QueueOutcomeUnknown``, a 503), they are kept:
    their jobs may exist."""
    try:
        yield
    except QueueOutcomeUnknown as exc:
        metrics.UPLOADS.labels(exc.code).inc()
        raise
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
