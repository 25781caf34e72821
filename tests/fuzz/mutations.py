"""Mutated DICOM files: one of pydicom's real test files, changed by a list of mutations.

A ``Mutant`` is a seed's name and a recipe; its bytes are made from them by ``apply``, so a
case that once failed is kept as ``@example(Mutant("CT_small.dcm", (("flip", 300, 0x40),)))``
and nothing binary is committed. Mutations, applied in order:

- ``("length", tag, n)``: the length field of the seed's top-level element ``tag`` set to n;
- ``("value", tag, data)``: the value of that element overwritten from its start (its length
  kept; data longer than the value is cut);
- ``("flip", at, mask)``: XOR of one byte; ``("set", at, byte)``;
- ``("insert", at, data)``, ``("delete", at, n)``, ``("duplicate", at, n, to)``: chunks;
- ``("truncate", at)``: the file ends there.

Field mutations find their element in the seed's own layout, so they come first in a recipe;
byte offsets wrap around the current length, so any recipe applies to any seed.
"""

from __future__ import annotations

import functools
import struct
import warnings
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

# pydicom's own test files: every transfer syntax family, multi-frame, RGB, YBR, palette,
# 16 and 32 bits, big endian, deflate, no pixel data (SR, RT plan), private and UN sequences,
# odd sizes and already-broken ones
SEED_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_padded.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_truncated.dcm",
    "JPEG-lossy.dcm",
    "JPEG2000.dcm",
    "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_32bit.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "ExplVR_BigEnd.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "image_dfl.dcm",
    "rtdose.dcm",
    "rtdose_rle_1frame.dcm",
    "examples_palette.dcm",
    "rtplan.dcm",
    "test-SR.dcm",
    "reportsi_with_empty_number_tags.dcm",
    "priv_SQ.dcm",
    "nested_priv_SQ.dcm",
    "UN_sequence.dcm",
    "badVR.dcm",
    "empty_charset_LEI.dcm",
    "no_meta_group_length.dcm",
    "meta_missing_tsyntax.dcm",
)
# seeds made from a file above by one byte-exact edit (none of pydicom's files is MONOCHROME1)
DERIVED = {
    "CT_small.dcm+MONOCHROME1": ("CT_small.dcm", b"MONOCHROME2", b"MONOCHROME1"),
    "MR_small_RLE.dcm+MONOCHROME1": ("MR_small_RLE.dcm", b"MONOCHROME2", b"MONOCHROME1"),
}
SEEDS = (*SEED_FILES, *DERIVED)

# the attributes whose values steer parsing, decoding and display
INTERESTING = (
    0x00020010,  # TransferSyntaxUID
    0x00080005,  # SpecificCharacterSet
    0x00080018,  # SOPInstanceUID
    0x00080020,  # StudyDate
    0x00100010,  # PatientName
    0x0020000D,  # StudyInstanceUID
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280006,  # PlanarConfiguration
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
    0x00280101,  # BitsStored
    0x00280102,  # HighBit
    0x00280103,  # PixelRepresentation
    0x00281050,  # WindowCenter
    0x00281051,  # WindowWidth
    0x00281052,  # RescaleIntercept
    0x00281053,  # RescaleSlope
    0x00281056,  # VOILUTFunction
    0x00281101,  # RedPaletteColorLookupTableDescriptor
    0x00281201,  # RedPaletteColorLookupTableData
    0x7FE00010,  # PixelData
)
_NUMBERS = (0, 1, 2, 3, 7, 8, 9, 12, 15, 16, 17, 31, 32, 33, 63, 64, 255, 256)
_NUMBERS += (0x7FFF, 0x8000, 0xFFFE, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
_TEXTS = (b"", b" ", b"0", b"-1", b"1e308", b"-1e309", b"NaN", b"inf", b"1\\2", b"\\", b"1.5")
_TEXTS += (b"99999999999", b"MONOCHROME1", b"RGB", b"PALETTE COLOR", b"YBR_FULL_422", b"SIGMOID")
_TEXTS += (b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.5", b"ISO_IR 192", b"\x1b$B")


_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_FLIPS = (1, 2, 4, 8, 16, 32, 64, 128)
_BYTES = (0, 0xFF, 0x7F, 0x80, 0x20, 0x5C)
_BYTE_KINDS = ("flip", "flip", "set", "insert", "delete", "duplicate", "truncate")


@dataclass(frozen=True)
class Field:
    """Where one top-level element of a seed is: its length field and its value."""

    tag: int
    vr: str | None
    length_at: int
    length_size: int  # 2 or 4 bytes
    value_at: int
    length: int
    little: bool


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    fields: dict[int, Field]


@functools.cache
def seed(name: str) -> Seed:
    """A seed's bytes and the layout of its file meta and top-level elements."""
    if name in DERIVED:
        base, old, new = DERIVED[name]
        data = seed(base).data.replace(old, new, 1)
    else:
        path = get_testdata_file(name, download=False)
        if path is None:
            raise LookupError(f"{name} is not in the installed pydicom test data")
        with open(path, "rb") as file:
            data = file.read()
    return Seed(name, data, _layout(data))


def _layout(data: bytes) -> dict[int, Field]:
    """Top-level elements with their offsets: the meta (Explicit VR LE after 'DICM') and the
    dataset when it is not deflated; what cannot be walked is simply left out."""
    fields: dict[int, Field] = {}
    if data[128:132] == b"DICM":
        meta_end = _walk(data, 132, implicit=False, little=True, fields=fields, meta=True)
        syntax = fields.get(0x00020010)
        if syntax is None:
            return fields
        uid = UID(data[syntax.value_at : syntax.value_at + syntax.length].rstrip(b"\0 ").decode())
        if uid.is_deflated or not uid.is_transfer_syntax:
            return fields
        _walk(data, meta_end, uid.is_implicit_VR, uid.is_little_endian, fields, meta=False)
    else:  # a bare dataset: pydicom's files of this kind are implicit VR little endian
        _walk(data, 0, implicit=True, little=True, fields=fields, meta=False)
    return fields


def _walk(
    data: bytes, start: int, implicit: bool, little: bool, fields: dict[int, Field], meta: bool
) -> int:
    fp = DicomBytesIO(data)
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    fp.seek(start)
    stop = (lambda tag, vr, length: tag >> 16 != 2) if meta else None
    end = start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for elem in data_element_generator(fp, implicit, little, stop_when=stop, defer_size=0):
                if isinstance(elem, RawDataElement) and elem.value_tell is not None:
                    fields.setdefault(elem.tag, _field(elem, implicit, little))
                end = fp.tell()
        except Exception:  # an odd seed: keep the layout read so far
            pass
    return end


def _field(elem: RawDataElement, implicit: bool, little: bool) -> Field:
    size = 4 if implicit or str(elem.VR) in _LONG_VRS else 2
    return Field(
        elem.tag, elem.VR, elem.value_tell - size, size, elem.value_tell, elem.length, little
    )


@dataclass(frozen=True)
class Mutant:
    """A seed and the mutations that make this case from it."""

    seed: str
    recipe: tuple[tuple[Any, ...], ...] = ()

    @functools.cached_property
    def data(self) -> bytes:
        return apply(self.seed, self.recipe)

    def __repr__(self) -> str:
        steps = ", ".join(_step(m) for m in self.recipe)
        return f"Mutant({self.seed!r}, ({steps}{',' if len(self.recipe) == 1 else ''}))"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis shows a case
        printer.text(repr(self))


def _step(mutation: tuple[Any, ...]) -> str:
    kind, *args = mutation
    if kind in ("length", "value"):
        args[0] = f"0x{int(args[0]):08X}"
        return f"({kind!r}, {args[0]}, {args[1]!r})"
    return repr(mutation)


def apply(name: str, recipe: tuple[tuple[Any, ...], ...]) -> bytes:
    source = seed(name)
    data = bytearray(source.data)
    for mutation in recipe:
        kind, *args = mutation
        if kind in ("length", "value"):
            tag, arg = args
            field = source.fields.get(tag)
            if field is None:
                continue
            if kind == "length":
                order = "<" if field.little else ">"
                code = "H" if field.length_size == 2 else "L"
                packed = struct.pack(order + code, arg & (0xFFFF if code == "H" else 0xFFFFFFFF))
                data[field.length_at : field.length_at + field.length_size] = packed
            else:
                value = bytes(arg)[: field.length]
                data[field.value_at : field.value_at + len(value)] = value
            continue
        size = len(data)
        if kind == "truncate":
            del data[args[0] % (size + 1) :]
        elif kind == "insert":
            at = args[0] % (size + 1)
            data[at:at] = args[1]
        elif not data:
            continue
        elif kind == "flip":
            data[args[0] % size] ^= args[1] & 0xFF
        elif kind == "set":
            data[args[0] % size] = args[1] & 0xFF
        elif kind == "delete":
            at = args[0] % size
            del data[at : at + args[1]]
        elif kind == "duplicate":
            at = args[0] % size
            chunk = bytes(data[at : at + args[1]])
            to = args[2] % (size + 1)
            data[to:to] = chunk
        else:
            raise ValueError(f"no mutation {kind!r}")
    return bytes(data)


# --- strategies -----------------------------------------------------------------------------


def _number_bytes(field: Field) -> st.SearchStrategy[bytes]:
    order = "<" if field.little else ">"
    width = min(max(field.length, 1), 8)
    return st.one_of(
        st.sampled_from(_NUMBERS).map(lambda n: n.to_bytes(8, "little" if order == "<" else "big")),
        st.binary(min_size=width, max_size=width),
    ).map(lambda b: b[:width] if order == "<" else b[-width:])


def _text_bytes(field: Field) -> st.SearchStrategy[bytes]:
    alphabet = st.sampled_from(b"0123456789+-.eE \\^=ABCDEFGHIJKLMNOPQRSTUVWXYZ_\x00\xff")
    return st.one_of(
        st.sampled_from(_TEXTS),
        st.lists(alphabet, max_size=max(field.length, 1)).map(bytes),
    ).map(lambda b: b.ljust(field.length, b" "))


_BINARY_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "AT", "OB", "OW", "OF", "OD", "OL", "UN"}


@st.composite
def field_mutation(draw: st.DrawFn, source: Seed, lengths: bool = True) -> tuple[Any, ...]:
    present = [tag for tag in INTERESTING if tag in source.fields]
    tag = int(
        draw(
            st.sampled_from(present) | st.sampled_from(sorted(source.fields))
            if present
            else st.sampled_from(sorted(source.fields))
        )
    )
    field = source.fields[tag]
    if lengths and draw(st.integers(0, 3)) == 0:
        around = [field.length + d for d in (-2, -1, 1, 2)] + [field.length * 2]
        length = draw(st.sampled_from([*_NUMBERS, *around]) | st.integers(0, 0xFFFFFFFF))
        return ("length", tag, length)
    binary = field.vr in _BINARY_VRS or (field.vr is None and field.length in (2, 4))
    return ("value", tag, draw(_number_bytes(field) if binary else _text_bytes(field)))


@st.composite
def byte_mutation(
    draw: st.DrawFn, source: Seed, size: int, kinds: tuple[str, ...] = _BYTE_KINDS
) -> tuple[Any, ...]:
    """A byte-level change, at an offset often near an element's header or the file's start."""
    size = max(size, 1)
    starts = [f.length_at for f in source.fields.values() if f.length_at < size]
    near = st.sampled_from(starts).flatmap(lambda s: st.integers(max(s - 8, 0), s + 8))
    anywhere = st.integers(0, min(size, 512)) | st.integers(0, size)
    at = draw(anywhere | near if starts else anywhere)
    kind = draw(st.sampled_from(kinds))
    if kind == "flip":
        return ("flip", at, draw(st.sampled_from(_FLIPS) | st.integers(1, 255)))
    if kind == "set":
        return ("set", at, draw(st.sampled_from(_BYTES) | st.integers(0, 255)))
    if kind == "insert":
        return ("insert", at, draw(st.binary(min_size=1, max_size=64)))
    if kind == "delete":
        return ("delete", at, draw(st.integers(1, 64)))
    if kind == "duplicate":
        return ("duplicate", at, draw(st.integers(1, 256)), draw(st.integers(0, size)))
    return ("truncate", at)


@st.composite
def mutants(
    draw: st.DrawFn,
    seeds: tuple[str, ...] = SEEDS,
    fields: int = 2,
    changes: int = 3,
    gentle: bool = False,
) -> Mutant:
    """A seed with up to ``fields`` field mutations, then up to ``changes`` byte changes.

    ``gentle`` keeps the file's structure (values changed, lengths and sizes kept), so that
    more mutants get past the validator to what reads the files it accepts."""
    name = draw(st.sampled_from(seeds))
    source = seed(name)
    recipe: list[tuple[Any, ...]] = []
    if source.fields:
        recipe += draw(st.lists(field_mutation(source, lengths=not gentle), max_size=fields))
    size = len(source.data)
    kinds = ("flip", "set") if gentle else _BYTE_KINDS
    for _ in range(draw(st.integers(0, changes))):
        recipe.append(draw(byte_mutation(source, size, kinds)))
        size = len(apply(name, tuple(recipe)))
    return Mutant(name, tuple(recipe))
