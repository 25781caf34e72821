"""The one query function over the study, series and instance indexes: QIDO-RS and C-FIND.

``find(redis, Query)`` answers a query (``shared.query_keys.Query``: a level, ``study``,
``series`` or ``instance``, optionally scoped to a study and series, DICOM match keys and
paging) with DICOM JSON datasets (PS3.18 Annex F) and the total. It reads only the indexes the
status service keeps (``shared.study_index``), never files. The study level goes through the
same engine as ``GET /studies`` (``shared.study_search``); series are listed from their
studies and instances from their series, each level's keys matched as ``query_keys`` says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from redis.asyncio import Redis

from shared import redis_names as names
from shared.dicom_json import element
from shared.errors import BadRequest
from shared.lua import Lua
from shared.query_keys import ATTRIBUTES, LEVELS, Level, Query, matches
from shared.study_search import StudyQuery, is_universal, matching_studies, study_page

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
INSTANCE_AVAILABILITY = "00080056"  # Table 10.6.3-3 and -5; always ONLINE here


@dataclass
class Result:
    """How many records match in all, and this page's DICOM JSON datasets."""

    total: int
    datasets: list[dict[str, Any]]


async def find(redis: Redis, query: Query) -> Result:
    """Every record of ``query.level`` matching its keys and scope, paged, as DICOM JSON.

    Studies come from the study index (``matching_studies``), series from their studies,
    instances from their series; a UID list of the level asked for (or of series) is read
    straight from its hashes instead. Where no key of a lower level narrows the search, the
    counts a study or series keeps say which of them the page falls in, and only those are
    read further.
    """
    if query.level == "instance" and _listed(query, "SOPInstanceUID"):
        return _page(query, await _instances_by_uid(redis, query))
    below = {ATTRIBUTES[k].level for k in query.keys} - {"study"}
    total: int | None = None
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
        skipped = 0
        if not below and query.series_uid is None:  # each study's count says where pages fall
            field = "series_count" if query.level == "series" else "instance_count"
            counts = [int(st.get(field) or 0) for st in studies]
            start, stop, skipped = _window(counts, query.offset, query.limit)
            total, studies = sum(counts), studies[start:stop]
        series = await _series_of(redis, query, studies)
        if total is not None:
            rows = series if query.level == "series" else await _instances(redis, query, series)
            return _slice(query, rows, total, skipped)
    if query.level == "series":
        return _page(query, series)
    if "instance" in below:
        return _page(query, await _instances(redis, query, series))
    # no instance key: every instance of these series matches; read the page's series only
    counts = [int(se.get("instance_count") or 0) for _, se in series]
    start, stop, skipped = _window(counts, query.offset, query.limit)
    rows = await _instances(redis, query, series[start:stop])
    return _slice(query, rows, sum(counts), skipped)


def _window(counts: list[int], offset: int, limit: int) -> tuple[int, int, int]:
    """Which groups (of these sizes, in order) a page from ``offset`` falls in: start, stop,
    and how many records come before the start."""
    stop = skipped = 0
    while stop < len(counts) and skipped + counts[stop] <= offset:
        skipped += counts[stop]
        stop += 1
    start, seen = stop, skipped
    while stop < len(counts) and seen < offset + limit:
        seen += counts[stop]
        stop += 1
    return start, stop, skipped


def _slice(
    query: Query, rows: Sequence[tuple[dict[str, str], ...]], total: int, skipped: int
) -> Result:
    """The page of rows that start ``skipped`` records into the whole answer."""
    first = query.offset - skipped
    page = rows[first : first + query.limit]
    return Result(total=total, datasets=[_dataset(query, row) for row in page])


async def _series_of(
    redis: Redis, query: Query, studies: list[dict[str, str]]
) -> list[tuple[dict[str, str], dict[str, str]]]:
    """(study, series) of the matching series of these studies, in the studies' order and by
    series number within each."""
    series: list[tuple[dict[str, str], dict[str, str]]] = []
    for st, children in zip(studies, await _children(redis, studies, "series"), strict=True):
        children.sort(key=lambda h: _number_key(h, "series_number", "series_uid"))
        series += [
            (st, se)
            for se in children
            if _in_scope(query, se) and _level_matches(query, "series", se)
        ]
    return series


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
    number = value.removeprefix("-")
    return (int(value) if number.isascii() and number.isdigit() else 2**31), h.get(uid, "")


_REQUIRED: dict[Level, tuple[str, ...]] = {  # PS3.18 Tables 10.6.3-3, -4 and -5
    level: tuple(k for k, a in ATTRIBUTES.items() if a.level == level) for level in LEVELS
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
