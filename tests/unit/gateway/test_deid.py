"""The basic confidentiality profile on pydicom's own files, checked against another table."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from api_gateway import deid
from api_gateway.deid import DUMMIES, DeidentificationError, deidentify, write_deidentified
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from shared.errors import PermanentError, safe_error

# Some of pydicom's files hold invalid values on purpose; reading them in the test warns.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

SECRET = b"a test secret, not a real one"
TABLE_FILE = Path(__file__).with_name("ps3_15_table_e1_1_basic.tsv")
# Rows the standard added to Table E.1-1 after that transcription (2024-09) which these files
# contain, from the current edition (dicom-anonymizer's 2026c list has them, its 2024b does not).
NEWER_ROWS = {
    0x0040B020: "X/D",  # Waveform Annotation Sequence
    0x003A0020: "X",  # Multiplex Group Label
}
# Attributes deid adds or extends itself (PS3.15 E.1.1), so "kept" does not apply to them.
MARKS = {0x00120062, 0x00120063, 0x00120064}
FILES = [
    "CT_small.dcm",  # many private attributes
    "MR_small.dcm",
    "JPEG2000.dcm",  # encapsulated pixel data, Referenced Image Sequence (X/Z/U*)
    "rtplan.dcm",  # UIDs referenced inside sequences
    "rtdose.dcm",  # multi-frame (15 frames); emri_small.dcm is not bundled, only downloadable
    "examples_ybr_color.dcm",  # multi-frame (30 frames), private attributes
    "test-SR.dcm",  # D on sequences: Content Sequence
    "examples_overlay.dcm",  # Overlay Data and Comments (60xx,3000 / 60xx,4000)
    "liver_1frame.dcm",  # Source Image Sequence and many UIDs
    "waveform_ecg.dcm",  # private attributes, many X
]


def path_of(name: str) -> Path:
    """A file bundled with pydicom; never one it would download (unit tests stay offline)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with this pydicom"
    return Path(path)


def read(name: str) -> Dataset:
    return dcmread(path_of(name))


@dataclass(frozen=True)
class Table:
    """PS3.15 Table E.1-1 (basic profile column) as transcribed in TABLE_FILE."""

    single: dict[int, str]
    repeating: tuple[tuple[int, int, str], ...]  # (mask, value, action)

    @classmethod
    def load(cls) -> Table:
        single: dict[int, str] = {}
        repeating = []
        for line in TABLE_FILE.read_text().splitlines():
            if not line or line.startswith("#"):
                continue
            tag, action, _keyword = line.split("\t")
            if tag == "private":
                assert action == "X"  # checked by "private attributes are gone" below
            elif "x" in tag:
                mask = int("".join("0" if c == "x" else "F" for c in tag), 16)
                repeating.append((mask, int(tag.replace("x", "0"), 16), action))
            else:
                single[int(tag, 16)] = action
        return cls(single | NEWER_ROWS, tuple(repeating))

    def action(self, tag: BaseTag) -> str | None:
        if (found := self.single.get(int(tag))) is not None:
            return found
        return next((a for mask, value, a in self.repeating if int(tag) & mask == value), None)


TABLE = Table.load()


def test_the_table_is_the_whole_basic_profile() -> None:
    """A guard on the transcription: every action code, and the rows everyone knows."""
    assert len(TABLE.single) > 600
    assert set(TABLE.single.values()) == {
        "D",
        "Z",
        "X",
        "U",
        "Z/D",
        "X/Z",
        "X/D",
        "X/Z/D",
        "X/Z/U*",
    }
    assert TABLE.single[0x00100010] == "Z"  # Patient's Name
    assert TABLE.single[0x00100020] == "Z/D"  # Patient ID
    assert TABLE.single[0x0020000D] == "U"  # Study Instance UID
    assert TABLE.single[0x00081140] == "X/Z/U*"  # Referenced Image Sequence
    assert 0x00080016 not in TABLE.single  # SOP Class UID is kept


class Checker:
    """Walks an original data set and its de-identified copy side by side."""

    def __init__(self) -> None:
        self.uids: dict[str, str] = {}  # original UID -> its replacement, across all calls
        self.checked: dict[str, int] = {}  # action -> how many attributes were checked

    def compare(self, before: Dataset, after: Dataset, where: str = "") -> None:
        for elem in before:
            tag, here = elem.tag, f"{where}{elem.tag}"
            got = after.get(tag, None)
            if tag.is_private:
                assert got is None, f"{here}: private attribute kept"
                continue
            action = TABLE.action(tag)
            if action is None:
                self.kept(elem, got, here)
            else:
                self.checked[action] = self.checked.get(action, 0) + 1
                outcome = self.outcome(elem, got, here)
                allowed = set(action.replace("U*", "U").split("/"))
                if elem.VR == "UI" and "D" in allowed:
                    allowed.add("U")  # a new UID is the dummy of a UI
                if elem.is_empty and outcome in ("X", "Z"):
                    continue  # nothing was there to protect
                assert outcome in allowed, f"{here} ({elem.keyword}): {action} but {outcome}"

    def kept(self, elem: DataElement, got: DataElement | None, here: str) -> None:
        if int(elem.tag) in MARKS or (elem.tag.element == 0 and elem.tag.group != 2):
            return  # what deid adds, and retired group lengths, which it drops
        assert got is not None, f"{here} ({elem.keyword}) is not in the profile but was removed"
        if elem.VR == "SQ":
            self.items(elem, got, here)
        else:
            assert got.value == elem.value, f"{here} ({elem.keyword}) should be kept"

    def outcome(self, elem: DataElement, got: DataElement | None, here: str) -> str:
        if got is None:
            return "X"
        if got.is_empty or (got.VR == "SQ" and len(got.value) == 0):
            return "Z"
        if elem.VR == "SQ":
            if TABLE.action(elem.tag) == "X/Z/U*":
                self.items(elem, got, here)  # kept, and the UIDs inside checked by their rows
                return "U"
            for item in got.value:
                self.dummies(item, f"{here}>")
            return "D"
        if elem.VR == "UI":
            self.replaced_uids(elem, got, here)
            return "U"
        assert is_dummy(got), f"{here}: {got.value!r} is not a dummy"
        return "D"

    def items(self, elem: DataElement, got: DataElement, here: str) -> None:
        assert len(got.value) == len(elem.value), f"{here}: items lost"
        for i, (before, after) in enumerate(zip(elem.value, got.value, strict=True)):
            self.compare(before, after, f"{here}[{i}]>")

    def dummies(self, item: Dataset, here: str) -> None:
        """D on a sequence: no original value left but UIDs (replaced or, for classes, kept)."""
        for elem in item:
            if elem.VR == "SQ":
                for sub in elem.value:
                    self.dummies(sub, f"{here}{elem.tag}>")
            elif elem.VR == "UI":
                assert all(UID(v).is_valid for v in _values(elem)), f"{here}{elem.tag}"
            elif not elem.is_empty:
                assert is_dummy(elem), f"{here}{elem.tag}: {elem.value!r} is not a dummy"

    def replaced_uids(self, elem: DataElement, got: DataElement, here: str) -> None:
        old, new = _values(elem), _values(got)
        assert len(old) == len(new), here
        for o, n in zip(old, new, strict=True):
            assert n != o, f"{here}: UID kept"
            assert UID(n).is_valid, f"{here}: {n} is not a valid UID"
            assert self.uids.setdefault(o, n) == n, f"{here}: {o} mapped two ways"


def is_dummy(elem: DataElement) -> bool:
    """deid's dummy for the VR (a number may read back as 0.0, a string as a PersonName)."""
    dummy = DUMMIES[elem.VR]
    return bool(elem.value == dummy) or str(elem.value) == str(dummy)


def _values(elem: DataElement) -> list[str]:
    return [str(v) for v in (elem.value if elem.VM > 1 else [elem.value])]


def all_elements(ds: Dataset) -> list[DataElement]:
    found: list[DataElement] = []
    ds.walk(lambda _ds, elem: found.append(elem))
    return found


@pytest.mark.parametrize("name", FILES)
def test_every_attribute_the_profile_names_gets_its_action(name: str, tmp_path: Path) -> None:
    before = read(name)
    write_deidentified(path_of(name), tmp_path / "out.dcm", SECRET)
    after = dcmread(tmp_path / "out.dcm")

    checker = Checker()
    checker.compare(before, after)

    assert checker.checked, "the file has no attribute the profile names"
    assert not [e for e in all_elements(after) if e.tag.is_private]
    # distinct UIDs stay distinct
    assert len(set(checker.uids.values())) == len(checker.uids)
    assert after.SOPClassUID == before.SOPClassUID
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    assert after.file_meta.MediaStorageSOPClassUID == before.SOPClassUID
    assert after.PatientIdentityRemoved == "YES"
    codes = [
        (c.CodeValue, c.CodingSchemeDesignator) for c in after.DeidentificationMethodCodeSequence
    ]
    assert ("113100", "DCM") in codes
    assert any("Basic Application Level Confidentiality" in v for v in after.DeidentificationMethod)
    assert any("dicom-anonymizer" in v for v in after.DeidentificationMethod)
    if "PixelData" in before:
        assert after.PixelData == before.PixelData


def test_the_files_cover_every_kind_of_action() -> None:
    checker = Checker()
    for name in FILES:
        ds = read(name)
        copy_ = copy.deepcopy(ds)
        deidentify(copy_, SECRET)
        checker.compare(ds, copy_)
    assert set(checker.checked) >= {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}


def test_the_written_file_decodes_to_the_same_pixels(tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "JPEG2000.dcm", "rtdose.dcm"):
        write_deidentified(path_of(name), tmp_path / name, SECRET)
        raw = (tmp_path / name).read_bytes()
        assert raw[128:132] == b"DICM"
        original, copy_ = read(name), dcmread(tmp_path / name)
        assert copy_.PixelData == original.PixelData
        np.testing.assert_array_equal(copy_.pixel_array, original.pixel_array)


def test_uids_are_the_same_for_every_instance_and_every_call_with_the_secret() -> None:
    """Two instances of one study, written apart, land in one study; the secret decides."""
    plain, rle = read("MR_small.dcm"), read("MR_small_RLE.dcm")
    assert plain.StudyInstanceUID == rle.StudyInstanceUID
    deidentify(plain, SECRET)
    deidentify(rle, SECRET)
    assert plain.StudyInstanceUID == rle.StudyInstanceUID
    assert plain.SeriesInstanceUID == rle.SeriesInstanceUID
    assert plain.FrameOfReferenceUID == rle.FrameOfReferenceUID
    assert plain.StudyInstanceUID != read("MR_small.dcm").StudyInstanceUID

    other = read("MR_small.dcm")
    deidentify(other, b"another secret")
    assert other.StudyInstanceUID != plain.StudyInstanceUID
    assert other.SOPInstanceUID != plain.SOPInstanceUID


def test_a_reference_follows_the_instance_it_points_to() -> None:
    """A Referenced SOP Instance UID in a sequence maps to the referenced instance's new UID."""
    image = read("CT_small.dcm")
    referring = read("MR_small.dcm")
    item = Dataset()
    item.ReferencedSOPClassUID = image.SOPClassUID
    item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    referring.ReferencedImageSequence = Sequence([item])
    deidentify(image, SECRET)
    deidentify(referring, SECRET)
    ref = referring.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == image.SOPClassUID  # a class UID is kept


def test_uids_are_the_same_in_another_process() -> None:
    """Deterministic across processes and restarts: no state but the secret."""
    here = read("CT_small.dcm")
    deidentify(here, SECRET)
    code = (
        "import sys; from pydicom import dcmread; from api_gateway.deid import deidentify;"
        "ds = dcmread(sys.argv[1]); deidentify(ds, sys.argv[2].encode());"
        "print(ds.StudyInstanceUID, ds.SOPInstanceUID)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path_of("CT_small.dcm")), SECRET.decode()],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[3],
        timeout=60,
    )
    assert done.stdout.split() == [here.StudyInstanceUID, here.SOPInstanceUID]


def test_twice_keeps_one_profile_code_and_adds_the_method_again() -> None:
    ds = read("CT_small.dcm")
    deidentify(ds, SECRET)
    first = list(ds.DeidentificationMethod)
    deidentify(ds, SECRET)
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert list(ds.DeidentificationMethod) == first + first


@pytest.mark.filterwarnings("ignore")  # reading odd files back may warn; deid itself is quiet
def test_odd_files_are_written_or_refused_with_our_error(tmp_path: Path) -> None:
    """Every file bundled with pydicom: a de-identified copy, or a DeidentificationError."""
    folder = path_of("CT_small.dcm").parent
    written = refused = 0
    for source in sorted(p for p in folder.rglob("*") if p.is_file()):
        dest = tmp_path / "out.dcm"
        try:
            write_deidentified(source, dest, SECRET)
        except DeidentificationError:
            refused += 1
            continue
        copy_ = dcmread(dest)
        assert copy_.PatientIdentityRemoved == "YES", source.name
        assert not [e for e in all_elements(copy_) if e.tag.is_private], source.name
        written += 1
    assert written > 100
    assert refused  # the DICOMDIRs, files without a preamble, README.txt...
    assert [p.name for p in tmp_path.iterdir()] == ["out.dcm"]  # no temporary left behind


def test_errors_and_logs_hold_no_patient_data(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    name = str(read("CT_small.dcm").PatientName)
    caplog.set_level(logging.DEBUG)
    write_deidentified(path_of("CT_small.dcm"), tmp_path / "ok.dcm", SECRET)

    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text(f"{name} 1CT1")
    with pytest.raises(DeidentificationError) as not_read:
        write_deidentified(not_dicom, tmp_path / "out.dcm", SECRET)

    def fail(ds: Dataset) -> None:
        raise ValueError(f"cannot handle {ds.PatientName}")  # a library quoting a value

    monkeypatch.setattr(deid, "_mark", fail)
    with pytest.raises(DeidentificationError) as failed:
        write_deidentified(path_of("CT_small.dcm"), tmp_path / "out.dcm", SECRET)

    for exc in (not_read.value, failed.value):
        assert isinstance(exc, PermanentError)
        assert name not in str(exc)
        assert "1CT1" not in str(exc)
        assert exc.__cause__ is None
        assert exc.__suppress_context__
        assert safe_error(exc) == str(exc)
    assert "ValueError" in str(failed.value)
    assert not (tmp_path / "out.dcm").exists()
    out, err = capfd.readouterr()
    assert name not in caplog.text + out + err


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        deidentify(read("CT_small.dcm"), b"")
