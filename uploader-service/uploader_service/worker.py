"""The uploader's story: copy each described instance to every target, then mark it archived.

A ``copy.requested`` command (an archived upload to be pushed to chosen targets, as a job of
its own) is copied the same way, to the targets it names.

The job is ``archived`` only when every configured target holds the file. A target that fails
for a passing reason leaves the entry pending, so it is retried after ``CLAIM_IDLE_MS`` and
dead-lettered after ``MAX_DELIVERIES``; one that can never succeed fails the job at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from functools import partial
from typing import Any

import structlog

from shared import metrics
from shared import redis_names as names
from shared.bus import Bus, Delivery
from shared.errors import PermanentError, RetryableError, safe_error
from shared.events import (
    CopiesDeleted,
    CopiesDeletionRequested,
    CopyRequested,
    FileDescribed,
    FileUploaded,
    TargetResult,
    UploadAttempted,
)
from shared.files import is_small
from uploader_service.settings import UploaderSettings
from uploader_service.targets import Item, Target

log = structlog.get_logger()


async def run(bus: Bus, settings: UploaderSettings, targets: list[Target]) -> None:
    """Copy every described instance to the targets until cancelled."""
    await bus.ensure_groups()
    log.info("uploader.started", targets=[t.name for t in targets])
    await bus.serve(
        [names.FILE_DESCRIBED, names.COPY_REQUESTED, names.COPIES_DELETION_REQUESTED],
        names.GROUP_UPLOADER,
        partial(handle, bus=bus, targets=targets),
        settings.worker_concurrency,
    )


async def handle(delivery: Delivery, bus: Bus, targets: list[Target]) -> None:
    event = delivery.event
    if isinstance(event, CopiesDeletionRequested):
        return await delete_copies(delivery, event, bus, targets)
    assert isinstance(event, FileDescribed | CopyRequested)
    # quick: a small file for the archive alone (the local target checks it on this disk)
    quick = is_small(event.file.size) and all(t.name == "local" for t in targets)
    await bus.started(delivery, "uploader", quick=quick)
    only = event.targets if isinstance(event, CopyRequested) else event.only_targets
    targets = chosen(targets, only)
    done_key = names.targets_key(event.upload_id)
    done = {  # with one target there is nothing to remember: it has the file or the job fails
        name: TargetResult.model_validate_json(result)
        for name, result in (await bus.redis.hgetall(done_key) if len(targets) > 1 else {}).items()
    }
    item = Item.of(event)
    todo = [t for t in targets if t.name not in done]  # never twice to a target that has it
    outcomes = await asyncio.gather(*(_attempt(t, t.put(item)) for t in todo))
    attempt = {result.target: result for result, _ in outcomes}
    permanent = any(is_permanent for _, is_permanent in outcomes)
    results = [done.get(t.name) or attempt[t.name] for t in targets]
    failed = [r for r in results if not r.ok]
    if not failed:
        await bus.complete(delivery, FileUploaded(upload_id=event.upload_id, targets=results))
        if done:
            await bus.redis.delete(done_key)
        metrics.OUTCOMES.labels("uploader", "archived").inc()
        log.info("file.archived", targets=[r.target for r in results])
        return
    succeeded = [(name, r.model_dump_json()) for name, r in attempt.items() if r.ok]
    if succeeded:  # remembered, so the next try skips them
        await bus.redis.hset(done_key, items=[x for pair in succeeded for x in pair])
    await bus.publish(
        UploadAttempted(upload_id=event.upload_id, targets=results, delivery=delivery.count)
    )
    errors = "; ".join(r.error or r.target for r in failed)
    raise PermanentError(errors) if permanent else RetryableError(errors)


async def delete_copies(
    delivery: Delivery, event: CopiesDeletionRequested, bus: Bus, targets: list[Target]
) -> None:
    """Remove a finished job's copies from the targets that hold them; all, or try again."""
    chosen_targets = chosen(targets, event.targets)
    outcomes = await asyncio.gather(*(_attempt(t, t.delete(event.ids)) for t in chosen_targets))
    results = [result for result, _ in outcomes]
    failed = [r for r in results if not r.ok]
    if not failed:
        await bus.complete(delivery, CopiesDeleted(upload_id=event.upload_id, targets=results))
        log.info("copies.deleted", targets=[r.target for r in results])
        return
    errors = "; ".join(r.error or r.target for r in failed)
    permanent = any(is_permanent for _, is_permanent in outcomes)
    raise PermanentError(errors) if permanent else RetryableError(errors)


def chosen(targets: list[Target], only: list[str] | None) -> list[Target]:
    """The targets a job goes to: all configured ones, or the ones a push job names."""
    if only is None:
        return targets
    missing = sorted(set(only) - {t.name for t in targets})
    if missing:
        raise PermanentError(
            f"target(s) {missing} are not configured on the uploader (UPLOAD_TARGETS)"
        )
    return [t for t in targets if t.name in only]


async def _attempt(
    target: Target, call: Coroutine[Any, Any, TargetResult]
) -> tuple[TargetResult, bool]:
    """One target's outcome, its failure included so the others are not held up by it, and
    whether that failure is permanent. Every error starts with the target's name."""
    try:
        return await call, False
    except Exception as exc:
        error = safe_error(exc)
        if not error.startswith(f"{target.name}:"):
            error = f"{target.name}: {error}"
        failed = TargetResult(target=target.name, ok=False, error=error)
        return failed, isinstance(exc, PermanentError)
