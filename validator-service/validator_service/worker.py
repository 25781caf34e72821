"""The validator's story: take each received file, check it, publish validated or rejected."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import structlog

from shared import metrics
from shared import redis_names as names
from shared.bus import Bus, Delivery
from shared.errors import RetryableError
from shared.events import FileReceived, FileRejected, FileValidated
from shared.files import is_small, run_blocking
from validator_service.rules import Limits, check_file
from validator_service.settings import ValidatorSettings

log = structlog.get_logger()


async def run(bus: Bus, settings: ValidatorSettings) -> None:
    """Validate every received file until cancelled."""
    await bus.ensure_groups()
    limits = Limits(
        max_file_size=settings.max_file_size,
        max_pixel_bytes=settings.max_pixel_bytes,
        max_inflated_size=settings.max_inflated_size,
    )
    log.info("validator.started")
    await bus.serve(
        [names.FILE_RECEIVED],
        names.GROUP_VALIDATOR,
        partial(handle, bus=bus, limits=limits),
        settings.worker_concurrency,
    )


async def handle(delivery: Delivery, bus: Bus, limits: Limits) -> None:
    event = delivery.event
    assert isinstance(event, FileReceived)
    # a small file is checked in the event loop; at worst (deflated, it inflates to a million
    # tiny elements, the parser's budget) that takes about a second
    quick = is_small(event.file.size)
    await bus.started(delivery, "validator", quick=quick)
    path = Path(event.file.path)
    if not path.is_file():
        raise RetryableError("the uploaded file is not on disk: is UPLOADS_PATH shared?")
    verdict = await run_blocking(partial(check_file, path, limits), inline=quick)
    outcome: FileValidated | FileRejected
    if verdict.ids is not None and verdict.accepted:
        outcome = FileValidated(
            upload_id=event.upload_id,
            file=event.file,
            ids=verdict.ids,
            has_pixels=verdict.has_pixels,
            warnings=verdict.warnings,
        )
    else:
        outcome = FileRejected(upload_id=event.upload_id, file=event.file, reasons=verdict.reasons)
    await bus.complete(delivery, outcome)
    if isinstance(outcome, FileRejected):
        path.unlink(missing_ok=True)  # the reasons are kept in the job; the bytes are not
        metrics.OUTCOMES.labels("validator", "rejected").inc()
        log.info("file.rejected", reasons=[r.code for r in outcome.reasons])
    else:
        metrics.OUTCOMES.labels("validator", "validated").inc()
        log.info("file.validated", warnings=[w.code for w in outcome.warnings])
