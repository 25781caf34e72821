"""DICOM inputs, good and bad, built in memory for the validator tests: no binaries committed."""

from __future__ import annotations

import random
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
)

STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = "1.2.826.0.1.3680043.8.498.11"
SOP = "1.2.826.0.1.3680043.8.498.12"
PREAMBLE = b"\0" * 128 + b"DICM"
UNDEFINED = 0xFFFFFFFF


def testdata(name: str) -> Path:
    """A file from pydicom's own test data, never downloaded."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise LookupError(f"{name} is not in the installed pydicom test data")
    return Path(path)


def read(name: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some test files are deliberately odd
        return dcmread(testdata(name))


def image(rows: int = 8, columns: int = 8, frames: int | None = None) -> Dataset:
    """A small valid 8-bit monochrome Secondary Capture image."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = SOP
    ds.Modality = "OT"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(i % 251 for i in range(rows * columns * (frames or 1)))
    return ds


def image_with(**changes: object) -> bytes:
    """A Part 10 file of image() with attributes changed, or deleted when given None."""
    ds = image()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when it is given an invalid value
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return part10(ds)


def meta(
    ts: str = ExplicitVRLittleEndian, sop_class: str | None = None, sop: str | None = SOP
) -> FileMetaDataset:
    """File meta for image(); an empty string leaves that element out."""
    file_meta = FileMetaDataset()
    if sop_class is None:
        sop_class = SecondaryCaptureImageStorage
    if sop_class:
        file_meta.MediaStorageSOPClassUID = UID(sop_class)
    if sop:
        file_meta.MediaStorageSOPInstanceUID = UID(sop)
    if ts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            file_meta.TransferSyntaxUID = UID(ts)
    return file_meta


def encode(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    """The dataset alone, as it follows the file meta."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def part10(body: Dataset | bytes, file_meta: FileMetaDataset | None = None) -> bytes:
    """Preamble, 'DICM', group 0002 as given (even if incomplete), then the dataset."""
    file_meta = meta() if file_meta is None else file_meta
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_file_meta_info(fp, file_meta, enforce_standard=False)
    if isinstance(body, Dataset):
        implicit = file_meta.get("TransferSyntaxUID") == ImplicitVRLittleEndian
        body = encode(body, implicit=implicit)
    return PREAMBLE + bytes(fp.getvalue()) + body


def element(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One explicit VR little endian element; length overrides the declared length."""
    length = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UN", "UR", "UT"}:
        return head + b"\0\0" + struct.pack("<L", length) + value
    return head + struct.pack("<H", length) + value


def item(value: bytes, tag: int = 0xFFFEE000, length: int | None = None) -> bytes:
    length = len(value) if length is None else length
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, length) + value


def without_pixels(ds: Dataset) -> bytes:
    return encode(Dataset({tag: elem for tag, elem in ds.items() if tag != 0x7FE00010}))


def encapsulated(
    fragments: list[bytes],
    offsets: list[int] | None = None,
    frames: int | None = None,
    ts: str = JPEGBaseline8Bit,
) -> bytes:
    """A Part 10 file whose Pixel Data holds these fragments and Basic Offset Table."""
    ds = image(frames=frames)
    table = struct.pack(f"<{len(offsets or [])}L", *(offsets or []))
    items = item(table) + b"".join(item(fragment) for fragment in fragments)
    pixel = element(0x7FE00010, "OB", items + item(b"", 0xFFFEE0DD), length=UNDEFINED)
    return part10(without_pixels(ds) + pixel, meta(ts))


def nested_sequences(depth: int, defined_length: bool) -> bytes:
    """A valid image whose (0040,A730) ContentSequence nests itself depth levels deep."""
    inner = element(0x0040A040, "CS", b"TEXT")
    for _ in range(depth):
        if defined_length:
            inner = element(0x0040A730, "SQ", item(inner))
        else:
            body = item(inner + item(b"", 0xFFFEE00D), length=UNDEFINED)
            inner = element(0x0040A730, "SQ", body + item(b"", 0xFFFEE0DD), length=UNDEFINED)
    ds = image()
    head, pixels = without_pixels(ds), element(0x7FE00010, "OB", ds.PixelData)
    return part10(head + inner + pixels)  # (0040,A730) sorts between groups 0028 and 7FE0


def deflated(ds: Dataset, filler: int = 0) -> bytes:
    """A Deflated Explicit VR Little Endian file; filler adds that many zero bytes (a bomb)."""
    body = encode(ds)
    if filler:
        body += element(0x00091001, "OB", b"", length=filler)  # a private blob, zero bytes
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        stream = compressor.compress(body)
        chunk = bytes(1024 * 1024)
        for start in range(0, filler, len(chunk)):
            stream += compressor.compress(chunk[: filler - start])
        stream += compressor.flush()
    else:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        stream = compressor.compress(body) + compressor.flush()
    return part10(stream, meta(DeflatedExplicitVRLittleEndian))


def png() -> bytes:
    header = b"\x89PNG\r\n\x1a\n"
    ihdr = struct.pack(">LL5B", 1, 1, 8, 0, 0, 0, 0)
    chunk = struct.pack(">L", len(ihdr)) + b"IHDR" + ihdr
    return header + chunk + struct.pack(">L", zlib.crc32(b"IHDR" + ihdr)) + bytes(64)


def random_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def mutations(data: bytes, count: int, seed: int = 20240601) -> Iterator[bytes]:
    """Seeded bit flips, overwritten lengths, cut-outs and truncations of data."""
    rng = random.Random(seed)
    for _ in range(count):
        buffer = bytearray(data)
        kind = rng.choice(("flip", "flip", "word", "cut", "truncate"))
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                position = rng.randrange(128, len(buffer))
                buffer[position] ^= 1 << rng.randrange(8)
        elif kind == "word":
            position = rng.randrange(132, len(buffer) - 4)
            word = rng.choice((0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 0, rng.getrandbits(32)))
            buffer[position : position + 4] = struct.pack("<L", word)
        elif kind == "cut":
            start = rng.randrange(132, len(buffer))
            del buffer[start : start + rng.randint(1, 64)]
        else:
            del buffer[rng.randrange(0, len(buffer)) :]
        yield bytes(buffer)
