"""The facts that travel between services: one frozen pydantic model per event type.

A stream entry holds one field, ``data``, with the event's JSON. ``parse_event`` reads any of
them back through one discriminated union. Events carry ids, paths, hashes and DICOM UIDs,
never patient data, except ``StudyKeys`` for the search indexes. To evolve an event, add
fields with defaults; never rename one.

One name per fact: each class declares, once, its ``type`` (the wire name in the JSON), the
``published_on`` stream (a name from ``redis_names``) and the job state it ``leads_to``
(None for a note or a command that moves no job by itself). Every table between them
(``STREAM_OF_TYPE``, the job store's transitions, the bus's ``add_event``) is derived from
these declarations.

Wire names are kept as deployed: they are in the Redis AOF of running systems. So the
uploader's outcome keeps type and stream ``file.uploaded`` and its class is named after them,
``FileUploaded`` (the file is uploaded to every target); the state it leads to is ``archived``.

A **stage** is one step of work, named as its consumer group is: ``validator``,
``descriptor``, ``uploader``. ``StageStarted.stage``, ``JobFailed.stage``,
``JobRetried.stage`` and a job's ``failed_stage`` all hold that name; the states a stage
moves a job through (it starts from, works in, ends in) are in ``STAGES``. Older
``stage.started`` entries named the working state (``validating``); they are read as the stage.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, get_args
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from shared import redis_names as names


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
    source: str | None = None  # multipart, raw, batch, image, presigned, wado, dimse
    source_sha256: str | None = None  # of the image an upload was converted from
    calling_ae: str | None = None  # dimse: the calling AE title
    peer: str | None = None  # the client's address (dimse: host:port)
    actor: str | None = None  # who sent it: an API key's name, a token's subject (the audit's)


class StudyKeys(Frozen):
    """The attributes studies, series and instances are searched by, read by the descriptor
    for the status service (the study, series and instance indexes).

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
    # series and instance level (QIDO-RS, C-FIND); added later, so optional like the rest
    series_description: str | None = None
    series_number: str | None = None  # IS, as a DICOM string
    performed_procedure_step_start_date: str | None = None  # YYYYMMDD
    performed_procedure_step_start_time: str | None = None
    instance_number: str | None = None  # IS
    rows: int | None = None
    columns: int | None = None
    bits_allocated: int | None = None
    number_of_frames: str | None = None  # IS


Stage = Literal["validator", "descriptor", "uploader"]


class StageStates(NamedTuple):
    """The states of a job around one stage's work."""

    start: str  # where its work starts from (and where a retry of it goes back to)
    working: str  # while it works (``StageStarted``)
    done: str  # once it succeeded


STAGES: dict[Stage, StageStates] = {
    "validator": StageStates("accepted", "validating", "validated"),
    "descriptor": StageStates("validated", "describing", "described"),
    "uploader": StageStates("described", "uploading", "archived"),
}
_STAGE_OF_WORKING = {s.working: stage for stage, s in STAGES.items()}


class Event(Frozen):
    """Base for everything that travels on a Redis stream."""

    published_on: ClassVar[str]  # the stream it travels on
    leads_to: ClassVar[str | None] = None  # the job state it leads to; None: it moves none

    event_id: UUID = Field(default_factory=uuid4)
    upload_id: UUID
    occurred_at: datetime = Field(default_factory=utcnow)

    def resulting_state(self) -> str | None:
        """The job state this event leads to: its class's, unless it depends on a field."""
        return self.leads_to


class FileReceived(Event):
    """The gateway holds the complete upload on disk."""

    type: Literal["file.received"] = "file.received"
    published_on = names.FILE_RECEIVED
    leads_to = "accepted"
    file: FileRef
    origin: Origin | None = None


class StageStarted(Event):
    """A stage took the job up; lets the status show where the job is."""

    type: Literal["stage.started"] = "stage.started"
    published_on = names.STAGE_STARTED
    stage: Stage
    delivery: int = 1

    @field_validator("stage", mode="before")
    @classmethod
    def _stage_of_state(cls, value: Any) -> Any:
        """Entries written before stages had one name carry the working state."""
        return _STAGE_OF_WORKING.get(value, value)

    def resulting_state(self) -> str:
        return STAGES[self.stage].working


class FileValidated(Event):
    type: Literal["file.validated"] = "file.validated"
    published_on = names.FILE_VALIDATED
    leads_to = "validated"
    file: FileRef
    ids: DicomIds
    has_pixels: bool
    warnings: list[Reason] = []


class FileRejected(Event):
    type: Literal["file.rejected"] = "file.rejected"
    published_on = names.FILE_REJECTED
    leads_to = "rejected"
    file: FileRef
    reasons: list[Reason]


class FileDescribed(Event):
    """The original, its metadata and its preview are archived."""

    type: Literal["file.described"] = "file.described"
    published_on = names.FILE_DESCRIBED
    leads_to = "described"
    file: FileRef
    ids: DicomIds
    archive_path: str
    metadata_file: str
    preview_file: str | None
    preview_note: str | None = None
    duplicate_of: UUID | None = None
    study: StudyKeys | None = None  # for the search indexes
    # read on entries from before ``CopyRequested`` (a push to chosen targets), never written
    only_targets: list[str] | None = None


class TargetResult(Frozen):
    """Where one target holds the file, or why it does not."""

    target: str
    ok: bool
    location: str | None = None
    bytes: int | None = None
    checksum: str | None = None
    seconds: float | None = None
    error: str | None = None


class FileUploaded(Event):
    """Every target the job goes to holds the file: the job is archived."""

    type: Literal["file.uploaded"] = "file.uploaded"
    published_on = names.FILE_UPLOADED
    leads_to = "archived"
    targets: list[TargetResult]


class UploadAttempted(Event):
    """Some targets hold the file and some do not yet; the uploader will try again."""

    type: Literal["upload.attempted"] = "upload.attempted"
    published_on = names.UPLOAD_ATTEMPTED
    leads_to = "uploading"
    targets: list[TargetResult]
    delivery: int


class CopyRequested(Event):
    """Someone asked for an archived upload to be copied to chosen targets, as a job of its own.

    A command, published by the gateway with the new job (``upload_id``) it creates; the
    uploader copies the archive of ``copy_of`` as it copies a described file, and the job
    starts as ``described`` (its file is described already, in the archive)."""

    type: Literal["copy.requested"] = "copy.requested"
    published_on = names.COPY_REQUESTED
    leads_to = "described"
    copy_of: UUID
    file: FileRef
    ids: DicomIds
    archive_path: str
    metadata_file: str
    preview_file: str | None
    targets: list[str]


class CopiesDeletionRequested(Event):
    """Someone asked for a finished job's copies on these targets to be removed."""

    type: Literal["copies.deletion-requested"] = "copies.deletion-requested"
    published_on = names.COPIES_DELETION_REQUESTED
    ids: DicomIds
    targets: list[str]


class CopiesDeleted(Event):
    """The targets no longer hold the job's copies: the job can be forgotten."""

    type: Literal["copies.deleted"] = "copies.deleted"
    published_on = names.COPIES_DELETED
    targets: list[TargetResult]


class JobFailed(Event):
    """A stage kept failing past the delivery limit; the job is dead-lettered.

    ``stage`` is the consumer group that gave up: a ``Stage``, or ``status`` when the status
    service itself could not apply an entry."""

    type: Literal["job.failed"] = "job.failed"
    published_on = names.DEAD_LETTER
    leads_to = "failed"
    stage: str
    error: str
    deliveries: int
    stream: str
    entry_id: str
    event: str | None = None  # the entry's event JSON, so the job can be retried


class JobRetried(Event):
    """A person asked for a failed job to run its failed stage again.

    Published beside the ``job.failed`` it answers, by the job store's retry, which moves the
    job back to ``STAGES[stage].start`` in the same step; a note for the status service."""

    type: Literal["job.retried"] = "job.retried"
    published_on = names.DEAD_LETTER
    stage: Stage


AnyEvent = Annotated[
    FileReceived
    | StageStarted
    | FileValidated
    | FileRejected
    | FileDescribed
    | FileUploaded
    | UploadAttempted
    | CopyRequested
    | CopiesDeletionRequested
    | CopiesDeleted
    | JobFailed
    | JobRetried,
    Field(discriminator="type"),
]

_adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)

EVENT_TYPES: tuple[type[Event], ...] = get_args(get_args(AnyEvent)[0])


def type_of(cls: type[Event]) -> str:
    """The wire name of an event class (its ``type`` field's one value)."""
    return str(cls.model_fields["type"].default)


STREAM_OF_TYPE: dict[str, str] = {type_of(cls): cls.published_on for cls in EVENT_TYPES}
"""Event type -> the stream it is published on."""


def parse_event(data: str | bytes) -> AnyEvent:
    """Read one event back from its JSON."""
    return _adapter.validate_json(data)
