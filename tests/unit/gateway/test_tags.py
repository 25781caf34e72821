"""parse_tags() and read_tags(): the attributes a query names, answered from a file's header."""

from __future__ import annotations

import io
import json
import logging
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from api_gateway.tags import MAX_SPECS, Unreadable, parse_tags, read_tags
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import JPEGBaseline8Bit

ANSWER_KEYS = ["tag", "keyword", "name", "VR", "VM", "value", "present"]
MB = 1024 * 1024


def bundled(name: str) -> Path:
    """A file bundled with pydicom; never one it would download (unit tests stay offline)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with this pydicom"
    return Path(path)


def ask(path: Path, *specs: str, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """read_tags for valid specs, as answers by tag text, checked to be strict JSON."""
    tags, invalid = parse_tags(specs)
    assert invalid == []
    answers = read_tags(path, tags, **kwargs)
    assert [a["tag"] for a in answers] == [f"({t.group:04X},{t.element:04X})" for t in tags]
    json.dumps(answers, allow_nan=False)
    return {answer["tag"]: answer for answer in answers}


def fields(answer: dict[str, Any], *keys: str) -> dict[str, Any]:
    """Some of an answer's fields."""
    return {key: answer[key] for key in keys}


def with_huge_pixels(tmp_path: Path, size: int, *, encapsulated: bool = False) -> Path:
    """CT_small's header, then Pixel Data of size bytes (a sparse file) and trailing padding."""
    ds = dcmread(bundled("CT_small.dcm"))
    del ds[0x7FE00010]
    del ds[0xFFFCFFFC]
    if encapsulated:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = tmp_path / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    with path.open("r+b") as file:
        file.seek(0, 2)
        if encapsulated:  # empty offset table, two fragments, sequence delimiter
            file.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
            file.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
            for _ in range(2):
                file.write(struct.pack("<HHI", 0xFFFE, 0xE000, size // 2))
                file.seek(size // 2, 1)
            file.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
        else:
            file.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size))
            file.seek(size, 1)
        file.write(struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 4) + bytes(4))
    return path


def with_raw_values(tmp_path: Path, **values: tuple[str, bytes]) -> Path:
    """CT_small with some elements' bytes replaced as given, valid or not."""
    ds = dcmread(bundled("CT_small.dcm"))
    for keyword, (vr, value) in values.items():
        tag = Tag(keyword)
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    path = tmp_path / "raw.dcm"
    ds.save_as(path)
    return path


# parse_tags


@pytest.mark.parametrize(
    "spec",
    [
        "(0028,0011)",
        "0028,0011",
        "00280011",
        "0x00280011",
        "0X00280011",
        "( 0028 , 0011 )",
        "  (0028,0011)\t",
        "Columns",
        " Columns ",
    ],
)
def test_every_spelling_names_the_same_tag(spec: str) -> None:
    assert parse_tags([spec]) == ([Tag(0x00280011)], [])


def test_hex_digits_may_be_either_case() -> None:
    tags, invalid = parse_tags(["(7fe0,0010)", "7FE00010", "0x7fE00010", "PixelData"])
    assert (tags, invalid) == ([Tag(0x7FE00010)], [])


@pytest.mark.parametrize(
    "spec",
    [
        "(2222,2222)",  # a public group the dictionary does not know (seed 004)
        "PatientNme",  # unknown keyword
        "patientname",  # keywords are exact
        "(0028,001)",
        "0028-0011",
        "(0028,0011",
        "0x0028,0x0011",
        "002800111",
        "(0028,00GG)",
        "(0001,0010)",  # odd, but not a private group (PS3.5 7.8.1)
        "",
    ],
)
def test_specs_that_name_nothing_are_invalid(spec: str) -> None:
    assert parse_tags([spec]) == ([], [spec])


def test_invalid_specs_are_kept_verbatim_but_trimmed_and_once() -> None:
    tags, invalid = parse_tags(["Rows", "  (2222,2222) ", "Nope", "(2222,2222)", "Rows"])
    assert tags == [Tag(0x00280010)]
    assert invalid == ["(2222,2222)", "Nope"]


@pytest.mark.parametrize("spec", ["(0009,0010)", "(0029,1010)", "(0019,10FF)", "7FE10010"])
def test_private_tags_may_be_asked_for(spec: str) -> None:
    tags, invalid = parse_tags([spec])
    assert invalid == []
    assert len(tags) == 1
    assert tags[0].is_private


def test_repeating_groups_are_known() -> None:
    assert parse_tags(["(6002,0010)", "(6000,3000)"]) == ([Tag(0x60020010), Tag(0x60003000)], [])


def test_order_is_kept_and_repeats_dropped() -> None:
    tags, invalid = parse_tags(["Rows", "(0028,0011)", "00280010", "PatientName", "Columns"])
    assert tags == [Tag(0x00280010), Tag(0x00280011), Tag(0x00100010)]
    assert all(isinstance(tag, BaseTag) for tag in tags)
    assert invalid == []


def test_at_most_max_specs() -> None:
    assert len(parse_tags(["Rows"] * MAX_SPECS)[0]) == 1
    with pytest.raises(ValueError, match=f"at most {MAX_SPECS}"):
        parse_tags(["Rows"] * (MAX_SPECS + 1))


def test_a_single_string_is_not_a_list_of_specs() -> None:
    with pytest.raises(TypeError):
        parse_tags("Rows")


# read_tags: values


def test_columns_and_rows_answer_as_seed_004() -> None:
    answers = read_tags(bundled("CT_small.dcm"), parse_tags(["(0028,0011)", "(0028,0010)"])[0])
    assert answers == [
        {
            "tag": "(0028,0011)",
            "keyword": "Columns",
            "name": "Columns",
            "VR": "US",
            "VM": 1,
            "value": 128,
            "present": True,
        },
        {
            "tag": "(0028,0010)",
            "keyword": "Rows",
            "name": "Rows",
            "VR": "US",
            "VM": 1,
            "value": 128,
            "present": True,
        },
    ]
    assert all(list(answer) == ANSWER_KEYS for answer in answers)


def test_values_become_json_of_their_kind() -> None:
    got = ask(
        bundled("CT_small.dcm"),
        "PatientName",
        "ImagePositionPatient",
        "SeriesNumber",
        "SliceLocation",
        "PixelPaddingValue",
        "StudyDate",
        "StudyInstanceUID",
        "TransferSyntaxUID",
    )
    assert got["(0010,0010)"]["value"] == "CompressedSamples^CT1"
    position = got["(0020,0032)"]
    assert position["VR"] == "DS"
    assert position["VM"] == 3
    assert position["value"] == [-158.135803, -179.035797, -75.699997]
    assert all(type(v) is float for v in position["value"])
    assert got["(0020,0011)"]["value"] == 1
    assert type(got["(0020,0011)"]["value"]) is int
    assert got["(0020,1041)"]["value"] == pytest.approx(-77.2040634155)
    assert fields(got["(0028,0120)"], "VR", "value") == {"VR": "SS", "value": -2000}
    assert got["(0008,0020)"]["value"] == "20040119"
    assert got["(0020,000D)"]["value"] == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    assert got["(0002,0010)"]["value"] == "1.2.840.10008.1.2.1"  # from the file meta


def test_private_elements_are_named_by_their_creator() -> None:
    got = ask(bundled("CT_small.dcm"), "(0009,0010)", "(0009,1001)", "(0043,1013)", "(0029,1010)")
    assert fields(got["(0009,0010)"], "name", "VR", "value") == {
        "name": "Private Creator",
        "VR": "LO",
        "value": "GEMS_IDEN_01",
    }
    assert got["(0009,1001)"] == {
        "tag": "(0009,1001)",
        "keyword": "",
        "name": "Full fidelity",
        "VR": "LO",
        "VM": 1,
        "value": "GE_GENESIS_FF",
        "present": True,
    }
    assert got["(0043,1013)"]["value"] == [107, 21, 4, 2, 20]
    assert got["(0029,1010)"] == {
        "tag": "(0029,1010)",
        "keyword": "",
        "name": "Private tag data",
        "VR": None,
        "VM": 0,
        "value": None,
        "present": False,
    }


def test_an_implicit_vr_file_gets_its_vrs_from_the_dictionary() -> None:
    got = ask(bundled("MR_small_implicit.dcm"), "Rows", "PixelSpacing", "PixelData")
    assert fields(got["(0028,0010)"], "VR", "value") == {"VR": "US", "value": 64}
    assert got["(0028,0030)"]["value"] == [0.3125, 0.3125]
    assert got["(7FE0,0010)"]["VR"] == "OW"
    assert got["(7FE0,0010)"]["value"] == {"size": 64 * 64 * 2}


def test_a_sequence_is_a_list_of_items_keyed_by_keyword() -> None:
    got = ask(bundled("rtplan.dcm"), "BeamSequence", "FractionGroupSequence")
    beams = got["(300A,00B0)"]
    assert beams["VR"] == "SQ"
    assert beams["VM"] == 1
    assert beams["present"] is True
    beam = beams["value"][0]
    assert beam["BeamName"] == {
        "tag": "(300A,00C2)",
        "keyword": "BeamName",
        "name": "Beam Name",
        "VR": "LO",
        "VM": 1,
        "value": "Field 1",
    }
    control_points = beam["ControlPointSequence"]["value"]
    assert len(control_points) == beam["NumberOfControlPoints"]["value"] == 2
    assert control_points[0]["GantryAngle"]["value"] == 0.0
    assert control_points[0]["BeamLimitingDevicePositionSequence"]["VR"] == "SQ"
    assert got["(300A,0070)"]["value"][0]["NumberOfBeams"]["value"] == 1


def test_private_elements_in_sequence_items_are_keyed_by_tag(tmp_path: Path) -> None:
    ds = dcmread(bundled("CT_small.dcm"))
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.private_block(0x0009, "GEMS_IDEN_01", create=True).add_new(0x01, "LO", "in an item")
    ds.ReferencedImageSequence = [item]
    ds.save_as(tmp_path / "item.dcm")
    got = ask(tmp_path / "item.dcm", "ReferencedImageSequence")
    [answer] = got["(0008,1140)"]["value"]
    assert list(answer) == ["ReferencedSOPInstanceUID", "(0009,0010)", "(0009,1001)"]
    assert answer["(0009,1001)"] == {
        "tag": "(0009,1001)",
        "keyword": "",
        "name": "Full fidelity",  # named by the creator in the same item
        "VR": "LO",
        "VM": 1,
        "value": "in an item",
    }
    assert answer["ReferencedSOPInstanceUID"]["value"] == "1.2.3.4"


def test_an_unknown_private_value_of_an_implicit_file_is_a_size() -> None:
    got = ask(bundled("priv_SQ.dcm"), "(3F03,1001)")
    assert fields(got["(3F03,1001)"], "VR", "value") == {"VR": "UN", "value": {"size": 166}}


def test_pixel_data_and_other_binary_values_are_sizes() -> None:
    got = ask(bundled("CT_small.dcm"), "PixelData", "(0043,1028)", "FileMetaInformationVersion")
    assert fields(got["(7FE0,0010)"], "VR", "VM", "value") == {
        "VR": "OW",
        "VM": 1,
        "value": {"size": 128 * 128 * 2},
    }
    assert got["(0043,1028)"]["value"] == {"size": 80}
    assert got["(0002,0001)"]["value"] == {"size": 2}


def test_binary_numbers_of_bulk_threshold_bytes_are_sizes() -> None:
    path = bundled("CT_small.dcm")
    assert ask(path, "(0043,1013)", bulk_threshold=10)["(0043,1013)"]["value"] == {"size": 10}
    assert ask(path, "(0043,1013)", bulk_threshold=11)["(0043,1013)"]["value"] == [
        107,
        21,
        4,
        2,
        20,
    ]


def test_long_text_beyond_the_threshold_is_still_read(tmp_path: Path) -> None:
    ds = dcmread(bundled("CT_small.dcm"))
    ds.ImageComments = "x" * 5000
    ds.save_as(tmp_path / "long.dcm")
    got = ask(tmp_path / "long.dcm", "ImageComments", "Rows")
    assert got["(0020,4000)"]["value"] == "x" * 5000
    assert got["(0028,0010)"]["value"] == 128


def test_attribute_tags_are_written_as_tags(tmp_path: Path) -> None:
    path = with_raw_values(tmp_path, FrameIncrementPointer=("AT", b"\x18\x00\x63\x10"))
    assert ask(path, "FrameIncrementPointer")["(0028,0009)"]["value"] == "(0018,1063)"


def test_an_invalid_number_is_its_raw_string_and_nothing_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = with_raw_values(
        tmp_path, SliceLocation=("DS", b"1A\\2 "), InstanceNumber=("IS", b"1.5 ")
    )
    with caplog.at_level(logging.DEBUG):
        got = ask(path, "SliceLocation", "InstanceNumber", "Rows")  # warnings are errors here
    assert fields(got["(0020,1041)"], "VR", "VM", "value") == {
        "VR": "DS",
        "VM": 2,
        "value": "1A\\2",
    }
    assert fields(got["(0020,0013)"], "VR", "VM", "value") == {"VR": "IS", "VM": 1, "value": "1.5"}
    assert got["(0028,0010)"]["value"] == 128
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []


def test_an_absent_tag_is_not_present_and_the_others_answer() -> None:
    got = ask(bundled("CT_small.dcm"), "Rows", "BeamSequence", "PatientName")
    assert got["(300A,00B0)"] == {
        "tag": "(300A,00B0)",
        "keyword": "BeamSequence",
        "name": "Beam Sequence",
        "VR": "SQ",
        "VM": 0,
        "value": None,
        "present": False,
    }
    assert got["(0028,0010)"]["present"] is True
    assert got["(0010,0010)"]["value"] == "CompressedSamples^CT1"


def test_no_tags_no_answers() -> None:
    assert read_tags(bundled("CT_small.dcm"), []) == []


# read_tags: large files and broken ones


@pytest.mark.parametrize("encapsulated", [False, True])
def test_huge_pixel_data_is_measured_not_read(
    tmp_path: Path, encapsulated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 200 * MB
    path = with_huge_pixels(tmp_path, size, encapsulated=encapsulated)
    expected = size + 3 * 8 if encapsulated else size  # three item headers
    specs = ("Rows", "PixelData", "DataSetTrailingPadding")
    read = count_bytes_read(monkeypatch)

    tracemalloc.start()
    try:
        got = ask(path, *specs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert got["(7FE0,0010)"]["value"] == {"size": expected}
    assert got["(FFFC,FFFC)"]["value"] == {"size": 4}  # read past the pixel data
    assert got["(0028,0010)"]["value"] == 128
    assert 0 < read[path] < 1 * MB  # the header and the padding, never the pixels
    assert peak < 2 * MB


def count_bytes_read(monkeypatch: pytest.MonkeyPatch) -> dict[Path, int]:
    """Bytes read through Path.open, by path, from now on."""
    counts: dict[Path, int] = {}
    real_open = Path.open

    class Counting(io.BufferedReader):
        path: Path

        def read(self, size: int | None = -1, /) -> bytes:
            data = super().read(size)
            counts[self.path] = counts.get(self.path, 0) + len(data)
            return data

    def counting_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode != "rb":
            return real_open(self, mode, *args, **kwargs)
        reader = Counting(io.FileIO(self, "rb"))
        reader.path = self
        return reader

    monkeypatch.setattr(Path, "open", counting_open)
    return counts


def test_a_huge_file_without_pixel_data_asked_stops_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = with_huge_pixels(tmp_path, 200 * MB)
    read = count_bytes_read(monkeypatch)
    got = ask(path, "Rows", "PatientName")
    assert got["(0028,0010)"]["value"] == 128
    assert 0 < read[path] < path.stat().st_size - 200 * MB + 1024  # the header only


def truncated_sequence() -> bytes:
    """CT_small's preamble and file meta, then a sequence whose item ends two bytes in."""
    data = bundled("CT_small.dcm").read_bytes()
    meta_end = 144 + struct.unpack("<I", data[140:144])[0]  # after (0002,0000)'s group length
    sequence = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    return data[:meta_end] + sequence + struct.pack("<HHI", 0xFFFE, 0xE000, 100) + b"\x08\x00"


@pytest.mark.parametrize("content", [b"", b"not dicom at all\n" * 50, truncated_sequence()])
def test_a_file_pydicom_cannot_read_is_unreadable(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    with pytest.raises(Unreadable, match=r"^not DICOM that pydicom can read"):
        read_tags(path, [Tag(0x00280010)])


def test_a_missing_file_is_the_callers_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_tags(tmp_path / "missing.dcm", [Tag(0x00280010)])
