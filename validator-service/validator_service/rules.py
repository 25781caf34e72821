"""The acceptance rules for an uploaded file: one pure ``check_file`` that returns a Verdict."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, AllTransferSyntaxes, DeflatedExplicitVRLittleEndian

from shared.dicom import quiet_pydicom
from shared.events import DicomIds, Reason
from validator_service.findings import _exception_name, _Findings, _label, _reason, _Stop
from validator_service.pixels import _check_pixels
from validator_service.structure import (
    MAX_NESTING,
    MAX_READS,
    _Budget,
    _inflate,
    _parse_failure,
    _read_body,
    _read_meta,
    _require_part10,
)

__all__ = ["MAX_NESTING", "MAX_READS", "Limits", "Verdict", "check_file"]

_TS, _MEDIA_CLASS, _MEDIA_INSTANCE = 0x00020010, 0x00020002, 0x00020003
_STUDY, _SERIES, _SOP_INSTANCE, _SOP_CLASS = 0x0020000D, 0x0020000E, 0x00080018, 0x00080016
_MODALITY = 0x00080060
_ABSENT = ("is missing", "is empty")
_MODALITY_FORM = re.compile(r"[A-Z0-9_ ]{1,16}")


@dataclass(frozen=True)
class Limits:
    """Size budgets; the defaults suit the upload limit of the gateway."""

    max_file_size: int = 100 * 1024 * 1024  # bytes; the upload size limit
    max_pixel_bytes: int = 2 * 1024**3  # decoded pixel data: Rows*Cols*Samples*bytes*Frames
    max_inflated_size: int = 1024**3  # cap when inflating a Deflated Explicit VR LE dataset


@dataclass(frozen=True)
class Verdict:
    """What the rules decided about one file."""

    ids: DicomIds | None  # set iff accepted
    reasons: list[Reason]  # non-empty iff rejected
    warnings: list[Reason]  # accepted-but-odd things
    has_pixels: bool

    def __post_init__(self) -> None:
        if (self.ids is None) == (not self.reasons):
            raise ValueError("a Verdict has ids exactly when it has no reasons")

    @property
    def accepted(self) -> bool:
        return not self.reasons


def check_file(path: Path, limits: Limits) -> Verdict:
    """Decide whether the file at path is acceptable DICOM. Never raises for any file content.

    Only a file that cannot be read at all (``OSError`` from stat/open/read) raises, so that a
    worker can retry; whatever the bytes are, the answer is a Verdict. Structure is checked
    first (size, Part 10 header, file meta, nesting, truncation); if it is broken, the dataset
    checks are skipped because they would only report its consequences. No pixel data is
    decoded and no message quotes a data value: only tags, UIDs, sizes and byte offsets
    (offsets in a deflated file count from the start of the inflated dataset).

    pydicom reports some defects as warnings and log records, which may quote values; both
    are silenced where it parses (``quiet_pydicom``: this thread or task only, no lock), and
    the Verdict says what matters.
    """
    size = path.stat().st_size
    if size > limits.max_file_size:
        return _rejected(_too_large(size, limits.max_file_size))
    with path.open("rb") as file:
        data = file.read(limits.max_file_size + 1)  # the file may grow after stat
    if len(data) > limits.max_file_size:
        return _rejected(_too_large(len(data), limits.max_file_size))
    try:
        with quiet_pydicom():
            return _check(data, limits)
    except _Stop as stop:
        return _rejected(*stop.reasons)
    except Exception as exc:  # whatever the parser trips over is a verdict, not a crash
        return _rejected(_parse_failure(exc, "while checking the file"))


def _check(data: bytes, limits: Limits) -> Verdict:
    _require_part10(data)
    budget = _Budget()
    meta, body_start = _read_meta(data, budget)
    found = _Findings()
    media_class, media_instance = _check_media_uids(meta, found)
    ts = _check_transfer_syntax(meta, found)
    body = data
    if ts == DeflatedExplicitVRLittleEndian:
        body, body_start = _inflate(memoryview(data)[body_start:], limits.max_inflated_size), 0
    ds, pixels = _read_body(body, body_start, ts, budget)
    uids = _check_identifiers(ds, media_class, media_instance, found)
    if pixels:
        _check_pixels(ds, pixels, body, ts, limits.max_pixel_bytes, found)
    if found.reasons:
        return Verdict(None, found.reasons, found.warnings, bool(pixels))
    ids = DicomIds(
        study_uid=uids[_STUDY],
        series_uid=uids[_SERIES],
        sop_uid=uids[_SOP_INSTANCE],
        sop_class_uid=uids[_SOP_CLASS],
        transfer_syntax_uid=str(ts),
        modality=_modality(ds),
    )
    return Verdict(ids, [], found.warnings, bool(pixels))


def _rejected(*reasons: Reason) -> Verdict:
    return Verdict(None, list(reasons), [], False)


def _too_large(size: int, limit: int) -> Reason:
    return _reason("too-large", f"the file is {size} bytes; the limit is {limit} bytes")


# --- the file meta: media UIDs and transfer syntax ------------------------------------------------


def _check_media_uids(meta: Dataset, found: _Findings) -> tuple[str | None, str | None]:
    values = []
    for tag in (_MEDIA_CLASS, _MEDIA_INSTANCE):
        value, problem = _uid(meta, tag)
        if problem in _ABSENT:
            found.reject("bad-file-meta", f"{_label(tag)} {problem}")
        elif problem:
            found.reject("invalid-uid", f"{_label(tag)} {problem}")
        values.append(value)
    return values[0], values[1]


def _check_transfer_syntax(meta: Dataset, found: _Findings) -> UID:
    """The transfer syntax, or a stop: without one we cannot know how the dataset is encoded."""
    value, problem = _uid(meta, _TS)
    if problem in _ABSENT:
        found.reject("bad-file-meta", f"{_label(_TS)} {problem}")
    elif problem:
        found.reject("invalid-uid", f"{_label(_TS)} {problem}")
    elif (ts := UID(value or "")) not in AllTransferSyntaxes:
        found.reject(
            "unsupported-transfer-syntax",
            f"{_label(_TS)} is {ts}, which is not a transfer syntax pydicom can read",
        )
    else:
        return ts
    raise _Stop(*found.reasons)


# --- the dataset: identifiers ------------------------------------------------------------------


def _check_identifiers(
    ds: Dataset, media_class: str | None, media_instance: str | None, found: _Findings
) -> dict[int, str]:
    uids: dict[int, str] = {}
    for tag in (_STUDY, _SERIES, _SOP_INSTANCE, _SOP_CLASS):
        value, problem = _uid(ds, tag)
        if problem in _ABSENT:
            found.reject("missing-attribute", f"{_label(tag)} {problem}")
        elif problem:
            found.reject("invalid-uid", f"{_label(tag)} {problem}")
        elif value is not None:
            uids[tag] = value
    for media, tag, media_tag in (
        (media_instance, _SOP_INSTANCE, _MEDIA_INSTANCE),
        (media_class, _SOP_CLASS, _MEDIA_CLASS),
    ):
        if media and tag in uids and media != uids[tag]:
            found.warn(
                "meta-mismatch", f"{_label(media_tag)} differs from {_label(tag)} in the dataset"
            )
    return uids


def _uid(ds: Dataset, tag: int) -> tuple[str | None, str | None]:
    """(uid, None) if valid, else (None, what is wrong with it: one of _ABSENT or a defect)."""
    if tag not in ds:
        return None, "is missing"
    try:
        value = ds[tag].value
    except Exception as exc:
        return None, f"cannot be decoded ({_exception_name(exc)})"
    if value is None or value == "":
        return None, "is empty"
    if isinstance(value, MultiValue | list | tuple):
        return None, f"has {len(value)} values; exactly one UID is allowed"
    if not isinstance(value, str):
        return None, "is not encoded as a UI string"
    if UID(value).is_valid:
        return str(value), None
    return None, f"is not a valid UID: {_uid_defect(value)}"


def _uid_defect(text: str) -> str:
    if len(text) > 64:
        return f"it is {len(text)} characters long, more than 64"
    if not re.fullmatch(r"[0-9.]*", text):
        return "it contains characters other than digits and '.'"
    if "" in text.split("."):
        return "it has an empty component"
    return "a component has a leading zero"


def _modality(ds: Dataset) -> str | None:
    try:
        value = ds[_MODALITY].value if _MODALITY in ds else None
    except Exception:
        return None
    if isinstance(value, str) and _MODALITY_FORM.fullmatch(value.strip()):
        return value.strip()
    return None
