"""Every Redis key, stream, group and channel name dicomflow uses, and who reads which stream.

A name is ``dcm:``, then a plural kind, then an identifier, lowercase, joined by ``:``.
Work that must not be lost travels on streams (acked, reclaimable); pub/sub only notifies.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

PREFIX: Final = "dcm"

FILE_RECEIVED: Final = "dcm:events:file.received"
FILE_VALIDATED: Final = "dcm:events:file.validated"
FILE_REJECTED: Final = "dcm:events:file.rejected"
FILE_DESCRIBED: Final = "dcm:events:file.described"
FILE_UPLOADED: Final = "dcm:events:file.uploaded"
STAGE_STARTED: Final = "dcm:events:stage.started"
UPLOAD_ATTEMPTED: Final = "dcm:events:upload.attempted"
COPIES_DELETION_REQUESTED: Final = "dcm:events:copies.deletion-requested"
COPIES_DELETED: Final = "dcm:events:copies.deleted"
DEAD_LETTER: Final = "dcm:events:dead-letter"

GROUP_VALIDATOR: Final = "validator"
GROUP_DESCRIPTOR: Final = "descriptor"
GROUP_UPLOADER: Final = "uploader"
GROUP_STATUS: Final = "status"

# stream -> the consumer groups that read it. Every group is created up front by whichever
# service starts first, so nothing published before a consumer starts is missed or trimmed.
TOPOLOGY: Final[dict[str, tuple[str, ...]]] = {
    FILE_RECEIVED: (GROUP_VALIDATOR, GROUP_STATUS),
    FILE_VALIDATED: (GROUP_DESCRIPTOR, GROUP_STATUS),
    FILE_REJECTED: (GROUP_STATUS,),
    FILE_DESCRIBED: (GROUP_UPLOADER, GROUP_STATUS),
    FILE_UPLOADED: (GROUP_STATUS,),
    STAGE_STARTED: (GROUP_STATUS,),
    UPLOAD_ATTEMPTED: (GROUP_STATUS,),
    COPIES_DELETION_REQUESTED: (GROUP_UPLOADER, GROUP_STATUS),
    COPIES_DELETED: (GROUP_STATUS,),
    DEAD_LETTER: (GROUP_STATUS,),
}

# event type -> the stream it is published on
STREAM_OF_TYPE: Final[dict[str, str]] = {
    "file.received": FILE_RECEIVED,
    "file.validated": FILE_VALIDATED,
    "file.rejected": FILE_REJECTED,
    "file.described": FILE_DESCRIBED,
    "file.uploaded": FILE_UPLOADED,
    "stage.started": STAGE_STARTED,
    "upload.attempted": UPLOAD_ATTEMPTED,
    "copies.deletion-requested": COPIES_DELETION_REQUESTED,
    "copies.deleted": COPIES_DELETED,
    "job.failed": DEAD_LETTER,
}

STATUS_CHANNEL: Final = "dcm:notify:status"


def status_key(upload_id: UUID | str) -> str:
    """The job hash of one upload (written by the status service only, after creation)."""
    return f"dcm:status:{upload_id}"


def attempts_key(stream: str, group: str) -> str:
    """Hash entry-id -> last error of a delivery that failed, for the dead letter's reason."""
    return f"dcm:attempts:{group}:{stream}"


def targets_key(upload_id: UUID | str) -> str:
    """Hash target -> TargetResult JSON of the targets that hold an upload (uploader only)."""
    return f"dcm:targets:{upload_id}"


def instance_key(sop_uid: str) -> str:
    """Which upload holds a SOP Instance UID, and with which SHA-256 (duplicate detection)."""
    return f"dcm:instances:{sop_uid}"


JOBS_BY_TIME: Final = "dcm:indexes:jobs-by-time"
"""Sorted set of upload ids scored by acceptance time (newest jobs, counts)."""

DEAD_LETTER_RAW: Final = "dcm:events:dead-letter.unreadable"
"""Entries no service could even parse: kept for a person, outside the job lifecycle."""
