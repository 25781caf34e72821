"""What each event writes into a job record, and the order a batch is applied in (pure)."""

from __future__ import annotations

import uuid

from status_service.apply import changes, in_order

from shared.events import (
    CopyRequested,
    FileReceived,
    FileRef,
    FileUploaded,
    FileValidated,
    JobRetried,
    StageStarted,
)
from shared.jobs import RANK
from tests.support import dicom_ids

FILE = FileRef(path="/u", sha256="a" * 64, size=10)
IDS = dicom_ids(modality="CT")


def test_changes_of_an_event_are_strings_for_the_job_hash() -> None:
    upload_id = uuid.uuid4()
    state, fields = changes(FileReceived(upload_id=upload_id, file=FILE))
    assert state == "accepted"
    assert fields == {"sha256": "a" * 64, "size": "10"}
    state, fields = changes(StageStarted(upload_id=upload_id, stage="descriptor", delivery=2))
    assert (state, fields) == ("describing", {"deliveries:descriptor": "2"})


def test_every_state_an_event_leads_to_is_the_one_its_class_declares() -> None:
    upload_id = uuid.uuid4()
    for event in (
        FileReceived(upload_id=upload_id, file=FILE),
        FileValidated(upload_id=upload_id, file=FILE, ids=IDS, has_pixels=False),
        FileUploaded(upload_id=upload_id, targets=[]),
    ):
        assert changes(event)[0] == type(event).leads_to
    assert RANK[changes(JobRetried(upload_id=upload_id, stage="uploader"))[0]] < 0  # a note


def test_a_copy_request_creates_a_described_job_that_names_its_source() -> None:
    source = uuid.uuid4()
    request = CopyRequested(
        upload_id=uuid.uuid4(),
        copy_of=source,
        file=FILE,
        ids=IDS,
        archive_path="/a",
        metadata_file="/a/metadata.json",
        preview_file=None,
        targets=["gcs"],
    )
    state, fields = changes(request)
    assert state == "described"
    assert fields["duplicate_of"] == str(source)
    assert fields["sop_uid"] == IDS.sop_uid


def test_a_batch_is_ordered_by_what_happened_to_each_job() -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    batch = [
        FileValidated(upload_id=one, file=FILE, ids=IDS, has_pixels=True),
        FileReceived(upload_id=two, file=FILE),
        StageStarted(upload_id=one, stage="validator"),
        FileReceived(upload_id=one, file=FILE),
    ]
    ordered = in_order([(e, changes(e)) for e in batch])
    mine = [change[0] for event, change in ordered if event.upload_id == one]
    assert mine == ["accepted", "validating", "validated"]
