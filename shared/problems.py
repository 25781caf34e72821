"""Every HTTP error as application/problem+json (RFC 9457): a status and a body naming the problem.

Registered once per app by ``install``. A route raises a domain error and never builds an error
response; anything unexpected becomes a bare 500 problem with no trace and no data in it.
"""

from __future__ import annotations

import json

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shared.errors import AppError, frames, safe_error

log = structlog.get_logger()


MEDIA_TYPE = "application/problem+json"


def document(
    status: int, code: str, detail: str | None, instance: str | None, **extra: object
) -> dict[str, object]:
    """The problem document: its type and title from our code, the status, what went wrong."""
    return {
        "type": f"/problems/{code}",
        "title": code.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }


def encoded(exc: AppError, instance: str | None = None) -> bytes:
    """An error's problem document as the bytes of a body, for answers made below FastAPI (the
    HTTP server's own refusals, an ASGI middleware's)."""
    body = document(exc.status, exc.code, str(exc) or None, instance, **exc.extra)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _body(
    request: Request,
    status: int,
    code: str,
    detail: str | None,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> JSONResponse:
    body = document(status, code, detail, request.url.path, **extra)
    return JSONResponse(body, status, headers, media_type=MEDIA_TYPE)


async def app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return _body(request, exc.status, exc.code, str(exc) or None, exc.headers, **exc.extra)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    return _body(request, exc.status_code, code, str(exc.detail) if exc.detail else None)


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()
    ]
    return _body(request, 400, "invalid-request", "the request is not valid", errors=errors)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    # where it broke (file, line, function), never its message: it may quote patient data
    log.error("request.crashed", path=request.url.path, error=safe_error(exc), frames=frames(exc))
    return _body(request, 500, "internal-error", "an unexpected error; it has been logged")


def install(app: FastAPI) -> None:
    app.exception_handler(AppError)(app_error)
    app.exception_handler(HTTPException)(http_error)
    app.exception_handler(RequestValidationError)(invalid_request)
    app.exception_handler(Exception)(unexpected)
