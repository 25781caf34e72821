"""Durable file writes: a temporary name, fsync, then an atomic rename; and hashing by chunks."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

CHUNK = 1024 * 1024
# bytes: a file this size is read, checked or rendered in milliseconds (a CT slice is 0.5 MB);
# at worst, a file of nothing but tiny elements (95,000 of them) is described in 2.6 s, well
# within the 12 s an entry may go without a heartbeat at the default CLAIM_IDLE_MS
SMALL_FILE = 1024 * 1024

T = TypeVar("T")


def is_small(size: int) -> bool:
    return size <= SMALL_FILE


async def run_blocking(work: Callable[[], T], *, inline: bool) -> T:
    """Run blocking work on a file: ``inline`` when it is known to be quick (a few milliseconds
    on a small file), else in a thread, so that the event loop goes on answering probes and
    keeping deliveries fresh while it runs. A thread's handoff costs a tenth of the work on a
    small file (two wakeups, a future, the GIL changing hands), and more on a busy machine."""
    if inline:
        return work()
    return await asyncio.to_thread(work)


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write data to path so that readers see the old file or the whole new one, never half.

    ``durable`` also fsyncs it, so it survives a power loss; files derived from ones that are
    durable already (metadata, previews) can skip that, since they can be made again.
    """
    with atomic_file(path, durable=durable) as f:
        f.write(data)


@contextmanager
def atomic_file(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A file to write that appears at path whole when the block ends, or not at all if it
    fails: written under a temporary name, fsynced when ``durable``, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def place(source: Path, dest: Path) -> None:
    """Put a byte-identical copy of source at dest: a hard link where possible, else a copy."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
    os.replace(tmp, dest)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
