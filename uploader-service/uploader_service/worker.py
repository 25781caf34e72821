"""The uploader's story: copy each described instance to every target, then mark it archived.

The job is ``archived`` only when every configured target holds the file. A target that fails
for a passing reason leaves the entry pending, so it is retried after ``CLAIM_IDLE_MS`` and
dead-lettered after ``MAX_DELIVERIES``; one that can never succeed fails the job at once.
"""

from __future__ import annotations

import asyncio
from functools import partial

import structlog

from shared import metrics
from shared import redis_names as names
from shared.bus import Bus, Delivery
from shared.errors import PermanentError, RetryableError, safe_error
from shared.events import FileArchived, FileDescribed, StageStarted, TargetResult
from uploader_service.settings import UploaderSettings
from uploader_service.targets import Item, Target, build_targets

log = structlog.get_logger()


async def run(bus: Bus, settings: UploaderSettings) -> None:
    """Copy every described instance to the targets until cancelled."""
    await bus.ensure_groups()
    targets = build_targets(settings.upload_targets)
    log.info("uploader.started", targets=[t.name for t in targets])
    await bus.serve(
        [names.FILE_DESCRIBED],
        names.GROUP_UPLOADER,
        partial(handle, bus=bus, targets=targets),
        settings.worker_concurrency,
    )


async def handle(delivery: Delivery, bus: Bus, targets: list[Target]) -> None:
    event = delivery.event
    assert isinstance(event, FileDescribed)
    await bus.publish(
        StageStarted(upload_id=event.upload_id, stage="uploading", delivery=delivery.count)
    )
    item = Item.of(event)
    results = await asyncio.gather(*(_put(target, item) for target in targets))
    failed = [r for r in results if not r.ok]
    if any(r.error and r.error.startswith("permanent: ") for r in failed):
        raise PermanentError("; ".join(f"{r.target}: {r.error}" for r in failed))
    if failed:
        raise RetryableError("; ".join(f"{r.target}: {r.error}" for r in failed))
    await bus.complete(delivery, FileArchived(upload_id=event.upload_id, targets=results))
    metrics.OUTCOMES.labels("uploader", "archived").inc()
    log.info("file.archived", targets=[r.target for r in results])


async def _put(target: Target, item: Item) -> TargetResult:
    try:
        return await target.put(item)
    except PermanentError as exc:
        return TargetResult(target=target.name, ok=False, error=f"permanent: {safe_error(exc)}")
    except Exception as exc:
        return TargetResult(target=target.name, ok=False, error=safe_error(exc))
