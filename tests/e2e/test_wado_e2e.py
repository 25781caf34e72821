"""WADO-RS on the whole pipeline: files uploaded as users upload them, archived and indexed by
the real services, then retrieved with dicomweb-client as a viewer or a script would."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from testbed.system import System

pytestmark = pytest.mark.timeout(120)


def test_uploaded_instances_are_retrieved_with_dicomweb_client(system: System) -> None:
    ct_path, j2k_path = (get_testdata_file(n) for n in ("CT_small.dcm", "JPEG2000.dcm"))
    assert ct_path
    assert j2k_path
    ids = system.upload(Path(ct_path), Path(j2k_path))
    finals = system.wait_final(ids)
    assert {f["status"] for f in finals.values()} == {"archived"}
    client = DICOMwebClient(url=f"{system.url()}/dicomweb")
    for path in (ct_path, j2k_path):
        source = pydicom.dcmread(path)
        study, series, sop = (
            source.StudyInstanceUID,
            source.SeriesInstanceUID,
            source.SOPInstanceUID,
        )
        [got] = client.retrieve_series(study, series)
        assert got.SOPInstanceUID == sop
        assert got.PixelData == source.PixelData  # as stored
        metadata = client.retrieve_instance_metadata(study, series, sop)  # the one dataset
        assert metadata["00080018"]["Value"] == [sop]
        assert "BulkDataURI" in metadata["7FE00010"]
        [frame] = client.retrieve_instance_frames(
            study, series, sop, [1], media_types=(("application/octet-stream", "*"),)
        )
        assert frame
        image = client.retrieve_instance_rendered(
            study, series, sop, media_types=("image/png",), params={"viewport": "64,64"}
        )
        assert image.startswith(b"\x89PNG")
