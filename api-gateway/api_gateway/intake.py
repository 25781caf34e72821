"""Taking files into the pipeline: each complete file becomes ``UPLOADS_PATH/{id}.dcm`` and a job.

Every way in (a multipart upload, a presigned S3 upload, a WADO-RS retrieval, a file Redis
forgot) ends here, so a job is always created the same way: its record and its queue entry
in one transaction, all the files of a request or none.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID, uuid4

from shared.bus import REDIS_DOWN, add_event
from shared.errors import ServiceUnavailable
from shared.events import AnyEvent, FileReceived, FileRef
from shared.files import sha256_of
from shared.jobs import JobStore


async def queue(store: JobStore, events: Sequence[AnyEvent]) -> None:
    """Create each job and queue its event in one transaction: all are accepted, or none."""
    try:
        async with store.redis.pipeline(transaction=True) as pipe:
            for event in events:
                await store.queue_create(pipe, event)
                add_event(pipe, event)
            await pipe.execute()
    except REDIS_DOWN:
        raise ServiceUnavailable(
            "the queue (Redis) is unreachable; nothing was accepted, send the file again"
        ) from None


def received(upload_id: UUID, path: Path, sha256: str, size: int) -> FileReceived:
    return FileReceived(upload_id=upload_id, file=FileRef(path=str(path), sha256=sha256, size=size))


def adopt(path: Path, uploads: Path) -> FileReceived:
    """Move a complete file (on the uploads volume) in as a new upload; blocking, for a thread."""
    upload_id = uuid4()
    final = uploads / f"{upload_id}.dcm"
    sha256, size = sha256_of(path), path.stat().st_size
    os.replace(path, final)
    return received(upload_id, final, sha256, size)
