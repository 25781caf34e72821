"""The facts that travel between services: one frozen pydantic model per event type.

A stream entry holds one field, ``data``, with the event's JSON. ``parse_event`` reads any of
them back through one discriminated union. Events carry ids, paths, hashes and DICOM UIDs,
never patient data, except ``StudyKeys`` for the search indexes. To evolve an event, add
fields with defaults; never rename one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def utcnow() -> datetime:
    return datetime.now(UTC)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Reason(Frozen):
    """Why a file was rejected (or a warning about it): a stable code and a readable message."""

    code: str
    message: str


class DicomIds(Frozen):
    """The identifiers of one DICOM instance: UIDs and coded values, never patient data."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None = None


class FileRef(Frozen):
    """The uploaded bytes a job is about."""

    path: str
    sha256: str
    size: int


class Origin(Frozen):
    """Who sent an upload and how the client files it: labels for people, never paths."""

    filename: str | None = None  # the client's name for the file, shown, never used as a path
    label: str | None = None  # seed 004's "study" folder name
    user_id: str | None = None
    batch_id: str | None = None
    source: str | None = None  # multipart, raw, batch, image, presigned, wado
    source_sha256: str | None = None  # of the image an upload was converted from


class StudyKeys(Frozen):
    """The attributes studies are searched by, read by the descriptor for the status service.

    The one event field that carries patient data: the status service needs it to keep the
    search indexes, and it is never logged.
    """

    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None  # YYYYMMDD
    patient_sex: str | None = None
    study_date: str | None = None  # YYYYMMDD
    study_time: str | None = None
    accession_number: str | None = None
    institution_name: str | None = None
    study_description: str | None = None
    referring_physician_name: str | None = None
    study_id: str | None = None  # the DICOM Study ID (0020,0010), not our upload id


class Event(Frozen):
    """Base for everything that travels on a Redis stream."""

    event_id: UUID = Field(default_factory=uuid4)
    upload_id: UUID
    occurred_at: datetime = Field(default_factory=utcnow)


class FileReceived(Event):
    """The gateway holds the complete upload on disk."""

    type: Literal["file.received"] = "file.received"
    file: FileRef
    origin: Origin | None = None


Stage = Literal["validating", "describing", "uploading"]


class StageStarted(Event):
    """A stage took the job up; lets the status show where the job is."""

    type: Literal["stage.started"] = "stage.started"
    stage: Stage
    delivery: int = 1


class FileValidated(Event):
    type: Literal["file.validated"] = "file.validated"
    file: FileRef
    ids: DicomIds
    has_pixels: bool
    warnings: list[Reason] = []


class FileRejected(Event):
    type: Literal["file.rejected"] = "file.rejected"
    file: FileRef
    reasons: list[Reason]


class FileDescribed(Event):
    """The original, its metadata and its preview are archived."""

    type: Literal["file.described"] = "file.described"
    file: FileRef
    ids: DicomIds
    archive_path: str
    metadata_file: str
    preview_file: str | None
    preview_note: str | None = None
    duplicate_of: UUID | None = None
    study: StudyKeys | None = None  # for the search indexes
    only_targets: list[str] | None = None  # a push to chosen targets, not the configured set


class TargetResult(Frozen):
    """Where one target holds the file, or why it does not."""

    target: str
    ok: bool
    location: str | None = None
    bytes: int | None = None
    checksum: str | None = None
    seconds: float | None = None
    error: str | None = None


class FileArchived(Event):
    """Every configured target holds the file."""

    type: Literal["file.uploaded"] = "file.uploaded"
    targets: list[TargetResult]


class UploadAttempted(Event):
    """Some targets hold the file and some do not yet; the uploader will try again."""

    type: Literal["upload.attempted"] = "upload.attempted"
    targets: list[TargetResult]
    delivery: int


class CopiesDeletionRequested(Event):
    """Someone asked for a finished job's copies on these targets to be removed."""

    type: Literal["copies.deletion-requested"] = "copies.deletion-requested"
    ids: DicomIds
    targets: list[str]


class CopiesDeleted(Event):
    """The targets no longer hold the job's copies: the job can be forgotten."""

    type: Literal["copies.deleted"] = "copies.deleted"
    targets: list[TargetResult]


class JobFailed(Event):
    """A stage kept failing past the delivery limit; the job is dead-lettered."""

    type: Literal["job.failed"] = "job.failed"
    stage: str
    error: str
    deliveries: int
    stream: str
    entry_id: str
    event: str | None = None  # the entry's event JSON, so the job can be retried


class JobRetried(Event):
    """A person asked for a failed job to run its failed stage again."""

    type: Literal["job.retried"] = "job.retried"
    stage: str


AnyEvent = Annotated[
    FileReceived
    | StageStarted
    | FileValidated
    | FileRejected
    | FileDescribed
    | FileArchived
    | UploadAttempted
    | CopiesDeletionRequested
    | CopiesDeleted
    | JobFailed
    | JobRetried,
    Field(discriminator="type"),
]

_adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(data: str | bytes) -> AnyEvent:
    """Read one event back from its JSON."""
    return _adapter.validate_json(data)
