"""Bring back uploads Redis forgot: the uploads folder, not Redis, is the record of accepted bytes.

A complete upload is ``{id}.dcm`` in ``UPLOADS_PATH``, and its job record and stream entry are
written in one transaction, so they are lost together or not at all. Should Redis lose its
last writes (a crash inside its fsync interval, a restart without persistence), a file stays
behind with no job: it is queued again under the same id. ``{id}.part`` files left by a
crash mid-upload are removed once nobody has written to them for a while.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from uuid import UUID

import structlog

from shared import intake
from shared import redis_names as names
from shared.audit import Caller
from shared.bus import REDIS_DOWN, stop_if_cancelled
from shared.files import sha256_of
from shared.jobs import JobStore

log = structlog.get_logger()

RECOVERY = Caller("system:recovery")  # who queues a file Redis forgot, in the audit trail


async def recover(store: JobStore, folder: Path, older_than_s: float) -> int:
    """Queue again every upload older than ``older_than_s`` that has no job; how many."""
    now = time.time()
    requeued = 0
    for path in folder.glob("*.part"):
        if now - _mtime(path, now) > max(older_than_s, 3600):
            path.unlink(missing_ok=True)
            log.info("upload.abandoned_part_removed", file=path.name)
    for path in folder.glob("*.dcm"):
        try:
            upload_id = UUID(path.stem)
        except ValueError:
            continue  # not one of ours
        if now - _mtime(path, now) < older_than_s:
            continue  # just written: its transaction may still be on its way
        if await store.redis.exists(names.status_key(upload_id)):
            continue
        sha256 = await asyncio.to_thread(sha256_of, path)
        event = intake.received(upload_id, path, sha256, path.stat().st_size)
        await intake.queue(store, [event], by=RECOVERY)
        requeued += 1
        log.warning("upload.requeued", upload_id=str(upload_id), reason="no job record")
    return requeued


async def keep_recovering(
    store: JobStore, folder: Path, every_s: float, older_than_s: float
) -> None:
    """Run ``recover`` now and every ``every_s`` seconds, riding out Redis outages."""
    while True:
        stop_if_cancelled()
        try:
            await recover(store, folder, older_than_s)
        except REDIS_DOWN:
            log.warning("redis.unavailable", error="recovery postponed")
        await asyncio.sleep(every_s)


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return default
