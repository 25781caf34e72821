"""describe(): the DICOM JSON model with bulk data by reference, a summary, malformed values."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
from descriptor_service.metadata import FORMAT, SUMMARY_KEYS, describe, summarise
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

TAG = re.compile(r"^[0-9A-F]{8}$")
ELEMENT_KEYS = {"vr", "Value", "InlineBinary", "BulkDataURI"}


def read(name: str) -> Dataset:
    """A file bundled with pydicom; never one it would download (unit tests stay offline)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with this pydicom"
    return dcmread(path)


def elements(model: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (tag path, element) of a DICOM JSON model, sequence items included."""
    for tag, element in model.items():
        yield f"{path}{tag}", element
        if element["vr"] == "SQ":
            for i, item in enumerate(element.get("Value", [])):
                yield from elements(item, f"{path}{tag}/{i}/")


def strict_json(value: Any) -> Any:
    return json.loads(json.dumps(value, allow_nan=False))


def damaged(replacements: dict[bytes, bytes]) -> Dataset:
    """A file read back after some encoded values were overwritten, as a broken modality would."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Doe^Jane"
    ds.StudyDate = "20240229"
    ds.SliceThickness = "7.25"
    ds.PixelSpacing = ["0.5", "0.5"]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    for old, new in replacements.items():
        assert data.count(old) == 1
        assert len(old) == len(new)
        data = data.replace(old, new)
    return dcmread(io.BytesIO(data))


def test_ct_small_summary() -> None:
    summary = describe(read("CT_small.dcm"))["summary"]
    assert summary == {
        "patient_name": "CompressedSamples^CT1",
        "patient_id": "1CT1",
        "patient_birth_date": None,
        "patient_sex": "O",
        "study_instance_uid": "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
        "series_instance_uid": "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322",
        "sop_instance_uid": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "sop_class_name": "CT Image Storage",
        "modality": "CT",
        "study_date": "2004-01-19",
        "study_time": "07:27:30",
        "study_description": "e+1",
        "series_description": None,
        "series_number": 1,
        "instance_number": 1,
        "accession_number": None,
        "institution_name": "JFK IMAGING CENTER",
        "manufacturer": "GE MEDICAL SYSTEMS",
        "body_part_examined": None,
        "rows": 128,
        "columns": 128,
        "number_of_frames": 1,
        "bits_allocated": 16,
        "bits_stored": 16,
        "photometric_interpretation": "MONOCHROME2",
        "pixel_spacing": [0.661468, 0.661468],
        "slice_thickness": 5.0,
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "transfer_syntax_name": "Explicit VR Little Endian",
    }
    assert tuple(summary) == SUMMARY_KEYS


def test_top_level_shape() -> None:
    doc = describe(read("CT_small.dcm"))
    assert set(doc) == {"format", "summary", "file_meta", "dataset", "bulk_data", "problems"}
    assert doc["format"] == FORMAT
    assert doc["problems"] == []
    assert doc["file_meta"]["00020010"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}
    assert all(tag.startswith("0002") for tag in doc["file_meta"])
    assert not any(tag.startswith("0002") for tag in doc["dataset"])


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "rtplan.dcm", "waveform_ecg.dcm", "examples_palette.dcm"]
)
def test_strict_json_with_eight_hex_digit_tags(name: str) -> None:
    doc = describe(read(name))
    assert strict_json(doc) == doc
    for model in (doc["file_meta"], doc["dataset"]):
        for path, element in elements(model):
            assert all(TAG.match(part) for part in path.split("/")[::2]), path
            assert set(element) <= ELEMENT_KEYS, path
            assert "vr" in element, path
            assert len(set(element) - {"vr"}) <= 1, path  # at most one of the three value forms


def test_person_name_shape() -> None:
    dataset = describe(read("CT_small.dcm"))["dataset"]
    assert dataset["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}


def test_nested_sequences() -> None:
    dataset = describe(read("rtplan.dcm"))["dataset"]
    beams = dataset["300A00B0"]  # Beam Sequence
    assert beams["vr"] == "SQ"
    assert isinstance(beams["Value"], list)
    assert beams["Value"]
    control_points = beams["Value"][0]["300A0111"]  # Control Point Sequence, one level down
    assert control_points["vr"] == "SQ"
    assert control_points["Value"][0]["300A0112"] == {"vr": "IS", "Value": [0]}


def test_pixel_data_is_a_reference_with_its_size_aside() -> None:
    doc = describe(read("CT_small.dcm"))
    assert doc["dataset"]["7FE00010"] == {"vr": "OW", "BulkDataURI": "#7FE00010"}
    assert doc["bulk_data"]["7FE00010"] == {"vr": "OW", "size": 128 * 128 * 2}


@pytest.mark.parametrize("threshold", [1024, 64, 1])
def test_no_inline_binary_at_or_above_the_threshold(threshold: int) -> None:
    doc = describe(read("CT_small.dcm"), bulk_threshold=threshold)
    inline = [
        base64.b64decode(element["InlineBinary"])
        for model in (doc["file_meta"], doc["dataset"])
        for _, element in elements(model)
        if "InlineBinary" in element
    ]
    assert all(len(data) < threshold for data in inline)
    for path, entry in doc["bulk_data"].items():
        assert entry["size"] >= threshold or path == "7FE00010"
    if threshold == 1024:  # the 2068-byte private OB goes by reference, the small ones inline
        assert doc["bulk_data"]["00431029"] == {"vr": "OB", "size": 2068}
        assert inline


def test_small_pixel_data_is_never_inlined() -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows = ds.Columns = 2
    ds.PixelData = b"\x00\x01\x02\x03"
    ds["PixelData"].VR = "OB"
    doc = describe(ds, bulk_threshold=1 << 20)
    assert doc["dataset"]["7FE00010"] == {"vr": "OB", "BulkDataURI": "#7FE00010"}
    assert doc["bulk_data"] == {"7FE00010": {"vr": "OB", "size": 4}}


def test_bulk_data_inside_sequences_is_named_by_its_tag_path() -> None:
    doc = describe(read("waveform_ecg.dcm"))  # Waveform Sequence items hold the samples
    waveforms = doc["dataset"]["54000100"]["Value"]
    for i, item in enumerate(waveforms):
        path = f"54000100/{i}/54001010"
        assert item["54001010"] == {"vr": "OW", "BulkDataURI": f"#{path}"}
        assert doc["bulk_data"][path]["size"] > 1024


def test_describe_does_not_decode_pixel_data() -> None:
    ds = read("JPEG-lossy.dcm")  # the installed plugins cannot decode this stream at all
    doc = describe(ds)
    assert doc["bulk_data"]["7FE00010"] == {"vr": "OB", "size": len(ds.PixelData)}
    assert doc["summary"]["transfer_syntax_name"] == "JPEG Extended (Process 2 and 4)"


def test_dataset_part_loads_back_with_pydicom() -> None:
    doc = describe(read("CT_small.dcm"))
    asked: list[str] = []

    def bulk(tag: str, vr: str, uri: str) -> bytes:
        asked.append(uri)
        return b""

    loaded = Dataset.from_json(doc["dataset"], bulk_data_uri_handler=bulk)
    assert loaded.PatientName == "CompressedSamples^CT1"
    assert loaded.Rows == 128
    assert sorted(asked) == ["#00431029", "#7FE00010"]


def test_malformed_values_do_not_stop_the_description() -> None:
    ds = damaged({b"7.25": b"7.2x", b"20240229": b"2024x229"})
    doc = describe(ds)  # pydicom raises ValueError converting that DS
    assert strict_json(doc) == doc
    # Kept losslessly as its bytes, typed UN, and reported without its value
    assert doc["dataset"]["00180050"] == {
        "vr": "UN",
        "InlineBinary": base64.b64encode(b"7.2x").decode(),
    }
    assert doc["problems"] == [{"path": "00180050", "vr": "DS", "error": "ValueError"}]
    assert "7.2x" not in json.dumps(doc["problems"])
    # A DA is text in the JSON model: kept as it is; the summary cannot read it as a date
    assert doc["dataset"]["00080020"] == {"vr": "DA", "Value": ["2024x229"]}
    assert doc["summary"]["study_date"] is None
    assert doc["summary"]["slice_thickness"] is None
    assert doc["summary"]["patient_name"] == "Doe^Jane"
    assert doc["summary"]["pixel_spacing"] == [0.5, 0.5]


def test_an_empty_element_of_no_known_vr_is_a_problem_not_a_crash() -> None:
    """Found by fuzzing: a stray delimiter tag at the top level, length 0, has no VR pydicom
    can convert; reading it for its raw bytes converted it, outside the guard."""
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds[0xFFFEE0DD] = RawDataElement(Tag(0xFFFEE0DD), None, 0, None, 0, False, True)
    doc = describe(ds)
    assert doc["dataset"]["FFFEE0DD"] == {"vr": "UN"}
    # the dictionary's VR for a delimiter
    assert doc["problems"] == [{"path": "FFFEE0DD", "vr": "NONE", "error": "NotImplementedError"}]
    assert doc["summary"]["patient_name"] == "Doe^Jane"


def test_malformed_integer_string() -> None:
    ds = read("badVR.dcm")  # Number of Frames '1A'
    with pytest.warns(UserWarning, match="Invalid value for VR") as warned:  # the IS and a UI
        doc = describe(ds)
    assert any("Invalid value for VR IS: '1A'" in str(w.message) for w in warned)
    assert {"path": "00280008", "vr": "IS", "error": "ValueError"} in doc["problems"]
    assert doc["dataset"]["00280008"]["vr"] == "UN"
    assert doc["summary"]["number_of_frames"] is None


def test_non_finite_floats_become_null() -> None:
    ds = Dataset()
    ds.add_new(0x00460044, "FD", [1.5, math.nan, math.inf])  # Pupil Size
    doc = describe(ds)
    assert doc["dataset"]["00460044"] == {"vr": "FD", "Value": [1.5, None, None]}
    assert strict_json(doc) == doc


def test_empty_dataset_has_every_summary_key_as_null() -> None:
    doc = describe(Dataset())
    assert doc["dataset"] == {}
    assert doc["file_meta"] == {}
    assert doc["bulk_data"] == {}
    assert doc["summary"] == dict.fromkeys(SUMMARY_KEYS)


def test_enhanced_multi_frame_summary_reads_the_functional_groups() -> None:
    summary = summarise(read("liver_1frame.dcm"))
    assert summary["pixel_spacing"] == [0.810547, 0.810547]
    assert summary["slice_thickness"] == 1.0
    assert summary["number_of_frames"] == 1
    assert summary["bits_allocated"] == 1
