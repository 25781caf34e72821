"""dimse-service's handlers against a real Redis: C-STORE keeps a file only with its job and
answers the PS3.4 status for a full disk or an unreachable queue; C-FIND's identifier reading."""

from __future__ import annotations

import asyncio
import errno
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest
from dimse_service import c_find, c_store
from dimse_service.server import Bridge
from pydicom import dcmread
from pydicom.dataset import Dataset
from redis.asyncio import Redis

from shared.errors import BadRequest
from shared.jobs import JobStore
from testbed.processes import free_port
from testbed.series import ct_slice


def _event(data: bytes) -> Any:
    requestor = SimpleNamespace(ae_title="MODALITY1", address="10.1.2.3", port=40404)
    return SimpleNamespace(encoded_dataset=lambda: data, assoc=SimpleNamespace(requestor=requestor))


async def _store(bridge: Bridge, data: bytes) -> int:
    return await asyncio.to_thread(c_store.handle_store, _event(data), bridge)


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
    details = status.details
    assert details["source"] == "dimse"
    assert details["calling_ae"] == "MODALITY1"
    assert details["peer"] == "10.1.2.3:40404"


async def test_c_store_out_of_space_is_a700_and_keeps_nothing(
    redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, **_: object) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(c_store, "atomic_file", full)
    bridge = Bridge(asyncio.get_running_loop(), redis, tmp_path, 10)
    assert await _store(bridge, ct_slice(0, rows=16, columns=16)) == 0xA700
    assert list(tmp_path.iterdir()) == []


async def test_c_store_with_redis_unreachable_is_a701_and_keeps_nothing(tmp_path: Path) -> None:
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        bridge = Bridge(asyncio.get_running_loop(), down, tmp_path, 10)
        assert await _store(bridge, ct_slice(0, rows=16, columns=16)) == 0xA701
        assert list(tmp_path.iterdir()) == []
    finally:
        await down.aclose()


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
