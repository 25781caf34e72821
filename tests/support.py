"""Helpers for tests: pydicom's test files, Docker's presence, test DicomIds, and what
testbed shares with bench and scripts (free ports, a redis-server, synthetic series)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.events import DicomIds
from testbed.processes import RedisServer, free_port, wait_for_port
from testbed.series import ct_slice, write_ct_series

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = [
    "RedisServer",
    "ct_slice",
    "dicom_ids",
    "docker_answers",
    "free_port",
    "pydicom_file",
    "wait_for_port",
    "write_ct_series",
]


def docker_answers() -> bool:
    """True when a Docker engine answers a ping (then testcontainers could be used)."""
    if not shutil.which("docker"):
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(str(path))


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def dicom_ids(source: Any = None, *, fresh: bool = False, **fields: Any) -> DicomIds:
    """The one way tests make ``DicomIds``.

    By default a CT instance's made-up UIDs (1.2.3, 1.2.3.4, 1.2.3.4.5), the same every call;
    ``fresh=True``: new UIDs (pydicom's ``generate_uid``); ``source``: the identifiers of a
    pydicom ``Dataset``, or of a job's status details (``study_instance_uid`` ...). A field
    given by name wins over all of these: ``dicom_ids(modality="CT")``.
    """
    values: dict[str, Any] = {
        "study_uid": "1.2.3",
        "series_uid": "1.2.3.4",
        "sop_uid": "1.2.3.4.5",
        "sop_class_uid": CT_IMAGE_STORAGE,
        "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
    }
    if fresh:
        from pydicom.uid import generate_uid

        values.update(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid())
    if isinstance(source, Mapping):  # a status's details
        values.update(
            study_uid=source["study_instance_uid"],
            series_uid=source["series_instance_uid"],
            sop_uid=source["sop_instance_uid"],
            sop_class_uid=source["sop_class_uid"],
            transfer_syntax_uid=source["transfer_syntax_uid"],
        )
    elif source is not None:  # a pydicom Dataset
        values.update(
            study_uid=source.StudyInstanceUID,
            series_uid=source.SeriesInstanceUID,
            sop_uid=source.SOPInstanceUID,
            sop_class_uid=source.SOPClassUID,
            transfer_syntax_uid=source.file_meta.TransferSyntaxUID,
            modality=source.get("Modality") or None,
        )
    return DicomIds(**(values | fields))


def ct_instances(count: int, study: str | None = None) -> list[Dataset]:
    """``count`` copies of pydicom's CT_small.dcm as the instances of one new series (of
    ``study``, or of a new study), each with its own SOP Instance UID."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    study, series = study or generate_uid(), generate_uid()
    out = []
    for _ in range(count):
        ds = dcmread(pydicom_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(ds)
    return out
