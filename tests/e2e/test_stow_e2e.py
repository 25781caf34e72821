"""STOW-RS against the pipeline as processes: dicomweb-client stores a series in one request and
the answer reports what the validator decided for each instance (PS3.18 §10.5, Annex I)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient

from testbed.system import System
from tests.e2e.test_pipeline import ENCODINGS
from tests.support import ct_instances, pydicom_file

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

A900 = 0xA900  # Error: Data Set does not match SOP Class (PS3.18 Table I.2-2)


def upload_id(item: pydicom.Dataset) -> str:
    return str(item[0x0009, 0x1001].value)  # the dicomflow private block (0009,0010)


def test_a_series_is_stored_and_a_rejected_instance_is_reported_failed(system: System) -> None:
    instances = ct_instances(4)
    rejected = instances[3]
    client = DICOMwebClient(url=f"{system.url()}/dicomweb")
    with warnings.catch_warnings():  # pydicom warns of the invalid UID as it sets and writes it
        warnings.simplefilter("ignore", UserWarning)
        rejected.SeriesInstanceUID = "1.2.03"  # a leading zero: the validator rejects the UID
        answer = client.store_instances(instances)  # one request; 202: stored with failures
    stored = answer.ReferencedSOPSequence
    assert [i.ReferencedSOPInstanceUID for i in stored] == [d.SOPInstanceUID for d in instances[:3]]
    assert all("WarningReason" not in i for i in stored)  # validated before the answer
    (failed,) = answer.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == rejected.SOPInstanceUID
    assert failed.FailureReason == A900
    assert "SeriesInstanceUID is not a valid UID" in failed[0x0009, 0x1002].value
    assert system.status(upload_id(failed))["status"] == "rejected"
    finals = system.wait_final([upload_id(i) for i in stored])
    assert {f["status"] for f in finals.values()} == {"archived"}
    assert {f["details"]["source"] for f in finals.values()} == {"stow"}


def test_every_instance_stored_is_a_200_and_another_study_is_a_409(system: System) -> None:
    instances = ct_instances(2)
    study = instances[0].StudyInstanceUID
    client = DICOMwebClient(url=f"{system.url()}/dicomweb")
    answer = client.store_instances(instances, study_instance_uid=study)
    assert len(answer.ReferencedSOPSequence) == 2
    assert answer.RetrieveURL.endswith(f"/dicomweb/studies/{study}")
    with pytest.raises(requests.HTTPError) as refused:
        client.store_instances(ct_instances(1), study_instance_uid=study)
    assert refused.value.response.status_code == 409
    body = pydicom.Dataset.from_json(refused.value.response.json())
    assert body.FailedSOPSequence[0].FailureReason == 0xC409


def test_compressed_and_other_transfer_syntaxes_are_stored_as_sent(system: System) -> None:
    files = [pydicom_file(name) for name in ENCODINGS]
    client = DICOMwebClient(url=f"{system.url()}/dicomweb")
    answer = client.store_instances([pydicom.dcmread(f) for f in files])
    assert "FailedSOPSequence" not in answer
    stored = answer.ReferencedSOPSequence
    assert len(stored) == len(files)
    assert all("WarningReason" not in i for i in stored)
    finals = system.wait_final([upload_id(i) for i in stored])
    for item, source in zip(stored, files, strict=True):
        final = finals[upload_id(item)]
        assert final["status"] == "archived", final
        kept = Path(final["details"]["archive_path"]) / "original.dcm"
        assert pydicom.dcmread(kept).file_meta.TransferSyntaxUID == (
            pydicom.dcmread(source).file_meta.TransferSyntaxUID
        )
