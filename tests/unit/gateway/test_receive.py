"""receive.kept: a request's files made durable and final, all at once in threads, and never
left half done behind the caller's back."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from api_gateway import receive
from api_gateway.receive import ReceivedFile, Sink, kept


def _written(folder: Path, count: int) -> list[ReceivedFile]:
    files = []
    for i in range(count):
        sink = Sink(folder, 1 << 20, f"f{i}.dcm")
        sink.write(b"DICM" * 100)
        files.append(sink.close())
    return files


async def test_kept_files_are_final_and_whole(tmp_path: Path) -> None:
    files = _written(tmp_path, 5)
    assert all(f.path.suffix == ".part" for f in files)
    await kept(files, fsync=True)
    assert sorted(tmp_path.iterdir()) == sorted(f.path for f in files)
    assert all(f.path.name == f"{f.upload_id}.dcm" for f in files)
    assert all(f.path.read_bytes() == b"DICM" * 100 for f in files)


async def test_a_cancelled_request_waits_for_its_flushes_before_it_gives_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client goes away while its files are being flushed: by the time the cancellation
    reaches the route (which then removes the files), every thread is done, so what the route
    removes is every file there is."""

    fsync, flushed = os.fsync, []

    def slow_fsync(fd: int) -> None:
        time.sleep(0.3)
        fsync(fd)
        flushed.append(fd)

    monkeypatch.setattr(receive.os, "fsync", slow_fsync)
    files = _written(tmp_path, 4)
    task = asyncio.create_task(kept(files, fsync=True))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(flushed) == 4, "the cancellation came through while threads still ran"
    assert all(f.path.name == f"{f.upload_id}.dcm" for f in files)
    for f in files:  # what the route's undo does
        f.path.unlink(missing_ok=True)
    await asyncio.sleep(0.5)  # a thread still running would rename a file now
    assert list(tmp_path.iterdir()) == []
