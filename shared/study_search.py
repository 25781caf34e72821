"""Study search over the study index (``shared.study_index``): the study level of the query.

``search`` answers ``GET /studies`` from the indexes alone, never from files; ``get_study``
reads one study's record; ``matching_studies`` is what both it and the query function of
QIDO-RS and C-FIND (``shared.query``) use to find studies.

Matching, as DICOM PS3.4 C.2.2.2 says, except for case: patient name, patient id, accession
number and institution accept ``*`` (any run of characters, also none) and ``?`` (one
character), and a value without them must match whole. All matching ignores case, as most PACS
do for names (PS3.4 lets PN matching ignore case; for the others DICOM would not). A filter of
only ``*`` matches everything, also studies without the attribute.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, cast
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, Field, field_validator, model_validator
from redis.asyncio import Redis

from shared import redis_names as names
from shared.study_index import (
    EXACT_INDEXES,
    STUDY_ATTRIBUTES,
    exact_key,
    modality_key,
    name_key,
    value_digest,
    yyyymmdd,
)

# ---- matching ----


def is_universal(pattern: str) -> bool:
    """A filter that matches everything (PS3.4 C.2.2.2.3): empty, or only ``*``."""
    return not pattern.strip().strip("*")


def has_wildcards(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def wildcard_match(pattern: str, value: str) -> bool:
    """PS3.4 C.2.2.2.4: ``*`` matches any run of characters (also none), ``?`` one character.
    Linear backtracking to the last ``*``, so no pattern can make it slow (unlike a regex)."""
    p = v = 0
    star, mark = -1, 0
    while v < len(value):
        if p < len(pattern) and pattern[p] in ("?", value[v]):
            p, v = p + 1, v + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, v, p + 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            v = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


# ---- reading ----

MAX_OFFSET = 2**31  # far past any index; Redis takes a LIMIT offset of 64 bits at most
SORT_KEYS = ("study_date", "patient_name", "patient_id", "accession_number", "updated_at")


def _listed(value: Any) -> Any:
    """Repeated parameters and ``CT,MR`` or ``CT\\MR`` lists alike, as one flat list."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [p.strip() for item in items for p in re.split(r"[,\\]", item) if p.strip()]


class StudyQuery(BaseModel):
    """What a study search asks for. Every filter is optional; the ones given must all match.

    ``modality`` and ``study_uid`` are lists (any of them matches). ``study_date`` is a DICOM
    date or range (``20200101``, ``20200101-20201231``, ``20200101-``, ``-20201231``), or use
    ``study_date_from``/``study_date_to`` (inclusive, YYYYMMDD or YYYY-MM-DD), not both; once
    validated, the range is in those two and ``study_date`` is None. ``sort`` is one of
    ``SORT_KEYS``, ``-`` first for descending; ties go by study UID. A QIDO-RS endpoint maps
    PatientName, PatientID, ModalitiesInStudy, StudyDate, InstitutionName, AccessionNumber and
    StudyInstanceUID onto these fields, and limit/offset as they are.
    """

    patient_name: str | None = Field(default=None, max_length=256)
    patient_id: str | None = Field(default=None, max_length=256)
    modality: Annotated[list[str], BeforeValidator(_listed)] = []
    study_date: str | None = None
    study_date_from: str | None = None
    study_date_to: str | None = None
    institution: str | None = Field(default=None, max_length=256)
    accession_number: str | None = Field(default=None, max_length=256)
    study_uid: Annotated[list[str], BeforeValidator(_listed)] = []
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    sort: str = "-study_date"

    @field_validator("patient_name", "patient_id", "institution", "accession_number")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else value

    @field_validator("modality")
    @classmethod
    def _modalities(cls, value: list[str]) -> list[str]:
        if any(not re.fullmatch(r"[A-Za-z0-9_ ]{1,16}", m) for m in value):
            raise ValueError("a modality is 1 to 16 letters, digits, spaces or _, e.g. CT")
        return sorted({modality_key(m) for m in value})

    @field_validator("study_uid")
    @classmethod
    def _uids(cls, value: list[str]) -> list[str]:
        if len(value) > 1000 or any(not re.fullmatch(r"[0-9.]{1,64}", u) for u in value):
            raise ValueError("a study UID is digits and dots, at most 64 characters")
        return value

    @field_validator("study_date_from", "study_date_to")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        day = yyyymmdd(value)
        if day is None:
            raise ValueError("must be a date as YYYYMMDD or YYYY-MM-DD")
        return day

    @field_validator("sort")
    @classmethod
    def _sort(cls, value: str) -> str:
        if value.removeprefix("-") not in SORT_KEYS:
            raise ValueError(f"must be one of {', '.join(SORT_KEYS)}, with - for descending")
        return value

    @field_validator("study_date")
    @classmethod
    def _date_range(cls, value: str | None) -> str | None:
        """A date or range, as ``start-end`` (either may be empty)."""
        text = (value or "").strip()
        if not text:
            return None
        if day := yyyymmdd(text):
            return f"{day}-{day}"
        start, dash, end = text.partition("-")
        if not dash or "-" in end or not (start or end):
            raise ValueError("must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD, either end open")
        if any(part and yyyymmdd(part) is None for part in (start, end)):
            raise ValueError("must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD, either end open")
        return text

    @model_validator(mode="after")
    def _one_date_range(self) -> StudyQuery:
        if self.study_date:
            if self.study_date_from or self.study_date_to:
                raise ValueError("give study_date, or study_date_from and study_date_to, not both")
            first, _, last = self.study_date.partition("-")
            self.study_date_from, self.study_date_to = first or None, last or None
            self.study_date = None
        start, end = self.study_date_from, self.study_date_to
        if start and end and start > end:
            raise ValueError("study_date_from is after study_date_to")
        return self


class StudyRecord(BaseModel):
    """One study as the index knows it (QIDO-RS study level), and the uploads that hold it."""

    study_uid: str
    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    institution_name: str | None = None
    study_description: str | None = None
    referring_physician_name: str | None = None
    study_id: str | None = None
    modalities: list[str] = []
    series_count: int = 0
    instance_count: int = 0
    upload_ids: list[UUID] = []
    updated_at: datetime | None = None


class StudyPage(BaseModel):
    """One page of a search: how many studies match in all, and the ones on this page."""

    total: int
    offset: int
    limit: int
    studies: list[StudyRecord]


async def search(redis: Redis, query: StudyQuery) -> StudyPage:
    """The studies matching ``query``, sorted and paged (``study_page``), as records."""
    total, hashes = await study_page(redis, query)
    return StudyPage(
        total=total,
        offset=query.offset,
        limit=query.limit,
        studies=await _records(redis, hashes),
    )


async def study_page(redis: Redis, query: StudyQuery) -> tuple[int, list[dict[str, str]]]:
    """How many studies match ``query``, and the hashes of its page.

    Candidates come from the index that promises the fewest (the intersection of the exact
    sets, the date range, or the name's literal prefix); they are read in one pipeline and
    every filter is checked on the record itself. With no filter but a date range, sorted by
    date (the usual worklist), the page is read straight from the date index.
    """
    low, high = _score_range(query)
    filtered = bool(
        _name_pattern(query)
        or any(v is not None for v in _exact_filters(query).values())
        or query.modality
        or query.study_uid
    )
    sort = query.sort.removeprefix("-")
    if not filtered and (sort == "study_date" or (sort == "updated_at" and low is None)):
        return await _page_from_index(redis, query, low, high)
    matching = await matching_studies(redis, query)
    return len(matching), matching[query.offset : query.offset + query.limit]


async def matching_studies(redis: Redis, query: StudyQuery) -> list[dict[str, str]]:
    """The hashes of every study matching ``query``'s filters, in its sort order (its paging
    aside): what ``search`` pages and the query function (``shared.query``) reads."""
    low, high = _score_range(query)
    pattern = _name_pattern(query)
    exact = {f: v for f, v in _exact_filters(query).items() if v is not None}
    candidates = await _candidates(redis, query, low, high, pattern, exact)
    hashes = await _read_hashes(redis, candidates)
    matching = [h for h in hashes if h and _matches(h, query, low, high, pattern, exact)]
    matching.sort(key=_sort_key(query.sort.removeprefix("-")), reverse=query.sort.startswith("-"))
    return matching


async def get_study(redis: Redis, study_uid: str) -> StudyRecord | None:
    """One study's record, or None when no indexed upload holds it."""
    [h] = await _read_hashes(redis, [study_uid])
    if not h:
        return None
    [record] = await _records(redis, [h])
    return record


def _score_range(query: StudyQuery) -> tuple[int | None, int | None]:
    if not (query.study_date_from or query.study_date_to):
        return None, None
    low = int(query.study_date_from) * 1_000_000 if query.study_date_from else 1
    high = int(query.study_date_to) * 1_000_000 + 999_999 if query.study_date_to else None
    return low, high


def _name_pattern(query: StudyQuery) -> str | None:
    if query.patient_name is None or is_universal(query.patient_name):
        return None
    text = query.patient_name.strip().upper()
    return text if has_wildcards(text) else name_key(text)


def _exact_filters(query: StudyQuery) -> dict[str, str | None]:
    """hash field -> the filter on it, case-folded; None where absent or universal."""
    given = {
        "patient_id": query.patient_id,
        "accession_number": query.accession_number,
        "institution_name": query.institution,
    }
    return {f: None if v is None or is_universal(v) else exact_key(v) for f, v in given.items()}


async def _page_from_index(
    redis: Redis, query: StudyQuery, low: int | None, high: int | None
) -> tuple[int, list[dict[str, str]]]:
    """A page read straight from the date (or update) index: no other filter, sorted by it."""
    key = names.STUDIES_BY_DATE if query.sort.endswith("study_date") else names.STUDIES_BY_UPDATE
    lo, hi = (low if low is not None else "-inf"), (high if high is not None else "+inf")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zcount(key, lo, hi)
        if query.sort.startswith("-"):
            pipe.zrevrangebyscore(key, hi, lo, start=query.offset, num=query.limit)
        else:
            pipe.zrangebyscore(key, lo, hi, start=query.offset, num=query.limit)
        total, uids = await pipe.execute()
    return total, [h for h in await _read_hashes(redis, uids) if h]


async def _candidates(
    redis: Redis,
    query: StudyQuery,
    low: int | None,
    high: int | None,
    pattern: str | None,
    exact: dict[str, str],
) -> list[str]:
    """Study UIDs that may match: those of the index promising the fewest."""
    if query.study_uid:
        return query.study_uid
    by_modality = [names.studies_by_modality_key(m) for m in query.modality]
    sets = [EXACT_INDEXES[f] + value_digest(v) for f, v in exact.items() if not has_wildcards(v)]
    sets += by_modality if len(by_modality) == 1 else []
    # per index that can narrow the search: the commands whose answers add up to how many
    # studies it holds, and the command that lists them
    sources: list[tuple[list[tuple[str, tuple[Any, ...]]], str, tuple[Any, ...]]] = []
    # the intersection is no larger than its smallest set (SINTERCARD would need Redis 7)
    sources += [([("scard", (k,))], "sinter", tuple(sets)) for k in sets]
    if len(by_modality) > 1:
        sources.append(([("scard", (k,)) for k in by_modality], "sunion", tuple(by_modality)))
    if low is not None:
        bounds = (names.STUDIES_BY_DATE, low, high if high is not None else "+inf")
        sources.append(([("zcount", bounds)], "zrangebyscore", bounds))
    if pattern:
        literal = re.split(r"[*?]", pattern)[0].encode()
        whole = not has_wildcards(pattern)  # the name itself ("NAME\0uid"), else a prefix
        lo, hi = (b"\x00", b"\x01") if whole else (b"", b"\xff")
        lex = (names.STUDIES_BY_PATIENT_NAME, b"[" + literal + lo, b"(" + literal + hi)
        if literal:
            sources.append(([("zlexcount", lex)], "zrangebylex", lex))
    if not sources:
        return cast(list[str], await redis.zrange(names.STUDIES_BY_UPDATE, 0, -1))
    async with redis.pipeline(transaction=False) as pipe:
        for estimates, _, _ in sources:
            for command, args in estimates:
                getattr(pipe, command)(*args)
        answers: list[int] = await pipe.execute()
    counts = []
    for estimates, _, _ in sources:
        counts.append(sum(answers[: len(estimates)]))
        answers = answers[len(estimates) :]
    if min(counts) == 0:
        return []
    _, fetch, args = sources[counts.index(min(counts))]
    found = await getattr(redis, fetch)(*args)
    if fetch == "zrangebylex":
        return [member.rsplit("\x00", 1)[-1] for member in found]
    return list(found)


async def _read_hashes(redis: Redis, uids: Iterable[str]) -> list[dict[str, str]]:
    async with redis.pipeline(transaction=False) as pipe:
        for uid in uids:
            pipe.hgetall(names.study_key(uid))
        found: list[dict[str, str]] = await pipe.execute()
    return found


def _matches(
    h: dict[str, str],
    query: StudyQuery,
    low: int | None,
    high: int | None,
    pattern: str | None,
    exact: dict[str, str],
) -> bool:
    if query.study_uid and h.get("study_uid") not in query.study_uid:
        return False
    if query.modality and not set(query.modality) & set(_split(h.get("modalities"))):
        return False
    for field, wanted in exact.items():
        if has_wildcards(wanted):
            if not wildcard_match(wanted, exact_key(h.get(field, ""))):
                return False
        elif h.get(f"ix:{field}") != value_digest(wanted):
            return False
    score = int(h.get("ix:date") or 0)
    if low is not None and not (low <= score and (high is None or score <= high)):
        return False
    if pattern is not None:
        name = h.get("ix:patient_name", "")
        return wildcard_match(pattern, name) if has_wildcards(pattern) else name == pattern
    return True


def _sort_key(sort: str) -> Any:
    def key(h: dict[str, str]) -> tuple[Any, str]:
        uid = h.get("study_uid", "")
        if sort == "study_date":
            return int(h.get("ix:date") or 0), uid
        if sort == "updated_at":
            return float(h.get("updated_at") or 0), uid
        if sort == "patient_name":
            return h.get("ix:patient_name", ""), uid
        return exact_key(h.get(sort, "")), uid

    return key


async def _records(redis: Redis, hashes: list[dict[str, str]]) -> list[StudyRecord]:
    """Records of these study hashes, with their upload ids (read for this page only)."""
    async with redis.pipeline(transaction=False) as pipe:
        for h in hashes:
            pipe.hkeys(names.study_uploads_key(h["study_uid"]))
        uploads: list[list[str]] = await pipe.execute()
    return [_record(h, ids) for h, ids in zip(hashes, uploads, strict=True)]


def _record(h: dict[str, str], upload_ids: list[str]) -> StudyRecord:
    updated = h.get("updated_at")
    return StudyRecord.model_validate(
        {k: h[k] for k in STUDY_ATTRIBUTES if h.get(k)}
        | {
            "study_uid": h["study_uid"],
            "modalities": _split(h.get("modalities")),
            "series_count": int(h.get("series_count") or 0),
            "instance_count": int(h.get("instance_count") or 0),
            "upload_ids": sorted(UUID(u) for u in upload_ids),
            "updated_at": datetime.fromtimestamp(float(updated), UTC) if updated else None,
        }
    )


def _split(value: str | None) -> list[str]:
    return [m for m in (value or "").split(",") if m]
