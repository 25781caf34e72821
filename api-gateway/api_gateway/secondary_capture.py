"""A JPEG or PNG image as a DICOM Secondary Capture Image Storage instance, written atomically.

The SOP Class is Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7): one frame, any
photometric interpretation and bit depth this needs, where the Multi-frame True Color and
Grayscale Byte/Word classes would add nothing for a single picture but Type 1 attributes that
a camera photo cannot fill (e.g. Frame Increment Pointer). Conversion Type WSD, Modality OT;
the patient and study are left empty (Type 2), for the caller to fill or to match later.

JPEG: a baseline (SOF0) 8-bit grey or colour image keeps its compressed bitstream, encapsulated
in one fragment with the JPEG Baseline transfer syntax, nothing decoded. Marker segments that
carry metadata (EXIF, XMP, IPTC, comments: APP1-APP13, APP15, COM) and anything after EOI are
left out, since they can hold a location, a device serial number or a thumbnail; the ICC
profile moves to ICC Profile (0028,2000). Colour is YBR_FULL_422 when the chrominance is
subsampled, YBR_FULL when it is not and RGB when the stream says so (Adobe transform 0, or
components named R, G, B): PS3.5 8.2.1 wants the values of the compressed stream. Any other JPEG
(progressive, extended, CMYK, rotated by EXIF Orientation) is decoded by Pillow and stored
uncompressed, RGB or MONOCHROME2, turned upright; 12- and 16-bit JPEGs, which Pillow cannot
decode, are refused. Both say Lossy Image Compression 01, ISO_10918_1 (a lossless JPEG, if
Pillow's libjpeg decodes it, says 00).

PNG: decoded by Pillow and stored uncompressed (Explicit VR Little Endian): 1-bit, L and LA as
8-bit MONOCHROME2, I;16 as 16-bit MONOCHROME2, RGB, RGBA, P and PA as 8-bit RGB. Alpha is
composited over black (colour times alpha), so what was invisible in the PNG stays invisible.

Sizes come from the JPEG frame header or the PNG IHDR before Pillow decodes anything; more
than MAX_PIXELS is refused, which also keeps Pillow's decompression-bomb check from firing.
Only one decoded image is held: it is copied out, upright, in bands of rows, and closed before
the bands are joined into the pixel data.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from shared.errors import PermanentError
from shared.files import atomic_file
from shared.render import PNG_SIGNATURE

Kind = Literal["jpeg", "png"]
MAX_PIXELS: Final = 2**26  # 67 million: 8192 x 8192; under Pillow's own warning level (89 M)
JPEG_SIGNATURE: Final = b"\xff\xd8\xff"
_STRIP_PIXELS: Final = 2**21  # pixels copied out of the decoded image at a time
_ORIENTATION: Final = 0x0112  # EXIF Orientation
# EXIF Orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
_UPRIGHT: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers, all processes
_LOSSLESS: Final = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
_DROPPED: Final = frozenset(range(0xE1, 0xEE)) | {0xEF, 0xFE}  # APP1-APP13, APP15, COM


class ImageConversionError(PermanentError):
    """The image cannot become a DICOM instance; the message says why, in our words."""


def sniff(head: bytes) -> Literal["dicom", "jpeg", "png"] | None:
    """What the first 132 bytes of a file say it is: DICOM Part 10, JPEG, PNG, or None."""
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    return None


def image_to_dicom(source: Path, dest: Path, *, kind: Kind, filename: str | None = None) -> None:
    """Write dest as a Secondary Capture instance holding the image in source.

    ``filename``, the name the image was uploaded under, becomes the Series Description.
    """
    ds = _new_instance(filename)
    if kind == "jpeg":
        _put_jpeg(ds, source.read_bytes())
    elif kind == "png":
        with open(source, "rb") as f:
            _put_png(ds, f)
    else:
        raise ValueError(f"unknown image kind {kind!r}")
    _write_atomic(ds, dest)


def _new_instance(filename: str | None) -> Dataset:
    now = datetime.now(UTC)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceCreationDate = ds.StudyDate = ds.ContentDate = date
    ds.InstanceCreationTime = ds.StudyTime = ds.ContentTime = time
    ds.TimezoneOffsetFromUTC = "+0000"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, "")
    for keyword in ("ReferringPhysicianName", "StudyID", "AccessionNumber", "PatientOrientation"):
        setattr(ds, keyword, "")
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if filename and (label := _label(filename)):
        ds.SeriesDescription = label
    return ds


def _label(filename: str) -> str:
    """The file's own name, as one LO value: no folders, control characters or backslashes."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable()).strip()[:64]


# --- JPEG ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Jpeg:
    """What the marker segments before the first scan say, and the stream without metadata."""

    sof: int
    precision: int
    rows: int
    columns: int
    components: tuple[tuple[int, int, int], ...]  # (identifier, horizontal, vertical sampling)
    adobe_transform: int | None
    bitstream: bytes


def _parse_jpeg(data: bytes) -> _Jpeg:
    if not data.startswith(JPEG_SIGNATURE):
        raise ImageConversionError("the file is not a JPEG")
    kept, pos, frame, transform, dropped = [data[:2]], 2, None, None, False
    while True:
        while pos + 1 < len(data) and data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(data):
            raise ImageConversionError("the JPEG is truncated")
        if data[pos] != 0xFF or data[pos + 1] in (0xD8, 0xD9):
            raise ImageConversionError("the JPEG is damaged: no frame or scan where expected")
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise ImageConversionError("the JPEG is truncated")
        body = data[pos + 4 : end]
        if marker == 0xDA:  # start of the first scan: the rest is image data up to EOI
            break
        if marker in _SOF and len(body) >= 6:
            count = body[5]
            specs = body[6 : 6 + 3 * count]
            if len(specs) < 3 * count:
                raise ImageConversionError("the JPEG is damaged: a short frame header")
            components = tuple(
                (specs[i], specs[i + 1] >> 4, specs[i + 1] & 15) for i in range(0, 3 * count, 3)
            )
            size = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
            frame = (marker, body[0], *size, components)
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            transform = body[11]
        if marker in _DROPPED:
            dropped = True
        else:
            kept.append(data[pos:end])
        pos = end
    if frame is None:
        raise ImageConversionError("the JPEG has no frame header")
    eoi = data.find(b"\xff\xd9", end)
    if eoi < 0:
        raise ImageConversionError("the JPEG is truncated")
    if not dropped and eoi + 2 == len(data):
        bitstream = data  # nothing to leave out: no copy
    else:
        bitstream = b"".join([*kept, data[pos : eoi + 2]])
    sof, precision, rows, columns, components = frame
    return _Jpeg(sof, precision, rows, columns, components, transform, bitstream)


def _put_jpeg(ds: Dataset, data: bytes) -> None:
    jpeg = _parse_jpeg(data)
    _check_size(jpeg.columns, jpeg.rows, "JPEG")
    if jpeg.precision != 8:
        raise ImageConversionError(
            f"the JPEG has {jpeg.precision}-bit samples; only 8-bit JPEGs can be converted"
        )
    with _opened(io.BytesIO(data), "JPEG") as img:
        with _pillow_errors("JPEG"):
            orientation = img.getexif().get(_ORIENTATION, 1)
        orientation = orientation if orientation in _UPRIGHT else 1
        _put_icc(ds, img, 1 if img.mode == "L" else 3)
        if jpeg.sof == 0xC0 and len(jpeg.components) in (1, 3) and orientation == 1:
            photometric = _jpeg_photometric(jpeg)
            _put_pixel_module(ds, jpeg.rows, jpeg.columns, len(jpeg.components), 8, photometric)
            ds.add_new(0x7FE00010, "OB", encapsulate([jpeg.bitstream]))
            transfer_syntax = JPEGBaseline8Bit
        else:
            _put_native(ds, img, orientation, "JPEG")
            transfer_syntax = ExplicitVRLittleEndian
    if jpeg.sof in _LOSSLESS:
        ds.LossyImageCompression = "00"
    else:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ratio = jpeg.rows * jpeg.columns * len(jpeg.components) / len(jpeg.bitstream)
        ds.LossyImageCompressionRatio = f"{ratio:.2f}"
    _put_file_meta(ds, transfer_syntax)


def _jpeg_photometric(jpeg: _Jpeg) -> str:
    """PS3.5 8.2.1: what the compressed components are, for one or three of them."""
    if len(jpeg.components) == 1:
        return "MONOCHROME2"
    names = tuple(c[0] for c in jpeg.components)
    if jpeg.adobe_transform == 0 or (jpeg.adobe_transform is None and names == (82, 71, 66)):
        return "RGB"  # stored as R, G, B: no colour transform
    luma, *chroma = (c[1:] for c in jpeg.components)
    return "YBR_FULL" if all(c == luma for c in chroma) else "YBR_FULL_422"


# --- PNG ----------------------------------------------------------------------------------


def _put_png(ds: Dataset, f: IO[bytes]) -> None:
    head = f.read(24)
    if not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise ImageConversionError("the file is not a PNG")
    _check_size(int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), "PNG")
    f.seek(0)
    with _opened(f, "PNG") as img:
        _put_icc(ds, img, 1 if img.mode in ("1", "L", "LA") else 3)
        _put_native(ds, img, 1, "PNG")
    _put_file_meta(ds, ExplicitVRLittleEndian)


# --- both ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _opened(f: IO[bytes], fmt: Literal["JPEG", "PNG"]) -> Iterator[Image.Image]:
    """Image.open restricted to one format (it reads the header only), closed afterwards."""
    with _pillow_errors(fmt):
        img = Image.open(f, formats=[fmt])
    try:
        yield img
    finally:
        img.close()


@contextlib.contextmanager
def _pillow_errors(fmt: str) -> Iterator[None]:
    """Pillow's failures as ImageConversionError, in our words (its own are not quoted)."""
    try:
        yield
    except ImageConversionError:
        raise
    except UnidentifiedImageError:
        raise ImageConversionError(f"the file is not a {fmt} Pillow can read") from None
    except Image.DecompressionBombError:
        raise ImageConversionError(f"the {fmt} is too large to convert") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error) as exc:
        what = "truncated" if "truncated" in str(exc) else "damaged"
        raise ImageConversionError(f"the {fmt} is {what} ({type(exc).__name__})") from None


def _check_size(width: int, height: int, fmt: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"the {fmt} has no pixels ({width} x {height})")
    if width * height > MAX_PIXELS:
        raise ImageConversionError(
            f"the {fmt} is {width} x {height} pixels, more than the {MAX_PIXELS} allowed"
        )
    if width > 65535 or height > 65535:  # Rows and Columns are US
        raise ImageConversionError(f"the {fmt} is wider or taller than DICOM allows (65535)")


def _put_native(ds: Dataset, img: Image.Image, orientation: int, fmt: str) -> None:
    """Decode img once and copy it, upright, into uncompressed pixel data."""
    spp, bits, photometric = _target(img.mode, fmt)
    with _pillow_errors(fmt):
        img.load()
        width, height = img.size if orientation < 5 else img.size[::-1]
        _check_size(width, height, fmt)
        strips = [_convert(strip, spp, bits) for strip in _strips(img, orientation)]
    img.close()  # the decoded image goes before the strips are joined
    pixels = b"".join(strips)
    del strips
    if len(pixels) % 2:
        pixels += b"\x00"
    _put_pixel_module(ds, height, width, spp, bits, photometric)
    ds.add_new(0x7FE00010, "OW" if bits == 16 else "OB", pixels)


def _target(mode: str, fmt: str) -> tuple[int, int, str]:
    """Samples per pixel, bits and photometric interpretation for a Pillow mode."""
    if mode in ("1", "L", "LA"):
        return 1, 8, "MONOCHROME2"
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        return 1, 16, "MONOCHROME2"
    if mode in ("RGB", "RGBA", "P", "PA", "CMYK"):
        return 3, 8, "RGB"
    raise ImageConversionError(f"the {fmt} has pixels of a kind that cannot be converted ({mode})")


def _strips(img: Image.Image, orientation: int) -> Iterator[Image.Image]:
    """The upright image, a band of rows at a time, each cut from the decoded image."""
    w, h = img.size
    out_w, out_h = (w, h) if orientation < 5 else (h, w)
    step = max(1, _STRIP_PIXELS // out_w)
    method = _UPRIGHT.get(orientation)
    for y0 in range(0, out_h, step):
        y1 = min(out_h, y0 + step)
        if orientation in (1, 2) or method is None:
            box = (0, y0, w, y1)
        elif orientation in (3, 4):
            box = (0, h - y1, w, h - y0)
        elif orientation in (5, 6):
            box = (y0, 0, y1, h)
        else:  # 7, 8
            box = (w - y1, 0, w - y0, h)
        strip = img.crop(box)
        yield strip if method is None else strip.transpose(method)


def _convert(strip: Image.Image, spp: int, bits: int) -> bytes:
    """One band as pixel data bytes: alpha composited over black, 16-bit little endian."""
    if bits == 16:
        values = np.asarray(strip)
        if values.dtype.kind == "i" and (values.min() < 0 or values.max() > 65535):
            raise ImageConversionError("the PNG has grey values beyond 16 bits")
        return values.astype("<u2").tobytes()
    if strip.mode in ("P", "PA"):
        has_alpha = strip.mode == "PA" or "transparency" in strip.info
        strip = strip.convert("RGBA" if has_alpha else "RGB")
    elif strip.mode in ("1", "CMYK"):
        strip = strip.convert("L" if spp == 1 else "RGB")
    if strip.mode in ("LA", "RGBA"):
        values = np.asarray(strip).astype(np.uint16)
        colour, alpha = values[..., :-1], values[..., -1:]
        return ((colour * alpha + 127) // 255).astype(np.uint8).tobytes()
    return strip.tobytes()


def _put_pixel_module(
    ds: Dataset, rows: int, columns: int, spp: int, bits: int, photometric: str
) -> None:
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = photometric
    if spp > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0


def _put_icc(ds: Dataset, img: Image.Image, spp: int) -> None:
    """An RGB ICC profile that came with a colour image, where DICOM keeps one (C.11.15)."""
    icc = img.info.get("icc_profile")
    if spp == 3 and isinstance(icc, bytes) and icc[16:20] == b"RGB ":
        ds.ICCProfile = icc


def _put_file_meta(ds: Dataset, transfer_syntax: UID) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta


def _write_atomic(ds: Dataset, dest: Path) -> None:
    """A Part 10 file (preamble, DICM, file meta), whole or not at all."""
    with atomic_file(dest) as f:
        ds.save_as(f, enforce_file_format=True)
