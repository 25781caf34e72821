"""The Redis Streams bus against a real redis-server: delivery, takeover, dead letters, trimming."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from shared import redis_names as names
from shared.bus import Bus, Delivery, Handler, stop_if_cancelled
from shared.errors import PermanentError, RetryableError
from shared.events import (
    FileDescribed,
    FileReceived,
    FileRef,
    FileRejected,
    JobFailed,
    Reason,
    StageStarted,
    StudyKeys,
    parse_event,
)
from shared.service import connect
from shared.settings import ServiceSettings
from tests.support import RedisServer, dicom_ids

pytestmark = pytest.mark.timeout(60)


def received() -> FileReceived:
    return FileReceived(
        upload_id=uuid.uuid4(), file=FileRef(path="/nowhere.dcm", sha256="0" * 64, size=1)
    )


def bus(redis: Redis, consumer: str = "c1", **kw: int) -> Bus:
    kw.setdefault("claim_idle_ms", 200)
    kw.setdefault("block_ms", 50)
    return Bus(redis, consumer=consumer, **kw)


async def take(b: Bus, n: int, group: str = names.GROUP_VALIDATOR) -> list[Delivery]:
    got: list[Delivery] = []
    async for delivery in b.deliveries([names.FILE_RECEIVED], group):
        got.append(delivery)
        if len(got) == n:
            break
    return got


async def dead_letters(redis: Redis) -> list[JobFailed]:
    entries = await redis.xrange(names.DEAD_LETTER)
    return [parse_event(fields["data"]) for _, fields in entries]  # type: ignore[misc]


async def first_dead_letters(redis: Redis, count: int, seconds: float = 10) -> list[JobFailed]:
    """The dead-letter stream's entries, once it holds ``count`` (or after ``seconds``)."""
    for _ in range(int(seconds * 10)):
        if len(found := await dead_letters(redis)) >= count:
            return found
        await asyncio.sleep(0.1)
    return await dead_letters(redis)


async def until(condition: Callable[[], Awaitable[bool]], seconds: float = 5) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_published_event_is_delivered_once_to_each_group(redis: Redis) -> None:
    b = bus(redis)
    await b.ensure_groups()
    event = received()
    await b.publish(event)
    [to_validator] = await asyncio.wait_for(take(b, 1), 5)
    [to_status] = await asyncio.wait_for(take(b, 1, names.GROUP_STATUS), 5)
    assert to_validator.event == event == to_status.event
    assert to_validator.count == 1


async def test_complete_publishes_outcome_and_acks_together(redis: Redis) -> None:
    b = bus(redis)
    await b.ensure_groups()
    await b.publish(received())
    [delivery] = await asyncio.wait_for(take(b, 1), 5)
    rejected = FileRejected(
        upload_id=delivery.event.upload_id,
        file=delivery.event.file,  # type: ignore[union-attr]
        reasons=[Reason(code="not-dicom", message="x")],
    )
    await b.complete(delivery, rejected)
    pending = await redis.xpending(names.FILE_RECEIVED, names.GROUP_VALIDATOR)
    assert pending["pending"] == 0
    [(_, fields)] = await redis.xrange(names.FILE_REJECTED)
    assert parse_event(fields["data"]) == rejected


async def test_entry_left_by_a_dead_consumer_is_taken_over(redis: Redis) -> None:
    """A validator that dies before its ack must not lose the upload."""
    dead, alive = bus(redis, "dead"), bus(redis, "alive")
    await dead.ensure_groups()
    event = received()
    await dead.publish(event)
    [first] = await asyncio.wait_for(take(dead, 1), 5)  # delivered, never acked: it "died"
    assert first.count == 1
    [again] = await asyncio.wait_for(take(alive, 1), 5)
    assert again.event == event
    assert again.entry_id == first.entry_id
    assert again.count == 2


async def test_a_failing_handler_leaves_the_entry_for_a_retry(redis: Redis) -> None:
    b = bus(redis)
    await b.ensure_groups()
    await b.publish(received())
    calls: list[int] = []

    async def handle(delivery: Delivery) -> None:
        calls.append(delivery.count)
        if delivery.count < 3:
            raise RuntimeError("passing fault")
        await b.complete(delivery)

    async def handled_and_acked() -> bool:
        pending = await redis.xpending(names.FILE_RECEIVED, names.GROUP_VALIDATOR)
        return len(calls) >= 3 and pending["pending"] == 0  # acked with the next read

    task = asyncio.create_task(b.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle))
    acked = await until(handled_and_acked, 10)
    task.cancel()
    assert calls == [1, 2, 3]
    assert acked
    assert await dead_letters(redis) == []


async def test_a_failed_delivery_logs_where_a_librarys_error_came_from_never_its_words(
    redis: Redis,
) -> None:
    b = bus(redis)
    await b.ensure_groups()
    await b.publish(received(), received())
    failures: list[Exception] = [RetryableError("the archive is not mounted"), KeyError("Doe^Jane")]

    async def handle(delivery: Delivery) -> None:
        raise failures.pop()

    with capture_logs() as logs:
        task = asyncio.create_task(b.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle))

        async def both_failed() -> bool:
            return len([e for e in logs if e["event"] == "delivery.failed"]) == 2

        try:
            assert await until(both_failed)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    library, ours = [e for e in logs if e["event"] == "delivery.failed"]
    assert library["error"] == "KeyError"
    assert library["frames"][-1]["function"] == "handle"
    assert "Doe" not in repr(logs)
    assert ours["error"] == "the archive is not mounted"
    assert "frames" not in ours  # our words say it all


async def test_past_the_delivery_limit_the_job_is_dead_lettered_with_its_last_error(
    redis: Redis,
) -> None:
    b = bus(redis, max_deliveries=2)
    await b.ensure_groups()
    event = received()
    await b.publish(event)

    async def handle(delivery: Delivery) -> None:
        raise RuntimeError("always")

    task = asyncio.create_task(b.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle))
    [failed] = await first_dead_letters(redis, 1)
    task.cancel()
    assert failed.upload_id == event.upload_id
    assert failed.stage == names.GROUP_VALIDATOR
    assert "RuntimeError" in failed.error
    assert "2 deliveries" in failed.error
    assert (await redis.xpending(names.FILE_RECEIVED, names.GROUP_VALIDATOR))["pending"] == 0


async def test_a_permanent_error_fails_the_job_at_once(redis: Redis) -> None:
    b = bus(redis)
    await b.ensure_groups()
    await b.publish(received())
    calls = 0

    async def handle(delivery: Delivery) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("the bucket does not exist")

    task = asyncio.create_task(b.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle))
    await first_dead_letters(redis, 1, seconds=5)
    await asyncio.sleep(0.5)  # time for a second attempt, which must not come
    task.cancel()
    [failed] = await dead_letters(redis)
    assert failed.error == "the bucket does not exist"
    assert calls == 1


async def test_a_dead_letter_keeps_no_patient_attributes(redis: Redis) -> None:
    b = bus(redis)
    await b.ensure_groups()
    study = StudyKeys(patient_name="Doe^Jane", patient_id="P-1", study_date="20240101")
    ids = dicom_ids()
    described = FileDescribed(
        upload_id=uuid.uuid4(),
        file=FileRef(path="/nowhere.dcm", sha256="0" * 64, size=1),
        ids=ids,
        archive_path="/a",
        metadata_file="/a/metadata.json",
        preview_file=None,
        study=study,
    )
    await b.publish(described)

    async def handle(delivery: Delivery) -> None:
        raise PermanentError("the bucket does not exist")

    task = asyncio.create_task(b.serve([names.FILE_DESCRIBED], names.GROUP_UPLOADER, handle))
    [failed] = await first_dead_letters(redis, 1, seconds=5)
    task.cancel()
    assert "Doe" not in failed.event
    assert "P-1" not in failed.event
    kept = parse_event(failed.event)  # still the event, for a retry of the stage
    assert kept == described.model_copy(update={"study": None})


async def test_an_unreadable_entry_is_set_aside_not_retried(redis: Redis) -> None:
    b = bus(redis)
    await b.ensure_groups()
    await redis.xadd(names.FILE_RECEIVED, {"data": b"{not json"})
    await b.publish(event := received())
    [delivery] = await asyncio.wait_for(take(b, 1), 5)
    assert delivery.event == event
    assert await redis.xlen(names.DEAD_LETTER_RAW) == 1


async def test_an_entry_that_is_not_utf8_is_set_aside_not_a_crash(flushed_redis: str) -> None:
    """Another program's bytes on a stream: the service client reads them (U+FFFD for what
    is not UTF-8) and the bus dead-letters the entry instead of raising UnicodeDecodeError
    out of its read loop."""
    raw = Redis.from_url(flushed_redis)  # bytes in, bytes out: as a foreign producer
    client = connect(ServiceSettings(REDIS_URL=flushed_redis, _env_file=None))  # type: ignore[call-arg]
    try:
        b = bus(client)
        await b.ensure_groups()
        foreign = await raw.xadd(names.FILE_RECEIVED, {b"data": b'{"type": "\xff\xfe"}'})
        await b.publish(event := received())
        [delivery] = await asyncio.wait_for(take(b, 1), 5)
        assert delivery.event == event
        [(_, aside)] = await client.xrange(names.DEAD_LETTER_RAW)
        assert aside == {
            "stream": names.FILE_RECEIVED,
            "entry_id": foreign.decode(),
            "data": '{"type": "\ufffd\ufffd"}',
        }
        pending = await client.xpending_range(
            names.FILE_RECEIVED, names.GROUP_VALIDATOR, "-", "+", 10
        )
        assert [p["message_id"] for p in pending] == [delivery.entry_id]  # the foreign one acked
    finally:
        await raw.aclose()
        await client.aclose()


async def test_a_long_handler_keeps_its_entry_from_being_taken_over(redis: Redis) -> None:
    slow, other = bus(redis, "slow"), bus(redis, "other")
    await slow.ensure_groups()
    await slow.publish(received())
    seen: list[str] = []

    async def handle(delivery: Delivery) -> None:
        seen.append("slow")
        await asyncio.sleep(1.0)  # five times the claim idle time
        await slow.complete(delivery)

    async def steal(delivery: Delivery) -> None:
        seen.append("other")
        await other.complete(delivery)

    async def taken() -> bool:
        return bool(seen)

    async def acked() -> bool:
        pending = await redis.xpending(names.FILE_RECEIVED, names.GROUP_VALIDATOR)
        return int(pending["pending"]) == 0

    tasks = [
        asyncio.create_task(slow.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle)),
    ]
    try:
        assert await until(taken)
        tasks.append(
            asyncio.create_task(other.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, steal))
        )
        assert await until(acked)  # by the slow handler once done, or by a thief before it
    finally:
        for task in tasks:
            task.cancel()
    assert seen == ["slow"]


async def test_a_consumer_never_takes_over_an_entry_it_is_still_handling(redis: Redis) -> None:
    """A consumer whose heartbeat comes late (a process starved of CPU: a stage under
    SCHED_IDLE on a saturated machine) finds its own entry idle past the lease when it looks
    for abandoned work: it is in its hand, so it is not started a second time beside itself
    (each delivery counts towards the dead letter)."""
    late = bus(redis, "late")
    late._keep_fresh = lambda: asyncio.sleep(3600)  # type: ignore[method-assign]
    await late.ensure_groups()
    await late.publish(received())
    seen: list[int] = []

    async def handle(delivery: Delivery) -> None:
        seen.append(delivery.count)
        await asyncio.sleep(1.0)  # five times the lease, with no heartbeat
        await late.complete(delivery)

    async def acked() -> bool:
        pending = await redis.xpending(names.FILE_RECEIVED, names.GROUP_VALIDATOR)
        return int(pending["pending"]) == 0 and bool(seen)

    task = asyncio.create_task(
        late.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle, concurrency=2)
    )
    try:
        assert await until(acked)
    finally:
        task.cancel()
    assert seen == [1]


async def test_a_busy_consumer_reads_no_more_than_it_can_start(redis: Redis) -> None:
    """Entries a consumer has read but not started would not be kept fresh: another replica
    could take them over while they are still in hand. So it reads only what it can start."""
    first, second = bus(redis, "first", claim_idle_ms=600), bus(redis, "second", claim_idle_ms=600)
    await first.ensure_groups()
    await first.publish(*(received() for _ in range(3)))
    release = asyncio.Event()
    handled: list[tuple[str, str, int]] = []  # consumer, entry id, delivery count

    def handler(b: Bus) -> Handler:
        async def handle(delivery: Delivery) -> None:
            handled.append((b.consumer, delivery.entry_id, delivery.count))
            if b is first:
                await release.wait()
            await b.complete(delivery)

        return handle

    async def pending(consumer: str | None = None) -> int:
        summary = await redis.xpending(names.FILE_RECEIVED, names.GROUP_VALIDATOR)
        if consumer is None:
            return int(summary["pending"])
        return sum(int(c["pending"]) for c in summary["consumers"] if c["name"] == consumer)

    async def started() -> bool:
        return bool(handled)

    async def the_others_handled() -> bool:
        return len(handled) == 3 and await pending("second") == 0

    async def all_acked() -> bool:
        return await pending() == 0

    def serve(b: Bus) -> asyncio.Task[None]:
        return asyncio.create_task(
            b.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handler(b), concurrency=1)
        )

    serving = [serve(first)]
    try:
        assert await until(started)
        assert await pending("first") == 1  # the entry it handles, and none waiting
        serving.append(serve(second))
        assert await until(the_others_handled)
        release.set()
        assert await until(all_acked)
    finally:
        release.set()
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)
    # each entry handled once, the two that waited by the second consumer on first delivery
    assert sorted((consumer, count) for consumer, _, count in handled) == [
        ("first", 1),
        ("second", 1),
        ("second", 1),
    ]
    assert len({entry_id for _, entry_id, _ in handled}) == 3


async def test_a_batch_being_handled_is_kept_fresh(redis: Redis) -> None:
    """A slow batch handler's entries never look idle to another replica's reclaim."""
    b = bus(redis, claim_idle_ms=600)
    await b.ensure_groups()
    await b.publish(*(received() for _ in range(3)))
    release = asyncio.Event()
    got: list[Delivery] = []

    async def handle_batch(batch: list[Delivery]) -> None:
        got.extend(batch)
        await release.wait()

    async def handle(delivery: Delivery) -> None:
        raise AssertionError("no batch failed")

    async def started() -> bool:
        return len(got) == 3

    task = asyncio.create_task(
        b.serve_batches([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle_batch, handle)
    )
    idle: list[int] = []
    try:
        assert await until(started)
        watch_until = time.monotonic() + 2.0  # more than three times the claim idle time
        while time.monotonic() < watch_until:
            pending = await redis.xpending_range(
                names.FILE_RECEIVED, names.GROUP_VALIDATOR, "-", "+", 10
            )
            idle.extend(int(entry["time_since_delivered"]) for entry in pending)
            await asyncio.sleep(0.05)
    finally:
        release.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert idle
    assert max(idle) < 600 * 0.8  # a reclaim looks at entries idle that long at least


async def test_trim_drops_only_what_every_group_has_acked(redis: Redis) -> None:
    # no takeover while the test reads: on a slow machine reading 300 entries outlasts a short
    # claim idle time, and an entry taken back would come twice, once acked
    b = bus(redis, claim_idle_ms=60_000)
    await b.ensure_groups()
    for _ in range(300):
        await b.publish(received())
    validator = await asyncio.wait_for(take(b, 300), 10)
    for delivery in validator:
        await b.complete(delivery)
    # the status group has not read anything yet: nothing may go
    await b.trim(names.FILE_RECEIVED)
    assert await redis.xlen(names.FILE_RECEIVED) == 300
    status = await asyncio.wait_for(take(b, 300, names.GROUP_STATUS), 10)
    assert len({d.entry_id for d in status}) == 300  # each once: none taken back meanwhile
    for delivery in status[:200]:
        await b.complete(delivery)
    await b.trim(names.FILE_RECEIVED)
    left = await redis.xrange(names.FILE_RECEIVED)
    ids = {e for e, _ in left}
    # every entry the status group has not acked is still there
    assert {d.entry_id for d in status[200:]} <= ids
    assert len(left) < 300 or await redis.xlen(names.FILE_RECEIVED) == 300  # approximate trim


async def test_trim_copes_with_entries_acked_between_its_two_reads(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load a group's pending entries are acked between XINFO GROUPS (which counts them)
    and XPENDING (which then finds none): trim goes on, and keeps what was not delivered."""
    b = bus(redis, batch=3)
    await b.ensure_groups()
    await b.publish(*(received() for _ in range(5)))
    in_hand = await asyncio.wait_for(take(b, 3), 5)  # the validator holds the first three
    for delivery in await asyncio.wait_for(take(b, 5, names.GROUP_STATUS), 5):
        await b.complete(delivery)
    xpending = redis.xpending

    async def acked_just_before(stream: str, group: str) -> object:
        if group == names.GROUP_VALIDATOR:
            for delivery in in_hand:
                await b.complete(delivery)
        return await xpending(stream, group)

    monkeypatch.setattr(redis, "xpending", acked_just_before)
    await b.trim(names.FILE_RECEIVED)
    monkeypatch.undo()
    left = {e for e, _ in await redis.xrange(names.FILE_RECEIVED)}
    later = await asyncio.wait_for(take(b, 2), 5)  # never delivered to the validator: kept
    assert {d.entry_id for d in later} <= left
    assert len(later) == 2


async def test_work_survives_a_redis_restart(tmp_path: Path) -> None:
    """With append-only persistence, entries and groups come back after Redis dies."""
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    try:
        client = Redis.from_url(server.url, decode_responses=True)
        b = bus(client)
        await b.ensure_groups()
        event = received()
        await b.publish(event)
        await client.aclose()
        server.kill()
        server.start()
        client = Redis.from_url(server.url, decode_responses=True)
        [delivery] = await asyncio.wait_for(take(bus(client), 1), 10)
        assert delivery.event == event
        await client.aclose()
    finally:
        server.stop()


async def test_consumer_rides_out_a_redis_outage(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    try:
        client = Redis.from_url(
            server.url, decode_responses=True, socket_timeout=2, socket_connect_timeout=1
        )
        b = bus(client)
        await b.ensure_groups()
        got: list[Delivery] = []

        async def handle(delivery: Delivery) -> None:
            got.append(delivery)
            await b.complete(delivery)

        async def reading() -> bool:  # a connection of the client waits in XREADGROUP
            return any(c["cmd"] == "xreadgroup" for c in await client.client_list())

        async def delivered() -> bool:
            return bool(got)

        task = asyncio.create_task(b.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle))
        assert await until(reading)
        server.kill()
        await asyncio.sleep(1.0)  # the outage the consumer must ride out
        server.start()
        producer = Redis.from_url(server.url, decode_responses=True)
        await bus(producer).publish(event := received())
        await until(delivered, 10)
        task.cancel()
        await producer.aclose()
        await client.aclose()
        assert [d.event for d in got] == [event]
    finally:
        server.stop()


async def test_a_poison_entry_in_a_batch_fails_alone(redis: Redis) -> None:
    b = bus(redis, max_deliveries=2)
    await b.ensure_groups()
    events = [received() for _ in range(5)]
    poison = events[2].upload_id
    await b.publish(*events)
    handled: list[uuid.UUID] = []

    async def handle_batch(batch: list[Delivery]) -> None:
        if any(d.event.upload_id == poison for d in batch):
            raise RuntimeError("one of them is bad")
        handled.extend(d.event.upload_id for d in batch)

    async def handle(delivery: Delivery) -> None:
        if delivery.event.upload_id == poison:
            raise RuntimeError("bad")
        handled.append(delivery.event.upload_id)
        await b.complete(delivery)

    task = asyncio.create_task(
        b.serve_batches([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle_batch, handle)
    )
    [failed] = await first_dead_letters(redis, 1)
    task.cancel()
    assert failed.upload_id == poison
    assert sorted(map(str, handled)) == sorted(
        str(e.upload_id) for e in events if e.upload_id != poison
    )
    assert (await redis.xpending(names.FILE_RECEIVED, names.GROUP_VALIDATOR))["pending"] == 0


async def stage_starts(redis: Redis) -> list[StageStarted]:
    entries = await redis.xrange(names.STAGE_STARTED)
    return [parse_event(fields["data"]) for _, fields in entries]  # type: ignore[misc]


async def test_the_start_of_quick_work_is_told_with_its_outcome(redis: Redis) -> None:
    b = bus(redis)
    await b.ensure_groups()
    await b.publish(event := received())
    [delivery] = await asyncio.wait_for(take(b, 1), 5)
    await b.started(delivery, "validator", quick=True)
    assert await stage_starts(redis) == []  # not yet: no round trip of its own
    outcome = FileRejected(upload_id=event.upload_id, file=event.file, reasons=[])
    await b.complete(delivery, outcome)
    [start] = await stage_starts(redis)
    assert (start.upload_id, start.stage, start.delivery) == (event.upload_id, "validator", 1)
    assert start.occurred_at <= outcome.occurred_at  # made when the work started
    assert (await redis.xpending(names.FILE_RECEIVED, names.GROUP_VALIDATOR))["pending"] == 0


async def test_the_start_of_long_work_is_told_at_once(redis: Redis) -> None:
    b = bus(redis)
    await b.ensure_groups()
    await b.publish(event := received())
    [delivery] = await asyncio.wait_for(take(b, 1), 5)
    await b.started(delivery, "validator")
    assert [s.upload_id for s in await stage_starts(redis)] == [event.upload_id]


@pytest.mark.parametrize("error", [RuntimeError("try again"), PermanentError("never")])
async def test_the_start_of_quick_work_that_fails_is_told_with_the_failure(
    redis: Redis, error: Exception
) -> None:
    b = bus(redis, max_deliveries=3)
    await b.ensure_groups()
    await b.publish(event := received())
    attempts = 0

    async def handle(delivery: Delivery) -> None:
        nonlocal attempts
        attempts += 1
        await b.started(delivery, "validator", quick=True)
        raise error

    task = asyncio.create_task(b.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle))
    for _ in range(50):
        if attempts and await stage_starts(redis):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    [start, *_] = await stage_starts(redis)
    assert (start.upload_id, start.delivery) == (event.upload_id, 1)
    if isinstance(error, PermanentError):
        [failed] = await dead_letters(redis)
        assert failed.upload_id == event.upload_id


async def test_a_handled_batch_is_acked_with_the_next_read(redis: Redis) -> None:
    b = bus(redis)
    await b.ensure_groups()
    await b.publish(*(first := [received() for _ in range(3)]))
    handled: list[Delivery] = []

    async def handle_batch(batch: list[Delivery]) -> None:
        handled.extend(batch)

    async def handle(delivery: Delivery) -> None:
        raise AssertionError("no batch failed")

    task = asyncio.create_task(
        b.serve_batches([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle_batch, handle)
    )
    await b.publish(*(later := [received() for _ in range(2)]))
    pending = None
    for _ in range(50):
        pending = (await redis.xpending(names.FILE_RECEIVED, names.GROUP_VALIDATOR))["pending"]
        if len(handled) == 5 and pending == 0:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    assert [d.event for d in handled] == [*first, *later]  # each once, none redelivered
    assert pending == 0


async def test_redeliveries_back_off_exponentially(redis: Redis) -> None:
    b = bus(redis, claim_idle_ms=200, max_deliveries=10)
    await b.ensure_groups()
    await b.publish(received())
    seen: list[float] = []

    async def handle(delivery: Delivery) -> None:
        seen.append(time.monotonic())
        raise RuntimeError("still failing")

    task = asyncio.create_task(b.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, handle))
    for _ in range(100):
        if len(seen) >= 4:
            break
        await asyncio.sleep(0.1)
    task.cancel()
    gaps = [later - earlier for earlier, later in itertools.pairwise(seen)]
    assert len(gaps) >= 3, seen
    # 200 ms, then 400, then 800, each -20 % at worst; lower bounds only, since a loaded
    # machine can delay a delivery but never bring it forward
    assert gaps[0] > 0.16
    assert gaps[1] > 0.32
    assert gaps[2] > 0.64


def test_back_off_doubles_and_is_capped() -> None:
    b = Bus(None, consumer="x", claim_idle_ms=1000, backoff_max_ms=5000)  # type: ignore[arg-type]
    assert 800 <= b.backoff_ms(1) <= 1200
    assert 1600 <= b.backoff_ms(2) <= 2400
    assert 3200 <= b.backoff_ms(3) <= 4800
    assert 4000 <= b.backoff_ms(9) <= 6000


async def test_a_cancelled_consumer_always_stops(redis: Redis) -> None:
    # Python 3.11's wait_for, under every redis-py socket write, can eat a cancel; the bus's
    # loops must stop anyway. Cancel at random moments of a busy retry loop, many times.
    async def fail(delivery: Delivery) -> None:
        raise RuntimeError("still failing")

    rng = random.Random(7)
    b = bus(redis, claim_idle_ms=100, max_deliveries=1000)
    await b.ensure_groups()
    for _ in range(40):
        await b.publish(received())
        task = asyncio.create_task(b.serve([names.FILE_RECEIVED], names.GROUP_VALIDATOR, fail))
        await asyncio.sleep(rng.uniform(0, 0.15))
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done, "the consumer went on after it was cancelled"
        assert task.cancelled()


async def test_a_loop_stops_even_when_a_library_swallowed_its_cancel() -> None:
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            stop_if_cancelled()
            rounds += 1
            with contextlib.suppress(asyncio.CancelledError):  # what 3.11's wait_for can do
                await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert rounds == 1


async def test_a_worker_started_while_redis_is_down_creates_its_groups_once_it_is_back(
    tmp_path: Path,
) -> None:
    """A service restarted during a Redis outage (make soak met it) waits instead of dying."""
    server = RedisServer(tmp_path)  # its port chosen, not started yet
    client = Redis.from_url(server.url, decode_responses=True, socket_connect_timeout=0.5)
    starting = asyncio.create_task(bus(client).ensure_groups())
    with capture_logs() as logs:
        await asyncio.sleep(1.0)
        assert not starting.done()
    assert any(line["event"] == "redis.unavailable" for line in logs)
    server.start()
    try:
        await asyncio.wait_for(starting, 15)
        groups = await client.xinfo_groups(names.FILE_RECEIVED)
        assert {g["name"] for g in groups} == set(names.TOPOLOGY[names.FILE_RECEIVED])
        with pytest.raises(RedisConnectionError):  # the gateway's way: say so and go on
            await bus(Redis.from_url("redis://127.0.0.1:1/0")).ensure_groups(wait=False)
    finally:
        await client.aclose()
        server.stop()
