"""The Redis Streams bus: publish events, consume them in a group, ack, reclaim, dead-letter.

Work is never lost to a crash: an entry is acked only together with the events its handler
publishes (one MULTI/EXEC), or, for a batch handler that publishes nothing, in the round trip
of the read after it was handled; an entry left pending by a dead consumer is taken over after
``claim_idle_ms``, one whose handler failed comes back after an exponential back-off with
jitter, a consumer reads no more entries than it can start and keeps those in hand fresh (a
heartbeat XCLAIM), and an entry delivered more than ``max_deliveries`` times goes to the
dead-letter stream as a ``JobFailed`` event with the last error seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import metrics
from shared import redis_names as names
from shared.errors import PermanentError, described, safe_error
from shared.events import AnyEvent, Event, JobFailed, Stage, StageStarted, parse_event

log = structlog.get_logger()

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
JITTER = (0.8, 1.2)  # a live consumer's heartbeat comes every third of CLAIM_IDLE_MS: < 0.8


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to one consumer of a group."""

    stream: str
    group: str
    entry_id: str
    event: AnyEvent
    count: int  # how many times it has been delivered, this time included


Handler = Callable[[Delivery], Awaitable[None]]
BatchHandler = Callable[[list[Delivery]], Awaitable[None]]
Room = Callable[[], Awaitable[int]]  # waits until a consumer can take entries; how many


def stop_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop, for a loop to call each round.

    Python 3.11's ``asyncio.wait_for``, which redis-py wraps around every socket write, loses
    a cancel that lands just as the write completes (CPython gh-86296, fixed in 3.12): the
    command returns and the loop would go on forever. The task still counts the request, so
    a loop that checks here stops anyway.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Bus:
    """Streams, groups and acks for one consumer (one process) of the pipeline."""

    def __init__(
        self,
        redis: Redis,
        *,
        consumer: str,
        max_deliveries: int = 5,
        claim_idle_ms: int = 15_000,
        backoff_max_ms: int = 300_000,
        block_ms: int = 1_000,
        batch: int = 32,
        trim_every_s: float = 30.0,
    ) -> None:
        self.redis = redis
        self.consumer = consumer
        self.max_deliveries = max_deliveries
        self.claim_idle_ms = claim_idle_ms
        self.backoff_max_ms = max(backoff_max_ms, claim_idle_ms)
        self.block_ms = block_ms
        self.batch = batch
        self.trim_every_s = trim_every_s
        self._in_hand: dict[tuple[str, str], set[str]] = {}  # (stream, group) -> entry ids
        self._untold: dict[tuple[str, str], StageStarted] = {}  # (stream, entry id) -> start

    # -- producing ---------------------------------------------------------------------------

    async def ensure_groups(self, wait: bool = True) -> None:
        """Create every stream and consumer group of the topology (idempotent). While Redis
        cannot be reached, wait for it, as the read loop does (a worker started, or told the
        groups are gone, during an outage goes on once Redis is back); ``wait=False``: raise."""
        failures = 0
        while True:
            try:
                for stream, groups in names.TOPOLOGY.items():
                    for group in groups:
                        await self._create_group(stream, group)
                return
            except REDIS_DOWN as exc:
                if not wait:
                    raise
                failures += 1
                await _back_off(failures, exc)

    async def _create_group(self, stream: str, group: str) -> None:
        try:
            await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def publish(self, *events: Event) -> None:
        """Append events to their streams, all or none (one XADD needs no transaction)."""
        async with self.redis.pipeline(transaction=len(events) > 1) as pipe:
            for event in events:
                add_event(pipe, event)
            await pipe.execute()

    async def started(self, delivery: Delivery, stage: Stage, *, quick: bool = False) -> None:
        """Say that this stage took the job up, so its status shows where the job is.

        Work that may take a while says so at once. ``quick`` work (milliseconds: its start
        could not be seen anyway) has its start told with its outcome, in ``complete``'s
        transaction, or with its failure: a round trip saved, and the event keeps the time it
        was made, so the stage's timings are exact either way.
        """
        event = StageStarted(
            upload_id=delivery.event.upload_id, stage=stage, delivery=delivery.count
        )
        if quick:
            self._untold[_key(delivery)] = event
        else:
            await self.publish(event)

    async def complete(self, delivery: Delivery, *events: Event) -> None:
        """Publish a handler's outcome and ack its entry in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for event in self._with_start(delivery, events):
                add_event(pipe, event)
            _queue_ack(pipe, delivery)
            await pipe.execute()
        self._untold.pop(_key(delivery), None)
        metrics.DELIVERIES.labels(delivery.group, "done").inc()

    def _with_start(self, delivery: Delivery, events: Sequence[Event]) -> list[Event]:
        """The events, after the start of the delivery's work if that is not told yet."""
        start = self._untold.get(_key(delivery))
        return [start, *events] if start is not None else list(events)

    # -- consuming ---------------------------------------------------------------------------

    async def serve(
        self, streams: Sequence[str], group: str, handle: Handler, concurrency: int = 1
    ) -> None:
        """Run ``handle`` on every delivery until cancelled, ``concurrency`` at a time.

        A handler acks through ``complete``. If it raises, the entry stays pending, the error
        is kept, and the entry comes back after ``claim_idle_ms``; ``PermanentError`` fails
        the job at once. Only as many entries are read (or reclaimed) as there are free
        slots: an entry read is started at once and kept fresh, never left waiting idle for
        another consumer to take over while it is still in hand.
        """
        running: set[asyncio.Task[None]] = set()

        async def room() -> int:
            while len(running) >= concurrency:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            return concurrency - len(running)

        heartbeat = asyncio.create_task(self._keep_fresh())
        try:
            async for batch in self.batches(streams, group, room=room):
                for delivery in batch:
                    task = asyncio.create_task(self._run(delivery, handle))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            # Shutting down: let in-flight work finish briefly; what does not stays pending
            # and is taken over by the next consumer.
            if running:
                await asyncio.wait(running, timeout=10)
                for task in running:
                    task.cancel()
            heartbeat.cancel()

    async def serve_batches(
        self, streams: Sequence[str], group: str, handle_batch: BatchHandler, handle: Handler
    ) -> None:
        """Run ``handle_batch`` on each batch the stream gives, for idempotent handlers whose
        cost is round trips. A batch handled is acked in the round trip of the next read (a
        crash before it means the batch comes back, and is handled again to the same end). A
        batch that fails is handled again one delivery at a time with ``handle``, which acks
        with ``complete``, so one bad entry is retried and dead-lettered alone, never its
        neighbours."""
        handled: list[Delivery] = []
        heartbeat = asyncio.create_task(self._keep_fresh())
        try:
            async for batch in self.batches(streams, group, handled):
                self._hold(*batch)  # kept fresh until handled, or until its own retry ends
                try:
                    await handle_batch(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("batch.failed", size=len(batch), **described(exc))
                    for delivery in batch:
                        await self._run(delivery, handle)
                else:
                    handled.extend(batch)
                    metrics.DELIVERIES.labels(group, "done").inc(len(batch))
                finally:
                    self._let_go(*batch)
        finally:
            heartbeat.cancel()

    async def deliveries(self, streams: Sequence[str], group: str) -> AsyncIterator[Delivery]:
        """Yield new entries, and entries other consumers left pending too long."""
        async for batch in self.batches(streams, group):
            for delivery in batch:
                yield delivery

    async def batches(
        self,
        streams: Sequence[str],
        group: str,
        handled: list[Delivery] | None = None,
        room: Room | None = None,
    ) -> AsyncIterator[list[Delivery]]:
        """Yield batches of new entries, and of entries other consumers left pending too long.

        Deliveries the caller puts in ``handled`` are acked in the round trip of the next read.
        ``room`` is awaited before each read or claim: it waits until the caller can take one
        entry at least and says how many; a batch is never larger (nor than ``batch``).
        """
        handled = [] if handled is None else handled
        room = room or self._whole_batch
        next_claim = 0.0
        next_trim = time.monotonic() + self.trim_every_s
        failures = 0
        while True:
            stop_if_cancelled()
            try:
                now = time.monotonic()
                if now >= next_claim:
                    next_claim = now + self.claim_idle_ms / 2000
                    for stream in streams:
                        async for batch in self._reclaimed(stream, group, room):
                            yield batch
                if now >= next_trim:
                    next_trim = now + self.trim_every_s
                    for stream in streams:
                        await self.trim(stream)
                count = min(await room(), self.batch)
                async with self.redis.pipeline(transaction=False) as pipe:
                    for done in handled:
                        _queue_ack(pipe, done)
                    pipe.xreadgroup(
                        group,
                        self.consumer,
                        dict.fromkeys(streams, ">"),
                        count=count,
                        block=self.block_ms,
                    )
                    *_, reply = await pipe.execute()
                handled.clear()
                failures = 0
            except REDIS_DOWN as exc:
                failures += 1
                await _back_off(failures, exc)
                continue
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("bus.groups_missing")  # Redis lost its data: recreate and go on
                await self.ensure_groups()
                continue
            batch = []
            for stream, entries in cast(list[Any], reply or []):  # RESP2: [stream, entries]
                for entry_id, fields in entries:
                    delivery = await self._delivery(stream, group, entry_id, fields, 1)
                    if delivery is not None:
                        batch.append(delivery)
            if batch:
                yield batch

    async def _whole_batch(self) -> int:
        return self.batch

    async def _reclaimed(
        self, stream: str, group: str, room: Room
    ) -> AsyncIterator[list[Delivery]]:
        """Entries whose consumer died or failed, once idle past their back-off, in batches
        no larger than the caller has room for. Never one this consumer is still handling: its
        heartbeat came late (a process starved of CPU), and another delivery beside the one
        running would only count towards the dead letter."""
        pending = cast(
            list[dict[str, Any]],
            await self.redis.xpending_range(
                stream, group, "-", "+", 1000, idle=int(self.claim_idle_ms * JITTER[0])
            ),
        )
        in_hand = self._in_hand.get((stream, group), set())
        batch: list[Delivery] = []
        limit = 0
        for entry in pending:
            if entry["message_id"] in in_hand:
                continue
            count, idle = int(entry["times_delivered"]), int(entry["time_since_delivered"])
            wait = self.backoff_ms(count)
            if idle < wait:
                continue  # still backing off
            if len(batch) >= limit:
                if batch:
                    yield batch
                    batch = []
                limit = min(await room(), self.batch)
            entry_id = entry["message_id"]
            # XCLAIM with that minimum idle time: if another consumer took it first, nothing
            claimed = await self.redis.xclaim(stream, group, self.consumer, wait, [entry_id])
            for claimed_id, fields in cast(list[tuple[Any, Any]], claimed):
                delivery = await self._delivery(stream, group, claimed_id, fields, count + 1)
                if delivery is not None:
                    log.info("delivery.reclaimed", stream=stream, entry_id=entry_id, count=count)
                    batch.append(delivery)
        if batch:
            yield batch

    def backoff_ms(self, deliveries: int) -> int:
        """How long an entry delivered ``deliveries`` times waits before the next delivery:
        CLAIM_IDLE_MS doubled for each delivery after the first, at most BACKOFF_MAX_MS, with
        jitter so that entries that failed together do not all come back together."""
        base = min(self.backoff_max_ms, self.claim_idle_ms * 2 ** max(deliveries - 1, 0))
        return int(base * random.uniform(*JITTER))

    async def _delivery(
        self, stream: str, group: str, entry_id: str, fields: dict[str, str] | None, count: int
    ) -> Delivery | None:
        """Turn an entry into a Delivery, or dead-letter it when it cannot or must not run."""
        raw = (fields or {}).get("data", "")  # None: the entry was trimmed before a claim
        try:
            event = parse_event(raw)
        except ValidationError:
            # Not ours or not readable: no job to fail, so keep it aside for a person.
            log.error("delivery.unreadable", stream=stream, entry_id=entry_id)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(
                    names.DEAD_LETTER_RAW,
                    {"stream": stream, "entry_id": entry_id, "data": raw},
                )
                pipe.xack(stream, group, entry_id)
                await pipe.execute()
            return None
        delivery = Delivery(stream, group, entry_id, event, count)
        if count > self.max_deliveries:
            error = cast(
                str | None, await self.redis.hget(names.attempts_key(stream, group), entry_id)
            )
            reason = error or "the worker stopped while handling it"
            await self.dead_letter(delivery, f"gave up after {count - 1} deliveries: {reason}")
            return None
        return delivery

    async def dead_letter(self, delivery: Delivery, error: str) -> None:
        """End the job as failed: a JobFailed event on the dead-letter stream, entry acked."""
        failed = JobFailed(
            upload_id=delivery.event.upload_id,
            stage=delivery.group,
            error=error,
            deliveries=delivery.count,
            stream=delivery.stream,
            entry_id=delivery.entry_id,
            # without the search keys (patient attributes): dead letters outlive a deletion,
            # and the study index has had them since the event was first applied
            event=delivery.event.model_dump_json(exclude={"study"}),
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            for event in self._with_start(delivery, [failed]):
                add_event(pipe, event)
            _queue_ack(pipe, delivery, forget_errors=True)
            await pipe.execute()
        self._untold.pop(_key(delivery), None)
        metrics.DELIVERIES.labels(delivery.group, "dead-lettered").inc()
        log.error("job.dead_lettered", stage=delivery.group, error=error)

    async def _run(self, delivery: Delivery, handle: Handler) -> None:
        with structlog.contextvars.bound_contextvars(upload_id=str(delivery.event.upload_id)):
            self._hold(delivery)
            started = time.perf_counter()
            where = {"stream": delivery.stream, "group": delivery.group, "consumer": self.consumer}
            log.debug("delivery.started", **where, entry_id=delivery.entry_id)
            try:
                await handle(delivery)
            except PermanentError as exc:
                await self._give_up(delivery, safe_error(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = safe_error(exc)
                log.warning(
                    "delivery.failed", stage=delivery.group, count=delivery.count, **described(exc)
                )
                metrics.DELIVERIES.labels(delivery.group, "failed").inc()
                with contextlib.suppress(*REDIS_DOWN):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for event in self._with_start(delivery, []):
                            add_event(pipe, event)  # the status shows the failed attempt
                        pipe.hset(
                            names.attempts_key(delivery.stream, delivery.group),
                            delivery.entry_id,
                            error,
                        )
                        await pipe.execute()
            finally:
                log.debug("delivery.done", **where, entry_id=delivery.entry_id)
                self._untold.pop(_key(delivery), None)
                self._let_go(delivery)
                metrics.HANDLE_SECONDS.labels(delivery.group).observe(time.perf_counter() - started)

    async def _give_up(self, delivery: Delivery, error: str) -> None:
        try:
            await self.dead_letter(delivery, error)
        except REDIS_DOWN:
            log.warning("redis.unavailable", error="dead-letter deferred to the next delivery")

    def _hold(self, *deliveries: Delivery) -> None:
        """Count deliveries in hand: the heartbeat keeps them fresh until they are let go."""
        for delivery in deliveries:
            self._in_hand.setdefault((delivery.stream, delivery.group), set()).add(
                delivery.entry_id
            )

    def _let_go(self, *deliveries: Delivery) -> None:
        for delivery in deliveries:
            self._in_hand.get((delivery.stream, delivery.group), set()).discard(delivery.entry_id)

    async def _keep_fresh(self) -> None:
        """Every third of ``claim_idle_ms``, reset the idle time of the entries being handled,
        so nobody takes them over while we work: one loop for all of them, one XCLAIM a stream."""
        while True:
            await asyncio.sleep(self.claim_idle_ms / 3000)
            stop_if_cancelled()
            for (stream, group), entry_ids in list(self._in_hand.items()):
                if entry_ids:
                    with contextlib.suppress(*REDIS_DOWN):
                        await self.redis.xclaim(
                            stream, group, self.consumer, 0, list(entry_ids), justid=True
                        )

    # -- housekeeping ------------------------------------------------------------------------

    async def trim(self, stream: str) -> int:
        """Drop entries every group of the topology has delivered and acked; never others."""
        try:
            groups = {g["name"]: g for g in await self.redis.xinfo_groups(stream)}
        except ResponseError:
            return 0
        if set(names.TOPOLOGY.get(stream, ())) - set(groups):
            return 0  # a group that has not been created would lose entries
        floor: str | None = None
        for name, info in groups.items():
            oldest = await self._oldest_needed(stream, name, info)
            if floor is None or _id_key(oldest) < _id_key(floor):
                floor = oldest
        if floor is None or floor == "0-0":
            return 0
        return int(await self.redis.xtrim(stream, minid=floor, approximate=True))

    async def _oldest_needed(self, stream: str, group: str, info: dict[str, Any]) -> str:
        """The oldest entry a group may still need: its oldest pending one, else the last one
        it was given (XINFO's ``info``; everything after that is not delivered yet).

        The group's consumers go on acking between the two reads: pending entries counted by
        XINFO may all be acked when XPENDING looks. Then the last entry XINFO saw delivered is
        still a safe floor: every entry up to it has been acked since, and none after it is
        dropped.
        """
        if int(info["pending"]):
            oldest = (await self.redis.xpending(stream, group))["min"]
            if oldest is not None:
                return oldest
        return info["last-delivered-id"]


async def _back_off(failures: int, exc: BaseException) -> None:
    """Wait longer after each failure in a row to reach Redis: 0.4 s, 0.8 s, ... at most 5 s."""
    delay = min(0.2 * 2**failures, 5.0)
    log.warning("redis.unavailable", error=safe_error(exc), retry_in_s=delay)
    await asyncio.sleep(delay)


def add_event(pipe: Redis, event: Event) -> None:
    """Queue an XADD of one event on its stream in a pipeline."""
    pipe.xadd(event.published_on, {"data": event.model_dump_json()})


def _queue_ack(pipe: Redis, delivery: Delivery, forget_errors: bool = False) -> None:
    """Queue the ack of a delivery in a pipeline, and forget the errors of earlier attempts."""
    pipe.xack(delivery.stream, delivery.group, delivery.entry_id)
    if forget_errors or delivery.count > 1:
        pipe.hdel(names.attempts_key(delivery.stream, delivery.group), delivery.entry_id)


def _key(delivery: Delivery) -> tuple[str, str]:
    return delivery.stream, delivery.entry_id


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
