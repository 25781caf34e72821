"""dimse-service with real DICOM clients (issue 11): dcmtk's echoscu, storescu and findscu, and
pynetdicom as a second client, against the pipeline running as processes."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from redis.asyncio import Redis
from status_service.indexes import queue_index

from shared import redis_names as names
from shared.events import StudyKeys
from testbed.series import ct_slice, write_ct_series
from testbed.system import System, start_system, stop_system
from tests.support import dicom_ids, pydicom_file

pytestmark = pytest.mark.e2e
DCMTK = all(shutil.which(tool) for tool in ("echoscu", "storescu", "findscu"))
ALLOWED = "STORESCU,FINDSCU,ECHOSCU,PYCLIENT,ABORTER,CANCELLER"
# pydicom's compressed test files, and the storescu option that proposes each one's syntax
COMPRESSED = {"JPEG2000.dcm": "-xw", "MR_small_RLE.dcm": "-xr", "SC_rgb_jpeg_dcmtk.dcm": "-xy"}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(
        tmp_path_factory.mktemp("dimse"), DIMSE_ALLOWED_CALLING_AE_TITLES=ALLOWED
    )
    yield running
    stop_system(running)


def _dimse_jobs(system: System) -> dict[str, dict[str, object]]:
    """Every job's status whose source is dimse, by upload id."""
    client = redis.Redis.from_url(system.redis.url, decode_responses=True)
    try:
        ids = client.zrange(names.JOBS_BY_TIME, 0, -1)
    finally:
        client.close()
    found = {}
    for upload_id in ids:
        status = system.status(upload_id)
        if status.get("details", {}).get("source") == "dimse":
            found[upload_id] = status
    return found


def _wait_dimse(system: System, count: int, seconds: float = 45) -> dict[str, dict[str, object]]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        jobs = _dimse_jobs(system)
        if len(jobs) >= count:
            return system.wait_final(list(jobs), seconds)
        time.sleep(0.3)
    raise AssertionError(f"only {len(_dimse_jobs(system))} of {count} DIMSE jobs")


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, findscu) is not installed")
def test_dcmtk_echo_store_find(system: System, tmp_path: Path) -> None:
    port = str(system.dimse_port)
    echo = _tool("echoscu", "-aet", "ECHOSCU", "-aec", "DICOMFLOW", "127.0.0.1", port)
    assert echo.returncode == 0, echo.stderr
    folder = tmp_path / "send"
    slices = write_ct_series(folder, 100, seed=11, rows=64, columns=64)
    store = _tool(
        "storescu", "-aet", "STORESCU", "-aec", "DICOMFLOW", "+sd", "+r", "-nh",
        "127.0.0.1", port, str(folder),
    )  # fmt: skip
    assert store.returncode == 0, store.stderr + store.stdout
    assert "Failed" not in store.stderr, store.stderr[-3000:]
    for name, propose in COMPRESSED.items():
        sent = _tool(
            "storescu", "-aet", "STORESCU", "-aec", "DICOMFLOW", propose,
            "127.0.0.1", port, str(pydicom_file(name)),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert "Failed" not in sent.stderr, sent.stderr[-3000:]
    jobs = _wait_dimse(system, len(slices) + len(COMPRESSED))
    assert len(jobs) == len(slices) + len(COMPRESSED)
    for status in jobs.values():
        details = status["details"]
        assert status["status"] == "archived", status
        assert details["calling_ae"] == "STORESCU", details  # type: ignore[index]
        assert details["peer"].startswith("127.0.0.1:"), details  # type: ignore[index]
    assert not list(system.uploads.glob(".*.tmp"))

    study = str(dcmread(slices[0], stop_before_pixels=True).StudyInstanceUID)
    found = _tool(
        "findscu", "-S", "-aet", "FINDSCU", "-aec", "DICOMFLOW", "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={study}", "-k", "NumberOfStudyRelatedInstances",
        "-k", "PatientName", "127.0.0.1", port,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert study in found.stderr, found.stderr
    series = _tool(
        "findscu", "-S", "-aet", "FINDSCU", "-aec", "DICOMFLOW", "-k", "QueryRetrieveLevel=SERIES",
        "-k", f"StudyInstanceUID={study}", "-k", "SeriesInstanceUID",
        "-k", "NumberOfSeriesRelatedInstances", "127.0.0.1", port,
    )  # fmt: skip
    assert series.returncode == 0, series.stderr
    assert "(0020,1209) IS [100 ]" in series.stderr, series.stderr


def test_pynetdicom_client_echo_store_find_three_levels(system: System) -> None:
    ae = AE(ae_title="PYCLIENT")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", system.dimse_port, ae_title="DICOMFLOW")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        data = [ct_slice(i, rows=32, columns=32, seed=21) for i in range(3)]
        datasets = [dcmread(io.BytesIO(d)) for d in data]
        study = datasets[0].StudyInstanceUID
        for ds in datasets:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, datasets[0].SeriesInstanceUID
            assert assoc.send_c_store(ds).Status == 0x0000
        ids = [
            u
            for u, s in _wait_dimse(system, 1).items()
            if s["details"].get("calling_ae") == "PYCLIENT"  # type: ignore[attr-defined]
        ]
        deadline = time.monotonic() + 30
        while len(ids) < 3 and time.monotonic() < deadline:
            time.sleep(0.3)
            ids = [
                u
                for u, s in _dimse_jobs(system).items()
                if s["details"].get("calling_ae") == "PYCLIENT"  # type: ignore[attr-defined]
            ]
        finals = system.wait_final(ids)
        assert len(ids) == 3
        assert all(s["status"] == "archived" for s in finals.values())

        def find(level: str, **keys: str) -> list[Dataset]:
            query = Dataset()
            query.QueryRetrieveLevel = level
            for keyword, value in keys.items():
                setattr(query, keyword, value)
            answers = []
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                assert status.Status in (0xFF00, 0x0000), hex(status.Status)
                if status.Status == 0xFF00:
                    answers.append(identifier)
            return answers

        [st] = find("STUDY", StudyInstanceUID=study, PatientID="", NumberOfStudyRelatedInstances="")
        assert st.PatientID == "SYN-0001"
        assert int(st.NumberOfStudyRelatedInstances) == 3
        [se] = find("SERIES", StudyInstanceUID=study, SeriesInstanceUID="", Modality="CT")
        assert se.SeriesInstanceUID == datasets[0].SeriesInstanceUID
        images = find("IMAGE", StudyInstanceUID=study, SOPInstanceUID="", InstanceNumber="")
        assert sorted(i.SOPInstanceUID for i in images) == sorted(
            d.SOPInstanceUID for d in datasets
        )
        bad = Dataset()
        bad.PatientName = "*"  # no QueryRetrieveLevel
        [(status, _)] = list(assoc.send_c_find(bad, StudyRootQueryRetrieveInformationModelFind))
        assert status.Status == 0xA900
    finally:
        assoc.release()


def test_disallowed_calling_ae_is_rejected(system: System) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", system.dimse_port, ae_title="DICOMFLOW")
    assert assoc.is_rejected


def test_abort_mid_dataset_keeps_nothing_and_service_stays_up(system: System) -> None:
    before = set(_dimse_jobs(system))
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", system.dimse_port, ae_title="DICOMFLOW", max_pdu=4096)
    assert assoc.is_established
    ds = dcmread(io.BytesIO(ct_slice(0, rows=128, columns=128, seed=31)))
    context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage)
    request = C_STORE()
    request.MessageID, request.AffectedSOPClassUID = 1, ds.SOPClassUID
    request.AffectedSOPInstanceUID, request.Priority = ds.SOPInstanceUID, 2
    request.DataSet = io.BytesIO(encode(ds, True, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = list(message.encode_msg(context.context_id, 4096))
    sock = assoc.dul.socket
    assert sock is not None
    assert sock.socket is not None
    for primitive in pdus[:4]:  # the command and part of the dataset, then the abort
        tf = P_DATA_TF()
        tf.from_primitive(primitive)
        sock.socket.sendall(tf.encode())
    time.sleep(0.2)
    # the data set goes to disk as it arrives (never held whole in memory) ...
    assert len(list(system.uploads.glob("*.part"))) == 1
    assoc.abort()
    time.sleep(0.5)
    # ... and what came of it is removed when its association ends
    assert not list(system.uploads.glob("*.part"))
    assert not list(system.uploads.glob(".*.tmp"))
    assert set(_dimse_jobs(system)) == before
    again = AE(ae_title="ABORTER")
    again.add_requested_context(Verification)
    after = again.associate("127.0.0.1", system.dimse_port, ae_title="DICOMFLOW")
    assert after.is_established
    assert after.send_c_echo().Status == 0x0000
    after.release()
    with system.client("dimse") as c:
        assert c.get("/ready").status_code == 200


def test_c_cancel_stops_a_c_find_with_status_cancel(system: System) -> None:
    """A C-FIND matching 2500 instances (three pages of the query), cancelled after its first
    answer: the last answer is Cancel (0xFE00), most matches never sent, and the association
    still serves a C-FIND after it."""
    study, series = "1.2.826.0.1.3680043.10.1111.1", "1.2.826.0.1.3680043.10.1111.1.1"
    total = 2500
    asyncio.run(_index_instances(system, study, series, total))
    ae = AE(ae_title="CANCELLER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", system.dimse_port, ae_title="DICOMFLOW")
    assert assoc.is_established
    try:
        [context] = assoc.accepted_contexts
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID, query.SOPInstanceUID = "IMAGE", study, ""
        pending, statuses = 0, []
        for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, 7):
            statuses.append(int(status.Status))
            if status.Status == 0xFF00:
                pending += 1
                if pending == 1:
                    assoc.send_c_cancel(7, context.context_id)
        assert statuses[-1] == 0xFE00, hex(statuses[-1])
        assert set(statuses[:-1]) == {0xFF00}
        assert pending < total
        again = Dataset()
        again.QueryRetrieveLevel, again.StudyInstanceUID = "STUDY", study
        answers = list(assoc.send_c_find(again, StudyRootQueryRetrieveInformationModelFind))
        assert [int(s.Status) for s, _ in answers] == [0xFF00, 0x0000]
    finally:
        assoc.release()


async def _index_instances(system: System, study: str, series: str, count: int) -> None:
    """``count`` instances of one series in the search indexes, as the status service files
    archived ones (``queue_index``), without sending each through the pipeline."""
    client = Redis.from_url(system.redis.url)
    keys = StudyKeys(patient_id="CANCEL-1", study_date="20240101")
    try:
        async with client.pipeline(transaction=False) as pipe:
            for number in range(1, count + 1):
                ids = dicom_ids(study_uid=study, series_uid=series, sop_uid=f"{series}.{number}")
                await queue_index(pipe, uuid.uuid4(), ids, keys)
            await pipe.execute()
    finally:
        await client.aclose()
