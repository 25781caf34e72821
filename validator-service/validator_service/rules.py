"""The acceptance rules for an uploaded file: one pure ``check_file`` that returns a Verdict."""

from __future__ import annotations

import contextlib
import enum
import functools
import io
import logging
import math
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_sequence
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder  # type: ignore[attr-defined]  # documented there
from pydicom.uid import UID, AllTransferSyntaxes, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from shared.events import DicomIds, Reason

MAX_NESTING = 64
"""Deepest sequence nesting accepted. pydicom parses nesting recursively, several Python frames
per level, so a fixed cap well below the recursion limit keeps the outcome independent of the
caller's stack depth and protects every later reader of the file."""

MAX_READS = 1_000_000
"""Reads pydicom may make while parsing one file: 1 to 3 per element or sequence item, each of
which costs it 300 to 700 bytes of Python objects and about 20 microseconds. Uncapped, a 96 MB
file of empty sequence items would take minutes and gigabytes; capped, it is rejected after
about 6 s at 0.7 GB peak. Real files need far less: CT_small.dcm takes 554 reads, an ECG
waveform 3,591, and an enhanced multi-frame image roughly 80 per frame."""

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_ITEM_BYTES = b"\xfe\xff\x00\xe0"  # (FFFE,E000) in Implicit VR Little Endian
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, _PIXEL_DATA})  # Float, Double Float, Pixel Data
_FLOAT_BITS = {0x7FE00008: 32, 0x7FE00009: 64}
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_TS, _MEDIA_CLASS, _MEDIA_INSTANCE = 0x00020010, 0x00020002, 0x00020003
_STUDY, _SERIES, _SOP_INSTANCE, _SOP_CLASS = 0x0020000D, 0x0020000E, 0x00080018, 0x00080016
_MODALITY = 0x00080060
_ROWS, _COLUMNS, _SAMPLES, _PHOTOMETRIC = 0x00280010, 0x00280011, 0x00280002, 0x00280004
_FRAMES, _BITS_ALLOCATED, _BITS_STORED = 0x00280008, 0x00280100, 0x00280101
_BITS_ALLOWED = (1, 8, 16, 32, 64)
_SAMPLES_FOR = {  # PhotometricInterpretation -> the SamplesPerPixel it requires
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3,
    "YBR_FULL_422": 3, "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3,
    "HSV": 3, "XYB": 3,
}  # fmt: skip
_VR_CODES = frozenset(str(vr).encode() for vr in VR if len(str(vr)) == 2)
_LONG_VR_CODES = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)
_ABSENT = ("is missing", "is empty")
_MODALITY_FORM = re.compile(r"[A-Z0-9_ ]{1,16}")
_INFLATE_IN, _INFLATE_OUT = 64 * 1024, 1024 * 1024
_PARSING = threading.Lock()  # guards the process-wide warnings filters while pydicom parses


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


class _Stop(Exception):
    """Raised inside the checks when later checks would only report consequences."""

    def __init__(self, *reasons: Reason) -> None:
        super().__init__()
        self.reasons = list(reasons)


class _OverBudget(Exception):
    """Raised by a _Reader once the file has used up its reads."""


@dataclass
class _Budget:
    left: int


class _Reader(io.BytesIO):
    """An in-memory file for pydicom that counts its reads against a budget shared by a file."""

    def __init__(self, data: bytes, budget: _Budget) -> None:
        super().__init__(data)  # no copy: BytesIO shares bytes until written to
        self.budget = budget

    def read(self, size: int | None = -1, /) -> bytes:
        self.budget.left -= 1
        if self.budget.left < 0:
            raise _OverBudget
        return super().read(size)


def _reason(code: str, message: str) -> Reason:
    return Reason(code=code, message=message)


def check_file(path: Path, limits: Limits) -> Verdict:
    """Decide whether the file at path is acceptable DICOM. Never raises for any file content.

    Only a file that cannot be read at all (``OSError`` from stat/open/read) raises, so that a
    worker can retry; whatever the bytes are, the answer is a Verdict. Structure is checked
    first (size, Part 10 header, file meta, nesting, truncation); if it is broken, the dataset
    checks are skipped because they would only report its consequences. No pixel data is
    decoded and no message quotes a data value: only tags, UIDs, sizes and byte offsets
    (offsets in a deflated file count from the start of the inflated dataset).

    pydicom reports some defects as warnings and log records, which may quote values; both
    are silenced while it parses, and the Verdict says what matters. Warning filters and
    loggers are process-wide, so the parsing part of concurrent calls runs one at a time (it
    is CPU-bound under the GIL anyway; reading the file is not serialised).
    """
    size = path.stat().st_size
    if size > limits.max_file_size:
        return _rejected(_too_large(size, limits.max_file_size))
    with path.open("rb") as file:
        data = file.read(limits.max_file_size + 1)  # the file may grow after stat
    if len(data) > limits.max_file_size:
        return _rejected(_too_large(len(data), limits.max_file_size))
    try:
        with _quiet_pydicom():
            return _check(data, limits)
    except _Stop as stop:
        return _rejected(*stop.reasons)
    except Exception as exc:  # whatever the parser trips over is a verdict, not a crash
        return _rejected(_parse_failure(exc, "while checking the file"))


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    logger = logging.getLogger("pydicom")
    with _PARSING, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.addFilter(_drop_record)
        try:
            yield
        finally:
            logger.removeFilter(_drop_record)


def _drop_record(record: logging.LogRecord) -> bool:
    return False


def _check(data: bytes, limits: Limits) -> Verdict:
    _require_part10(data)
    budget = _Budget(MAX_READS)
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
        _check_pixels(ds, pixels, body, ts, limits, found)
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


@dataclass
class _Findings:
    reasons: list[Reason] = field(default_factory=list)
    warnings: list[Reason] = field(default_factory=list)

    def reject(self, code: str, message: str) -> None:
        self.reasons.append(_reason(code, message))

    def warn(self, code: str, message: str) -> None:
        self.warnings.append(_reason(code, message))


def _rejected(*reasons: Reason) -> Verdict:
    return Verdict(None, list(reasons), [], False)


def _too_large(size: int, limit: int) -> Reason:
    return _reason("too-large", f"the file is {size} bytes; the limit is {limit} bytes")


# --- Part 10 header and file meta -------------------------------------------------------------


def _require_part10(data: bytes) -> None:
    if not data:
        raise _Stop(_reason("empty-file", "the file is empty"))
    if len(data) >= 132 and data[128:132] == b"DICM":
        return
    if _looks_like_dataset(data):
        raise _Stop(_reason(
            "missing-file-meta",
            "the file is a bare DICOM dataset: it lacks the 128-byte preamble, the 'DICM' prefix "
            "and the group 0002 File Meta Information that a DICOM Part 10 file starts with",
        ))  # fmt: skip
    where = "at byte offset 128" if len(data) >= 132 else f"(the file is only {len(data)} bytes)"
    raise _Stop(_reason(
        "not-dicom",
        f"no 'DICM' prefix {where}, and the content does not parse as DICOM data elements",
    ))  # fmt: skip


def _looks_like_dataset(data: bytes) -> bool:
    """Whether data starts with a few plausible data elements in any of the three encodings."""
    return any(
        _plausible_elements(data, implicit, little)
        for implicit, little in ((True, True), (False, True), (False, False))
    )


def _plausible_elements(data: bytes, implicit: bool, little: bool, wanted: int = 3) -> bool:
    order = "<" if little else ">"
    pos, previous, seen = 0, -1, 0
    while seen < wanted and pos + 8 <= len(data):
        group, element = struct.unpack_from(f"{order}HH", data, pos)
        tag = group << 16 | element
        known = dictionary_has_tag(tag) or (element == 0 and group % 2 == 0)
        if tag <= previous or not known:
            return False
        if implicit:
            header, length = 8, struct.unpack_from(f"{order}L", data, pos + 4)[0]
        elif (vr := data[pos + 4 : pos + 6]) not in _VR_CODES:
            return False
        elif vr in _LONG_VR_CODES:
            if pos + 12 > len(data):
                return False
            header, length = 12, struct.unpack_from(f"{order}L", data, pos + 8)[0]
        else:
            header, length = 8, struct.unpack_from(f"{order}H", data, pos + 6)[0]
        if length == _UNDEFINED:
            return True  # a sequence follows: enough evidence
        pos += header + length
        if pos > len(data):
            return False
        previous, seen = tag, seen + 1
    return seen == wanted or (seen > 0 and pos == len(data))


def _read_meta(data: bytes, budget: _Budget) -> tuple[Dataset, int]:
    """Group 0002 after the 'DICM' prefix, and the offset where the dataset starts."""
    fp = _Reader(data, budget)
    fp.seek(132)
    meta = _read_run(fp, data, _Run.META, implicit=False, little=True)
    if not meta:
        raise _Stop(_reason(
            "missing-file-meta",
            "the 'DICM' prefix is not followed by group 0002 File Meta Information elements",
        ))  # fmt: skip
    return meta, fp.tell()


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


def _inflate(payload: memoryview, limit: int) -> bytes:
    """The inflated dataset, measured in bounded chunks before it is held in memory at once."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, offset = 0, 0
    pending: bytes | memoryview = b""
    try:
        while not inflater.eof and total <= limit:
            if not pending and offset < len(payload):
                pending, offset = payload[offset : offset + _INFLATE_IN], offset + _INFLATE_IN
            produced = len(inflater.decompress(pending, _INFLATE_OUT))
            total, pending = total + produced, inflater.unconsumed_tail
            if not produced and not pending and offset >= len(payload):
                break  # all input used and nothing more comes out
        if total > limit:
            raise _Stop(_reason(
                "too-large-decoded",
                f"the deflated dataset inflates to more than {limit} bytes "
                f"from {len(payload)} compressed bytes",
            ))  # fmt: skip
        if not inflater.eof:
            raise _Stop(_reason(
                "truncated", "the file ends before the end of the deflated dataset's stream"
            ))  # fmt: skip
        return zlib.decompress(payload, -zlib.MAX_WBITS, max(total, 1))
    except zlib.error as exc:
        raise _Stop(_reason(
            "unreadable", "the deflated dataset is not a valid deflate stream (zlib.error)"
        )) from exc  # fmt: skip


# --- the dataset: structure --------------------------------------------------------------------


def _read_body(
    body: bytes, start: int, ts: UID, budget: _Budget
) -> tuple[Dataset, list[RawDataElement]]:
    """Parse the dataset fully, except that pixel data is located and measured, never copied.

    pydicom reads each run of elements up to a pixel data element; the pixel data element is
    read with its value deferred (skipped by its length, or by its fragment items when it is
    encapsulated), then reading resumes after it.
    """
    fp = _Reader(body, budget)
    fp.seek(start)
    little = ts.is_little_endian
    first = _read_run(fp, body, _Run.ELEMENTS, ts.is_implicit_VR, little)
    implicit = bool(first.original_encoding[0])  # pydicom may have corrected the VR encoding
    elements = dict(first.items())
    pixels: list[RawDataElement] = []
    while fp.tell() < len(body):  # a pixel data element, then the elements after it
        run = _read_run(fp, body, _Run.PIXELS, implicit, little)
        pixels.extend(elem for elem in run.values() if isinstance(elem, RawDataElement))
        elements.update(_read_run(fp, body, _Run.ELEMENTS, implicit, little).items())
    ds = Dataset(elements)  # merged as read: Dataset.update would convert private elements
    ds.set_original_encoding(implicit, little, first.original_character_set)
    return ds, pixels


class _Run(enum.Enum):
    """What one call of pydicom's read_dataset reads, and where it must stop."""

    META = "in the group 0002 File Meta Information"  # stops at the first tag of another group
    ELEMENTS = "in the dataset"  # stops at a pixel data element
    PIXELS = "in the pixel data"  # reads only pixel data elements, their values deferred

    def ends_at(self, tag: int) -> bool:
        if self is _Run.META:
            return tag >> 16 != 2
        return (tag in _PIXEL_TAGS) is (self is _Run.ELEMENTS)


def _read_run(fp: _Reader, body: bytes, run: _Run, implicit: bool, little: bool) -> Dataset:
    """Read one run of elements and check it, or stop with the reason it cannot be read.

    A run must end at its stop or at the end of the file. pydicom also ends a run quietly, with
    a warning at most, at a stray item delimiter or at an undefined-length value without its
    sequence delimiter; those show here as a run that ended early.
    """
    stopped = False

    def stop(tag: int, vr: str | None, length: int) -> bool:
        nonlocal stopped
        stopped = run.ends_at(tag)
        return stopped

    defer = 0 if run is _Run.PIXELS else None
    try:
        ds = read_dataset(fp, implicit, little, stop_when=stop, defer_size=defer)
        _check_lengths(ds, len(body), fp.budget)
    except _Stop:
        raise
    except Exception as exc:
        raise _Stop(_parse_failure(exc, run.value)) from exc
    if (not stopped and fp.tell() < len(body)) or (run is _Run.PIXELS and not ds):
        raise _Stop(_early_stop(body, fp.tell(), little))
    return ds


def _tag_at(buffer: bytes, pos: int, little: bool) -> int:
    group, element = struct.unpack_from("<HH" if little else ">HH", buffer, pos)
    return int(group << 16 | element)


def _early_stop(buffer: bytes, pos: int, little: bool) -> Reason:
    if pos >= 8 and _tag_at(buffer, pos - 8, little) == _ITEM_END:
        return _reason(
            "unreadable",
            f"an item delimitation item (FFFE,E00D) at byte offset {pos - 8} ends the dataset; "
            f"the last {len(buffer) - pos} bytes are not part of it",
        )
    return _reason(
        "truncated",
        f"an undefined-length value starting at byte offset {pos} has no sequence delimiter "
        "before the end of the file",
    )


def _check_lengths(ds: Dataset, end: int, budget: _Budget) -> None:
    """Every value present in full, sequences parsed and nested at most MAX_NESTING deep.

    pydicom parses undefined-length sequences as it reads and defined-length ones only when
    their value is asked for; those are parsed here with the same reader and read budget, and
    the dataset keeps them raw. An item of a defined-length sequence is parsed from that
    sequence's value alone, so a value cut short there overruns the sequence, not the file;
    ``within`` names the sequence.
    """
    stack: list[tuple[Dataset, int, str | None]] = [(ds, 0, None)]
    while stack:
        item, depth, within = stack.pop()
        for tag, elem in list(item.items()):  # raw as read; nothing converted or re-read
            inner = within  # what bounds the items of this element, if it is a sequence
            if isinstance(elem, RawDataElement):
                _check_raw_length(elem, end, within)
                if (sequence := _is_sequence(elem)) is False or not elem.value:
                    continue
                try:
                    items = _parse_sequence(elem, budget)
                except (RecursionError, _OverBudget):
                    raise
                except Exception as exc:
                    if sequence is None:
                        continue  # a private value pydicom may not see as a sequence either
                    raise _Stop(_sequence_failure(exc, tag)) from exc
                inner = _label(tag)
            elif elem.VR == VR.SQ:
                items = list(elem.value)
            else:
                continue
            if items and depth + 1 > MAX_NESTING:
                raise _Stop(_reason(
                    "too-deep",
                    f"sequences are nested more than {MAX_NESTING} levels deep (at {_label(tag)})",
                ))  # fmt: skip
            stack.extend((child, depth + 1, inner) for child in items)


def _parse_sequence(elem: RawDataElement, budget: _Budget) -> list[Dataset]:
    """The items of a defined-length sequence, as pydicom's conversion would read them."""
    value = cast(bytes, elem.value)
    if elem.VR is None and elem.tag >> 16 & 1 and not value.startswith(_ITEM_BYTES):
        raise ValueError("an implicit VR private value that does not start with an item")
    implicit, little = elem.is_implicit_VR, elem.is_little_endian
    if elem.VR == VR.UN:  # a sequence sent as UN is encoded in Implicit VR Little Endian
        implicit, little = True, True
    return list(read_sequence(_Reader(value, budget), implicit, little, len(value), "iso8859"))


def _check_raw_length(elem: RawDataElement, end: int, within: str | None) -> None:
    if elem.length == _UNDEFINED:
        return
    if elem.value is None:  # deferred: compare the declared extent with the buffer
        present = max(0, min(elem.length, end - elem.value_tell))
    else:
        present = len(elem.value)
    if present >= elem.length:
        return
    declared = f"{_label(elem.tag)} declares {elem.length} bytes"
    if within is None:
        raise _Stop(_reason("truncated", f"{declared} but the file ends after {present}"))
    raise _Stop(_reason("unreadable", f"{declared} but the value of {within} ends after {present}"))


def _is_sequence(elem: RawDataElement) -> bool | None:
    """Whether the raw element is a sequence; None for a private one that pydicom may know."""
    if elem.length == _UNDEFINED:
        return False  # an undefined-length sequence would have been parsed already
    if elem.VR == VR.SQ:
        return True
    if elem.VR not in (None, VR.UN):
        return False
    return _sequence_tag(elem.tag)


@functools.lru_cache(maxsize=4096)
def _sequence_tag(tag: int) -> bool | None:
    if tag >> 16 & 1:
        return None  # private: pydicom decides from its private dictionary
    try:
        return bool(dictionary_VR(tag) == VR.SQ)
    except KeyError:
        return False


def _parse_failure(exc: BaseException, where: str) -> Reason:
    """A Reason for a parser exception; its text is never quoted, as it may contain values."""
    if _caused_by(exc, _OverBudget):
        return _reason(
            "too-many-elements",
            f"parsing stopped after {MAX_READS} reads {where}: the file holds more elements "
            "and sequence items than the validator checks",
        )
    if _caused_by(exc, RecursionError):
        return _reason("too-deep", f"sequences nest beyond the parser's recursion limit {where}")
    if isinstance(exc, OSError):  # pydicom's "No tag to read": an item cut off by the end
        return _reason("truncated", f"the file ends inside a sequence item {where}")
    return _reason("unreadable", f"{_exception_name(exc)} {where}")


def _sequence_failure(exc: BaseException, tag: int) -> Reason:
    """A Reason for a defined-length sequence whose items do not parse from its value."""
    if _caused_by(exc, RecursionError) or _caused_by(exc, _OverBudget):
        return _parse_failure(exc, f"in {_label(tag)}")
    if isinstance(exc, OSError):
        return _reason("unreadable", f"the items of {_label(tag)} overrun its declared length")
    return _reason("unreadable", f"{_exception_name(exc)} in the items of {_label(tag)}")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether exc is, or replaced, a kind: pydicom turns any failure to read an item into
    OSError, even a RecursionError or an exhausted read budget."""
    return isinstance(exc, kind) or isinstance(exc.__context__, kind)


def _exception_name(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__
    return name if kind.__module__ == "builtins" else f"{kind.__module__}.{name}"


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


# --- the dataset: pixel data -------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int
    photometric: str

    def __str__(self) -> str:
        return (
            f"{self.rows} rows x {self.columns} columns x {_count(self.samples, 'sample')} x "
            f"{_count(self.frames, 'frame')} at {self.bits_allocated} bits allocated"
        )

    @property
    def pixels(self) -> int:
        return self.rows * self.columns * self.samples * self.frames

    @property
    def decoded_bytes(self) -> int:
        """What a renderer holds: at least one byte per sample, even for 1-bit data."""
        return self.pixels * max(1, self.bits_allocated // 8)

    @property
    def native_bytes(self) -> int:
        """The length of native pixel data without its padding (pydicom's expected length)."""
        if self.bits_allocated == 1:
            length = (self.pixels + 7) // 8
        else:
            length = self.pixels * (self.bits_allocated // 8)
        return length // 3 * 2 if self.photometric == "YBR_FULL_422" else length


def _check_pixels(
    ds: Dataset,
    pixels: list[RawDataElement],
    body: bytes,
    ts: UID,
    limits: Limits,
    found: _Findings,
) -> None:
    if len(pixels) > 1:
        names = ", ".join(_label(elem.tag) for elem in pixels)
        found.reject("pixel-attributes", f"the dataset holds several pixel data elements: {names}")
        return
    (pixel,) = pixels
    geometry = _geometry(ds, pixel.tag, found)
    if geometry is None:
        return
    if geometry.decoded_bytes > limits.max_pixel_bytes:
        found.reject(
            "too-large-decoded",
            f"{geometry} decode to {geometry.decoded_bytes} bytes; "
            f"the limit is {limits.max_pixel_bytes} bytes",
        )
        return
    encapsulated = pixel.length == _UNDEFINED
    if ts.is_encapsulated and pixel.tag == _PIXEL_DATA:
        if not encapsulated:
            found.reject(
                "pixel-data-encapsulation",
                f"{_label(pixel.tag)} has a defined length, but {ts.name} ({ts}) requires "
                "encapsulated pixel data of undefined length",
            )
        else:
            _check_fragments(ds, pixel, body, geometry.frames, found)
        if not _decoder_available(ts):
            found.warn(
                "no-decoder",
                f"no pixel data decoder for {ts.name} ({ts}) is available; the file can be "
                "archived but not previewed",
            )
    elif encapsulated:
        found.reject(
            "pixel-data-encapsulation",
            f"{_label(pixel.tag)} is encapsulated (undefined length), but {ts.name} ({ts}) "
            "is a native transfer syntax",
        )
    else:
        _check_native_length(pixel, body, geometry, found)


def _geometry(ds: Dataset, pixel_tag: int, found: _Findings) -> _Geometry | None:
    before = len(found.reasons)
    values: dict[int, int] = {}
    for tag, least in ((_ROWS, 1), (_COLUMNS, 1), (_SAMPLES, 1), (_BITS_ALLOCATED, 1)):
        value, problem = _number(ds, tag)
        if problem or value is None:
            found.reject("pixel-attributes", f"{_label(tag)} {problem or 'is missing or empty'}")
        elif value < least:
            found.reject("pixel-attributes", f"{_label(tag)} is {value}; at least {least}")
        else:
            values[tag] = value
    frames, problem = _number(ds, _FRAMES)
    if problem:
        found.reject("pixel-attributes", f"{_label(_FRAMES)} {problem}")
    elif frames is not None and frames < 1:
        found.reject("pixel-attributes", f"{_label(_FRAMES)} is {frames}; at least 1")
    bits = values.get(_BITS_ALLOCATED)
    if bits is not None:
        wanted_bits = _FLOAT_BITS.get(pixel_tag)
        if wanted_bits is not None and bits != wanted_bits:
            found.reject(
                "pixel-attributes",
                f"{_label(_BITS_ALLOCATED)} is {bits}; {_label(pixel_tag)} needs {wanted_bits}",
            )
        elif bits not in _BITS_ALLOWED:
            found.reject(
                "pixel-attributes", f"{_label(_BITS_ALLOCATED)} is {bits}; not 1, 8, 16, 32 or 64"
            )
        stored, problem = _number(ds, _BITS_STORED)
        if problem:
            found.reject("pixel-attributes", f"{_label(_BITS_STORED)} {problem}")
        elif stored is not None and not 1 <= stored <= bits:
            found.reject(
                "pixel-attributes",
                f"{_label(_BITS_STORED)} is {stored}; it must be 1 to BitsAllocated ({bits})",
            )
    samples = values.get(_SAMPLES)
    if samples is not None and samples not in (1, 3):
        found.reject("pixel-attributes", f"{_label(_SAMPLES)} is {samples}; not 1 or 3")
    photometric = _photometric(ds, samples, found)
    if len(found.reasons) > before or photometric is None:
        return None
    return _Geometry(
        values[_ROWS], values[_COLUMNS], values[_SAMPLES], values[_BITS_ALLOCATED],
        frames or 1, photometric,
    )  # fmt: skip


def _photometric(ds: Dataset, samples: int | None, found: _Findings) -> str | None:
    label = _label(_PHOTOMETRIC)
    try:
        value = ds[_PHOTOMETRIC].value if _PHOTOMETRIC in ds else None
    except Exception as exc:
        found.reject("pixel-attributes", f"{label} cannot be decoded ({_exception_name(exc)})")
        return None
    if not value:
        found.reject("pixel-attributes", f"{label} is missing or empty")
        return None
    text = value.strip() if isinstance(value, str) else None
    if text not in _SAMPLES_FOR:
        found.reject("pixel-attributes", f"{label} is not a known photometric interpretation")
        return None
    if samples is not None and samples != _SAMPLES_FOR[text]:
        found.reject(
            "pixel-attributes",
            f"{label} {text} needs {_label(_SAMPLES)} {_SAMPLES_FOR[text]}, not {samples}",
        )
        return None
    return text


def _number(ds: Dataset, tag: int) -> tuple[int | None, str | None]:
    """(value, None); (None, None) if absent or empty; or (None, the defect)."""
    if tag not in ds:
        return None, None
    try:
        value: Any = ds[tag].value
    except Exception as exc:
        return None, f"cannot be decoded ({_exception_name(exc)})"
    if value is None or value == "" or value == b"":
        return None, None
    if isinstance(value, MultiValue | list | tuple):
        return None, f"has {len(value)} values; exactly one is allowed"
    if not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        return None, "is not a whole number"
    return int(value), None


def _check_native_length(
    pixel: RawDataElement, body: bytes, geometry: _Geometry, found: _Findings
) -> None:
    expected, actual = geometry.native_bytes, pixel.length
    if pixel.value_tell + actual > len(body):
        return  # reported as truncated already
    shape = str(geometry)
    if actual < expected:
        found.reject(
            "pixel-data-length",
            f"{_label(pixel.tag)} holds {actual} bytes; {shape} needs {expected}",
        )
    elif actual > expected + expected % 2:
        start, stop = pixel.value_tell + expected, pixel.value_tell + actual
        if body.count(b"\0", start, stop) == stop - start:
            found.warn(
                "pixel-data-padding",
                f"{_label(pixel.tag)} holds {actual} bytes; {shape} needs {expected} and the "
                f"other {stop - start} bytes are zero padding",
            )
        else:
            found.reject(
                "pixel-data-length",
                f"{_label(pixel.tag)} holds {actual} bytes, more than the {expected} that "
                f"{shape} needs",
            )


def _check_fragments(
    ds: Dataset, pixel: RawDataElement, body: bytes, frames: int, found: _Findings
) -> None:
    """Walk the Basic Offset Table and fragment items in place (no copies), as PS3.5 A.4 says."""
    label = _label(pixel.tag)
    try:
        offsets, fragments = _fragment_items(body, pixel.value_tell)
    except ValueError as exc:
        found.reject("pixel-data-encapsulation", f"{label}: {exc}")
        return
    except _Stop as stop:
        found.reasons.extend(stop.reasons)
        return
    if not fragments:
        found.reject("pixel-data-encapsulation", f"{label} holds no fragments")
    elif offsets and len(offsets) != frames:
        found.reject(
            "pixel-data-encapsulation",
            f"the Basic Offset Table of {label} lists {_count(len(offsets), 'frame')}, "
            f"but {_label(_FRAMES)} is {frames}",
        )
    elif offsets and (offsets != sorted(set(offsets)) or not set(offsets) <= set(fragments)):
        found.reject(
            "pixel-data-encapsulation",
            f"the Basic Offset Table of {label} has offsets that are not increasing or do not "
            "point at fragment items",
        )
    elif len(fragments) < frames:
        found.reject(
            "pixel-data-encapsulation",
            f"{label} holds {_count(len(fragments), 'fragment')}, "
            f"fewer than its {_count(frames, 'frame')}",
        )
    table = ds.get_item(_EXTENDED_OFFSET_TABLE, keep_deferred=True)
    if table is not None and table.value is not None and len(table.value) != 8 * frames:
        found.reject(
            "pixel-data-encapsulation",
            f"{_label(_EXTENDED_OFFSET_TABLE)} holds {_count(len(table.value) // 8, 'offset')} "
            f"for {_count(frames, 'frame')}",
        )


def _fragment_items(body: bytes, pos: int) -> tuple[list[int], list[int]]:
    """The Basic Offset Table, and each fragment's offset from the end of that table."""
    end = len(body)

    def item(at: int) -> tuple[int, int]:
        if at + 8 > end:
            raise _Stop(_reason("truncated", "the file ends inside the encapsulated pixel data"))
        tag, length = _tag_at(body, at, True), struct.unpack_from("<L", body, at + 4)[0]
        return tag, int(length)

    tag, length = item(pos)
    if tag != _ITEM:
        raise ValueError("the first item is not a Basic Offset Table item (FFFE,E000)")
    if length == _UNDEFINED or length % 4 or pos + 8 + length > end:
        raise ValueError(f"the Basic Offset Table item has an impossible length of {length}")
    offsets = list(struct.unpack_from(f"<{length // 4}L", body, pos + 8))
    pos = first = pos + 8 + length
    fragments: list[int] = []
    while (tag_length := item(pos))[0] != _SEQUENCE_END:
        tag, length = tag_length
        if tag != _ITEM:
            raise ValueError(f"byte offset {pos} holds no fragment item (FFFE,E000)")
        if length == _UNDEFINED:
            raise ValueError(f"the fragment item at byte offset {pos} has undefined length")
        if pos + 8 + length > end:
            raise _Stop(_reason(
                "truncated",
                f"the pixel data fragment at byte offset {pos} declares {length} bytes but the "
                f"file ends after {end - pos - 8}",
            ))  # fmt: skip
        fragments.append(pos - first)
        pos += 8 + length
    return offsets, fragments


@functools.cache
def _decoder_available(ts: UID) -> bool:
    try:
        return bool(get_decoder(ts).is_available)
    except Exception:  # NotImplementedError: pydicom has no decoder for this syntax at all
        return False


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _label(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{text} {keyword}" if keyword else text
