"""study_keys(): the study, series and instance attributes for the search indexes, as DICOM
strings."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from descriptor_service.metadata import study_keys
from descriptor_service.settings import DescriptorSettings
from descriptor_service.worker import archive
from pydicom import config, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from shared.events import FileRef, FileValidated, StudyKeys
from tests.support import ct_slice, dicom_ids


def raw(ds: Dataset, keyword_tag: int, vr: str, value: bytes) -> None:
    """An element as a file holds it: converted (and found malformed) only when read."""
    ds[keyword_tag] = RawDataElement(Tag(keyword_tag), vr, len(value), value, 0, False, True)


def test_a_bundled_file_gives_its_study_attributes() -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None
    keys = study_keys(dcmread(path))
    assert keys.patient_name == "CompressedSamples^CT1"
    assert keys.patient_id == "1CT1"
    assert keys.study_date == "20040119"
    assert keys.study_time == "072730"
    assert keys.institution_name == "JFK IMAGING CENTER"
    assert keys.study_id == "1CT1"
    assert keys.accession_number is None  # absent


def test_the_series_and_instance_attributes_for_qido_come_with_them() -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None
    keys = study_keys(dcmread(path))
    assert (keys.series_number, keys.instance_number) == ("1", "1")
    assert (keys.rows, keys.columns, keys.bits_allocated) == (128, 128, 16)
    assert keys.number_of_frames is None  # a single-frame image does not say so
    ds = Dataset()
    ds.SeriesDescription = " AXIAL "
    ds.NumberOfFrames = "12"
    ds.PerformedProcedureStepStartDate = "20240102"
    ds.PerformedProcedureStepStartTime = "0830"
    raw(ds, 0x00200013, "IS", b"1A")  # InstanceNumber that is no integer
    keys = study_keys(ds)
    assert keys.series_description == "AXIAL"
    assert keys.number_of_frames == "12"
    assert keys.performed_procedure_step_start_date == "20240102"
    assert keys.performed_procedure_step_start_time == "083000"
    assert keys.instance_number is None


def test_names_keep_their_dicom_form_and_dates_become_yyyymmdd() -> None:
    ds = Dataset()
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.StudyTime = "1030"
    raw(ds, 0x00080020, "DA", b"2020.01.31")  # the old ACR-NEMA form
    ds.AccessionNumber = "  A-1 "
    keys = study_keys(ds)
    assert keys.patient_name == "Yamada^Tarou=山田^太郎"
    assert keys.referring_physician_name == "Who^Doctor"
    assert keys.study_date == "20200131"
    assert keys.study_time == "103000"
    assert keys.accession_number == "A-1"


def test_malformed_or_empty_values_are_none_and_nothing_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
    ds = Dataset()
    raw(ds, 0x00100030, "DA", b"19991399")  # PatientBirthDate: month 13
    raw(ds, 0x00080020, "DA", b"yesterday")  # StudyDate
    raw(ds, 0x00080030, "TM", b"99")  # StudyTime: hour 99
    raw(ds, 0x00080050, "SH", b"")  # AccessionNumber, present but empty
    assert study_keys(ds) == StudyKeys()
    assert study_keys(Dataset()) == StudyKeys()


def test_the_archived_instance_carries_its_study_keys_for_the_index(tmp_path: Path) -> None:
    upload = tmp_path / "upload.dcm"
    upload.write_bytes(ct_slice(rows=16, columns=16, patient_name="Doe^Jane"))
    ds = dcmread(upload)
    ids = dicom_ids(ds, modality="CT")
    event = FileValidated(
        upload_id=uuid.uuid4(),
        file=FileRef(path=str(upload), sha256="0" * 64, size=upload.stat().st_size),
        ids=ids,
        has_pixels=True,
    )
    described = archive(event, DescriptorSettings(ARCHIVE_PATH=tmp_path / "archive"))
    assert described.study is not None
    assert (described.study.patient_name, described.study.patient_id) == ("Doe^Jane", "SYN-0001")
    assert described.study.study_date == "20260101"
