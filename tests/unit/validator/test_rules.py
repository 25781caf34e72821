"""check_file: real files from pydicom are accepted, generated bad inputs get their exact codes."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder  # type: ignore[attr-defined]
from pydicom.uid import (
    HEVCMP51,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from validator_service import structure
from validator_service.rules import MAX_NESTING, Limits, Verdict, check_file

from shared.events import Reason
from tests.support import dicom_ids
from tests.unit.validator import badfiles as bad

CT_PATIENT_VALUES = ("CompressedSamples^CT1", "1CT1", "JFK IMAGING CENTER")  # in CT_small.dcm


def check(tmp_path: Path, data: bytes, limits: Limits | None = None) -> Verdict:
    path = tmp_path / "upload.dcm"
    path.write_bytes(data)
    return check_file(path, limits or Limits())


def codes(verdict: Verdict) -> set[str]:
    return {reason.code for reason in verdict.reasons}


def ct_bytes() -> bytes:
    return bad.testdata("CT_small.dcm").read_bytes()


def ct_with(change: Callable[[Dataset], object]) -> bytes:
    ds = bad.read("CT_small.dcm")
    change(ds)
    return bad.part10(ds, ds.file_meta)


# --- accepted: real files from pydicom's test data ---------------------------------------------

ACCEPTED = [
    # name, has pixels, warnings expected
    ("CT_small.dcm", True, set()),  # native Explicit VR Little Endian
    ("MR_small.dcm", True, set()),
    ("MR_small_implicit.dcm", True, set()),
    ("MR_small_bigendian.dcm", True, set()),  # Explicit VR Big Endian
    ("JPEG2000.dcm", True, set()),
    ("MR_small_jp2klossless.dcm", True, set()),  # JPEG 2000 lossless
    ("SC_rgb_rle.dcm", True, set()),
    ("MR_small_RLE.dcm", True, set()),
    ("SC_rgb_jpeg_gdcm.dcm", True, set()),  # JPEG Lossless SV1
    ("SC_rgb_jpeg_dcmtk.dcm", True, set()),  # JPEG Baseline, YBR_FULL
    ("MR_small_jpeg_ls_lossless.dcm", True, set()),  # JPEG-LS
    ("JPGExtended.dcm", True, set()),  # JPEG Extended 12-bit
    ("image_dfl.dcm", True, set()),  # Deflated Explicit VR Little Endian
    ("rtdose.dcm", True, {"meta-mismatch"}),  # 15 frames, native
    ("SC_rgb_rle_2frame.dcm", True, set()),  # 2 frames, RLE
    ("examples_ybr_color.dcm", True, set()),  # 30 frames, JPEG Baseline YBR_FULL_422
    ("SC_ybr_full_422_uncompressed.dcm", True, set()),  # native YBR_FULL_422 (2/3 length)
    ("liver_1frame.dcm", True, set()),  # segmentation, BitsAllocated 1
    ("6154", True, set()),  # dicomdirtests CR, MONOCHROME1
    ("MR_small_padded.dcm", True, {"pixel-data-padding"}),  # 128 zero bytes after the pixels
    ("rtplan.dcm", False, {"meta-mismatch"}),  # no pixels
    ("test-SR.dcm", False, set()),  # structured report, no pixels
]


@pytest.mark.parametrize(("name", "has_pixels", "warned"), ACCEPTED)
def test_real_file_is_accepted(name: str, has_pixels: bool, warned: set[str]) -> None:
    ds = bad.read(name)
    if not get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
        warned = warned | {"no-decoder"}  # the plugins are installed with the descriptor extra

    verdict = check_file(bad.testdata(name), Limits())

    assert verdict.accepted, verdict.reasons
    assert verdict.has_pixels is has_pixels
    assert {warning.code for warning in verdict.warnings} == warned
    assert verdict.ids == dicom_ids(ds)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("ExplVR_LitEndNoMeta.dcm", "missing-file-meta"),  # a bare dataset, no preamble
        ("ExplVR_BigEndNoMeta.dcm", "missing-file-meta"),
        ("rtstruct.dcm", "missing-file-meta"),
        ("meta_missing_tsyntax.dcm", "bad-file-meta"),
        ("MR_truncated.dcm", "truncated"),  # ends inside Pixel Data
        ("rtplan_truncated.dcm", "truncated"),  # ends inside a sequence
        ("DICOMDIR", "missing-attribute"),  # a media directory, not an instance
        ("README.txt", "not-dicom"),
        ("zipMR.gz", "not-dicom"),
    ],
)
def test_bad_real_file_is_rejected(name: str, code: str) -> None:
    verdict = check_file(bad.testdata(name), Limits())

    assert code in codes(verdict)
    assert verdict.ids is None


# --- rejected: generated inputs, each with its exact reason codes ------------------------------


def meta_end(data: bytes) -> int:
    """Where group 0002 ends, from its (0002,0000) group length."""
    return 132 + 12 + struct.unpack_from("<L", data, 140)[0]


def value_offset(data: bytes, tag: int) -> int:
    """Where the value of the first explicit VR element with this tag starts."""
    marker = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    start = data.index(marker, 132)
    return start + (12 if data[start + 4 : start + 6] in (b"OB", b"OW", b"SQ") else 8)


def truncated_in_sequence() -> bytes:
    data = bad.nested_sequences(3, defined_length=False)
    return data[: value_offset(data, 0x0040A730) + 30]


def with_element(data_element: bytes) -> bytes:
    """A valid image with one more element just before Pixel Data."""
    ds = bad.image()
    return bad.part10(
        bad.without_pixels(ds) + data_element + bad.element(0x7FE00010, "OB", ds.PixelData)
    )


def float_image(bits: int) -> bytes:
    """An 8 x 8 image in (7FE0,0008) Float Pixel Data."""
    ds = bad.image()
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = bits
    return bad.part10(bad.encode(ds) + bad.element(0x7FE00008, "OF", bytes(8 * 8 * 4)))


REJECTED: list[tuple[str, Callable[[], bytes], set[str]]] = [
    ("empty", lambda: b"", {"empty-file"}),
    ("random-bytes", lambda: bad.random_bytes(4096), {"not-dicom"}),
    ("text", lambda: b"Patient notes, not an image.\n" * 40, {"not-dicom"}),
    ("png", bad.png, {"not-dicom"}),
    ("cut-inside-preamble", lambda: ct_bytes()[:100], {"not-dicom"}),
    ("bare-dataset", lambda: bad.encode(bad.image()), {"missing-file-meta"}),
    ("dicm-without-group-2", lambda: bad.PREAMBLE + bad.encode(bad.image()), {"missing-file-meta"}),
    ("meta-without-ts", lambda: bad.part10(bad.image(), bad.meta(ts="")), {"bad-file-meta"}),
    (
        "meta-without-sop-class",
        lambda: bad.part10(bad.image(), bad.meta(sop_class="")),
        {"bad-file-meta"},
    ),
    ("meta-without-sop", lambda: bad.part10(bad.image(), bad.meta(sop="")), {"bad-file-meta"}),
    ("ts-malformed", lambda: bad.part10(bad.image(), bad.meta(ts="1.2.abc")), {"invalid-uid"}),
    (
        "ts-unknown",
        lambda: bad.part10(bad.image(), bad.meta(ts="1.2.826.0.1.3680043.8.498.99")),
        {"unsupported-transfer-syntax"},
    ),
    ("no-study-uid", lambda: bad.image_with(StudyInstanceUID=None), {"missing-attribute"}),
    ("no-series-uid", lambda: bad.image_with(SeriesInstanceUID=None), {"missing-attribute"}),
    ("no-sop-uid", lambda: bad.image_with(SOPInstanceUID=None), {"missing-attribute"}),
    ("no-sop-class-uid", lambda: bad.image_with(SOPClassUID=None), {"missing-attribute"}),
    ("empty-study-uid", lambda: bad.image_with(StudyInstanceUID=""), {"missing-attribute"}),
    ("uid-letters", lambda: bad.image_with(StudyInstanceUID="1.2.abc"), {"invalid-uid"}),
    ("uid-65-chars", lambda: bad.image_with(SeriesInstanceUID="1." + "2" * 63), {"invalid-uid"}),
    ("uid-leading-zero", lambda: bad.image_with(SOPClassUID="1.02.3"), {"invalid-uid"}),
    ("uid-empty-part", lambda: bad.image_with(StudyInstanceUID="1..2"), {"invalid-uid"}),
    ("uid-two-values", lambda: bad.image_with(StudyInstanceUID=["1.2", "1.3"]), {"invalid-uid"}),
    ("cut-in-meta-header", lambda: ct_bytes()[:140], {"truncated"}),
    ("cut-in-last-meta-element", lambda: ct_bytes()[: meta_end(ct_bytes()) - 5], {"truncated"}),
    (
        "cut-mid-element",
        lambda: ct_bytes()[: value_offset(ct_bytes(), 0x00080016) + 5],
        {"truncated"},
    ),
    ("cut-mid-pixel-data", lambda: ct_bytes()[:-1001], {"truncated"}),
    ("cut-mid-fragment", lambda: bad.testdata("JPEG2000.dcm").read_bytes()[:-100], {"truncated"}),
    ("cut-in-sequence-item", truncated_in_sequence, {"truncated"}),
    (
        "length-0xFFFFFFF0",
        lambda: with_element(bad.element(0x00091001, "OB", b"abcd", length=0xFFFFFFF0)),
        {"truncated"},
    ),
    (
        "pixel-length-0xFFFFFFF0",
        lambda: bad.part10(
            bad.without_pixels(bad.image()) + bad.element(0x7FE00010, "OB", b"", 0xFFFFFFF0)
        ),
        {"truncated"},
    ),
    (
        "undefined-length-without-delimiter",
        lambda: with_element(bad.element(0x00091001, "OB", b"abcdefgh", length=bad.UNDEFINED)),
        {"truncated"},
    ),
    (
        "item-delimiter-at-top-level",
        lambda: with_element(bad.item(b"", 0xFFFEE00D)),
        {"unreadable"},
    ),
    (
        "pixel-data-short",
        lambda: ct_with(lambda ds: setattr(ds, "PixelData", ds.PixelData[:-512])),
        {"pixel-data-length"},
    ),
    ("rows-too-many", lambda: ct_with(lambda ds: setattr(ds, "Rows", 256)), {"pixel-data-length"}),
    ("rows-too-few", lambda: ct_with(lambda ds: setattr(ds, "Rows", 64)), {"pixel-data-length"}),
    (
        "pixel-data-trailing-data",
        lambda: ct_with(lambda ds: setattr(ds, "PixelData", ds.PixelData + b"\x01\x02" * 64)),
        {"pixel-data-length"},
    ),
    (
        "absurd-dimensions",
        lambda: bad.image_with(Rows=65535, Columns=65535, NumberOfFrames=1000),
        {"too-large-decoded"},
    ),
    ("no-rows", lambda: bad.image_with(Rows=None), {"pixel-attributes"}),
    ("zero-columns", lambda: bad.image_with(Columns=0), {"pixel-attributes"}),
    ("bits-allocated-12", lambda: bad.image_with(BitsAllocated=12), {"pixel-attributes"}),
    ("bits-stored-over-allocated", lambda: bad.image_with(BitsStored=16), {"pixel-attributes"}),
    ("two-samples", lambda: bad.image_with(SamplesPerPixel=2), {"pixel-attributes"}),
    (
        "no-photometric",
        lambda: bad.image_with(PhotometricInterpretation=None),
        {"pixel-attributes"},
    ),
    (
        "rgb-one-sample",
        lambda: bad.image_with(PhotometricInterpretation="RGB"),
        {"pixel-attributes"},
    ),
    (
        "unknown-photometric",
        lambda: bad.image_with(PhotometricInterpretation="XYZ"),
        {"pixel-attributes"},
    ),
    ("zero-frames", lambda: bad.image_with(NumberOfFrames=0), {"pixel-attributes"}),
    (
        "two-pixel-data-elements",
        lambda: with_element(bad.element(0x7FE00008, "OF", bytes(64 * 4))),
        {"pixel-attributes"},
    ),
    ("float-pixels-16-bits", lambda: float_image(bits=16), {"pixel-attributes"}),
    ("no-fragments", lambda: bad.encapsulated([]), {"pixel-data-encapsulation"}),
    (
        "offset-table-count",
        lambda: bad.encapsulated([b"ab", b"cd"], offsets=[0], frames=2),
        {"pixel-data-encapsulation"},
    ),
    (
        "offset-table-off-item",
        lambda: bad.encapsulated([b"ab", b"cd"], offsets=[0, 12], frames=2),
        {"pixel-data-encapsulation"},
    ),
    (
        "fewer-fragments-than-frames",
        lambda: bad.encapsulated([b"ab"], frames=3),
        {"pixel-data-encapsulation"},
    ),
    (
        "defined-length-in-jpeg",
        lambda: bad.part10(bad.image(), bad.meta(JPEGBaseline8Bit)),
        {"pixel-data-encapsulation"},
    ),
    (
        "encapsulated-in-native",
        lambda: bad.encapsulated([b"ab"], ts=ExplicitVRLittleEndian),
        {"pixel-data-encapsulation"},
    ),
    ("sequences-5000-undefined", lambda: bad.nested_sequences(5000, False), {"too-deep"}),
    ("sequences-5000-defined", lambda: bad.nested_sequences(5000, True), {"too-deep"}),
    (
        f"sequences-{MAX_NESTING + 1}",
        lambda: bad.nested_sequences(MAX_NESTING + 1, False),
        {"too-deep"},
    ),
    # found by fuzzing: an item or a sequence delimiter where a data element should be
    (
        "item-at-top-level",
        lambda: with_element(b"\xfe\xff\x00\xe0" + struct.pack("<L", 4) + b"abcd"),
        {"unreadable"},
    ),
    ("delimiter-at-top-level", lambda: with_element(b"\xfe\xff\xdd\xe0\0\0\0\0"), {"unreadable"}),
    ("deflate-cut", lambda: bad.deflated(bad.image())[:-20], {"truncated"}),
    (
        "deflate-garbage",
        lambda: bad.part10(b"\xff" * 64, bad.meta(DeflatedExplicitVRLittleEndian)),
        {"unreadable"},
    ),
]


@pytest.mark.parametrize(("make", "expected"), [pytest.param(m, e, id=i) for i, m, e in REJECTED])
def test_bad_input_is_rejected_with_its_code(
    tmp_path: Path, make: Callable[[], bytes], expected: set[str]
) -> None:
    verdict = check(tmp_path, make())

    assert codes(verdict) == expected, verdict.reasons
    assert not verdict.accepted
    assert verdict.ids is None
    assert all(reason.message for reason in verdict.reasons)


@pytest.mark.parametrize(
    ("keyword", "tag"),
    [
        ("StudyInstanceUID", "(0020,000D)"),
        ("SeriesInstanceUID", "(0020,000E)"),
        ("SOPInstanceUID", "(0008,0018)"),
        ("SOPClassUID", "(0008,0016)"),
    ],
)
def test_missing_uid_is_named(tmp_path: Path, keyword: str, tag: str) -> None:
    verdict = check(tmp_path, bad.image_with(**{keyword: None}))

    assert verdict.reasons == [
        Reason(code="missing-attribute", message=f"{tag} {keyword} is missing")
    ]


def test_all_missing_uids_are_reported_together(tmp_path: Path) -> None:
    data = bad.image_with(StudyInstanceUID=None, SeriesInstanceUID=None, SOPInstanceUID=None)

    verdict = check(tmp_path, data)

    assert [reason.code for reason in verdict.reasons] == ["missing-attribute"] * 3


def test_file_over_the_size_limit_is_rejected_unread(tmp_path: Path) -> None:
    verdict = check(tmp_path, ct_bytes(), Limits(max_file_size=1000))

    assert codes(verdict) == {"too-large"}


def test_decoded_size_is_checked_against_the_limit(tmp_path: Path) -> None:
    verdict = check(tmp_path, ct_bytes(), Limits(max_pixel_bytes=128 * 128 * 2 - 1))

    assert codes(verdict) == {"too-large-decoded"}


def test_deflate_bomb_is_stopped_at_the_inflate_limit(tmp_path: Path) -> None:
    data = bad.deflated(bad.image(), filler=8 * 1024 * 1024)  # about 8 KB on disk
    assert len(data) < 20_000

    rejected = check(tmp_path, data, Limits(max_inflated_size=1024 * 1024))
    accepted = check(tmp_path, data, Limits(max_inflated_size=16 * 1024 * 1024))

    assert codes(rejected) == {"too-large-decoded"}
    assert accepted.accepted, accepted.reasons


def test_generated_deflated_file_is_accepted(tmp_path: Path) -> None:
    verdict = check(tmp_path, bad.deflated(bad.image()))

    assert verdict.accepted, verdict.reasons
    assert verdict.ids is not None
    assert verdict.ids.transfer_syntax_uid == DeflatedExplicitVRLittleEndian


@pytest.mark.parametrize("defined_length", [False, True])
def test_moderate_nesting_is_accepted(tmp_path: Path, defined_length: bool) -> None:
    verdict = check(tmp_path, bad.nested_sequences(MAX_NESTING, defined_length))

    assert verdict.accepted, verdict.reasons


@pytest.mark.parametrize(
    "sequence",
    [
        bad.element(0x0040A730, "SQ", bad.item(b"") * 20_000),
        bad.element(
            0x0040A730, "SQ", bad.item(b"") * 20_000 + bad.item(b"", 0xFFFEE0DD), 0xFFFFFFFF
        ),
        bad.element(0x0040A730, "SQ", bytes(8 * 20_000)),  # zeros: "items" without item tags
    ],
    ids=["defined-length", "undefined-length", "zeros"],
)
def test_element_count_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sequence: bytes
) -> None:
    monkeypatch.setattr(structure, "MAX_READS", 10_000)

    verdict = check(tmp_path, with_element(sequence))

    assert codes(verdict) == {"too-many-elements"}


def test_meta_mismatch_is_a_warning(tmp_path: Path) -> None:
    data = bad.part10(bad.image(), bad.meta(sop="1.2.826.0.1.3680043.8.498.13"))

    verdict = check(tmp_path, data)

    assert verdict.accepted
    assert [warning.code for warning in verdict.warnings] == ["meta-mismatch"]


def test_zero_padding_after_pixel_data_is_a_warning(tmp_path: Path) -> None:
    data = ct_with(lambda ds: setattr(ds, "PixelData", ds.PixelData + bytes(64)))

    verdict = check(tmp_path, data)

    assert verdict.accepted
    assert [warning.code for warning in verdict.warnings] == ["pixel-data-padding"]


def test_syntax_without_decoder_is_accepted_with_a_warning(tmp_path: Path) -> None:
    data = bad.encapsulated([b"\0\0\0\x01 an H.265 stream"], ts=HEVCMP51)

    verdict = check(tmp_path, data)

    assert verdict.accepted, verdict.reasons
    assert [warning.code for warning in verdict.warnings] == ["no-decoder"]


def test_float_pixel_data_is_accepted(tmp_path: Path) -> None:
    verdict = check(tmp_path, float_image(bits=32))

    assert verdict.accepted, verdict.reasons
    assert verdict.has_pixels


def test_elements_after_pixel_data_are_read(tmp_path: Path) -> None:
    ds = bad.image()
    trailing = bad.element(0xFFFCFFFC, "OB", bytes(16))  # Data Set Trailing Padding
    whole = bad.part10(bad.encode(ds) + trailing)

    assert check(tmp_path, whole).accepted
    assert codes(check(tmp_path, whole[:-4])) == {"truncated"}


def test_encapsulated_frames_with_offset_table_are_accepted(tmp_path: Path) -> None:
    verdict = check(tmp_path, bad.encapsulated([b"ab", b"cd"], offsets=[0, 10], frames=2))

    assert verdict.accepted, verdict.reasons


# --- robustness ---------------------------------------------------------------------------------


def test_messages_never_quote_patient_data(tmp_path: Path) -> None:
    data = ct_bytes()
    cuts = [data[:n] for n in range(200, len(data), 997)]

    for variant in [*cuts, *bad.mutations(data, 60, seed=7)]:
        verdict = check(tmp_path, variant)
        text = " ".join(r.message for r in [*verdict.reasons, *verdict.warnings])
        assert not any(value in text for value in CT_PATIENT_VALUES), text


def test_never_raises_on_mutated_files(tmp_path: Path) -> None:
    """300 seeded bit flips, overwritten lengths, cut-outs and truncations of CT_small.dcm."""
    seen: set[str] = set()
    slowest = 0.0
    for variant in bad.mutations(ct_bytes(), 300):
        started = time.perf_counter()
        verdict = check(tmp_path, variant)
        slowest = max(slowest, time.perf_counter() - started)
        assert isinstance(verdict, Verdict)
        assert verdict.accepted == (verdict.ids is not None) == (not verdict.reasons)
        seen |= codes(verdict)
    assert slowest < 2.0
    assert "truncated" in seen


def test_concurrent_checks_agree_with_serial_ones() -> None:
    names = ["CT_small.dcm", "JPEG2000.dcm", "MR_truncated.dcm", "image_dfl.dcm", "rtplan.dcm"]
    paths = [bad.testdata(name) for name in names] * 4

    serial = [check_file(path, Limits()) for path in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda path: check_file(path, Limits()), paths))

    assert parallel == serial


def test_verdict_keeps_its_invariant() -> None:
    with pytest.raises(ValueError, match="ids exactly when"):
        Verdict(ids=None, reasons=[], warnings=[], has_pixels=False)
    assert not Verdict(None, [Reason(code="x", message="y")], [], False).accepted
