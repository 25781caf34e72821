"""The errors we expect and can explain: HTTP-facing ones carry a status and a stable code.

And how any exception is described in logs and job records: ``safe_error`` (what), ``frames``
(where), never a library's message nor a local value, which may hold patient data.
"""

from __future__ import annotations

import traceback
from types import FrameType
from typing import ClassVar


class AppError(Exception):
    """An error we expect and can explain to the caller."""

    status: int = 500
    code: str = "internal-error"
    headers: ClassVar[dict[str, str]] = {}  # sent with the problem, e.g. a 401's challenge

    def __init__(self, message: str = "", **extra: object) -> None:
        super().__init__(message)
        self.extra = extra  # more members of the problem body, e.g. invalidTags


class BadRequest(AppError):
    status, code = 400, "bad-request"


class NoFilePart(AppError):
    status, code = 400, "no-file"


class UploadNotFound(AppError):
    status, code = 404, "upload-not-found"


class StudyNotFound(AppError):
    status, code = 404, "study-not-found"


class LabelNotFound(AppError):
    status, code = 404, "label-not-found"


class BatchNotFound(AppError):
    status, code = 404, "batch-not-found"


class InstanceNotFound(AppError):
    """A DICOMweb resource (study, series, instance, frame, bulk data) that is not archived."""

    status, code = 404, "instance-not-found"


class ViewerNotInstalled(AppError):
    """The OHIF viewer's files are not where VIEWER_DIR says (``make viewer`` fetches them)."""

    status, code = 404, "viewer-not-installed"


class NotAcceptable(AppError):
    """No representation of the resource matches the request's Accept (DICOMweb: 406)."""

    status, code = 406, "not-acceptable"


class JobNotFailed(AppError):
    status, code = 409, "job-not-failed"


class JobStateConflict(AppError):
    status, code = 409, "job-state-conflict"


class NotRenderable(AppError):
    status, code = 422, "not-renderable"


class RequestTimeout(AppError):
    """A request's headers or body stopped coming in time (``shared.http_limits``)."""

    status, code = 408, "request-timeout"


class FileTooLarge(AppError):
    status, code = 413, "file-too-large"


class UnsupportedMediaType(AppError):
    status, code = 415, "unsupported-media-type"


class HeaderFieldsTooLarge(AppError):
    """A request head over HTTP_MAX_HEADER_BYTES or HTTP_MAX_HEADERS (RFC 6585 §5)."""

    status, code = 431, "header-fields-too-large"


class NotConfigured(AppError):
    status, code = 501, "not-configured"


class UpstreamError(AppError):
    status, code = 502, "upstream-error"


class ServiceUnavailable(AppError):
    status, code = 503, "service-unavailable"


class QueueOutcomeUnknown(ServiceUnavailable):
    """The queue (Redis) never said whether a job was created, and could not be asked again:
    it may exist, so the files it refers to are kept (``shared.intake.queue``)."""


class InsufficientStorage(AppError):
    status, code = 507, "insufficient-storage"


class RetryableError(Exception):
    """Worth another try later (a disk that is full, a volume not mounted yet, a target down)."""


class PermanentError(Exception):
    """Will fail the same way every time: the job fails at once instead of being retried."""


_OURS = (AppError, RetryableError, PermanentError)


def safe_error(exc: BaseException) -> str:
    """A description of exc fit for logs and job records: never a library's message.

    Our own errors carry messages we wrote (no patient data). A library's message may quote
    the data it choked on, so only its class (and an OS error's errno name) is kept.
    """
    if isinstance(exc, _OURS) and str(exc):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno

        return f"{type(exc).__name__}: {errno.errorcode.get(exc.errno, exc.errno)}"
    return type(exc).__name__


def frames(exc: BaseException, limit: int = 12) -> list[dict[str, str | int]]:
    """Where exc was raised: the innermost ``limit`` frames of its traceback, outermost first,
    each its file (from its package down: ``shared/bus.py``), line and function. Never the
    message, the source line or a local value."""
    return [
        {"file": _file_of(frame), "line": lineno, "function": frame.f_code.co_name}
        for frame, lineno in list(traceback.walk_tb(exc.__traceback__))[-limit:]
    ]


def described(exc: BaseException) -> dict[str, object]:
    """A log line's keys for an exception that was handled: ``error``, and ``frames`` too when
    it is not one of ours (ours say in their message what went wrong; anything else needs its
    place in the code to be understood)."""
    if isinstance(exc, _OURS):
        return {"error": safe_error(exc)}
    return {"error": safe_error(exc), "frames": frames(exc)}


def _file_of(frame: FrameType) -> str:
    """A frame's file from its top-level package down, as its module name says: short, and the
    same on every machine (``/…/site-packages/redis/client.py`` is ``redis/client.py``)."""
    path = frame.f_code.co_filename.replace("\\", "/")
    module = str(frame.f_globals.get("__name__") or "")
    depth = module.count(".") + 1 + path.endswith("/__init__.py")
    if not module or module == "__main__":
        depth = 1
    return "/".join(path.split("/")[-depth:])
