"""What WADO-RS reads out of an archived file: frames, bulk data values, transcoded copies.

Blocking functions over one file each (the routes run them in a thread). Frames of an
encapsulated (compressed) Pixel Data are given as stored (pydicom's ``get_frame``, which reads
the Basic or Extended Offset Table, or splits fragments per frame) or decoded to native
little-endian bytes; native frames are a slice of Pixel Data (byte-swapped when stored big
endian). A transcoded copy is the instance rewritten as Explicit VR Little Endian, its pixel
data decompressed by pydicom's decoders (pylibjpeg, openjpeg, RLE).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.filereader import read_file_meta_info
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_expected_length, pack_bits
from pydicom.uid import UID, ExplicitVRLittleEndian

from shared.dicom import decoding
from shared.errors import BadRequest, InstanceNotFound

PIXEL_DATA = 0x7FE00010
MAX_FRAMES_ASKED = 10_000


def stored_syntax(path: Path) -> str:
    """The Transfer Syntax UID of an archived file, read from its File Meta only."""
    return str(read_file_meta_info(path).get("TransferSyntaxUID") or ExplicitVRLittleEndian)


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` as frame numbers (from 1); 400 for anything else."""
    try:
        numbers = [int(piece) for piece in text.split(",")]
    except ValueError:
        raise BadRequest(f"frame list must be numbers separated by commas: {text[:40]!r}") from None
    if not numbers or len(numbers) > MAX_FRAMES_ASKED or min(numbers) < 1:
        raise BadRequest("frame numbers start at 1")
    return numbers


def number_of_frames(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1


def read_frames(path: Path, numbers: list[int], decode: bool) -> list[bytes]:
    """The frames ``numbers`` (from 1) of an archived instance: as stored, or decoded to native
    little-endian bytes. 400 for an instance without pixel data or a frame it does not have
    (as PS3.18 §9.5.2 answers a frame number out of range)."""
    ds = pydicom.dcmread(path)
    if PIXEL_DATA not in ds:
        raise BadRequest("the instance has no pixel data, so no frames")
    frames = number_of_frames(ds)
    missing = [n for n in numbers if n > frames]
    if missing:
        raise BadRequest(f"frame {missing[0]} asked for; the instance has {frames}")
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_encapsulated and not decode:
        offsets = None
        if "ExtendedOffsetTable" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        data = ds.PixelData
        return [
            get_frame(data, n - 1, number_of_frames=frames, extended_offsets=offsets)
            for n in numbers
        ]
    if not syntax.is_encapsulated and syntax.is_little_endian and ds.BitsAllocated % 8 == 0:
        size = get_expected_length(ds, "bytes") // frames  # YBR_FULL_422 is 2 bytes a pixel
        data = ds.PixelData
        return [bytes(data[(n - 1) * size : n * size]) for n in numbers]
    return [_native(ds, syntax, n - 1) for n in numbers]


def _native(ds: Dataset, syntax: UID, index: int) -> bytes:
    """One frame decoded (or byte-swapped) to native little-endian bytes."""
    with decoding():
        arr, _ = get_decoder(syntax).as_array(ds, index=index)
    if int(ds.BitsAllocated) == 1:
        return pack_bits(arr)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def transcoded(path: Path) -> bytes:
    """The instance as Explicit VR Little Endian (decompressed when it was compressed)."""
    ds = pydicom.dcmread(path)
    if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        with decoding():
            ds.decompress(generate_instance_uid=False)  # same instance; RGB for YBR colour
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def bulk_value(path: Path, tag_path: str) -> tuple[bool, list[bytes] | bytes]:
    """The value at ``tag_path`` (``7FE00010`` or ``00880200/0/7FE00010``): (True, frames) for
    the top-level Pixel Data, to be sent as frames; else (False, the element's bytes)."""
    pieces = [p for p in tag_path.strip("/").split("/") if p]
    if len(pieces) % 2 == 0:
        raise InstanceNotFound("a bulk data path is tag[/item/tag...]")
    try:
        tags = [int(p, 16) for p in pieces[0::2]]
        items = [int(p) for p in pieces[1::2]]
    except ValueError:
        raise InstanceNotFound("a bulk data path is tag[/item/tag...]") from None
    if tags == [PIXEL_DATA]:
        return True, []
    ds: Dataset = pydicom.dcmread(path)
    for tag, item in zip(tags, items, strict=False):
        sequence = ds.get(tag)
        if sequence is None or sequence.VR != "SQ" or item >= len(sequence.value):
            raise InstanceNotFound(f"no bulk data at {tag_path}")
        ds = sequence.value[item]
    element = ds.get(tags[-1])
    if element is None or not isinstance(element.value, bytes | bytearray):
        raise InstanceNotFound(f"no bulk data at {tag_path}")
    return False, bytes(element.value)
