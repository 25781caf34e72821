"""The one query function over the study, series and instance indexes: QIDO-RS and C-FIND.

``find(redis, Query)`` answers a query at one level (``study``, ``series``, ``instance``),
optionally scoped to a study and series, with DICOM match keys and paging, and returns DICOM
JSON datasets (PS3.18 Annex F) and the total. It reads only the indexes the status service
keeps (``shared.study_index``), never files. The study level goes through the same engine
as ``GET /studies`` (``shared.study_search.matching_studies``); series and instances are
listed from their studies and series.

Matching follows PS3.4 C.2.2.2: single value, UID lists (``\\`` or ``,`` between UIDs),
``*`` and ``?`` wildcards, date and time ranges (``A-B``, ``A-``, ``-B``), universal matching
(an empty value or ``*`` matches everything, also a missing attribute). Text matching ignores
case (PS3.4 lets person names ignore case; for the other text keys it is what most PACS do, and
what ``/studies`` does). Keys of a higher level may be given at a lower level (relational
queries). A key this module cannot match on is in ``Query.ignored`` and matches everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from redis.asyncio import Redis

from shared import redis_names as names
from shared.dicom_json import element
from shared.errors import BadRequest
from shared.lua import Lua
from shared.study_index import exact_key, name_key, yyyymmdd
from shared.study_search import (
    StudyQuery,
    has_wildcards,
    is_universal,
    matching_studies,
    study_page,
)
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
# what the study index already narrows by: the keyword -> StudyQuery field
_STUDY_QUERY = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "AccessionNumber": "accession_number",
    "InstitutionName": "institution",
    "ModalitiesInStudy": "modality",
    "StudyDate": "study_date",
    "StudyInstanceUID": "study_uid",
}
MAX_LIMIT = 1000
INSTANCE_AVAILABILITY = "00080056"  # Table 10.6.3-3 and -5; always ONLINE here


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
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be 1 to {MAX_LIMIT}")
        if offset < 0:
            raise BadRequest("offset must be 0 or more")
        query.limit, query.offset = limit, offset
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
    if attr.vr == "UI" and not all(c.isdigit() or c in ".,\\" for c in value):
        raise BadRequest(f"{attr.keyword} must be UIDs: digits and dots, \\ or , between")


def _bound(vr: str, text: str) -> str | None:
    """A DA as YYYYMMDD or a TM as HHMMSS.ffffff (padded so strings compare), else None."""
    if vr == "DA":
        return yyyymmdd(text)
    clock = text.strip().replace(":", "")
    digits, _, fraction = clock.partition(".")
    if not (digits.isdigit() and len(digits) in (2, 4, 6) and (fraction.isdigit() or not fraction)):
        return None
    hh, mm, ss = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60 or len(fraction) > 6:
        return None
    return digits.ljust(6, "0") + "." + fraction.ljust(6, "0")


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
            stored.isdigit() and wanted.strip().isdigit() and int(stored) == int(wanted)
        )
    if attr.vr == "PN":
        pattern, have = wanted.strip().upper(), name_key(stored)
        return (
            wildcard_match(pattern, have) if has_wildcards(pattern) else have == name_key(pattern)
        )
    return wildcard_match(exact_key(wanted), exact_key(stored))


def wildcard_match(pattern: str, value: str) -> bool:
    return _wildcard(pattern, value) if has_wildcards(pattern) else pattern == value


@dataclass
class Result:
    """How many records match in all, and this page's DICOM JSON datasets."""

    total: int
    datasets: list[dict[str, Any]]


async def find(redis: Redis, query: Query) -> Result:
    """Every record of ``query.level`` matching its keys and scope, paged, as DICOM JSON.

    Studies come from the study index (``matching_studies``), series from their studies,
    instances from their series; a UID list of the level asked for (or of series) is read
    straight from its hashes instead. Without an instance key, an instance page reads only
    the series it falls in (the series' counts say which).
    """
    if query.level == "instance" and _listed(query, "SOPInstanceUID"):
        return _page(query, await _instances_by_uid(redis, query))
    if query.level != "study" and _listed(query, "SeriesInstanceUID"):
        series = await _series_by_uid(redis, query)
    else:
        if query.level == "study" and set(query.keys) <= set(_STUDY_QUERY):
            # every key is one the study index matches on: its page is the answer
            total, hashes = await study_page(redis, _study_query(query, paged=True))
            return Result(total, [_dataset(query, (h,)) for h in hashes])
        studies = await _studies(redis, query)
        if query.level == "study":
            return _page(query, [(s,) for s in studies])
        series = [
            (st, se)
            for st, children in zip(studies, await _children(redis, studies, "series"), strict=True)
            for se in children
            if _in_scope(query, se) and _level_matches(query, "series", se)
        ]
        series.sort(key=lambda p: _number_key(p[1], "series_number", "series_uid"))
        order = {id(st): i for i, st in enumerate(studies)}  # studies first, newest first
        series.sort(key=lambda p: order[id(p[0])])
    if query.level == "series":
        return _page(query, series)
    if any(ATTRIBUTES[k].level == "instance" for k in query.keys):
        return _page(query, await _instances(redis, query, series))
    # no instance key: every instance of these series matches; read the page's series only
    counts = [int(se.get("instance_count") or 0) for _, se in series]
    start = stop = skipped = 0
    while stop < len(series) and skipped + counts[stop] <= query.offset:
        skipped += counts[stop]
        stop += 1
    start, seen = stop, skipped
    while stop < len(series) and seen < query.offset + query.limit:
        seen += counts[stop]
        stop += 1
    rows = await _instances(redis, query, series[start:stop])
    first = query.offset - skipped
    page = rows[first : first + query.limit]
    return Result(total=sum(counts), datasets=[_dataset(query, row) for row in page])


def _listed(query: Query, keyword: str) -> bool:
    value = query.keys.get(keyword)
    return value is not None and not is_universal(value)


def _in_scope(query: Query, record: Mapping[str, str]) -> bool:
    return (query.study_uid is None or record.get("study_uid") == query.study_uid) and (
        query.series_uid is None or record.get("series_uid") == query.series_uid
    )


def _uids(value: str) -> list[str]:
    return list(dict.fromkeys(u.strip() for u in value.replace("\\", ",").split(",") if u.strip()))


async def _instances(
    redis: Redis, query: Query, series: list[tuple[dict[str, str], dict[str, str]]]
) -> list[tuple[dict[str, str], ...]]:
    """(study, series, instance) of the matching instances of these series, in their order
    and by instance number within each."""
    found = await _children(redis, [se for _, se in series], "instances")
    rows: list[tuple[dict[str, str], ...]] = []
    for (st, se), children in zip(series, found, strict=True):
        children.sort(key=lambda h: _number_key(h, "instance_number", "sop_uid"))
        rows += [(st, se, i) for i in children if _level_matches(query, "instance", i)]
    return rows


async def _series_by_uid(redis: Redis, query: Query) -> list[tuple[dict[str, str], dict[str, str]]]:
    uids = _uids(query.keys["SeriesInstanceUID"])
    series = [h for h in await _hashes(redis, [names.series_key(u) for u in uids]) if h]
    studies = await _hashes(redis, [names.study_key(h["study_uid"]) for h in series])
    return [
        (st, se)
        for st, se in zip(studies, series, strict=True)
        if st
        and _in_scope(query, se)
        and _level_matches(query, "study", st)
        and _level_matches(query, "series", se)
    ]


async def _instances_by_uid(redis: Redis, query: Query) -> list[tuple[dict[str, str], ...]]:
    uids = _uids(query.keys["SOPInstanceUID"])
    found = [h for h in await _hashes(redis, [names.sop_instance_key(u) for u in uids]) if h]
    series = await _hashes(redis, [names.series_key(h["series_uid"]) for h in found])
    studies = await _hashes(redis, [names.study_key(h["study_uid"]) for h in found])
    return [
        (st, se, inst)
        for st, se, inst in zip(studies, series, found, strict=True)
        if st
        and se
        and _in_scope(query, inst)
        and all(_level_matches(query, lv, h) for lv, h in zip(LEVELS, (st, se, inst), strict=True))
    ]


async def _hashes(redis: Redis, keys: list[str]) -> list[dict[str, str]]:
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        found: list[dict[str, str]] = await pipe.execute()
    return found


async def _studies(redis: Redis, query: Query) -> list[dict[str, str]]:
    hashes = await matching_studies(redis, _study_query(query))
    return [h for h in hashes if _level_matches(query, "study", h)]


def _study_query(query: Query, *, paged: bool = False) -> StudyQuery:
    """The study index's query for the study keys it matches on (newest first)."""
    asked: dict[str, Any] = {"sort": "-study_date"}
    if paged:
        asked |= {"limit": query.limit, "offset": query.offset}
    for keyword, field_name in _STUDY_QUERY.items():
        value = query.keys.get(keyword)
        if value is not None and not is_universal(value):
            asked[field_name] = value
    if query.study_uid is not None:
        asked["study_uid"] = [query.study_uid]
    try:
        return StudyQuery.model_validate(asked)
    except ValidationError as exc:
        fields = {str(e["loc"][0]) for e in exc.errors(include_input=False) if e["loc"]}
        keys = [k for k, f in _STUDY_QUERY.items() if f in fields] or ["a study key"]
        raise BadRequest(f"not a valid value of {', '.join(sorted(keys))}") from None


def _level_matches(query: Query, level: Level, record: Mapping[str, str]) -> bool:
    for keyword, wanted in query.keys.items():
        attr = ATTRIBUTES[keyword]
        if attr.level == level and not matches(attr, wanted, record.get(attr.field)):
            return False
    return True


# For each listing hash in KEYS (a study's series, a series' instances), the hashes its fields
# name (ARGV[1] .. field), each as a flat field/value list: one round trip for them all.
_CHILDREN = Lua("""
local out = {}
for n, listing in ipairs(KEYS) do
  local found = {}
  for _, uid in ipairs(redis.call('HKEYS', listing)) do
    local h = redis.call('HGETALL', ARGV[1] .. uid)
    if #h > 0 then found[#found + 1] = h end
  end
  out[n] = found
end
return out
""")


async def _children(
    redis: Redis, parents: list[dict[str, str]], kind: Literal["series", "instances"]
) -> list[list[dict[str, str]]]:
    """The series of each study, or the instances of each series, as hashes."""
    if not parents:
        return []
    if kind == "series":
        keys = [names.study_series_key(p["study_uid"]) for p in parents]
        prefix = names.SERIES_PREFIX
    else:
        keys = [names.series_instances_key(p["series_uid"]) for p in parents]
        prefix = names.SOP_INSTANCE_PREFIX
    found = await _CHILDREN(keys=keys, args=[prefix], client=redis)
    return [[dict(zip(h[::2], h[1::2], strict=True)) for h in hashes] for hashes in found]


def _number_key(h: Mapping[str, str], number: str, uid: str) -> tuple[int, str]:
    value = h.get(number, "")
    return (int(value) if value.lstrip("-").isdigit() else 2**31), h.get(uid, "")


_REQUIRED: dict[Level, tuple[str, ...]] = {
    "study": tuple(k for k, lv, _ in _TABLE if lv == "study"),
    "series": tuple(k for k, lv, _ in _TABLE if lv == "series"),
    "instance": tuple(k for k, lv, _ in _TABLE if lv == "instance"),
}


def _page(query: Query, rows: Sequence[tuple[dict[str, str], ...]]) -> Result:
    page = rows[query.offset : query.offset + query.limit]
    return Result(total=len(rows), datasets=[_dataset(query, row) for row in page])


def _dataset(query: Query, row: tuple[dict[str, str], ...]) -> dict[str, Any]:
    """The attributes to return for one record: its level's (PS3.18 Table 10.6.3-3/4/5),
    the higher levels' when the query is not scoped to them, the match keys, includefield."""
    levels = LEVELS[: LEVELS.index(query.level) + 1]
    wanted: list[str] = list(_REQUIRED[query.level])
    if query.level != "study":
        wanted.append("StudyInstanceUID")
        if query.study_uid is None or query.include_all:
            wanted += _REQUIRED["study"]
    if query.level == "instance":
        wanted.append("SeriesInstanceUID")
        if query.series_uid is None or query.include_all:
            wanted += _REQUIRED["series"]
    wanted += [k for k in (*query.keys, *query.include) if ATTRIBUTES[k].level in levels]
    records = dict(zip(levels, row, strict=True))
    out: dict[str, Any] = {}
    for keyword in dict.fromkeys(wanted):
        attr = ATTRIBUTES[keyword]
        value = records[attr.level].get(attr.field)
        if keyword == "ModalitiesInStudy":
            out[attr.tag] = element(attr.vr, [m for m in (value or "").split(",") if m])
        else:
            out[attr.tag] = element(attr.vr, value)
    if query.level != "series":  # every indexed instance is archived: on line
        out[INSTANCE_AVAILABILITY] = element("CS", "ONLINE")
    return dict(sorted(out.items()))
