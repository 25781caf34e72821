"""The descriptor's story: archive each validated file with its metadata and preview.

For ``ARCHIVE_PATH/{upload_id}/`` it writes ``original.dcm`` (byte-identical to the upload),
``metadata.json`` (the DICOM JSON model plus a summary) and ``preview.png`` (frame 1 through
the display pipeline), each atomically, so a crash at any point leaves either nothing or whole
files, and a second run gives the same result. An instance already archived with the same
SOP Instance UID and the same bytes is not stored again: the job points at the first copy.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path
from typing import cast

import pydicom
import structlog
from pydicom.uid import UID
from redis.asyncio import Redis

from descriptor_service.metadata import describe, study_keys
from descriptor_service.settings import DescriptorSettings
from shared import metrics
from shared import redis_names as names
from shared.bus import Bus, Delivery
from shared.errors import PermanentError
from shared.events import FileDescribed, FileValidated, StudyKeys
from shared.files import is_small, place, run_blocking, write_atomic
from shared.render import RenderError, has_pixels, render_png

log = structlog.get_logger()

ORIGINAL, METADATA, PREVIEW = "original.dcm", "metadata.json", "preview.png"


async def run(bus: Bus, settings: DescriptorSettings) -> None:
    """Describe and archive every validated file until cancelled."""
    await bus.ensure_groups()
    log.info("descriptor.started")
    await bus.serve(
        [names.FILE_VALIDATED],
        names.GROUP_DESCRIPTOR,
        partial(handle, bus=bus, settings=settings),
        settings.worker_concurrency,
    )


async def handle(delivery: Delivery, bus: Bus, settings: DescriptorSettings) -> None:
    event = delivery.event
    assert isinstance(event, FileValidated)
    # quick: a small file whose pixels need no decompression, described in the event loop
    quick = is_small(event.file.size) and _native(event.ids.transfer_syntax_uid)
    await bus.started(delivery, "descriptor", quick=quick)
    holder = cast(str | None, await bus.redis.get(names.instance_key(event.ids.sop_uid)))
    described = _existing_copy(holder, event, settings.archive_path)
    if described is None:
        described = await run_blocking(partial(archive, event, settings), inline=quick)
        described = await _claim_instance(bus.redis, event, described, settings.archive_path)
    await bus.complete(delivery, described)
    Path(event.file.path).unlink(missing_ok=True)
    metrics.OUTCOMES.labels(
        "descriptor", "duplicate" if described.duplicate_of else "described"
    ).inc()
    log.info(
        "file.described",
        preview=described.preview_file is not None,
        duplicate=described.duplicate_of is not None,
    )


def archive(event: FileValidated, settings: DescriptorSettings) -> FileDescribed:
    """Write original, metadata and preview for one upload; safe to run again."""
    folder = settings.archive_path / str(event.upload_id)
    folder.mkdir(parents=True, exist_ok=True)
    original = folder / ORIGINAL
    if not (original.is_file() and original.stat().st_size == event.file.size):
        source = Path(event.file.path)
        if not source.is_file():
            raise PermanentError("the uploaded file is gone and the archive does not hold it")
        place(source, original)
    ds = pydicom.dcmread(original)
    # metadata and preview are made from original.dcm (durable already): no fsync needed
    metadata = json.dumps(describe(ds), separators=(",", ":")).encode()
    write_atomic(folder / METADATA, metadata, durable=False)
    study = study_keys(ds)
    if not has_pixels(ds):
        note = "no preview: the instance has no pixel data"
        return _described(event, folder, None, note, study)
    try:
        png = render_png(ds, compress_level=settings.png_compress_level)
    except RenderError as exc:
        return _described(event, folder, None, f"no preview: {exc}", study)
    write_atomic(folder / PREVIEW, png, durable=False)
    return _described(event, folder, folder / PREVIEW, None, study)


def _native(transfer_syntax: str | None) -> bool:
    """Whether the pixel data of this transfer syntax is stored as it is (not compressed, not
    deflated): then reading and rendering take time in proportion to the file's size."""
    uid = UID(transfer_syntax or "")
    return uid.is_transfer_syntax and not (uid.is_compressed or uid.is_deflated)


def _described(
    event: FileValidated,
    folder: Path,
    preview: Path | None,
    note: str | None,
    study: StudyKeys | None = None,
) -> FileDescribed:
    return FileDescribed(
        upload_id=event.upload_id,
        file=event.file,
        ids=event.ids,
        archive_path=str(folder),
        metadata_file=str(folder / METADATA),
        preview_file=str(preview) if preview else None,
        preview_note=note,
        study=study,  # for the search indexes; a duplicate has none (it is not indexed)
    )


def _holder(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    holder_id, _, sha256 = value.partition(" ")
    return holder_id, sha256


def _existing_copy(value: str | None, event: FileValidated, root: Path) -> FileDescribed | None:
    """The first archived copy of this very instance (same SOP Instance UID, same bytes), from
    the value of its instance key."""
    holder = _holder(value)
    if holder is None or holder[0] == str(event.upload_id) or holder[1] != event.file.sha256:
        return None
    folder = root / holder[0]
    if not (folder / ORIGINAL).is_file():
        return None  # the first copy was removed: archive this one
    preview = folder / PREVIEW
    first = _described(event, folder, preview if preview.is_file() else None, None)
    return first.model_copy(update={"duplicate_of": holder[0]})


async def _claim_instance(
    redis: Redis, event: FileValidated, described: FileDescribed, root: Path
) -> FileDescribed:
    """Record this upload as the holder of its SOP Instance UID, unless a twin won the race."""
    key, mine = names.instance_key(event.ids.sop_uid), f"{event.upload_id} {event.file.sha256}"
    if await redis.set(key, mine, nx=True):
        return described
    twin = _existing_copy(cast(str | None, await redis.get(key)), event, root)
    if twin is None:
        # Ours, from an earlier delivery; or the same UID with other bytes (a new version of
        # the instance): both copies are kept and the newest holds the UID.
        await redis.set(key, mine)
        return described
    shutil.rmtree(root / str(event.upload_id), ignore_errors=True)
    return twin
