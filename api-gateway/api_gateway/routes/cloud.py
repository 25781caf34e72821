"""Cloud ways in and out: presigned S3 URLs, ingest from S3 or DICOMweb, push to one platform.

Seed 000's routes (``POST /dicom/upload``, ``POST /dicom/retrieve``) and two of our own
(``POST /dicom/presign``, ``GET /uploads/{study_id}/download-url``). S3 and DICOMweb settings
are read when first needed, so a gateway without them still serves everything else and
answers these routes with a problem naming the variable to set.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
from pathlib import Path
from typing import Any, Literal, TypeVar
from uuid import UUID, uuid4

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import APIRouter
from pydantic import BaseModel, Field, ValidationError

from api_gateway.access import Scope, needs
from api_gateway.deps import By, Settings, Store
from api_gateway.settings import GatewaySettings
from shared import intake
from shared.audit import Caller
from shared.dicomweb import DicomwebClient, DicomwebNotFound, DicomwebSettings
from shared.errors import (
    BadRequest,
    FileTooLarge,
    JobStateConflict,
    NotConfigured,
    PermanentError,
    RetryableError,
    UploadNotFound,
    UpstreamError,
)
from shared.events import CopyRequested, FileRef
from shared.jobs import JobStore
from shared.s3 import S3Settings, presign_get, presign_put, s3_client
from shared.status_api import find_job

router = APIRouter(tags=["cloud"])

# seed 000 says gcp; our target is gcs
PLATFORMS = {
    "s3": "s3",
    "azure": "azure",
    "gcp": "gcs",
    "gcs": "gcs",
    "dicomweb": "dicomweb",
    "local": "local",
}


@functools.cache
def _s3() -> tuple[S3Settings, Any]:
    settings = _configured(S3Settings, "presigned URLs and S3 ingest need S3")
    return settings, s3_client(settings)


@functools.cache
def _dicomweb_settings() -> DicomwebSettings:
    return _configured(DicomwebSettings, "retrieval needs a DICOMweb server")


S = TypeVar("S", S3Settings, DicomwebSettings)


def _configured(cls: type[S], what: str) -> S:
    try:
        return cls()  # type: ignore[call-arg]
    except ValidationError as exc:
        missing = ", ".join(
            str(e["loc"][0]).upper() if e["loc"] else str(e["msg"]) for e in exc.errors()
        )
        raise NotConfigured(f"{what}: set {missing} for the gateway") from None


class PresignRequest(BaseModel):
    filename: str | None = Field(None, description="kept as a hint only, never as the key")


class Presigned(BaseModel):
    url: str
    method: Literal["PUT", "GET"]
    object_key: str = Field(serialization_alias="objectKey")
    headers: dict[str, str]
    expires_in: int = Field(serialization_alias="expiresIn")


@router.post(
    "/dicom/presign",
    response_model=Presigned,
    response_model_by_alias=True,
    openapi_extra=needs(Scope.WRITE),
)
async def presign(gateway: Settings, body: PresignRequest | None = None) -> Presigned:
    """A presigned S3 PUT URL for one file: send it there, then ingest it with
    ``POST /dicom/upload {"objectKey": ..., "platform": "s3"}``."""
    settings, client = _s3()
    key = f"{gateway.s3_incoming_prefix.strip('/')}/{uuid4()}.dcm"
    url = await asyncio.to_thread(presign_put, client, settings, key)
    return Presigned(
        url=url,
        method="PUT",
        object_key=key,
        expires_in=settings.presign_expires_s,
        headers={"Content-Type": "application/dicom"},
    )


@router.get(
    "/uploads/{study_id}/download-url",
    response_model=Presigned,
    response_model_by_alias=True,
    openapi_extra=needs(Scope.READ, audit="download.original"),
)
async def download_url(study_id: str, store: Store) -> Presigned:
    """A presigned S3 GET URL for an archived upload's copy on the s3 target."""
    upload_id, job = await find_job(store, study_id)
    copy = next(
        (t for t in job.details.get("targets", []) if t["target"] == "s3" and t["ok"]), None
    )
    if copy is None:
        raise UploadNotFound(f"upload {upload_id} has no copy on S3 (it is {job.status})")
    settings, client = _s3()
    key = copy["location"].split("/", 3)[3]  # s3://bucket/key
    url = await asyncio.to_thread(presign_get, client, settings, key)
    return Presigned(
        url=url, method="GET", object_key=key, expires_in=settings.presign_expires_s, headers={}
    )


class SeedUploadRequest(BaseModel):
    object_key: str = Field(alias="objectKey", min_length=1, max_length=1024)
    platform: str


class SeedQueued(BaseModel):
    status: Literal["success"] = "success"
    message: str
    job_id: UUID | None = Field(None, serialization_alias="jobId")
    job_ids: list[UUID] = Field(serialization_alias="jobIds")


@router.post(
    "/dicom/upload",
    status_code=202,
    response_model=SeedQueued,
    response_model_by_alias=True,
    openapi_extra=needs(Scope.WRITE),
)
async def seed_upload(
    body: SeedUploadRequest, gateway: Settings, store: Store, by: By
) -> SeedQueued:
    """Seed 000's upload job. ``objectKey`` is either a key under the S3 incoming prefix (a file
    sent with a presigned URL; ``platform: "s3"``), which is ingested as a new upload, or an
    upload id (or ``{id}/original.dcm``) of an archived upload, which is pushed to
    ``platform`` (s3, azure, gcp, dicomweb) as a job of its own."""
    platform = PLATFORMS.get(body.platform.lower())
    if platform is None:
        raise BadRequest(f"unknown platform {body.platform!r}; use one of {sorted(PLATFORMS)}")
    incoming = gateway.s3_incoming_prefix.strip("/") + "/"
    if body.object_key.startswith(incoming):
        if platform != "s3":
            raise BadRequest(f"keys under {incoming} are S3 objects: use platform 's3'")
        job_id = await _ingest_from_s3(body.object_key, gateway, store, by)
    else:
        job_id = await _push(body.object_key, platform, store, by)
    return SeedQueued(message="Job queued", job_id=job_id, job_ids=[job_id])


async def _ingest_from_s3(key: str, gateway: GatewaySettings, store: JobStore, by: Caller) -> UUID:
    if ".." in key.split("/"):
        raise BadRequest("the object key may not contain '..'")
    settings, client = _s3()
    part = gateway.uploads_path / f".s3-{uuid4()}.part"
    try:
        head = await asyncio.to_thread(client.head_object, Bucket=settings.bucket, Key=key)
        if int(head["ContentLength"]) > gateway.max_file_size:
            raise FileTooLarge(f"the object exceeds MAX_FILE_SIZE ({gateway.max_file_size} bytes)")
        await asyncio.to_thread(client.download_file, settings.bucket, key, str(part))
    except ClientError as exc:
        part.unlink(missing_ok=True)
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in ("404", "NoSuchKey", "NotFound"):
            raise UploadNotFound(f"no object {key!r} in the S3 bucket") from None
        raise UpstreamError(f"S3 refused the download ({code})") from None
    except BotoCoreError as exc:
        part.unlink(missing_ok=True)
        raise UpstreamError(f"S3 cannot be reached ({type(exc).__name__})") from None
    event = await asyncio.to_thread(intake.adopt, part, gateway.uploads_path)
    await intake.queue(store, [event], by=by)
    return event.upload_id


async def _push(object_key: str, platform: str, store: JobStore, by: Caller) -> UUID:
    """A job that copies an archived upload to one platform: a ``CopyRequested`` command for
    the uploader, published with the new job it creates (which starts as described)."""
    source, job = await find_job(store, object_key.removesuffix("/original.dcm"))
    d = job.details
    if job.status != "archived":
        raise JobStateConflict(
            f"upload {source} is {job.status}: only an archived upload can be pushed"
        )
    archive = Path(d["archive_path"])
    event = CopyRequested(
        upload_id=uuid4(),
        copy_of=source,
        file=FileRef(path=str(archive / "original.dcm"), sha256=d["sha256"], size=d["size"]),
        ids=job.dicom_ids(),
        archive_path=str(archive),
        metadata_file=d["metadata_file"],
        preview_file=d.get("preview_file"),
        targets=[platform],
    )
    await intake.queue(store, [event], by=by)
    return event.upload_id


class RetrieveRequest(BaseModel):
    study_instance_uid: str = Field(alias="studyInstanceUID", pattern=r"^[0-9.]{1,64}$")
    series_instance_uid: str | None = Field(
        None, alias="seriesInstanceUID", pattern=r"^[0-9.]{1,64}$"
    )
    sop_instance_uid: str | None = Field(None, alias="sopInstanceUID", pattern=r"^[0-9.]{1,64}$")


@router.post(
    "/dicom/retrieve",
    status_code=202,
    response_model=SeedQueued,
    response_model_by_alias=True,
    openapi_extra=needs(Scope.WRITE),
)
async def retrieve(body: RetrieveRequest, gateway: Settings, store: Store, by: By) -> SeedQueued:
    """Seed 000's retrieval: WADO-RS from the configured DICOMweb server (DICOMWEB_URL); each
    instance retrieved is ingested as a new upload and goes through the whole pipeline."""
    if body.sop_instance_uid and not body.series_instance_uid:
        raise BadRequest("sopInstanceUID needs seriesInstanceUID")
    folder = gateway.uploads_path / f".retrieve-{uuid4()}"
    try:
        async with DicomwebClient(_dicomweb_settings()) as client:
            paths = await client.retrieve(
                body.study_instance_uid,
                body.series_instance_uid,
                body.sop_instance_uid,
                dest_folder=folder,
            )
        events = [await asyncio.to_thread(intake.adopt, p, gateway.uploads_path) for p in paths]
    except DicomwebNotFound:
        raise UploadNotFound("the DICOMweb server has no such study, series or instance") from None
    except (PermanentError, RetryableError) as exc:
        raise UpstreamError(str(exc)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not events:
        raise UploadNotFound("the DICOMweb server returned no instances")
    await intake.queue(store, events, by=by)
    ids = [e.upload_id for e in events]
    return SeedQueued(message=f"{len(ids)} instance(s) queued", job_id=ids[0], job_ids=ids)
