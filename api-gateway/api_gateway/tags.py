"""Which DICOM attributes a query names, and their values read from a file's header.

``parse_tags(["(0028,0011)", "PatientName", "(2222,2222)"])`` gives the tags in order, without
repeats, and the specs that name none (verbatim, trimmed) for ``{"invalidTags": [...]}``.
``read_tags(path, tags)`` gives one answer per tag, in the order asked::

    {"tag": "(0028,0011)", "keyword": "Columns", "name": "Columns", "VR": "US", "VM": 1,
     "value": 967, "present": true}

- ``value``: IS/DS as int/float, binary numbers as they are, PN/DA/TM/DT/UI/text as their
  strings, AT as ``"(gggg,eeee)"``, a list when VM > 1, null when empty. A value pydicom cannot
  make sense of (a DS of ``1A``, an IS of ``1.5``) is its raw string, never an error.
- Bulk data is never read or inlined: pixel data, every OB/OD/OF/OL/OV/OW/UN value, and binary
  numbers (US, SS, UL, SL, SV, UV, FL, FD, AT) of ``bulk_threshold`` bytes or more are
  ``{"size": n}``, n from the element's length (encapsulated pixel data: its items with their
  headers, found by skipping from item header to item header).
- A sequence's value is a list of items; an item is a dict from each element's keyword (its
  ``"(gggg,eeee)"`` when it has none, or when a repeating group reuses a keyword) to that
  element's answer, the same shape without ``present``.
- A tag the file lacks: ``VM`` 0, ``value`` null, ``present`` false, ``VR`` from the dictionary
  (null if unknown). Private tags are named from pydicom's private dictionary when the file's
  private creator is known to it, else "Private tag data"; unknown public tags are "Unknown".
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import get_entry, get_private_entry, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from shared.dicom import quiet_pydicom

MAX_SPECS = 200  # tags one query may name

PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float, Pixel Data
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "SV", "UV", "FL", "FD", "AT"})
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
) | {"UR", "UT"}
# Elements read too, to resolve an implicit-VR file's "US or SS" and "OB or OW" elements.
_VR_HELPERS = (0x00280100, 0x00280103)  # Bits Allocated, Pixel Representation
_FIRST_PIXEL_TAG = min(PIXEL_TAGS)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
_NOT_PRIVATE = frozenset({0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF})  # odd, but PS3.5 7.8.1

_HEX = "[0-9A-Fa-f]{4}"
_TAG_SPEC = re.compile(
    rf"\(\s*({_HEX})\s*,\s*({_HEX})\s*\)"  # (0010,0010)
    rf"|({_HEX})\s*,\s*({_HEX})"  # 0010,0010
    rf"|(?:0[xX])?({_HEX})({_HEX})"  # 00100010, 0x00100010
)
_KEYWORD = re.compile("[A-Za-z][A-Za-z0-9]*")  # the dictionary also has retired entries with ""

_Element = DataElement | RawDataElement  # as a dataset holds it: converted or not yet


class Unreadable(Exception):
    """The file is not DICOM that pydicom can read; the message names no value."""


def parse_tags(specs: Sequence[str]) -> tuple[list[BaseTag], list[str]]:
    """The tags the specs name, in order and without repeats, and the specs that name none."""
    if isinstance(specs, str):
        raise TypeError("specs is a sequence of strings, not one string")
    if len(specs) > MAX_SPECS:
        raise ValueError(f"at most {MAX_SPECS} tags may be asked for at once, not {len(specs)}")
    tags: dict[BaseTag, None] = {}
    invalid: dict[str, None] = {}
    for spec in specs:
        text = spec.strip()
        tag = parse_tag(text)
        if tag is None:
            invalid.setdefault(text)
        else:
            tags.setdefault(tag)
    return list(tags), list(invalid)


def parse_tag(spec: str) -> BaseTag | None:
    """The tag one spec names, or None: a dictionary keyword, a known public tag, a private tag."""
    spec = spec.strip()
    if match := _TAG_SPEC.fullmatch(spec):
        group, element = (int(part, 16) for part in match.groups() if part is not None)
        tag = Tag(group, element)
    elif _KEYWORD.fullmatch(spec) and (number := tag_for_keyword(spec)) is not None:
        tag = Tag(number)
    else:
        return None
    if tag.is_private:
        return None if tag.group in _NOT_PRIVATE else tag
    return tag if _public_entry(tag) is not None else None


def read_tags(
    path: Path, tags: Sequence[BaseTag], *, bulk_threshold: int = 1024
) -> list[dict[str, Any]]:
    """Each tag's answer, in the order asked, read from the file's header only.

    Only the asked elements (and what names or types them) are kept; values of
    ``bulk_threshold`` bytes or more are skipped on disk, and reading stops before the pixel
    data unless an asked tag is at or after it. Raises Unreadable for a file pydicom cannot
    parse; an OSError opening it (missing, a directory, no permission) is the caller's.
    """
    if bulk_threshold < 1:
        raise ValueError("bulk_threshold must be at least one byte")
    asked = [Tag(tag) for tag in tags]
    keep = {*asked, *_VR_HELPERS, *(c for tag in asked if (c := _creator_tag(tag)) is not None)}
    with path.open("rb") as file, quiet_pydicom():
        try:
            ds = dcmread(
                file,
                defer_size=bulk_threshold - 1,  # values of bulk_threshold bytes stay on disk
                stop_before_pixels=all(tag < _FIRST_PIXEL_TAG for tag in asked),
                specific_tags=sorted(keep),
            )
        except Exception as exc:  # whatever the parser trips over; its message may quote data
            raise Unreadable(f"not DICOM that pydicom can read ({type(exc).__name__})") from None
        meta = getattr(ds, "file_meta", None) or Dataset()
        reader = _Reader(path, bulk_threshold)
        answers = []
        for tag in asked:
            source = meta if tag.group == 0x0002 else ds  # file meta is a dataset of its own
            answers.append(reader.answer(source, tag) | {"present": tag in source})
        return answers


class _Reader:
    """Answers for the elements of one file, sequences included."""

    def __init__(self, path: Path, bulk_threshold: int) -> None:
        self.path = path
        self.bulk_threshold = bulk_threshold

    def answer(self, ds: Dataset, tag: BaseTag) -> dict[str, Any]:
        """One element's answer: what the dictionary says of the tag, and its value in ds."""
        keyword, name, vr = _describe(tag, _creator(ds, tag))
        head: dict[str, Any] = {"tag": tag_text(tag), "keyword": keyword, "name": name}
        raw = ds.get_item(tag, keep_deferred=True)
        if raw is None:
            return head | {"VR": vr, "VM": 0, "value": None}
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length != 0:
            vr = raw.VR or _implicit_vr(vr)
            if tag not in PIXEL_TAGS and vr in TEXT_VRS:  # a long text: read it after all
                return head | self._value(ds, tag, raw)
            return head | {"VR": vr, "VM": 1, "value": {"size": self._size(raw)}}
        return head | self._value(ds, tag, raw)

    def item(self, ds: Dataset) -> dict[str, Any]:
        """A sequence item: each element's answer under its keyword, else its tag."""
        out: dict[str, Any] = {}
        for tag in sorted(ds.keys()):  # ascending, as a valid file holds them
            answer = self.answer(ds, tag)
            key = answer["keyword"]
            out[key if key and key not in out else answer["tag"]] = answer
        return out

    def _value(self, ds: Dataset, tag: BaseTag, raw: _Element) -> dict[str, Any]:
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                return {"VR": "SQ", "VM": elem.VM, "value": [self.item(i) for i in elem.value]}
            size = _byte_length(raw)
            if tag in PIXEL_TAGS or elem.VR in BULK_VRS:
                size = self._size(raw)
                return {"VR": elem.VR, "VM": 1 if size else 0, "value": {"size": size}}
            if elem.VR in NUMBER_VRS and size is not None and size >= self.bulk_threshold:
                return {"VR": elem.VR, "VM": elem.VM, "value": {"size": size}}
            return {"VR": elem.VR, "VM": elem.VM, "value": _json_value(elem)}
        except Exception:  # an invalid value, an unconvertible one: its raw text instead
            text = _raw_text(raw)
            vm = len(text.split("\\")) if text else 0
            return {"VR": raw.VR or "UN", "VM": vm, "value": text}

    def _size(self, raw: _Element) -> int | None:
        if isinstance(raw, RawDataElement) and raw.length == _UNDEFINED and raw.value is None:
            return _encapsulated_size(self.path, raw)
        return _byte_length(raw)


def _describe(tag: BaseTag, creator: str | None = None) -> tuple[str, str, str | None]:
    """(keyword, name, VR) from pydicom's dictionaries; keyword "" and VR None when unknown."""
    if tag.is_private:
        if tag.element == 0:
            return "", "Group Length", "UL"
        if 0x0010 <= tag.element <= 0x00FF:
            return "", "Private Creator", "LO"
        with contextlib.suppress(KeyError):
            if creator is not None:
                vr, _vm, name, _retired = get_private_entry(tag, creator)
                return "", name, vr
        return "", "Private tag data", None
    if (entry := _public_entry(tag)) is not None:
        vr, _vm, name, _retired, keyword = entry
        return keyword, name, vr
    return "", "Unknown", None


def _json_value(elem: DataElement) -> Any:
    """A non-sequence, non-bulk element's value as JSON; ValueError if it is not valid."""
    if elem.VM == 0 or elem.value is None:
        return None
    values = elem.value if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
    out = [_scalar(elem.VR, value) for value in values]
    return out[0] if len(out) == 1 else out


def tag_text(tag: int) -> str:
    """(gggg,eeee), upper-case hex."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _scalar(vr: str, value: Any) -> Any:
    if vr == "IS":
        if isinstance(value, int) and not isinstance(value, bool):  # an ISfloat is invalid
            return int(value)
        raise ValueError("IS")
    if vr == "DS":
        if isinstance(value, str) or not math.isfinite(number := float(value)):
            raise ValueError("DS")
        return number
    if vr in {"FL", "FD"}:
        number = float(value)
        return number if math.isfinite(number) else None  # strict JSON has no NaN
    if vr == "AT":
        return tag_text(Tag(value))
    if vr in NUMBER_VRS:
        return int(value)
    if isinstance(value, bytes | bytearray):
        raise ValueError(vr)
    return str(value)


def _public_entry(tag: BaseTag) -> tuple[str, str, str, str, str] | None:
    try:
        return get_entry(tag)  # repeating groups (60xx, 50xx) included
    except KeyError:
        return None


def _creator_tag(tag: BaseTag) -> BaseTag | None:
    """The tag of the private creator element reserving tag's block."""
    if not tag.is_private or tag.element < 0x1000:
        return None
    return Tag(tag.group, tag.element >> 8)


def _creator(ds: Dataset, tag: BaseTag) -> str | None:
    if (creator_tag := _creator_tag(tag)) is None:
        return None
    try:
        value = ds[creator_tag].value if creator_tag in ds else None
    except Exception:
        return None
    return value if isinstance(value, str) else None


def _implicit_vr(vr: str | None) -> str:
    """The VR of a deferred element whose file left it out: implicit VR data is OW (PS3.5 A.1)."""
    if vr is None:
        return "UN"
    return "OW" if " or " in vr and "OW" in vr else vr


def _byte_length(elem: _Element) -> int | None:
    if isinstance(elem, RawDataElement) and elem.length != _UNDEFINED:
        return elem.length
    return len(elem.value) if isinstance(elem.value, bytes | bytearray) else None


def _raw_text(elem: _Element) -> str | None:
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace").strip(" \x00")
    return value if isinstance(value, str) else None


def _encapsulated_size(path: Path, raw: RawDataElement) -> int | None:
    """Bytes of an undefined-length value's items, headers included; None if they are broken."""
    header = struct.Struct("<HHL" if raw.is_little_endian else ">HHL")
    size = 0
    with path.open("rb") as file:
        file.seek(raw.value_tell)
        while len(chunk := file.read(header.size)) == header.size:
            group, element, length = header.unpack(chunk)
            if (group, element) == _SEQUENCE_END:
                return size
            if (group, element) != _ITEM or length == _UNDEFINED:
                return None
            file.seek(length, 1)
            size += header.size + length
    return None
