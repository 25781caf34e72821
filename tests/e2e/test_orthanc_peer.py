"""Orthanc as a DICOM peer (issue 11): Debian's Orthanc, with dicomflow declared as one of its
modalities, sends a study to dimse-service with its own C-STORE SCU (``POST
/modalities/{name}/store``) and its own C-ECHO (``POST /modalities/{name}/echo``), and every
instance ends ``archived``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from testbed import servers
from testbed.series import write_ct_series
from testbed.system import System, start_system, stop_system
from tests.support import pydicom_file

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SLICES = 12
COMPRESSED = "JPEG2000.dcm"  # pydicom's JPEG 2000 file: Orthanc forwards it as it stored it


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """dicomflow, its DIMSE listener accepting Orthanc's AE title alone."""
    running = start_system(
        tmp_path_factory.mktemp("system"), DIMSE_ALLOWED_CALLING_AE_TITLES=servers.ORTHANC_AET
    )
    yield running
    stop_system(running)


@pytest.fixture(scope="module")
def orthanc(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """Orthanc's REST API, with dicomflow declared as the modality ``dicomflow``, and again as
    ``intruder``, which Orthanc calls with an AE title dicomflow does not accept."""
    modalities = {
        "dicomflow": servers.Modality("DICOMFLOW", system.dimse_port),
        "intruder": servers.Modality("DICOMFLOW", system.dimse_port, local_aet="INTRUDER"),
    }
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(
                servers.orthanc(tmp_path_factory.mktemp("orthanc"), modalities)
            )
        except servers.Unavailable as exc:
            pytest.skip(str(exc))
        assert server.aet == servers.ORTHANC_AET
        yield stack.enter_context(httpx.Client(base_url=server.root, auth=server.auth, timeout=60))


def _dimse_uploads(system: System) -> list[dict[str, Any]]:
    """Every upload that came in by DIMSE, as ``GET /uploads`` lists it."""
    with system.client() as c:
        answer = c.get("/uploads", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    return [u for u in answer.json()["uploads"] if u["details"].get("source") == "dimse"]


def _wait_for_jobs(system: System, count: int, seconds: float = 30) -> list[str]:
    """The upload ids of the DIMSE jobs, once there are ``count`` of them."""
    deadline = time.monotonic() + seconds
    while len(found := _dimse_uploads(system)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} of {count} instances became jobs in {seconds}s")
        time.sleep(0.2)
    return [u["upload_id"] for u in found]


def test_orthanc_echoes_dicomflow_and_an_ae_title_not_allowed_is_refused(
    orthanc: httpx.Client,
) -> None:
    echo = orthanc.post("/modalities/dicomflow/echo", json={})
    assert echo.status_code == 200, echo.text
    refused = orthanc.post("/modalities/intruder/echo", json={})
    assert refused.status_code == 500, refused.text  # Orthanc: the association was rejected
    assert "Association Rejected" in refused.json()["Details"]


def test_orthanc_sends_a_study_with_its_c_store_and_every_instance_is_archived(
    system: System, orthanc: httpx.Client, tmp_path: Path
) -> None:
    files = [*write_ct_series(tmp_path, SLICES, seed=41, rows=64, columns=64)]
    files.append(pydicom_file(COMPRESSED))
    stored = []
    for path in files:
        answer = orthanc.post(
            "/instances", content=path.read_bytes(), headers={"Content-Type": "application/dicom"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["Status"] == "Success", answer.text
        stored.append(answer.json())
    study = stored[0]["ParentStudy"]  # Orthanc's id of the CT study: every slice is in it
    assert {s["ParentStudy"] for s in stored[:SLICES]} == {study}

    sent = orthanc.post(
        "/modalities/dicomflow/store",
        json={"Resources": [study, stored[-1]["ID"]], "Synchronous": True},
    )
    assert sent.status_code == 200, sent.text
    job = sent.json()
    assert job["InstancesCount"] == len(files), job
    assert job["FailedInstancesCount"] == 0, job
    assert (job["LocalAet"], job["RemoteAet"]) == (servers.ORTHANC_AET, "DICOMFLOW"), job

    finals = system.wait_final(_wait_for_jobs(system, len(files)))
    headers = {str(p): pydicom.dcmread(p, stop_before_pixels=True) for p in files}
    assert len(finals) == len(files)
    assert sorted(f["details"]["sop_instance_uid"] for f in finals.values()) == sorted(
        str(h.SOPInstanceUID) for h in headers.values()
    )
    for final in finals.values():
        details = final["details"]
        assert final["status"] == "archived", final
        assert details["source"] == "dimse", details
        assert details["calling_ae"] == servers.ORTHANC_AET, details
    compressed = headers[str(files[-1])]
    [kept] = [
        Path(f["details"]["archive_path"]) / "original.dcm"
        for f in finals.values()
        if f["details"]["sop_instance_uid"] == compressed.SOPInstanceUID
    ]
    assert pydicom.dcmread(kept).file_meta.TransferSyntaxUID == (
        compressed.file_meta.TransferSyntaxUID
    )

    ct = headers[str(files[0])]
    for study_uid, count in ((ct.StudyInstanceUID, SLICES), (compressed.StudyInstanceUID, 1)):
        with system.client() as c:
            found = c.get("/dicomweb/studies", params={"StudyInstanceUID": study_uid})
        assert found.status_code == 200, found.text
        [result] = found.json()
        assert result["0020000D"]["Value"] == [study_uid]
        assert result["00201208"]["Value"] == [count]  # NumberOfStudyRelatedInstances
