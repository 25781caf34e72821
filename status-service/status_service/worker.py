"""The status service's story: apply every event of every stream to its job, then ack it.

Its consumer group follows each stream, so it misses nothing while it restarts. It applies
the stages' events to job records (``apply``: which events, what each writes) through the one
job store (``shared.jobs``), which moves a job forward only, ignores an event it has already
applied, and announces the change for live watchers; it keeps the study search indexes
(``indexes``) as instances are described.
"""

from __future__ import annotations

from functools import partial

import structlog

from shared import redis_names as names
from shared.bus import Bus, Delivery
from shared.jobs import JobStore
from status_service import apply
from status_service.settings import StatusSettings

log = structlog.get_logger()


async def run(bus: Bus, settings: StatusSettings) -> None:
    """Keep job records in step with every event until cancelled."""
    await bus.ensure_groups()
    store = JobStore(bus.redis)
    streams = [s for s, groups in names.TOPOLOGY.items() if names.GROUP_STATUS in groups]
    log.info("status.started", streams=len(streams))
    await bus.serve_batches(
        streams,
        names.GROUP_STATUS,
        partial(handle_batch, store=store),
        partial(handle, bus=bus, store=store),
    )


async def handle_batch(batch: list[Delivery], store: JobStore) -> None:
    """Apply a batch of events in one round trip (the bus acks them with its next read)."""
    await apply.apply_all(store, [delivery.event for delivery in batch])


async def handle(delivery: Delivery, bus: Bus, store: JobStore) -> None:
    """One event on its own: how a batch that failed is retried."""
    await apply.apply(store, delivery.event)
    await bus.complete(delivery)
