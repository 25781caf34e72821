"""Our API over uploads as people file them: list, look up, delete, de-identify; labels, users,
statistics. The seeds' forms (``compat``) are thin layers over these.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, cast
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from api_gateway import removal
from api_gateway.deid import DeidentificationError, write_deidentified
from api_gateway.routes.files import archive_folder
from shared import catalog
from shared import redis_names as names
from shared.errors import BadRequest, LabelNotFound, NotRenderable, UploadNotFound
from shared.jobs import JobStatus, JobStore
from shared.status_api import job_of, wanted_states

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


@router.get("/uploads", response_model=UploadList)
async def list_uploads(
    request: Request,
    state: Annotated[list[str] | None, Query(description="repeatable or comma-separated")] = None,
    label: str | None = None,
    batch: str | None = None,
    user: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[float | None, Query(description="the ``next`` of the page before")] = None,
) -> UploadList:
    """Uploads, newest first: all of them, or those under a label, of a batch or of a user;
    optionally only those in the given states."""
    store: JobStore = request.app.state.store
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
            list[tuple[bytes, float]],
            await store.redis.zrevrangebyscore(
                names.JOBS_BY_TIME, cursor, "-inf", start=0, num=limit * 2, withscores=True
            ),
        )
        if not page:
            break
        scanned += len(page)
        cursor = f"({page[-1][1]}"
        jobs = await store.read_many([UUID(m.decode()) for m, _ in page])
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


@router.post("/uploads/lookup", response_model=Known)
async def lookup(body: Lookup, request: Request) -> Known:
    """Which of these SHA-256 hashes the server already holds (not failed): to skip them."""
    store: JobStore = request.app.state.store
    found = await catalog.known(store.redis, [h.lower() for h in body.sha256])
    ids = sorted({u for us in found.values() for u in us})
    state = {u: j.status for u, j in zip(ids, await store.read_many(ids), strict=True) if j}
    known = {}
    for sha256, uploads in found.items():
        held = [u for u in uploads if state.get(u) not in (None, "failed")]
        if held:
            known[sha256] = held[0]
    return Known(known=known)


@router.get("/uploads/{study_id}", response_model=UploadRecord)
async def get_upload(study_id: str, request: Request) -> UploadRecord:
    """One upload: its state, where it came from (filename, label, user, batch), its files."""
    _, job = await job_of(request, study_id)
    return UploadRecord.of(job)


@router.delete(
    "/uploads/{study_id}",
    response_model=removal.Removed,
    responses={202: {"description": "Local files removed; the cloud copies are being removed"}},
)
async def delete_upload(
    study_id: str, request: Request, response: Response, cloud: bool = False
) -> removal.Removed:
    """Remove a finished upload: its files, record, label entry and index entries, and with
    ``cloud=true`` its copies on the cloud targets. Says what it removed."""
    upload_id, job = await job_of(request, study_id)
    done = await removal.remove(request, upload_id, job, cloud)
    if done.status == "deleting":
        response.status_code = 202
    return done


@router.get(
    "/uploads/{study_id}/deidentified",
    response_class=FileResponse,
    responses={200: {"content": {"application/dicom": {}}}},
)
async def deidentified(study_id: str, request: Request) -> FileResponse:
    """A copy de-identified by the Basic Application Level Confidentiality Profile (PS3.15
    Annex E): identifying attributes removed or replaced, UIDs replaced consistently (the same
    UID always gives the same new UID), private tags removed, pixel data kept."""
    folder = await archive_folder(request, study_id)
    copy = folder / "deidentified.dcm"
    if not copy.is_file():
        secret = await deid_secret(request)
        try:
            await asyncio.to_thread(write_deidentified, folder / "original.dcm", copy, secret)
        except DeidentificationError as exc:
            raise NotRenderable(str(exc)) from None
    return FileResponse(
        copy, media_type="application/dicom", filename=f"{study_id}-deidentified.dcm"
    )


async def deid_secret(request: Request) -> bytes:
    """DEID_SECRET, or one made once and kept in Redis: new UIDs stay the same across restarts
    and gateway replicas, and cannot be guessed from the originals."""
    configured = request.app.state.settings.deid_secret
    if configured:
        return str(configured).encode()
    redis = request.app.state.store.redis
    await redis.set(names.DEID_SECRET, secrets.token_hex(32), nx=True)
    return bytes(await redis.get(names.DEID_SECRET))


class Stats(BaseModel):
    total_uploads: int
    unique_users: int
    latest_upload: str | None
    earliest_upload: str | None
    by_state: dict[str, int]
    by_modality: dict[str, int]


@router.get("/stats", response_model=Stats)
async def stats(request: Request) -> Stats:
    """Totals (seed 002's four, and counts by state and by modality), kept as jobs move."""
    return Stats(**await catalog.stats(request.app.state.store.redis))


class LabelCount(BaseModel):
    label: str
    count: int


class Labels(BaseModel):
    labels: list[LabelCount]
    count: int


class LabelledFile(BaseModel):
    name: str
    upload_id: UUID
    status: str | None


class LabelFiles(BaseModel):
    label: str
    files: list[LabelledFile]
    count: int


@router.get("/labels", response_model=Labels)
async def labels(request: Request) -> Labels:
    """Every study label in use, with how many files it holds."""
    found = await catalog.labels(request.app.state.store.redis)
    items = [LabelCount(label=k, count=n) for k, n in found.items()]
    return Labels(labels=items, count=len(items))


@router.get("/labels/{label:path}", response_model=LabelFiles)
async def label_files(label: str, request: Request) -> LabelFiles:
    """The files filed under a label, by name, each with its upload id and state."""
    store: JobStore = request.app.state.store
    files = await catalog.label_files(store.redis, label)
    if not files:
        raise LabelNotFound("no files are filed under that label")
    jobs = await store.read_many(list(files.values()))
    items = [
        LabelledFile(name=name, upload_id=u, status=j.status if j else None)
        for (name, u), j in zip(files.items(), jobs, strict=True)
    ]
    return LabelFiles(label=label, files=items, count=len(items))


async def labelled_upload(request: Request, label: str, name: str) -> str:
    """The upload id of a file filed under a label, or a 404."""
    files = await catalog.label_files(request.app.state.store.redis, label)
    if name not in files:
        raise UploadNotFound("file not found", error="file not found", success=False)
    return str(files[name])


@router.get("/users/{user_id}/uploads", response_model=UploadList)
async def user_uploads(user_id: str, request: Request) -> UploadList:
    """A user's uploads (sent with X-User-ID, or saved to them), newest first."""
    store: JobStore = request.app.state.store
    ids = await catalog.user_uploads(store.redis, user_id)
    jobs = await store.read_many(ids)
    gone = [u for u, j in zip(ids, jobs, strict=True) if j is None]
    await catalog.drop_missing(store.redis, user_id, gone)
    records = [UploadRecord.of(j) for j in jobs if j]
    return UploadList(uploads=records, count=len(records), next=None)


@router.put("/users/{user_id}/uploads/{study_id}", status_code=204)
async def save_upload(user_id: str, study_id: str, request: Request) -> Response:
    """List an existing upload among a user's uploads."""
    await save_to_user(request, user_id, study_id, "user id")
    return Response(status_code=204)


async def save_to_user(
    request: Request, user_id: str, study_id: str, what: str
) -> tuple[str, UUID]:
    """File an existing upload under a user; the user and upload, or a 400 or 404 naming why."""
    user = catalog.clean_name(user_id, what)
    if user is None:
        raise BadRequest(f"the {what} is empty")
    upload_id, _ = await job_of(request, study_id)
    await catalog.save_upload(request.app.state.store.redis, user, upload_id)
    return user, upload_id
