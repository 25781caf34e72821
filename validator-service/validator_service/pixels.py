"""Pixel data: attribute geometry, decoded-size budget, native length, fragments, decoders."""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder  # type: ignore[attr-defined]  # documented there
from pydicom.uid import UID

from validator_service.findings import _exception_name, _Findings, _label, _reason, _Stop
from validator_service.structure import _ITEM, _PIXEL_DATA, _SEQUENCE_END, _UNDEFINED, _tag_at

_FLOAT_BITS = {0x7FE00008: 32, 0x7FE00009: 64}
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_ROWS, _COLUMNS, _SAMPLES, _PHOTOMETRIC = 0x00280010, 0x00280011, 0x00280002, 0x00280004
_FRAMES, _BITS_ALLOCATED, _BITS_STORED = 0x00280008, 0x00280100, 0x00280101
_BITS_ALLOWED = (1, 8, 16, 32, 64)
_SAMPLES_FOR = {  # PhotometricInterpretation -> the SamplesPerPixel it requires
    "MONOCHROME1": 1,
    "MONOCHROME2": 1,
    "PALETTE COLOR": 1,
    "RGB": 3,
    "YBR_FULL": 3,
    "YBR_FULL_422": 3,
    "YBR_PARTIAL_422": 3,
    "YBR_PARTIAL_420": 3,
    "YBR_ICT": 3,
    "YBR_RCT": 3,
    "HSV": 3,
    "XYB": 3,
}


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
    max_pixel_bytes: int,
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
    if geometry.decoded_bytes > max_pixel_bytes:
        found.reject(
            "too-large-decoded",
            f"{geometry} decode to {geometry.decoded_bytes} bytes; "
            f"the limit is {max_pixel_bytes} bytes",
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
        values[_ROWS],
        values[_COLUMNS],
        values[_SAMPLES],
        values[_BITS_ALLOCATED],
        frames or 1,
        photometric,
    )


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
            raise _Stop(
                _reason(
                    "truncated",
                    f"the pixel data fragment at byte offset {pos} declares {length} bytes but the "
                    f"file ends after {end - pos - 8}",
                )
            )
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
