"""Seed 004's study folders, a thin layer over our labels and file routes: its JSON shapes.

Its "study" is our label (``POST /upload`` with a ``study`` or ``label`` field); a file is
known by its name under the label. Answers carry ``success``; errors keep our problem body and
add seed 004's ``error`` text and ``"success": false``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from api_gateway.access import Scope, needs
from api_gateway.deps import RedisClient, Store
from api_gateway.routes import labels, uploads
from shared import catalog
from shared.errors import AppError, BadRequest, UploadNotFound

router = APIRouter(prefix="/files", tags=["seed 004: study folders"])


@contextmanager
def _seed_errors() -> Iterator[None]:
    """Our errors, with seed 004's ``error`` and ``success`` members added."""
    try:
        yield
    except AppError as exc:
        exc.extra.setdefault("error", str(exc))
        exc.extra["success"] = False
        raise


@router.get("", openapi_extra=needs(Scope.READ))
async def studies(redis: RedisClient) -> dict[str, object]:
    """Every study label in use."""
    found = await catalog.labels(redis)
    return {"studies": list(found), "studiesCount": len(found), "success": True}


@router.get("/{study}", openapi_extra=needs(Scope.READ))
async def study_files(study: str, redis: RedisClient) -> dict[str, object]:
    """The file names under a study label."""
    found = await catalog.label_files(redis, study)
    if not found:
        raise UploadNotFound("study not found", error="study not found", success=False)
    return {"files": list(found), "filesCount": len(found), "study": study, "success": True}


@router.get("/{study}/{file:path}/tag", openapi_extra=needs(Scope.READ))
async def file_tags(
    study: str,
    file: str,
    store: Store,
    tag: Annotated[list[str] | None, Query(description="e.g. (0028,0010)")] = None,
) -> dict[str, object]:
    """The attributes named by ``tag`` (repeatable) of one file of a study."""
    with _seed_errors():
        upload_id = await labels.labelled_upload(store.redis, study, file)
        if not tag or not any(t.strip() for t in tag):
            raise BadRequest("tag query parameter is empty")
        answer = await uploads.tags(upload_id, store, tag)
    return {"file": file, "study": study, "success": True, "tags": answer["tags"]}


@router.get(
    "/{study}/{file:path}/png", response_class=FileResponse, openapi_extra=needs(Scope.READ)
)
async def file_png(study: str, file: str, store: Store) -> FileResponse:
    """The first frame of one file of a study, as PNG."""
    with _seed_errors():
        upload_id = await labels.labelled_upload(store.redis, study, file)
        return await uploads.image(upload_id, store, 1, None, None, "png")
