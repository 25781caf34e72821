"""The archive's metadata.json: a dataset as the DICOM JSON model, plus a flat summary.

``describe(ds)`` returns (and the worker writes as metadata.json)::

    {"format": "dicomflow-metadata/1",
     "summary": {"patient_name": "Doe^Jane", "modality": "CT", "rows": 512, ...},
     "file_meta": {"00020010": {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}, ...},
     "dataset": {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}, ...,
                 "7FE00010": {"vr": "OW", "BulkDataURI": "#7FE00010"}},
     "bulk_data": {"7FE00010": {"vr": "OW", "size": 524288}},
     "problems": [{"path": "00280008", "vr": "IS", "error": "ValueError"}]}

- ``summary`` has every key of ``SUMMARY_KEYS``, always, with ``null`` where the attribute is
  absent or unreadable, so readers get one stable shape. Dates and times are ISO 8601.
- ``file_meta`` (group 0002) and ``dataset`` are strict PS3.18 Annex F, built element by element
  with pydicom's ``DataElement.to_json_dict``, so any DICOM JSON reader (pydicom's
  ``Dataset.from_json``, dcmjs, a DICOMweb client) loads them unchanged.
- Bulk data is never inlined: all pixel data, and any other binary value (OB, OD, OF, OL, OV,
  OW, UN) of ``bulk_threshold`` bytes or more. Annex F gives an element exactly one of Value,
  InlineBinary or BulkDataURI and has no room for a size, so a bulk element is a standard
  ``BulkDataURI`` holding a fragment-only URI reference to its tag path (``7FE00010``; inside
  sequences tag/item/tag with 0-based items, ``00880200/0/7FE00010``). Its base is the archived
  original instance, which the caller knows and this pure module does not, so the reference
  stays right wherever the files move. The size, which the standard cannot carry, is in
  ``bulk_data`` under the same path, outside the Annex F part.
- An element pydicom cannot express as JSON (an IS of ``1A``, an unparsable DS, a broken
  sequence) does not stop the description: it is kept losslessly as its raw bytes,
  ``{"vr": "UN", "InlineBinary": ...}`` (bulk rules apply), and listed in ``problems`` with its
  path, its own VR and the exception class, never the value.
- Non-finite floats (FL/FD NaN or infinity) become ``null`` so the file is strict JSON.

``study_keys(ds)`` gives the study, series and instance attributes the search indexes need
(QIDO-RS, C-FIND), in their DICOM string forms (``Doe^Jane``, dates ``YYYYMMDD``, times
``HHMMSS[.FFFFFF]``; Rows, Columns and BitsAllocated as ints), None where absent or unreadable.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import DA, TM

from shared.events import StudyKeys

FORMAT = "dicomflow-metadata/1"

PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float, Pixel Data
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_MULTIPLE = (list, tuple, MultiValue)  # the shapes of a multi-valued element's value

# Attributes an enhanced multi-frame object keeps in its functional groups, not at the top.
_FRAME_MACROS = {"PixelSpacing": "PixelMeasuresSequence", "SliceThickness": "PixelMeasuresSequence"}


def describe(ds: Dataset, *, bulk_threshold: int = 1024) -> dict[str, Any]:
    """The DICOM JSON model of ds (PS3.18 Annex F), bulk data by reference, plus a summary."""
    walker = _Walker(bulk_threshold)
    summary = summarise(ds)
    file_meta = getattr(ds, "file_meta", None)
    return {
        "format": FORMAT,
        "summary": summary,
        "file_meta": walker.dataset(file_meta) if file_meta is not None else {},
        "dataset": walker.dataset(ds),
        "bulk_data": walker.bulk,
        "problems": walker.problems,
    }


def summarise(ds: Dataset) -> dict[str, Any]:
    """The usual attributes of ds, snake_case keys, each present and null when unknown."""
    out = {key: _finite(value) for key, value in _extract(ds, _SUMMARY).items()}
    out["sop_class_name"] = _uid_name(out["sop_class_uid"])
    out["transfer_syntax_name"] = _uid_name(out["transfer_syntax_uid"])
    if "NumberOfFrames" not in ds and any(tag in ds for tag in PIXEL_TAGS):
        out["number_of_frames"] = 1  # a single-frame image does not say so
    return {key: out[key] for key in SUMMARY_KEYS}


def _finite(value: Any) -> Any:
    """The value, or None where a float in it is NaN or infinite (not JSON)."""
    numbers = value if isinstance(value, list) else [value]
    return None if any(isinstance(v, float) and not math.isfinite(v) for v in numbers) else value


def _text(value: Any) -> str | None:
    if isinstance(value, _MULTIPLE):
        value = "\\".join(str(v) for v in value)
    return str(value).strip() or None


def _floats(value: Any) -> list[float]:
    return [float(v) for v in (value if isinstance(value, _MULTIPLE) else [value])]


def _date(value: Any) -> str:
    return DA(value).isoformat()


def _time(value: Any) -> str:
    return TM(value).isoformat()


_SUMMARY: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("patient_name", "PatientName", _text),
    ("patient_id", "PatientID", _text),
    ("patient_birth_date", "PatientBirthDate", _date),
    ("patient_sex", "PatientSex", _text),
    ("study_instance_uid", "StudyInstanceUID", _text),
    ("series_instance_uid", "SeriesInstanceUID", _text),
    ("sop_instance_uid", "SOPInstanceUID", _text),
    ("sop_class_uid", "SOPClassUID", _text),
    ("modality", "Modality", _text),
    ("study_date", "StudyDate", _date),
    ("study_time", "StudyTime", _time),
    ("study_description", "StudyDescription", _text),
    ("series_description", "SeriesDescription", _text),
    ("series_number", "SeriesNumber", int),
    ("instance_number", "InstanceNumber", int),
    ("accession_number", "AccessionNumber", _text),
    ("institution_name", "InstitutionName", _text),
    ("manufacturer", "Manufacturer", _text),
    ("body_part_examined", "BodyPartExamined", _text),
    ("rows", "Rows", int),
    ("columns", "Columns", int),
    ("number_of_frames", "NumberOfFrames", int),
    ("bits_allocated", "BitsAllocated", int),
    ("bits_stored", "BitsStored", int),
    ("photometric_interpretation", "PhotometricInterpretation", _text),
    ("pixel_spacing", "PixelSpacing", _floats),
    ("slice_thickness", "SliceThickness", float),
    ("transfer_syntax_uid", "TransferSyntaxUID", _text),
)

SUMMARY_KEYS: tuple[str, ...] = (
    *(key for key, _, _ in _SUMMARY[:8]),
    "sop_class_name",
    *(key for key, _, _ in _SUMMARY[8:]),
    "transfer_syntax_name",
)


def study_keys(ds: Dataset) -> StudyKeys:
    """The attributes studies are searched by; never raises, an unreadable value is None."""
    return StudyKeys(**_extract(ds, _STUDY_KEYS))


def _extract(ds: Dataset, table: Sequence[tuple[str, str, Callable[[Any], Any]]]) -> dict[str, Any]:
    """Each attribute of ``table`` as (key, keyword, convert): its converted value, or None
    when it is absent or cannot be read (a malformed value is unknown, not fatal)."""
    out: dict[str, Any] = {}
    for key, keyword, convert in table:
        try:
            value = _lookup(ds, keyword)
            out[key] = None if value is None else convert(value)
        except Exception:
            out[key] = None
    return out


def _dicom_date(value: Any) -> str | None:
    day = DA(value)  # also reads the old ACR-NEMA 2020.01.31
    return None if day is None else day.strftime("%Y%m%d")


def _dicom_time(value: Any) -> str | None:
    time = TM(value)
    if time is None:
        return None
    return time.strftime("%H%M%S") + (f".{time.microsecond:06d}" if time.microsecond else "")


def _integer_string(value: Any) -> str | None:
    """An IS value as its DICOM string, None unless it reads as an integer."""
    return str(int(value))


_STUDY_KEYS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("patient_name", "PatientName", _text),
    ("patient_id", "PatientID", _text),
    ("patient_birth_date", "PatientBirthDate", _dicom_date),
    ("patient_sex", "PatientSex", _text),
    ("study_date", "StudyDate", _dicom_date),
    ("study_time", "StudyTime", _dicom_time),
    ("accession_number", "AccessionNumber", _text),
    ("institution_name", "InstitutionName", _text),
    ("study_description", "StudyDescription", _text),
    ("referring_physician_name", "ReferringPhysicianName", _text),
    ("study_id", "StudyID", _text),
    ("series_description", "SeriesDescription", _text),
    ("series_number", "SeriesNumber", _integer_string),
    ("performed_procedure_step_start_date", "PerformedProcedureStepStartDate", _dicom_date),
    ("performed_procedure_step_start_time", "PerformedProcedureStepStartTime", _dicom_time),
    ("instance_number", "InstanceNumber", _integer_string),
    ("rows", "Rows", int),
    ("columns", "Columns", int),
    ("bits_allocated", "BitsAllocated", int),
    ("number_of_frames", "NumberOfFrames", _integer_string),
)


def _lookup(ds: Dataset, keyword: str) -> Any:
    """A top-level value, else the shared or first frame's functional group, else the file meta."""
    value = ds.get(keyword)
    if not _empty(value):
        return value
    if macro := _FRAME_MACROS.get(keyword):
        for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            for group in (ds.get(groups) or [])[:1]:
                for item in (group.get(macro) or [])[:1]:
                    if not _empty(value := item.get(keyword)):
                        return value
    if keyword == "TransferSyntaxUID" and (meta := getattr(ds, "file_meta", None)) is not None:
        value = meta.get(keyword)
        return None if _empty(value) else value
    return None


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, bytes, *_MULTIPLE)) and len(value) == 0)


def _uid_name(uid: str | None) -> str | None:
    """The registered name of a DICOM UID, None if pydicom does not know it."""
    if uid is None:
        return None
    name = UID(uid).name
    return None if name == uid else name


class _Walker:
    """Turns datasets into the DICOM JSON model, collecting bulk sizes and problems on the way."""

    def __init__(self, bulk_threshold: int) -> None:
        self.bulk_threshold = bulk_threshold
        self.bulk: dict[str, dict[str, Any]] = {}
        self.problems: list[dict[str, str]] = []

    def dataset(self, ds: Dataset, prefix: str = "") -> dict[str, Any]:
        return {
            f"{tag:08X}": self.element(ds, tag, f"{prefix}{tag:08X}") for tag in sorted(ds.keys())
        }

    def element(self, ds: Dataset, tag: int, path: str) -> dict[str, Any]:
        raw = ds.get_item(tag, keep_deferred=True)  # as read: its bytes if converting fails
        try:
            return self._convert(ds[tag], path)
        except Exception as exc:
            return self._unparsable(raw, tag, path, exc)

    def _convert(self, elem: DataElement, path: str) -> dict[str, Any]:
        if elem.VR == "SQ":
            items = [self.dataset(item, f"{path}/{i}/") for i, item in enumerate(elem.value)]
            return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        vr = _json_vr(elem)
        if vr in BINARY_VRS or elem.tag in PIXEL_TAGS:
            return self._binary(vr, elem.value, path, always_bulk=elem.tag in PIXEL_TAGS)
        out = elem.to_json_dict(None, 0)
        out["vr"] = vr
        if "Value" in out:
            out["Value"] = [_json_value(v) for v in out["Value"]]
        return out

    def _binary(self, vr: str, value: Any, path: str, *, always_bulk: bool) -> dict[str, Any]:
        if value is None or len(value) == 0:
            return {"vr": vr}
        if always_bulk or len(value) >= self.bulk_threshold:
            self.bulk[path] = {"vr": vr, "size": len(value)}
            return {"vr": vr, "BulkDataURI": f"#{path}"}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}

    def _unparsable(
        self, raw: DataElement | RawDataElement | None, tag: int, path: str, exc: Exception
    ) -> dict[str, Any]:
        vr = _declared_vr(raw, tag)
        self.problems.append({"path": path, "vr": vr, "error": type(exc).__name__})
        return self._binary("UN", _raw_bytes(raw), path, always_bulk=tag in PIXEL_TAGS)


def _json_vr(elem: DataElement) -> str:
    """The VR for JSON, settling an ambiguous one ('US or SS or OW') pydicom left open."""
    if " or " not in elem.VR:
        return str(elem.VR)
    options = str(elem.VR).split(" or ")
    if isinstance(elem.value, bytes | bytearray):
        return "OW" if "OW" in options else next(o for o in options if o in BINARY_VRS)
    values = elem.value if isinstance(elem.value, _MULTIPLE) else [elem.value]
    signed = any(isinstance(v, int) and v < 0 for v in values)
    return "SS" if signed and "SS" in options else next(o for o in options if o not in BINARY_VRS)


def _json_value(value: Any) -> Any:
    """One value as JSON allows it: non-finite floats become null, unknown types are refused."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | dict):
        return value
    raise TypeError(f"no JSON form for {type(value).__name__}")


def _declared_vr(raw: DataElement | RawDataElement | None, tag: int) -> str:
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _raw_bytes(raw: DataElement | RawDataElement | None) -> bytes:
    """The element's value as bytes: the encoded value if never converted, else a best effort."""
    value = getattr(raw, "value", None)
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, _MULTIPLE):
        value = "\\".join(str(v) for v in value)
    return str(value).encode("utf-8", errors="replace")
