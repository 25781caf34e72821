"""dimse-service's handlers against a real Redis: C-STORE keeps a file only with its job and
answers the PS3.4 status for a full disk or an unreachable queue, also when the queue's answer
comes late (a proxy holds it back); C-FIND's identifier reading."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest
from dimse_service import c_find, c_store
from dimse_service.incoming import IncomingFile
from dimse_service.server import Bridge
from pydicom import dcmread
from pydicom.dataset import Dataset
from redis.asyncio import Redis

from shared import redis_names as names
from shared.errors import BadRequest
from shared.jobs import JobStore
from testbed.processes import free_port
from testbed.series import ct_slice
from tests.redis_proxy import HoldingProxy


class _FullDisk(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def _store_sync(bridge: Bridge, data: bytes, disk_full: bool) -> int:
    """As pynetdicom does it: the data set written to the file it was given as it arrives
    (here in three fragments), the handler called, then that file closed and its name removed."""
    incoming = IncomingFile(bridge.uploads)
    if disk_full:
        incoming._out.close()
        incoming._out = _FullDisk()
    for start in range(0, len(data), len(data) // 3 + 1):
        incoming.write(data[start : start + len(data) // 3 + 1])
        incoming.file.flush()
    requestor = SimpleNamespace(ae_title="MODALITY1", address="10.1.2.3", port=40404)
    event = SimpleNamespace(
        request=SimpleNamespace(_dataset_file=incoming), assoc=SimpleNamespace(requestor=requestor)
    )
    try:
        return c_store.handle_store(event, bridge)  # type: ignore[arg-type]
    finally:
        incoming.close()
        Path(incoming.name).unlink(missing_ok=True)


async def _store(bridge: Bridge, data: bytes, disk_full: bool = False) -> int:
    return await asyncio.to_thread(_store_sync, bridge, data, disk_full)


async def test_c_store_keeps_the_file_and_queues_its_job_before_success(
    redis: Redis, tmp_path: Path
) -> None:
    bridge = Bridge(asyncio.get_running_loop(), redis, tmp_path, 10)
    data = ct_slice(0, rows=16, columns=16)
    assert await _store(bridge, data) == 0x0000
    [path] = list(tmp_path.iterdir())
    assert path.read_bytes() == data
    status = await JobStore(redis).read(UUID(path.stem))
    assert status is not None
    assert status.status == "accepted"
    sha256 = await redis.hget(names.status_key(UUID(path.stem)), "sha256")
    assert sha256 in (hashlib.sha256(data).hexdigest(), hashlib.sha256(data).hexdigest().encode())
    details = status.details
    assert details["source"] == "dimse"
    assert details["calling_ae"] == "MODALITY1"
    assert details["peer"] == "10.1.2.3:40404"


async def test_c_store_out_of_space_is_a700_and_keeps_nothing(redis: Redis, tmp_path: Path) -> None:
    """The disk fills while the data set arrives: the rest is read and dropped, the partial
    file removed, and the C-STORE answered 0xA700 (the association goes on)."""
    bridge = Bridge(asyncio.get_running_loop(), redis, tmp_path, 10)
    assert await _store(bridge, ct_slice(0, rows=16, columns=16), disk_full=True) == 0xA700
    assert list(tmp_path.iterdir()) == []
    assert await redis.zcard(names.JOBS_BY_TIME) == 0


async def test_c_store_with_redis_unreachable_is_a701_and_keeps_nothing(tmp_path: Path) -> None:
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        bridge = Bridge(asyncio.get_running_loop(), down, tmp_path, 10)
        assert await _store(bridge, ct_slice(0, rows=16, columns=16)) == 0xA701
        assert list(tmp_path.iterdir()) == []
    finally:
        await down.aclose()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def test_c_store_whose_queue_answer_comes_late_keeps_its_file_and_succeeds(
    redis: Redis, flushed_redis: str, tmp_path: Path
) -> None:
    """The transaction ran, its answer came after DIMSE_REDIS_TIMEOUT: the job exists, so its
    file must too (removing it would fail the job later), and the sender hears success."""
    data = ct_slice(0, rows=16, columns=16)
    async with HoldingProxy(_port(flushed_redis)) as proxy:
        client = Redis.from_url(proxy.url, decode_responses=True)
        try:
            proxy.hold(b"EXEC", "replies")
            status = await _store(Bridge(asyncio.get_running_loop(), client, tmp_path, 1), data)
        finally:
            await client.aclose()
    assert status == 0x0000
    [path] = list(tmp_path.iterdir())
    assert path.read_bytes() == data
    job = await JobStore(redis).read(UUID(path.stem))
    assert job is not None
    assert job.status == "accepted"


async def test_c_store_whose_transaction_arrives_late_keeps_nothing_and_it_never_runs(
    redis: Redis, flushed_redis: str, tmp_path: Path
) -> None:
    """The transaction had not reached Redis when the time was up: settled as not done, the
    file goes and 0xA701 is answered; when it does reach Redis, it runs nothing (the fence)."""
    async with HoldingProxy(_port(flushed_redis)) as proxy:
        client = Redis.from_url(proxy.url, decode_responses=True)
        try:
            proxy.hold(b"EXEC", "request")
            bridge = Bridge(asyncio.get_running_loop(), client, tmp_path, 1)
            status = await _store(bridge, ct_slice(0, rows=16, columns=16))
            late = await proxy.late()
        finally:
            await client.aclose()
    assert status == 0xA701
    assert list(tmp_path.iterdir()) == []
    # MULTI's +OK, each command +QUEUED, then EXEC: nil (RESP2 *-1, RESP3 _), a watched key
    # changed, nothing ran
    assert late.startswith(b"+OK\r\n+QUEUED\r\n")
    assert late.endswith((b"\r\n*-1\r\n", b"\r\n_\r\n"))
    assert await redis.zcard(names.JOBS_BY_TIME) == 0


async def test_c_store_whose_outcome_cannot_be_known_keeps_the_file(
    redis: Redis, flushed_redis: str, tmp_path: Path
) -> None:
    """Neither the transaction nor the question whether it ran is answered: 0xA701, and the
    file is kept, since its job may exist (here it does: the transaction ran)."""
    data = ct_slice(0, rows=16, columns=16)
    async with HoldingProxy(_port(flushed_redis)) as proxy:
        client = Redis.from_url(proxy.url, decode_responses=True)
        try:
            proxy.hold(b"EXEC", "replies", every_connection=True)
            status = await _store(Bridge(asyncio.get_running_loop(), client, tmp_path, 1), data)
        finally:
            await client.aclose()
    assert status == 0xA701
    [path] = list(tmp_path.iterdir())
    assert path.read_bytes() == data
    assert await JobStore(redis).read(UUID(path.stem)) is not None


def test_c_find_identifier_reads_matching_and_return_keys() -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = "1.2.3"
    identifier.Modality = ""
    identifier.PatientName = "DOE*"
    query = c_find.to_query(identifier)
    assert query.level == "series"
    assert query.keys == {"StudyInstanceUID": "1.2.3", "PatientName": "DOE*"}
    assert "Modality" in query.include


def test_c_find_refuses_an_identifier_without_a_level_or_with_a_bad_key() -> None:
    missing = Dataset()
    missing.PatientName = "*"
    with pytest.raises(LookupError):
        c_find.to_query(missing)
    bad = Dataset()
    bad.QueryRetrieveLevel = "STUDY"
    bad.SOPInstanceUID = "1.2.3"  # an image key at the study level
    with pytest.raises(BadRequest):
        c_find.to_query(bad)


def test_c_find_answers_with_the_identifier_attributes_only() -> None:
    ds = dcmread(io.BytesIO(ct_slice(0, rows=16, columns=16)))
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.AccessionNumber = ""
    found = {"0020000D": {"vr": "UI", "Value": [ds.StudyInstanceUID]}, "00100020": {"vr": "LO"}}
    answer = c_find.answer(identifier, found)
    assert answer.StudyInstanceUID == ds.StudyInstanceUID
    assert "AccessionNumber" in answer
    assert "PatientID" not in answer
