"""WADO-RS content negotiation (PS3.18 §8.7): the Accept header, read as media types with their
``type`` and ``transfer-syntax`` parameters, and what each resource answers for it.

Every choice is made before the first byte of an answer is sent, so a request nothing can
satisfy gets 406 (``NotAcceptable``) rather than a broken stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from shared.errors import NotAcceptable

ANY = "*"
NATIVE = str(ExplicitVRLittleEndian)  # 1.2.840.10008.1.2.1, the default of octet-stream
OCTET = "application/octet-stream"

# PS3.18 Table 8.7.3-5: the media type of a compressed frame, per transfer syntax
FRAME_MEDIA: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.50": ("image/jpeg",),
    "1.2.840.10008.1.2.4.51": ("image/jpeg",),
    "1.2.840.10008.1.2.4.57": ("image/jpeg",),
    "1.2.840.10008.1.2.4.70": ("image/jpeg",),
    "1.2.840.10008.1.2.4.80": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.81": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.90": ("image/jp2",),
    "1.2.840.10008.1.2.4.91": ("image/jp2",),
    "1.2.840.10008.1.2.4.92": ("image/jpx",),
    "1.2.840.10008.1.2.4.93": ("image/jpx",),
    "1.2.840.10008.1.2.5": ("image/dicom-rle", "image/x-dicom-rle"),
    "1.2.840.10008.1.2.4.201": ("image/jphc",),
    "1.2.840.10008.1.2.4.202": ("image/jphc",),
    "1.2.840.10008.1.2.4.203": ("image/jphc",),
}

_ITEM = re.compile(r'(?:[^,"]|"[^"]*")+')
_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("[^"]*"|[^;]*)')


@dataclass(frozen=True)
class Accepted:
    """One media range of an Accept header: ``media`` and, for multipart/related, the ``part``
    type asked for; its ``syntax`` (a UID, ``*``, or None when not given)."""

    media: str
    part: str | None = None
    syntax: str | None = None
    q: float = 1.0


def parse_accept(header: str | None) -> list[Accepted]:
    """The media ranges of an Accept header, most preferred first, those with q=0 left out.
    No header (or an empty one) is ``*/*``."""
    ranges: list[Accepted] = []
    for item in _ITEM.findall(header or ""):
        media = item.split(";", 1)[0].strip().lower()
        if not media:
            continue
        params = {k.lower(): v.strip().strip('"') for k, v in _PARAM.findall(item)}
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        if q <= 0:
            continue
        part = params.get("type", "").lower() or None
        ranges.append(Accepted(media, part, params.get("transfer-syntax") or None, q))
    ranges.sort(key=lambda a: -a.q)  # stable: the header's order among equals
    return ranges or [Accepted("*/*")]


def _any(media: str | None) -> bool:
    return media in (None, "*/*", "*")


def transcodable(stored: str) -> bool:
    """Whether an instance in ``stored`` can be rewritten as Explicit VR Little Endian."""
    uid = UID(stored)
    if uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        return True
    if not uid.is_compressed:
        return False  # big endian: pixel data would need swapping; not offered
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def decodable(stored: str) -> bool:
    """Whether the frames of ``stored`` can be given as native little-endian bytes."""
    uid = UID(stored)
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def instance_syntaxes(accept: list[Accepted]) -> list[str]:
    """The transfer syntaxes (or ``*``) acceptable for whole instances, preferred first.

    ``multipart/related; type="application/dicom"`` (or ``*/*``), with ``transfer-syntax`` a UID
    or ``*``; without one, the stored syntax, as most servers do and viewers expect."""
    syntaxes: list[str] = []
    for a in accept:
        if (
            (
                a.media in ("multipart/related", "multipart/*")
                and (_any(a.part) or a.part == "application/dicom")
            )
            or a.media == "application/dicom"
            or _any(a.media)
        ):
            syntaxes.append(a.syntax or ANY)
    if not syntaxes:
        raise NotAcceptable('WADO-RS instances are multipart/related; type="application/dicom"')
    return syntaxes


def instance_syntax(syntaxes: list[str], stored: str) -> str | None:
    """The transfer syntax to send an instance stored in ``stored`` in, or None: none fits."""
    for syntax in syntaxes:
        if syntax in (ANY, stored):
            return stored
        if syntax == NATIVE and transcodable(stored):
            return NATIVE
    return None


@dataclass(frozen=True)
class FrameCoding:
    """How frames go out: as stored (``decode`` False) or decoded to native bytes, the
    Content-Type of each part, and whether the client asked for a single-part answer (a bare
    media type such as ``application/octet-stream``, as OHIF's ``singlepart`` option sends)."""

    decode: bool
    content_type: str
    single: bool = False


def frame_coding(accept: list[Accepted], stored: str) -> FrameCoding:
    """How to send frames of an instance stored in ``stored`` for this Accept header; 406
    when no media range fits."""
    for a in accept:
        multipart = a.media in ("multipart/related", "multipart/*")
        coding = _frame_coding(a.part if multipart else a.media, a.syntax, stored)
        if coding is not None:
            return replace(coding, single=not multipart and not _any(a.media))
    raise NotAcceptable(
        f"frames are stored as {stored}; the Accept header allows neither it nor a decoding"
    )


def _frame_coding(part: str | None, syntax: str | None, stored: str) -> FrameCoding | None:
    if not UID(stored).is_compressed:  # native pixels: raw little-endian bytes
        if (_any(part) or part == OCTET) and syntax in (None, ANY, NATIVE, stored):
            return FrameCoding(False, f"{OCTET}; transfer-syntax={NATIVE}")
        return None
    media = FRAME_MEDIA.get(stored, ())
    if part in media and syntax in (None, ANY, stored):
        return FrameCoding(False, f"{part}; transfer-syntax={stored}")
    if _any(part) and syntax in (None, ANY, stored):
        return FrameCoding(False, f"{media[0] if media else OCTET}; transfer-syntax={stored}")
    if part == OCTET and syntax in (ANY, stored):
        return FrameCoding(False, f"{OCTET}; transfer-syntax={stored}")
    if part == OCTET and syntax in (None, NATIVE) and decodable(stored):
        return FrameCoding(True, f"{OCTET}; transfer-syntax={NATIVE}")
    return None


RENDERED = {"image/jpeg": "jpeg", "image/png": "png"}


def rendered_format(accept: list[Accepted]) -> str:
    """``jpeg`` or ``png`` for a rendered resource; JPEG where any image will do."""
    for a in accept:
        if a.media in RENDERED:
            return RENDERED[a.media]
        if a.media in ("image/*", "*/*"):
            return "jpeg"
    raise NotAcceptable("rendered resources are image/jpeg or image/png")
