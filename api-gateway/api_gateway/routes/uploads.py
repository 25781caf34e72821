"""Uploads as people file them: list, look up, read, delete; an archived upload's files.

``GET /uploads/{id}/original`` serves ``original.dcm`` as ``application/dicom`` with its length
and byte ranges. ``GET /uploads/{id}/image`` renders any frame through the descriptor's display
pipeline (``shared.render``), with an optional window and a bounded size, as PNG or JPEG;
each rendering is kept on disk beside the archive, so asking again costs a file read.
``GET /uploads/{id}/deidentified`` is a copy by the PS3.15 Annex E basic profile. The seeds'
forms (``compat``) are thin layers over these.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Annotated, Literal, cast
from uuid import UUID

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from api_gateway import removal
from api_gateway.access import Scope, needs
from api_gateway.deid import DeidentificationError, write_deidentified
from api_gateway.deps import Settings, Store
from api_gateway.rendering import View, parse_window, rendered
from api_gateway.settings import GatewaySettings
from api_gateway.tags import Unreadable, parse_tags, read_tags
from shared import catalog
from shared import redis_names as names
from shared.errors import BadRequest, JobStateConflict, NotRenderable
from shared.jobs import JobStatus, JobStore
from shared.status_api import find_job, wanted_states

router = APIRouter(tags=["uploads"])

MAX_SCAN = 20_000  # jobs looked at for one page of a state-filtered listing


class UploadRecord(JobStatus):
    """One upload: the status answer, with the id also under seed 002's name."""

    upload_id: UUID

    @classmethod
    def of(cls, job: JobStatus) -> UploadRecord:
        return cls(upload_id=job.study_id, **job.model_dump())


class UploadList(BaseModel):
    uploads: list[UploadRecord]
    count: int
    next: float | None = Field(None, description="pass as ``before`` for the next page")


class Lookup(BaseModel):
    sha256: list[str] = Field(max_length=10_000)


class Known(BaseModel):
    known: dict[str, UUID] = Field(description="SHA-256 -> an upload that holds those bytes")


@router.get("/uploads", response_model=UploadList, openapi_extra=needs(Scope.READ))
async def list_uploads(
    store: Store,
    state: Annotated[list[str] | None, Query(description="repeatable or comma-separated")] = None,
    label: str | None = None,
    batch: str | None = None,
    user: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[float | None, Query(description="the ``next`` of the page before")] = None,
) -> UploadList:
    """Uploads, newest first: all of them, or those under a label, of a batch or of a user;
    optionally only those in the given states."""
    wanted = wanted_states(state, "state") if state else frozenset()
    if label or batch or user:
        ids = await _filed(store, label, batch, user)
        listed = [j for j in await store.read_many(ids) if j and (not wanted or j.status in wanted)]
        listed.sort(key=lambda j: str(j.details.get("created_at", "")), reverse=True)
        return UploadList(
            uploads=[UploadRecord.of(j) for j in listed[:limit]], count=len(listed), next=None
        )
    found: list[JobStatus] = []
    last = 0.0
    scanned, cursor = 0, f"({before}" if before is not None else "+inf"
    while len(found) < limit and scanned < MAX_SCAN:
        page = cast(
            list[tuple[str, float]],
            await store.redis.zrevrangebyscore(
                names.JOBS_BY_TIME, cursor, "-inf", start=0, num=limit * 2, withscores=True
            ),
        )
        if not page:
            break
        scanned += len(page)
        cursor = f"({page[-1][1]}"
        jobs = await store.read_many([UUID(m) for m, _ in page])
        for (_, score), job in zip(page, jobs, strict=True):
            if job and (not wanted or job.status in wanted) and len(found) < limit:
                found.append(job)
                last = score
    more = len(found) == limit
    return UploadList(
        uploads=[UploadRecord.of(j) for j in found],
        count=len(found),
        next=last if found and more else None,
    )


async def _filed(
    store: JobStore, label: str | None, batch: str | None, user: str | None
) -> list[UUID]:
    sets: list[set[UUID]] = []
    if label:
        sets.append(set((await catalog.label_files(store.redis, label)).values()))
    if batch:
        record = await catalog.batch(store.redis, batch)
        sets.append(set(record[1]) if record else set())
    if user:
        sets.append(set(await catalog.user_uploads(store.redis, user)))
    return list(set.intersection(*sets))


@router.post("/uploads/lookup", response_model=Known, openapi_extra=needs(Scope.WRITE))
async def lookup(body: Lookup, store: Store) -> Known:
    """Which of these SHA-256 hashes the server already holds (not failed): to skip them."""
    found = await catalog.known(store.redis, [h.lower() for h in body.sha256])
    ids = sorted({u for us in found.values() for u in us})
    state = {u: j.status for u, j in zip(ids, await store.read_many(ids), strict=True) if j}
    known = {}
    for sha256, uploads in found.items():
        held = [u for u in uploads if state.get(u) not in (None, "failed")]
        if held:
            known[sha256] = held[0]
    return Known(known=known)


@router.get("/uploads/{study_id}", response_model=UploadRecord, openapi_extra=needs(Scope.READ))
async def get_upload(study_id: str, store: Store) -> UploadRecord:
    """One upload: its state, where it came from (filename, label, user, batch), its files."""
    _, job = await find_job(store, study_id)
    return UploadRecord.of(job)


@router.delete(
    "/uploads/{study_id}",
    response_model=removal.Removed,
    responses={202: {"description": "Local files removed; the cloud copies are being removed"}},
    openapi_extra=needs(Scope.ADMIN, audit="delete"),
)
async def delete_upload(
    study_id: str, store: Store, settings: Settings, response: Response, cloud: bool = False
) -> removal.Removed:
    """Remove a finished upload: its files, record, label entry and index entries, and with
    ``cloud=true`` its copies on the cloud targets. Says what it removed."""
    upload_id, job = await find_job(store, study_id)
    done = await removal.remove(store, settings, upload_id, job, cloud)
    if done.status == "deleting":
        response.status_code = 202
    return done


@router.get(
    "/uploads/{study_id}/deidentified",
    response_class=FileResponse,
    responses={200: {"content": {"application/dicom": {}}}},
    openapi_extra=needs(Scope.READ, audit="download.deidentified"),
)
async def deidentified(study_id: str, store: Store, settings: Settings) -> FileResponse:
    """A copy de-identified by the Basic Application Level Confidentiality Profile (PS3.15
    Annex E): identifying attributes removed or replaced, UIDs replaced consistently (the same
    UID always gives the same new UID), private tags removed, pixel data kept."""
    folder = await archive_folder(store, study_id)
    copy = folder / "deidentified.dcm"
    if not copy.is_file():
        secret = await deid_secret(settings, store.redis)
        try:
            await asyncio.to_thread(write_deidentified, folder / "original.dcm", copy, secret)
        except DeidentificationError as exc:
            raise NotRenderable(str(exc)) from None
    return FileResponse(
        copy, media_type="application/dicom", filename=f"{study_id}-deidentified.dcm"
    )


async def deid_secret(settings: GatewaySettings, redis: Redis) -> bytes:
    """DEID_SECRET, or one made once and kept in Redis: new UIDs stay the same across restarts
    and gateway replicas, and cannot be guessed from the originals."""
    configured = settings.deid_secret
    if configured:
        return str(configured).encode()
    await redis.set(names.DEID_SECRET, secrets.token_hex(32), nx=True)
    return cast(str, await redis.get(names.DEID_SECRET)).encode()  # the HMAC key is bytes


async def archive_folder(store: JobStore, study_id: str) -> Path:
    """The archive folder of an upload that has one."""
    upload_id, job = await find_job(store, study_id)
    folder = Path(job.details["archive_path"]) if "archive_path" in job.details else None
    if folder is None or not (folder / "original.dcm").is_file():
        raise JobStateConflict(f"upload {upload_id} is {job.status}: it has no archived file")
    return folder


@router.get(
    "/uploads/{study_id}/original",
    response_class=FileResponse,
    responses={200: {"content": {"application/dicom": {}}}, 206: {"description": "A range"}},
    openapi_extra=needs(Scope.READ, audit="download.original"),
)
async def original(study_id: str, store: Store) -> FileResponse:
    """The original DICOM file, byte-identical to the upload; ``Range`` requests work."""
    folder = await archive_folder(store, study_id)
    return FileResponse(
        folder / "original.dcm", media_type="application/dicom", filename=f"{study_id}.dcm"
    )


@router.get(
    "/uploads/{study_id}/image",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}},
    openapi_extra=needs(Scope.READ),
)
async def image(
    study_id: str,
    store: Store,
    frame: Annotated[int, Query(ge=1, le=100_000, description="1 for the first frame")] = 1,
    window: Annotated[str | None, Query(description="center,width, e.g. 40,400")] = None,
    size: Annotated[int | None, Query(ge=16, le=4096, description="longest side, px")] = None,
    format: Annotated[Literal["png", "jpeg"], Query()] = "png",
) -> FileResponse:
    """One frame through the display pipeline: modality LUT, then ``window`` if given, else
    the file's first window or VOI LUT, else min-max; MONOCHROME1 inverted; colour as RGB.
    ``size`` fits the image in a square viewport of that side, never enlarging it."""
    view = View(
        frame=frame,
        window=parse_window(window),
        viewport=(size, size) if size else None,
        format=format,
    )
    folder = await archive_folder(store, study_id)
    return FileResponse(await rendered(folder, view), media_type=view.media_type)


@router.get(
    "/uploads/{study_id}/metadata",
    response_class=FileResponse,
    responses={200: {"content": {"application/json": {}}}},
    openapi_extra=needs(Scope.READ),
)
async def metadata(study_id: str, store: Store) -> FileResponse:
    """The archived ``metadata.json``: every attribute as the DICOM JSON model, plus a summary
    (see descriptor_service.metadata for its shape)."""
    folder = await archive_folder(store, study_id)
    return FileResponse(folder / "metadata.json", media_type="application/json")


@router.get("/uploads/{study_id}/tags", openapi_extra=needs(Scope.READ))
async def tags(
    study_id: str,
    store: Store,
    tag: Annotated[
        list[str] | None, Query(description="(0010,0010), 00100010 or PatientName")
    ] = None,
) -> dict[str, object]:
    """The attributes named by ``tag`` (repeatable), read from the header without pixel data:
    each with tag, keyword, name, VR, VM, value and whether the file has it."""
    if not tag:
        raise BadRequest("the tag query parameter is missing: e.g. ?tag=(0028,0010)&tag=Rows")
    try:
        wanted, invalid = parse_tags(tag)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if invalid:
        raise BadRequest(f"{len(invalid)} tag(s) are not DICOM tags", invalidTags=invalid)
    folder = await archive_folder(store, study_id)
    try:
        answers = await asyncio.to_thread(read_tags, folder / "original.dcm", wanted)
    except Unreadable as exc:
        raise NotRenderable(str(exc)) from None
    return {"study_id": study_id, "tags": answers}
