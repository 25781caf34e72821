"""Job records on a real Redis: created with the upload, moved forward only, applied once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from status_service.apply import apply, apply_all

from shared import redis_names as names
from shared.events import (
    CopiesDeletionRequested,
    FileDescribed,
    FileReceived,
    FileRef,
    FileUploaded,
    FileValidated,
    JobFailed,
    StageStarted,
    TargetResult,
    UploadAttempted,
    parse_event,
)
from shared.jobs import HISTORY_MAX, JobStore
from tests.support import dicom_ids

pytestmark = pytest.mark.timeout(30)
FILE = FileRef(path="/u/x.dcm", sha256="ab" * 32, size=10)
IDS = dicom_ids(modality="CT")


def described_of(upload_id: uuid.UUID) -> FileDescribed:
    """A described instance without a preview."""
    return FileDescribed(
        upload_id=upload_id,
        file=FILE,
        ids=IDS,
        archive_path="/a",
        metadata_file="/a/m.json",
        preview_file=None,
    )


async def described_job(store: JobStore, upload_id: uuid.UUID) -> FileDescribed:
    """A job received and described, as the status service applies it; its described event."""
    described = described_of(upload_id)
    await apply(store, FileReceived(upload_id=upload_id, file=FILE))
    await apply(store, described)
    return described


def uploader_gave_up(described: FileDescribed) -> JobFailed:
    """The dead letter of an uploader that kept failing on ``described``."""
    return JobFailed(
        upload_id=described.upload_id,
        stage="uploader",
        error="s3: down",
        deliveries=5,
        stream=names.FILE_DESCRIBED,
        entry_id="1-1",
        event=described.model_dump_json(),
    )


@pytest.fixture
async def store(flushed_redis: str) -> AsyncIterator[JobStore]:
    client = Redis.from_url(flushed_redis, decode_responses=True)
    yield JobStore(client)
    await client.aclose()


async def test_a_job_moves_forward_and_gathers_what_each_stage_learned(store: JobStore) -> None:
    upload_id = uuid.uuid4()
    async with store.redis.pipeline(transaction=True) as pipe:  # as the gateway creates it
        await store.queue_create(pipe, FileReceived(upload_id=upload_id, file=FILE))
        await pipe.execute()
    await apply(store, StageStarted(upload_id=upload_id, stage="validator"))
    await apply(store, FileValidated(upload_id=upload_id, file=FILE, ids=IDS, has_pixels=True))
    job = await store.read(upload_id)
    assert job is not None
    assert job.status == "validated"
    assert job.details["sop_instance_uid"] == "1.2.3.4.5"
    assert job.details["modality"] == "CT"
    assert [h["state"] for h in job.details["history"]] == ["accepted", "validating", "validated"]
    assert await store.redis.zscore(names.JOBS_BY_TIME, str(upload_id)) is not None


async def test_a_batch_is_applied_in_the_order_things_happened_to_each_job(
    store: JobStore,
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    # as one read of several streams gives them: stream by stream, outcomes before starts
    batch = [
        FileReceived(upload_id=first, file=FILE),
        FileValidated(upload_id=first, file=FILE, ids=IDS, has_pixels=True),
        FileReceived(upload_id=second, file=FILE),
        StageStarted(upload_id=first, stage="validator"),
        StageStarted(upload_id=second, stage="validator"),
    ]
    await apply_all(store, batch)
    one, two = await store.read_many([first, second])
    assert one is not None
    assert two is not None
    assert one.status == "validated"
    assert two.status == "validating"
    assert [h["state"] for h in one.details["history"]] == ["accepted", "validating", "validated"]
    assert [h["state"] for h in two.details["history"]] == ["accepted", "validating"]


async def test_an_event_applied_twice_changes_nothing(store: JobStore) -> None:
    upload_id = uuid.uuid4()
    received = FileReceived(upload_id=upload_id, file=FILE)
    assert await apply(store, received) is True
    assert await apply(store, received) is False
    job = await store.read(upload_id)
    assert job is not None
    assert len(job.details["history"]) == 1


async def test_a_late_event_never_moves_a_job_backwards(store: JobStore) -> None:
    upload_id = uuid.uuid4()
    await apply(store, FileReceived(upload_id=upload_id, file=FILE))
    archived = FileUploaded(upload_id=upload_id, targets=[TargetResult(target="local", ok=True)])
    await apply(store, archived)
    # a stage start seen late, and a dead letter of a duplicate delivery
    assert await apply(store, StageStarted(upload_id=upload_id, stage="uploader")) is False
    failed = JobFailed(
        upload_id=upload_id, stage="uploader", error="x", deliveries=6, stream="s", entry_id="1-1"
    )
    assert await apply(store, failed) is False
    job = await store.read(upload_id)
    assert job is not None
    assert job.status == "archived"


async def test_each_change_is_announced_on_the_status_channel(store: JobStore) -> None:
    upload_id = uuid.uuid4()
    async with store.redis.pubsub() as pubsub:
        await pubsub.subscribe(names.STATUS_CHANNEL)
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        await apply(store, FileReceived(upload_id=upload_id, file=FILE))
        message = None
        for _ in range(20):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message:
                break
            await asyncio.sleep(0.05)
    assert message is not None
    change = json.loads(message["data"])
    assert change["upload_id"] == str(upload_id)
    assert change["status"] == "accepted"


async def test_unknown_job_reads_as_none(store: JobStore) -> None:
    assert await store.read(uuid.uuid4()) is None


async def test_a_failed_job_goes_back_to_its_failed_stage_and_is_queued_again(
    store: JobStore,
) -> None:
    upload_id = uuid.uuid4()
    described = await described_job(store, upload_id)
    await apply(store, uploader_gave_up(described))
    assert await store.retry(upload_id) == "described"
    job = await store.read(upload_id)
    assert job is not None
    assert job.status == "described"
    assert "error" not in job.details
    assert job.details["history"][-1]["state"] == "retried"
    [(_, fields)] = await store.redis.xrange(names.FILE_DESCRIBED)
    assert parse_event(fields["data"]) == described
    # only a failed job can be retried, and only once per failure
    assert await store.retry(upload_id) is None
    await apply(store, FileUploaded(upload_id=upload_id, targets=[]))
    job = await store.read(upload_id)
    assert job is not None
    assert job.status == "archived"


async def test_a_late_event_writes_nothing_that_a_later_state_wrote(store: JobStore) -> None:
    """A dead letter of a duplicate delivery, or an attempt seen late, arrives after the job
    is archived: the job keeps what archiving wrote, and gains no error."""
    upload_id = uuid.uuid4()
    archived = [TargetResult(target="local", ok=True, location="/a/x.dcm")]
    await apply(store, FileReceived(upload_id=upload_id, file=FILE))
    await apply(store, FileUploaded(upload_id=upload_id, targets=archived))
    late = [
        UploadAttempted(
            upload_id=upload_id, delivery=2, targets=[TargetResult(target="local", ok=False)]
        ),
        JobFailed(
            upload_id=upload_id,
            stage="uploader",
            error="local: disk full",
            deliveries=6,
            stream=names.FILE_DESCRIBED,
            entry_id="1-1",
            event="{}",
        ),
    ]
    for event in late:
        assert await apply(store, event) is False
    job = await store.read(upload_id)
    assert job is not None
    assert job.status == "archived"
    assert job.details["targets"] == [t.model_dump() for t in archived]
    for field in ("error", "failed_stage", "deliveries"):
        assert field not in job.details, field
    raw = await store.redis.hgetall(names.status_key(upload_id))
    assert "failed_event" not in raw


async def test_fields_that_come_with_an_event_that_does_not_move_the_job_are_kept(
    store: JobStore,
) -> None:
    """What no later state writes is written whenever it comes: a validation read after the
    describer's start, another attempt while uploading, a second delivery's start."""
    upload_id = uuid.uuid4()
    await apply(store, FileReceived(upload_id=upload_id, file=FILE))
    await apply(store, StageStarted(upload_id=upload_id, stage="descriptor"))
    await apply(store, FileValidated(upload_id=upload_id, file=FILE, ids=IDS, has_pixels=True))
    first = [TargetResult(target="s3", ok=False, error="s3: down")]
    then = [TargetResult(target="s3", ok=True, location="s3://b/k")]
    await apply(store, UploadAttempted(upload_id=upload_id, delivery=1, targets=first))
    await apply(store, UploadAttempted(upload_id=upload_id, delivery=2, targets=then))
    await apply(store, StageStarted(upload_id=upload_id, stage="validator", delivery=2))
    job = await store.read(upload_id)
    assert job is not None
    assert job.status == "uploading"
    assert job.details["sop_instance_uid"] == IDS.sop_uid
    assert job.details["targets"] == [t.model_dump() for t in then]
    raw = await store.redis.hgetall(names.status_key(upload_id))
    assert raw["deliveries:validator"] == "2"


async def test_retries_keep_the_history_as_short_as_every_other_change(store: JobStore) -> None:
    upload_id = uuid.uuid4()
    described = await described_job(store, upload_id)
    for _ in range(HISTORY_MAX):
        await apply(store, uploader_gave_up(described))
        assert await store.retry(upload_id) == "described"
    job = await store.read(upload_id)
    assert job is not None
    assert len(job.details["history"]) == HISTORY_MAX
    assert job.details["history"][-1]["state"] == "retried"


async def test_a_deletion_that_gave_up_leaves_the_job_archived_and_says_why(
    store: JobStore,
) -> None:
    """Unlike a stage's late dead letter, a failed command on a finished job is news."""
    upload_id = uuid.uuid4()
    await apply(store, FileReceived(upload_id=upload_id, file=FILE))
    await apply(store, FileUploaded(upload_id=upload_id, targets=[]))
    asked = CopiesDeletionRequested(upload_id=upload_id, ids=IDS, targets=["dicomweb"])
    await apply(store, asked)
    gave_up = JobFailed(
        upload_id=upload_id,
        stage="uploader",
        error="no DELETE",
        deliveries=1,
        stream=asked.published_on,
        entry_id="1-1",
        event=asked.model_dump_json(),
    )
    assert await apply(store, gave_up) is False
    job = await store.read(upload_id)
    assert job is not None
    assert job.status == "archived"
    assert job.details["error"] == "no DELETE"
    assert job.details["history"][-1]["state"] == "command-failed"
