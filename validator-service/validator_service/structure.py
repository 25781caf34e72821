"""A file's structure: Part 10 header, file meta, deflate, and the dataset read in checked runs."""

from __future__ import annotations

import enum
import functools
import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import cast

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_sequence
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from shared.events import Reason
from validator_service.findings import _exception_name, _label, _reason, _Stop

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
_DELIMITER_GROUP = 0xFFFE  # items and delimiters (PS3.5 7.5): never a data element
_ITEM_BYTES = b"\xfe\xff\x00\xe0"  # (FFFE,E000) in Implicit VR Little Endian
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, _PIXEL_DATA})  # Float, Double Float, Pixel Data
_VR_CODES = frozenset(str(vr).encode() for vr in VR if len(str(vr)) == 2)
_LONG_VR_CODES = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)
_INFLATE_IN, _INFLATE_OUT = 64 * 1024, 1024 * 1024


class _OverBudget(Exception):
    """Raised by a _Reader once the file has used up its reads."""


@dataclass
class _Budget:
    """The reads one file may still make; each file starts with MAX_READS."""

    left: int = field(default_factory=lambda: MAX_READS)  # read per file, so a test can lower it


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


# --- Part 10 header and file meta -------------------------------------------------------------


def _require_part10(data: bytes) -> None:
    if not data:
        raise _Stop(_reason("empty-file", "the file is empty"))
    if len(data) >= 132 and data[128:132] == b"DICM":
        return
    if _looks_like_dataset(data):
        raise _Stop(
            _reason(
                "missing-file-meta",
                "the file is a bare DICOM dataset: it lacks the 128-byte preamble, the 'DICM' "
                "prefix and the group 0002 File Meta Information that a DICOM Part 10 file "
                "starts with",
            )
        )
    where = "at byte offset 128" if len(data) >= 132 else f"(the file is only {len(data)} bytes)"
    raise _Stop(
        _reason(
            "not-dicom",
            f"no 'DICM' prefix {where}, and the content does not parse as DICOM data elements",
        )
    )


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
        raise _Stop(
            _reason(
                "missing-file-meta",
                "the 'DICM' prefix is not followed by group 0002 File Meta Information elements",
            )
        )
    return meta, fp.tell()


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
            raise _Stop(
                _reason(
                    "too-large-decoded",
                    f"the deflated dataset inflates to more than {limit} bytes "
                    f"from {len(payload)} compressed bytes",
                )
            )
        if not inflater.eof:
            raise _Stop(
                _reason(
                    "truncated", "the file ends before the end of the deflated dataset's stream"
                )
            )
        return zlib.decompress(payload, -zlib.MAX_WBITS, max(total, 1))
    except zlib.error as exc:
        raise _Stop(
            _reason("unreadable", "the deflated dataset is not a valid deflate stream (zlib.error)")
        ) from exc


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
            if tag >> 16 == _DELIMITER_GROUP:
                raise _Stop(_stray_item(tag, within))
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
                raise _Stop(
                    _reason(
                        "too-deep",
                        f"sequences are nested more than {MAX_NESTING} levels deep "
                        f"(at {_label(tag)})",
                    )
                )
            stack.extend((child, depth + 1, inner) for child in items)


def _stray_item(tag: int, within: str | None) -> Reason:
    """An item or delimiter tag read as a data element: pydicom keeps it, nothing can use it."""
    where = f"in an item of {within}" if within else "in the dataset"
    return _reason(
        "unreadable",
        f"an item or delimiter tag {_label(tag)} stands where a data element should be {where}",
    )


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
