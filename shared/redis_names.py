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
COPY_REQUESTED: Final = "dcm:events:copy.requested"
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
    COPY_REQUESTED: (GROUP_UPLOADER, GROUP_STATUS),
    COPIES_DELETION_REQUESTED: (GROUP_UPLOADER, GROUP_STATUS),
    COPIES_DELETED: (GROUP_STATUS,),
    DEAD_LETTER: (GROUP_STATUS,),
}

# Which event goes on which stream is declared on each event class (``shared.events``).

STATUS_CHANNEL: Final = "dcm:notify:status"
STATUS_FEED: Final = "dcm:feeds:status"
"""Stream of the recent status changes (capped): live feeds resume from it after a gap."""
STATUS_FEED_MAX: Final = 100_000


def status_key(upload_id: UUID | str) -> str:
    """The job hash of one upload (written only through ``shared.jobs.JobStore``)."""
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

STATE_COUNTS: Final = "dcm:counts:states"
"""Hash state -> number of jobs in it, kept by the same script that moves a job."""
MODALITY_COUNTS: Final = "dcm:counts:modalities"
"""Hash modality -> number of jobs whose file has it."""

LABELS: Final = "dcm:indexes:labels"
"""Set of the study labels in use (seed 004's study folders)."""
USERS: Final = "dcm:indexes:users"
"""Set of the user ids that sent or saved an upload."""


def label_key(label: str) -> str:
    """Hash filename -> upload id of the files filed under one label."""
    return f"dcm:labels:{label}"


def intake_fence_key(upload_id: UUID | str) -> str:
    """Set (for a day) only when an intake whose transaction went unanswered was settled as not
    done: the transaction watches it, so should it still arrive, it does nothing."""
    return f"dcm:intake-fences:{upload_id}"


def user_uploads_key(user_id: str) -> str:
    """Sorted set of a user's upload ids, scored by time."""
    return f"dcm:users:{user_id}:uploads"


def user_batches_key(user_id: str) -> str:
    """Sorted set of a user's batch ids, scored by time."""
    return f"dcm:users:{user_id}:batches"


def sha256_key(sha256: str) -> str:
    """Set of the upload ids whose bytes have this SHA-256 (what the server already has)."""
    return f"dcm:indexes:sha256:{sha256}"


def batch_key(batch_id: str) -> str:
    """Hash of one batch: its user, creation time, number of files."""
    return f"dcm:batches:{batch_id}"


def batch_uploads_key(batch_id: str) -> str:
    """List of the upload ids of one batch, in the order of its files."""
    return f"dcm:batches:{batch_id}:uploads"


DEID_SECRET: Final = "dcm:config:deid-secret"
"""The secret that keys de-identified UIDs when DEID_SECRET is not set (made once)."""

DEAD_LETTER_RAW: Final = "dcm:events:dead-letter.unreadable"
"""Entries no service could even parse: kept for a person, outside the job lifecycle."""


# Study, series and instance search: status_service/indexes.py writes these,
# shared/study_index.py removes an upload from them (forgetting a job), shared/study_search.py
# and shared/query.py read them (the gateway's /studies and QIDO-RS, later C-FIND).
# Per-value sets are named by a digest of the normalised value, so no patient data is in a key.
STUDY_PREFIX: Final = "dcm:studies:"
STUDY_UPLOADS_PREFIX: Final = "dcm:study-uploads:"
STUDY_SERIES_PREFIX: Final = "dcm:study-series:"
STUDY_INSTANCES_PREFIX: Final = "dcm:study-instances:"
STUDY_MODALITIES_PREFIX: Final = "dcm:study-modalities:"
SERIES_PREFIX: Final = "dcm:series:"
SERIES_INSTANCES_PREFIX: Final = "dcm:series-instances:"
SOP_INSTANCE_PREFIX: Final = "dcm:sop-instances:"
STUDIES_BY_MODALITY_PREFIX: Final = "dcm:indexes:studies-by-modality:"
STUDIES_BY_PATIENT_ID_PREFIX: Final = "dcm:indexes:studies-by-patient-id:"
STUDIES_BY_ACCESSION_PREFIX: Final = "dcm:indexes:studies-by-accession:"
STUDIES_BY_INSTITUTION_PREFIX: Final = "dcm:indexes:studies-by-institution:"

STUDIES_BY_DATE: Final = "dcm:indexes:studies-by-date"
"""Sorted set of study UIDs scored YYYYMMDDhhmmss (0 when the study has no date)."""

STUDIES_BY_PATIENT_NAME: Final = "dcm:indexes:studies-by-patient-name"
"""Sorted set, all scores 0, of ``NORMALISED NAME \\0 study uid``: prefix ranges by ZRANGEBYLEX."""

STUDIES_BY_UPDATE: Final = "dcm:indexes:studies-by-update"
"""Sorted set of study UIDs scored by their last index change (Unix seconds)."""

STUDY_OF_UPLOAD: Final = "dcm:indexes:study-of-upload"
"""Hash upload id -> the study UID it is indexed under (what makes indexing idempotent)."""


def study_key(study_uid: str) -> str:
    """Hash of one study's searchable attributes and counts (QIDO-RS study level)."""
    return f"{STUDY_PREFIX}{study_uid}"


def study_uploads_key(study_uid: str) -> str:
    """Hash upload id -> "series uid TAB sop uid TAB modality" of a study's indexed uploads."""
    return f"{STUDY_UPLOADS_PREFIX}{study_uid}"


def study_series_key(study_uid: str) -> str:
    """Hash series uid -> how many of the study's uploads are in it (series count: HLEN)."""
    return f"{STUDY_SERIES_PREFIX}{study_uid}"


def study_instances_key(study_uid: str) -> str:
    """Hash SOP instance uid -> how many uploads hold it (instance count: HLEN)."""
    return f"{STUDY_INSTANCES_PREFIX}{study_uid}"


def study_modalities_key(study_uid: str) -> str:
    """Hash modality -> how many of the study's uploads have it (modalities in study)."""
    return f"{STUDY_MODALITIES_PREFIX}{study_uid}"


def studies_by_modality_key(modality: str) -> str:
    """Set of the study UIDs with an instance of this (upper-case) modality."""
    return f"{STUDIES_BY_MODALITY_PREFIX}{modality}"


def series_key(series_uid: str) -> str:
    """Hash of one series' attributes and instance count (QIDO-RS series level)."""
    return f"{SERIES_PREFIX}{series_uid}"


def series_instances_key(series_uid: str) -> str:
    """Hash SOP instance uid -> how many uploads hold it in this series (its instance count)."""
    return f"{SERIES_INSTANCES_PREFIX}{series_uid}"


def sop_instance_key(sop_uid: str) -> str:
    """Hash of one indexed instance's attributes (QIDO-RS instance level); not the duplicate
    detection's ``instance_key``."""
    return f"{SOP_INSTANCE_PREFIX}{sop_uid}"


API_KEYS: Final = "dcm:config:api-keys"
"""Hash key id -> the API key's name, scopes, creation time and SHA-256 (never the key)."""

AUDIT: Final = "dcm:audit"
"""Stream of the audit trail (``shared.audit``): appended to, never trimmed."""
