"""The preview: one frame of a dataset through the DICOM display pipeline, as an 8-bit PNG.

Every image: decode only the requested frame (``Decoder.as_array(ds, index=frame)``), which also
gives YBR_FULL/YBR_FULL_422 as RGB and reports the Photometric Interpretation that then applies.
Grayscale (MONOCHROME1/2), per PS3.3 C.11 and PS3.4 N.2, with pydicom's own helpers:

1. Modality LUT: Rescale Slope/Intercept or the Modality LUT Sequence (``apply_modality_lut``);
2. VOI: an explicit ``window=(center, width)``, else the file's first Window Center/Width with
   its VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID; ``apply_windowing``), else the first
   VOI LUT Sequence item (``apply_voi``), else the min-max of the modality output; a window or
   LUT that is malformed falls through to the next way;
3. 8 bits: the window is applied with an output range of exactly 0-255, a LUT's output is
   scaled by its declared bit depth; MONOCHROME1 is then inverted to display like MONOCHROME2.

For enhanced multi-frame objects the rescale and window of the frame come from the Shared and
Per-Frame Functional Groups (Pixel Value Transformation, Frame VOI LUT) when present.
PALETTE COLOR goes through its palette (``apply_color_lut``), 16-bit entries keep their high
byte; RGB with more than 8 bits stored keeps its most significant 8 bits. Not applied: ICC
profiles, Presentation LUTs and Presentation LUT Shape, overlays, YBR_PARTIAL_*.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any, Final

import numpy as np
from isal import isal_zlib
from numpy.typing import NDArray
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    convert_color_space,
)
from pydicom.uid import UID

from shared.dicom import decoding

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"  # every PNG file starts so (PNG spec 5.2)
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float, Double Float
_GRAY = ("MONOCHROME1", "MONOCHROME2")
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422")
_KNOWN_PI = frozenset(
    {*_GRAY, *_COLOR, "PALETTE COLOR", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT"}
    | {"YBR_RCT", "XYB", "HSV", "ARGB", "CMYK"}
)
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
# The attributes of the Modality LUT and VOI LUT modules, and where enhanced objects keep them.
_VALUE_KEYWORDS = (
    *("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence"),
    *("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"),
)
_FRAME_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")

Image8 = NDArray[np.uint8]

MAX_FRAME_SAMPLES = 8192 * 8192
"""The largest frame shown, in samples (Rows x Columns x Samples per Pixel): a 64-megapixel
gray image, or a 4096 x 4096 colour one. Decoders allocate what the attributes claim before
they find that the stream holds less, and the display pipeline holds about ten bytes a sample
at once, so this bounds a preview's memory under 1 GiB. The validator's MAX_PIXEL_BYTES is a
budget for a whole file's pixels (2 GiB by default), so it lets a frame claim more."""

IDAT_MAX = 1 << 20  # bytes of compressed data per IDAT chunk (a chunk may hold up to 2 GiB)


class RenderError(Exception):
    """Pixel data exists but cannot be decoded or shown (message: structural, no patient data)."""


def has_pixels(ds: Dataset) -> bool:
    """Whether ds holds a non-empty Pixel Data, Float Pixel Data or Double Float Pixel Data."""
    for tag in PIXEL_TAGS:
        elem = ds.get_item(tag, keep_deferred=True)
        if isinstance(elem, RawDataElement) and elem.length:
            return True
        if isinstance(elem, DataElement) and not elem.is_empty:
            return True
    return False


def render_png(
    ds: Dataset,
    *,
    frame: int = 0,
    compress_level: int = 1,  # ISA-L's 0-3
    window: tuple[float, float] | None = None,
) -> bytes:
    """Frame `frame` of ds at full resolution as PNG bytes (8-bit gray or RGB)."""
    return encode_png(to_display(ds, frame, window), compress_level)


def encode_png(image: Image8, compress_level: int = 1) -> bytes:
    """An 8-bit gray (rows, cols) or RGB (rows, cols, 3) image as PNG, each row Up-filtered.

    Pillow's encoder chooses a filter for every row by trying all five (adaptive filtering,
    which no option turns off); that search is most of its time. One fixed filter over the
    whole image in numpy is 2.5x faster, and Up (PNG spec 9.2: each byte minus the one above)
    keeps previews of medical images as small, within 10 % on pydicom's test images. The
    filtered rows are deflated by ISA-L (``isal``), whose levels are 0-3: at level 1 it is 4x
    faster than zlib's fastest way (Z_RLE) on a 512x512 CT slice, and as small (+1 %); any
    inflater reads it, since it is plain zlib format.
    """
    rows, cols = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype != np.uint8 or channels not in (1, 3) or rows * cols == 0:
        raise ValueError(f"cannot encode a {image.dtype} image of shape {image.shape} as PNG")
    lines = np.ascontiguousarray(image).reshape(rows, cols * channels)
    filtered = np.empty((rows, 1 + cols * channels), np.uint8)
    filtered[:, 0] = 2  # filter type Up; above the first row the spec reads zeros
    filtered[0, 1:] = lines[0]
    np.subtract(lines[1:], lines[:-1], out=filtered[1:, 1:])  # modulo 256, as the spec says
    data = isal_zlib.compress(filtered.data, compress_level)
    header = struct.pack(">IIBBBBB", cols, rows, 8, 0 if channels == 1 else 2, 0, 0, 0)
    idat = b"".join(
        _chunk(b"IDAT", data[at : at + IDAT_MAX]) for at in range(0, len(data), IDAT_MAX)
    )
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + idat + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def to_display(
    ds: Dataset,
    frame: int = 0,
    window: tuple[float, float] | None = None,
    function: str | None = None,
) -> Image8:
    """uint8 (rows, cols) or (rows, cols, 3) array after the display pipeline — the testable core.

    An explicit window replaces the file's Window Center/Width and VOI LUT Sequence but keeps
    its VOI LUT Function unless ``function`` (LINEAR, LINEAR_EXACT, SIGMOID) is given. Raises
    ValueError for a window whose width is below 1, IndexError for
    a frame the dataset does not have, and RenderError when the pixel data is missing or cannot
    be decoded or shown.
    """
    if window is not None and not (
        all(map(math.isfinite, window)) and len(window) == 2 and window[1] >= 1
    ):
        raise ValueError("window must be (center, width) with a finite width of at least 1")
    arr, properties = _decode(ds, frame)
    pi = str(properties["photometric_interpretation"])
    try:
        if pi in _GRAY:
            attrs = _frame_attributes(ds, frame)
            if window is not None and function in _VOI_FUNCTIONS:
                attrs.VOILUTFunction = function
            gray = _grayscale(arr, attrs, window)
            return 255 - gray if pi == "MONOCHROME1" else gray
        if pi == "PALETTE COLOR":
            return _palette(arr, ds)
        if pi in _COLOR:
            return _rgb(arr, pi, int(properties["bits_stored"]))
    except Exception as exc:
        raise RenderError(f"cannot show {pi} pixel data: {type(exc).__name__}") from None
    shown = pi if pi in _KNOWN_PI else "an unrecognised value"
    raise RenderError(f"cannot show Photometric Interpretation {shown}")


def _decode(ds: Dataset, frame: int) -> tuple[NDArray[Any], dict[str, Any]]:
    """The stored values of one frame, and the pixel properties that describe them."""
    if not has_pixels(ds):
        raise RenderError("no pixel data")
    meta = getattr(ds, "file_meta", None)
    syntax = UID(meta.get("TransferSyntaxUID") or "") if meta is not None else UID("")
    if not syntax:
        raise RenderError("no Transfer Syntax UID in the file meta")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except Exception:
        raise RenderError("unreadable Number of Frames") from None
    if not 0 <= frame < frames:
        raise IndexError(f"frame {frame} requested, the dataset has {frames}")
    if (samples := _frame_samples(ds)) > MAX_FRAME_SAMPLES:
        raise RenderError(
            f"the frame claims {samples} samples, more than the {MAX_FRAME_SAMPLES} shown"
        )
    try:
        decoder = get_decoder(syntax)
        with decoding():
            arr, properties = decoder.as_array(ds, index=frame)  # options read from ds
    except Exception as exc:  # no plugin, corrupt stream (a panic too), inconsistent attributes
        raise RenderError(
            f"cannot decode pixel data: {type(exc).__name__} ({syntax.name})"
        ) from None
    return arr, properties


def _frame_samples(ds: Dataset) -> int:
    """Rows x Columns x Samples per Pixel, as the attributes say (the decoder believes them)."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except Exception:  # absent or not a number: nothing can be decoded without them
        raise RenderError("unreadable Rows, Columns or Samples per Pixel") from None
    return rows * columns * samples


def _grayscale(arr: NDArray[Any], attrs: Dataset, window: tuple[float, float] | None) -> Image8:
    """The grayscale pipeline, run once per stored value present when that gives the same image.

    Every step is a function of the stored value alone, but for the min-max fallback, which is
    the same over the range of stored values as over the pixels when the modality transform
    is monotonic (a rescale). So integer pixels go through a lookup table built by the very
    same steps over ``min..max``: the same result, several times faster on a CT slice.
    """
    if arr.dtype.kind in "iu" and arr.size and "ModalityLUTSequence" not in attrs:
        low, high = int(arr.min()), int(arr.max())
        if high - low < arr.size:
            table = _shade(np.arange(low, high + 1, dtype=np.int64), attrs, window)
            return table[arr.astype(np.int64, copy=False) - low]
    return _shade(arr, attrs, window)


def _shade(arr: NDArray[Any], attrs: Dataset, window: tuple[float, float] | None) -> Image8:
    try:
        values = apply_modality_lut(arr, attrs)
    except Exception:  # a malformed Modality LUT: show the stored values
        values = arr
    if window is not None:
        return _windowed(values, window, _voi_function(attrs))
    for way in (_file_window, _file_voi_lut):
        try:
            shown = way(values, attrs)
        except Exception:  # malformed VOI attributes: try the next way
            shown = None
        if shown is not None:
            return shown
    return _min_max(values)


def _frame_attributes(ds: Dataset, frame: int) -> Dataset:
    """The Modality and VOI LUT attributes that apply to one frame, in a dataset of their own.

    Top level, then the Shared, then this frame's Functional Groups, the later winning. A copy
    also keeps pydicom's helpers, some of which assign to the dataset they get, off the caller's.
    """
    sources = [ds]
    for name, index in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", frame),
    ):
        groups = ds.get(name) or []
        if index < len(groups):
            for macro in _FRAME_MACROS:
                sources.extend((groups[index].get(macro) or [])[:1])
    attrs = Dataset()
    for source in sources:
        for keyword in _VALUE_KEYWORDS:
            if keyword in source:
                try:
                    attrs.add(source[keyword])
                except Exception:  # unreadable: as if absent
                    continue
    if (meta := getattr(ds, "file_meta", None)) is not None:
        attrs.file_meta = meta  # the byte order of OW LUT data
    return attrs


def _voi_function(attrs: Dataset) -> str:
    try:
        function = str(attrs.get("VOILUTFunction") or "LINEAR").strip().upper()
    except Exception:
        return "LINEAR"
    return function if function in _VOI_FUNCTIONS else "LINEAR"


def _windowed(values: NDArray[Any], window: tuple[float, float], function: str) -> Image8:
    """PS3.3 C.11.2.1.2 windowing by pydicom, asked for an output range of exactly 0-255."""
    view = Dataset()
    view.PhotometricInterpretation = "MONOCHROME2"
    view.BitsStored, view.PixelRepresentation = 8, 0  # unsigned 8-bit: y_min 0, y_max 255
    # FD rather than DS: the same numbers, without DS's 16-character rule on arbitrary floats.
    view.add(DataElement(0x00281050, "FD", float(window[0])))
    view.add(DataElement(0x00281051, "FD", float(window[1])))
    view.VOILUTFunction = function
    return _quantise(apply_windowing(values, view))


def _file_window(values: NDArray[Any], attrs: Dataset) -> Image8 | None:
    if "WindowCenter" not in attrs or "WindowWidth" not in attrs:
        return None
    center, width = (_first(attrs[keyword].value) for keyword in ("WindowCenter", "WindowWidth"))
    return _windowed(values, (float(center), float(width)), _voi_function(attrs))


def _file_voi_lut(values: NDArray[Any], attrs: Dataset) -> Image8 | None:
    if not attrs.get("VOILUTSequence"):
        return None
    depth = int(attrs.VOILUTSequence[0].LUTDescriptor[2])
    if values.dtype.kind == "f":  # LUTs are indexed by integers; rescaled values round to them
        values = np.rint(np.nan_to_num(values)).astype(np.int64)
    return _quantise(apply_voi(values, attrs) * (255.0 / (2**depth - 1)))


def _min_max(values: NDArray[Any]) -> Image8:
    values = values.astype(np.float64, copy=False)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0 or (low := finite.min()) == (high := finite.max()):
        return np.zeros(values.shape, dtype=np.uint8)  # a constant image shows black
    return _quantise((values - low) / (high - low) * 255.0)


def _palette(arr: NDArray[Any], ds: Dataset) -> Image8:
    rgb = apply_color_lut(arr, ds)[..., :3]  # drop an alpha palette
    return (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else rgb.astype(np.uint8)


def _rgb(arr: NDArray[Any], pi: str, bits_stored: int) -> Image8:
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError("expected three samples per pixel")
    if pi != "RGB":  # the decoder converts YBR to RGB already; this is the backstop
        arr = convert_color_space(arr, pi, "RGB")
    if arr.dtype == np.uint8:
        return arr
    shifted = np.right_shift(np.clip(arr, 0, None).astype(np.uint64), max(bits_stored - 8, 0))
    shown: Image8 = np.minimum(shifted, 255).astype(np.uint8)
    return shown


def _quantise(values: NDArray[Any]) -> Image8:
    """Values on the 0-255 scale as uint8: rounded, clipped, NaN black."""
    values = values.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    quantised: Image8 = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return quantised


def _first(value: Any) -> Any:
    """The first of a multi-valued element's values, or the single value."""
    return value[0] if isinstance(value, (MultiValue, list, tuple)) else value
