"""The query keys of QIDO-RS and C-FIND: the attributes the indexes hold, reading a request's
keys, and whether a stored value matches one (PS3.4 C.2.2.2).

Matching: single value, UID lists (``\\`` or ``,`` between UIDs), ``*`` and ``?`` wildcards,
date and time ranges (``A-B``, ``A-``, ``-B``), universal matching (an empty value or ``*``
matches everything, also a missing attribute). Text matching ignores case (PS3.4 lets person
names ignore case; for the other text keys it is what most PACS do, and what ``/studies``
does). Keys of a higher level may be given at a lower level (relational queries). A DICOM
attribute the indexes do not hold is in ``Query.ignored`` and matches everything; a key that
is no DICOM attribute, or a malformed value, is a ``BadRequest`` naming the key, never quoting
the value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from shared.errors import BadRequest
from shared.study_index import exact_key, name_key, yyyymmdd
from shared.study_search import MAX_OFFSET, has_wildcards, is_universal
from shared.study_search import wildcard_match as _wildcard

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")


@dataclass(frozen=True)
class Attribute:
    """An attribute the indexes hold: its keyword, level, index hash field, tag and VR."""

    keyword: str
    level: Level
    field: str
    tag: str  # 8 upper-case hex digits, as DICOM JSON names it
    vr: str

    @classmethod
    def of(cls, keyword: str, level: Level, field: str) -> Attribute:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        return cls(keyword, level, field, f"{tag:08X}", str(dictionary_VR(tag)))


_TABLE: tuple[tuple[str, Level, str], ...] = (
    # PS3.18 Table 10.6.3-3 (study), with InstitutionName beside
    ("StudyDate", "study", "study_date"),
    ("StudyTime", "study", "study_time"),
    ("AccessionNumber", "study", "accession_number"),
    ("ModalitiesInStudy", "study", "modalities"),
    ("ReferringPhysicianName", "study", "referring_physician_name"),
    ("PatientName", "study", "patient_name"),
    ("PatientID", "study", "patient_id"),
    ("PatientBirthDate", "study", "patient_birth_date"),
    ("PatientSex", "study", "patient_sex"),
    ("StudyInstanceUID", "study", "study_uid"),
    ("StudyID", "study", "study_id"),
    ("StudyDescription", "study", "study_description"),
    ("InstitutionName", "study", "institution_name"),
    ("NumberOfStudyRelatedSeries", "study", "series_count"),
    ("NumberOfStudyRelatedInstances", "study", "instance_count"),
    # Table 10.6.3-4 (series)
    ("Modality", "series", "modality"),
    ("SeriesDescription", "series", "series_description"),
    ("SeriesNumber", "series", "series_number"),
    ("SeriesInstanceUID", "series", "series_uid"),
    ("NumberOfSeriesRelatedInstances", "series", "instance_count"),
    ("PerformedProcedureStepStartDate", "series", "performed_procedure_step_start_date"),
    ("PerformedProcedureStepStartTime", "series", "performed_procedure_step_start_time"),
    # Table 10.6.3-5 (instance)
    ("SOPClassUID", "instance", "sop_class_uid"),
    ("SOPInstanceUID", "instance", "sop_uid"),
    ("InstanceNumber", "instance", "instance_number"),
    ("Rows", "instance", "rows"),
    ("Columns", "instance", "columns"),
    ("BitsAllocated", "instance", "bits_allocated"),
    ("NumberOfFrames", "instance", "number_of_frames"),
)
ATTRIBUTES: dict[str, Attribute] = {k: Attribute.of(k, lv, f) for k, lv, f in _TABLE}
BY_TAG: dict[str, Attribute] = {a.tag: a for a in ATTRIBUTES.values()}
COUNTS = frozenset(
    {
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfSeriesRelatedInstances",
    }
)
MAX_LIMIT = 1000  # a larger limit is lowered to it (PS3.18: the server's maximum applies)


def attribute(key: str) -> Attribute | None:
    """The indexed attribute a query key names (keyword or 8 hex digits), None when DICOM
    knows it but the indexes do not; a key that is no DICOM attribute is a ``BadRequest``."""
    text = key.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        found = BY_TAG.get(text.upper())
        if found is None and keyword_for_tag(int(text, 16)) == "":
            raise BadRequest(f"{text} is not a DICOM attribute tag")
        return found
    if text in ATTRIBUTES:
        return ATTRIBUTES[text]
    if tag_for_keyword(text) is None:
        raise BadRequest(f"{text[:64]} is not a DICOM attribute keyword")
    return None


@dataclass
class Query:
    """One query: a level, its scope, match keys (keyword -> value), extra attributes to
    return (``include_all`` for every one the index holds), paging."""

    level: Level
    keys: dict[str, str] = field(default_factory=dict)
    study_uid: str | None = None
    series_uid: str | None = None
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int = 100
    offset: int = 0
    ignored: list[str] = field(default_factory=list)

    @classmethod
    def parse(
        cls,
        level: Level,
        params: Iterable[tuple[str, str]],
        *,
        study_uid: str | None = None,
        series_uid: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Query:
        """From query parameters (key, value) other than paging and fuzzymatching; a bad key
        or value is a ``BadRequest`` naming the key, never quoting the value."""
        query = cls(level, study_uid=study_uid, series_uid=series_uid)
        if limit < 1:
            raise BadRequest("limit must be 1 or more")
        if not 0 <= offset <= MAX_OFFSET:
            raise BadRequest(f"offset must be 0 to {MAX_OFFSET}")
        query.limit, query.offset = min(limit, MAX_LIMIT), offset
        for key, value in params:
            if key == "includefield":
                for item in value.split(","):
                    if item.strip() == "all":
                        query.include_all = True
                    elif item.strip() and (found := attribute(item)) is not None:
                        query.include.add(found.keyword)
                continue
            found = attribute(key)
            if found is None:
                query.ignored.append(key.strip())
            elif LEVELS.index(found.level) > LEVELS.index(level):
                raise BadRequest(f"{found.keyword} is not a key at the {level} level")
            elif found.keyword in COUNTS:
                query.ignored.append(found.keyword)
            else:
                _check(found, value)
                query.keys[found.keyword] = value.strip()
        return query


def _check(attr: Attribute, value: str) -> None:
    if len(value) > 1024:
        raise BadRequest(f"the value of {attr.keyword} is too long")
    if attr.vr in ("DA", "TM") and not is_universal(value):
        start, _, end = value.strip().partition("-")
        ok = all(_bound(attr.vr, part) is not None for part in (start, end) if part)
        if not ok or "-" in end or not (start or end):
            raise BadRequest(f"{attr.keyword} must be a {attr.vr} value or range A-B, A-, -B")
    if attr.vr == "UI" and not all(c in "0123456789.,\\" for c in value):
        raise BadRequest(f"{attr.keyword} must be UIDs: digits and dots, \\ or , between")


def _bound(vr: str, text: str) -> str | None:
    """A DA as YYYYMMDD or a TM as HHMMSS.ffffff (padded so strings compare), else None."""
    if vr == "DA":
        return yyyymmdd(text)
    clock = text.strip().replace(":", "")
    digits, _, fraction = clock.partition(".")
    if not (_digits(digits) and len(digits) in (2, 4, 6) and (_digits(fraction) or not fraction)):
        return None
    hh, mm, ss = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60 or len(fraction) > 6:
        return None
    return digits.ljust(6, "0") + "." + fraction.ljust(6, "0")


def _digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also says yes to ``²`` or ``٣``, which a DICOM value
    never holds and ``int`` refuses (or reads as 3)."""
    return text.isascii() and text.isdigit()


def matches(attr: Attribute, wanted: str, value: str | None) -> bool:
    """Whether one stored value matches one key, as PS3.4 C.2.2.2 says (case aside)."""
    if is_universal(wanted):
        return True
    stored = (value or "").strip()
    if attr.keyword == "ModalitiesInStudy":
        asked = {m.strip().upper() for m in wanted.replace("\\", ",").split(",") if m.strip()}
        return bool(asked & set(stored.split(",")))
    if attr.vr == "UI":
        return stored in {u.strip() for u in wanted.replace("\\", ",").split(",")}
    if attr.vr in ("DA", "TM"):
        start, dash, end = wanted.strip().partition("-")
        have = _bound(attr.vr, stored)
        if have is None:
            return False
        low, high = _bound(attr.vr, start) if start else None, _bound(attr.vr, end) if end else None
        if not dash:
            high = low if attr.vr == "DA" else None
            if attr.vr == "TM":  # a single time matches that moment's precision
                return have.startswith(start.replace(":", "").split(".")[0])
        return (low is None or have >= low) and (high is None or have <= high)
    if attr.vr in ("IS", "US"):
        return stored == wanted.strip().lstrip("+").lstrip("0") or (
            _digits(stored) and _digits(wanted.strip()) and int(stored) == int(wanted)
        )
    if attr.vr == "PN":
        pattern, have = wanted.strip().upper(), name_key(stored)
        return (
            wildcard_match(pattern, have) if has_wildcards(pattern) else have == name_key(pattern)
        )
    return wildcard_match(exact_key(wanted), exact_key(stored))


def wildcard_match(pattern: str, value: str) -> bool:
    return _wildcard(pattern, value) if has_wildcards(pattern) else pattern == value
