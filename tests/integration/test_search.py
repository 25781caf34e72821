"""Study search on a real Redis: every filter against a plain Python filter over made-up data.

A few hundred synthetic instances (about 40 patients, several studies each, dates over ten
years, CT/MR/US/CR, a few institutions spelled several ways) are indexed as the status service
indexes them; each query's answer must be exactly the studies the plain filter finds.
"""

from __future__ import annotations

import fnmatch
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from status_service.indexes import queue_index

from shared import redis_names as names
from shared.events import DicomIds, StudyKeys
from shared.study_index import queue_unindex, unindex
from shared.study_search import SORT_KEYS, StudyQuery, get_study, search
from tests.support import dicom_ids

pytestmark = pytest.mark.timeout(60)

MODALITIES = ("CT", "MR", "US", "CR")
FAMILY = (
    "SMITH",
    "SMITHSON",
    "JOHNSON",
    "ANNAN",
    "DOE",
    "JONES",
    "BROWN",
    "MÜLLER",
    "O'NEIL",
    "VAN DER BERG",
    "HANNAFORD",
    "NGUYEN",
    "SMYTH",
)
GIVEN = ("JANE", "JONE", "JUNE", "ANN", "ANNA", "JOHN", "MARY", "HANNAH", "PETER", "JEAN")
INSTITUTIONS = (
    "General Hospital",
    "general hospital ",
    "GENERAL HOSPITAL",
    "St. Mary's",
    "City Clinic",
    None,
)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass
class Study:
    keys: StudyKeys
    uploads: dict[str, DicomIds] = field(default_factory=dict)

    @property
    def modalities(self) -> set[str]:
        return {ids.modality for ids in self.uploads.values() if ids.modality}


def spell(rng: random.Random, family: str, given: str) -> str:
    """The same name written the ways archives write it."""
    name = f"{family}^{given}"
    return rng.choice([name, name.title(), name.lower(), f"{name}^^", f" {name} "])


def make_data(seed: int = 2024) -> dict[str, Study]:
    rng = random.Random(seed)
    studies: dict[str, Study] = {}
    accession = 0
    for p in range(40):
        name = None if p % 13 == 5 else spell(rng, rng.choice(FAMILY), rng.choice(GIVEN))
        patient = {
            "patient_name": name,
            "patient_id": f"PID{p:04d}" if p % 3 else f"pid-{p:04d}",
            "patient_birth_date": f"{rng.randint(1930, 2010)}0{rng.randint(1, 9)}15",
            "patient_sex": rng.choice(["F", "M", "O"]),
        }
        for s in range(rng.randint(1, 4)):
            uid = f"1.2.826.0.1.3680043.10.1.{p}.{s}"
            day = date(2015, 1, 1) + timedelta(days=rng.randint(0, 3650))
            accession += 1
            keys = StudyKeys(
                **patient,
                study_date=None if rng.random() < 0.06 else day.strftime("%Y%m%d"),
                study_time=rng.choice([None, f"{rng.randint(0, 235959):06d}"]),
                accession_number=None if rng.random() < 0.1 else f"ACC{accession:06d}",
                institution_name=rng.choice(INSTITUTIONS),
                study_description=rng.choice(["CHEST", "HEAD", "ABDOMEN", None]),
                referring_physician_name="Who^Doctor",
                study_id=str(s + 1),
            )
            study = studies[uid] = Study(keys)
            for r in range(rng.randint(1, 3)):
                modality = rng.choice(MODALITIES)
                for i in range(rng.randint(1, 4)):
                    ids = dicom_ids(
                        study_uid=uid,
                        series_uid=f"{uid}.{r}",
                        sop_uid=f"{uid}.{r}.{i}",
                        modality=modality,
                    )
                    study.uploads[str(uuid.uuid4())] = ids
    return studies


DATA = make_data()


async def index_all(redis: Redis, studies: dict[str, Study]) -> None:
    """As the status service does: a batch of events, one pipeline."""
    items = [(u, ids, s.keys) for s in studies.values() for u, ids in s.uploads.items()]
    for start in range(0, len(items), 50):
        async with redis.pipeline(transaction=False) as pipe:
            for upload_id, ids, keys in items[start : start + 50]:
                await queue_index(pipe, upload_id, ids, keys)
            await pipe.execute()


@pytest.fixture
async def indexed(redis: Redis) -> Redis:
    await index_all(redis, DATA)
    return redis


# ---- the plain filter the index must agree with ----


def norm_name(name: str | None) -> str:
    return re.sub(r"\^+$", "", (name or "").strip()).upper()


def folded(value: str | None) -> str:
    return (value or "").strip().casefold()


def score(keys: StudyKeys) -> int:
    if not keys.study_date:
        return 0
    return int(keys.study_date + (keys.study_time or "000000"))


def expected(
    name: str | None = None,
    pid: str | None = None,
    modalities: tuple[str, ...] = (),
    start: str | None = None,
    end: str | None = None,
    institution: str | None = None,
    accession: str | None = None,
    uids: tuple[str, ...] = (),
) -> set[str]:
    out = set()
    for uid, s in DATA.items():
        k = s.keys
        if name is not None and not (
            k.patient_name and fnmatch.fnmatchcase(norm_name(k.patient_name), name.upper())
        ):
            continue
        if pid is not None and not fnmatch.fnmatchcase(folded(k.patient_id), pid.casefold()):
            continue
        if modalities and not s.modalities & set(modalities):
            continue
        if (start or end) and not k.study_date:
            continue
        if start and k.study_date and k.study_date < start:
            continue
        if end and k.study_date and k.study_date > end:
            continue
        if institution is not None and folded(k.institution_name) != folded(institution):
            continue
        if accession is not None and folded(k.accession_number) != folded(accession):
            continue
        if uids and uid not in uids:
            continue
        out.add(uid)
    return out


async def found(redis: Redis, **params: Any) -> set[str]:
    page = await search(redis, StudyQuery(limit=1000, **params))
    uids = [s.study_uid for s in page.studies]
    assert len(uids) == len(set(uids)) == page.total
    return set(uids)


def dates() -> list[str]:
    return sorted(s.keys.study_date for s in DATA.values() if s.keys.study_date)


# ---- the filters ----


def test_the_made_up_data_is_as_varied_as_the_tests_need() -> None:
    uploads = sum(len(s.uploads) for s in DATA.values())
    assert 200 <= uploads <= 1000
    assert 60 <= len(DATA) < 1000
    assert any(s.keys.study_date is None for s in DATA.values())
    assert any(s.keys.patient_name is None for s in DATA.values())
    assert any(len(s.modalities) > 1 for s in DATA.values())


async def test_no_filter_lists_every_study(indexed: Redis) -> None:
    assert await found(indexed) == set(DATA)


async def test_each_exact_filter_finds_exactly_its_studies(indexed: Redis) -> None:
    for modality in MODALITIES:
        assert await found(indexed, modality=[modality]) == expected(modalities=(modality,))
    assert await found(indexed, modality="ct,MR") == expected(modalities=("CT", "MR"))
    assert await found(indexed, modality=["CT", "US"]) == expected(modalities=("CT", "US"))
    assert await found(indexed, modality=["XA"]) == set()
    for p in (1, 3, 7, 12, 39):
        pid = DATA[f"1.2.826.0.1.3680043.10.1.{p}.0"].keys.patient_id
        assert pid is not None
        want = expected(pid=pid)
        assert want
        assert await found(indexed, patient_id=pid) == want
        assert await found(indexed, patient_id=f" {pid.lower()} ") == want  # case, spaces
    assert await found(indexed, patient_id="PID9999") == set()
    for pattern in ("pid-00*", "PID00?1", "*1*"):  # wildcards work on the other filters too
        assert await found(indexed, patient_id=pattern) == expected(pid=pattern), pattern
    hospital = expected(institution="general hospital")
    assert await found(indexed, institution="*HOSPITAL*") == hospital
    for spelling in ("general hospital", "GENERAL Hospital", "St. Mary's", "city clinic"):
        want = expected(institution=spelling)
        assert len(want) > 3
        assert await found(indexed, institution=spelling) == want
    accessions = sorted(s.keys.accession_number for s in DATA.values() if s.keys.accession_number)
    for acc in accessions[::17]:
        assert await found(indexed, accession_number=acc.lower()) == expected(accession=acc)
    uids = tuple(sorted(DATA)[:3])
    assert await found(indexed, study_uid=list(uids)) == set(uids)
    assert await found(indexed, study_uid=["1.2.3.4.5"]) == set()


async def test_patient_name_wildcards_match_as_dicom_says_in_any_case(indexed: Redis) -> None:
    for pattern in (
        "SMITH*",
        "smith*",
        "*ANN*",
        "J?NE*",
        "*^J?NE",
        "DOE^JANE",
        "doe^jane^^",
        "SMITH^*",
        "*",
        "S*H^*",
        "?????^*",
        "MÜLLER*",
        "müller*",
        "O'NEIL^J*",
        "VAN DER*",
        "NOBODY*",
        "*N",
        "*^ANN",
    ):
        if pattern.strip("*") == "":  # universal: also the studies without a name
            want = set(DATA)
        elif "*" in pattern or "?" in pattern:
            want = expected(name=pattern)
        else:  # the whole name, trailing empty components aside
            want = expected(name=norm_name(pattern))
        assert await found(indexed, patient_name=pattern) == want, pattern
    assert await found(indexed, patient_name="SMITH*") != await found(indexed, patient_name="SM*")


async def test_date_ranges_open_on_either_side_and_single_dates(indexed: Redis) -> None:
    all_dates = dates()
    middle, late, one = all_dates[len(all_dates) // 3], all_dates[-5], all_dates[10]
    assert await found(indexed, study_date_from=middle) == expected(start=middle)
    assert await found(indexed, study_date_to=middle) == expected(end=middle)
    assert await found(indexed, study_date_from=middle, study_date_to=late) == expected(
        start=middle, end=late
    )
    assert await found(indexed, study_date=f"{middle}-{late}") == expected(start=middle, end=late)
    assert await found(indexed, study_date=f"{middle}-") == expected(start=middle)
    assert await found(indexed, study_date=f"-{middle}") == expected(end=middle)
    assert await found(indexed, study_date=one) == expected(start=one, end=one)
    iso = f"{one[:4]}-{one[4:6]}-{one[6:]}"
    assert await found(indexed, study_date=iso) == expected(start=one, end=one)
    assert await found(indexed, study_date_from=iso, study_date_to=iso) == expected(
        start=one, end=one
    )
    assert await found(indexed, study_date="19000101-19991231") == set()


async def test_combined_filters_agree_with_the_plain_filter(indexed: Redis) -> None:
    rng = random.Random(7)
    all_dates = dates()
    for _ in range(120):
        asked: dict[str, Any] = {}
        plain: dict[str, Any] = {}
        if rng.random() < 0.5:
            mods = tuple(rng.sample(MODALITIES, rng.randint(1, 2)))
            asked["modality"], plain["modalities"] = list(mods), mods
        if rng.random() < 0.5:
            start, end = sorted(rng.sample(all_dates, 2))
            asked |= {"study_date_from": start, "study_date_to": end}
            plain |= {"start": start, "end": end}
        if rng.random() < 0.4:
            pattern = rng.choice(["SMITH*", "*ANN*", "J?NE*", "*O*", "*^J*", "H*"])
            asked["patient_name"] = plain["name"] = pattern
        if rng.random() < 0.3:
            asked["institution"] = plain["institution"] = rng.choice(INSTITUTIONS[:5])
        if rng.random() < 0.2:
            pid = rng.choice(list(DATA.values())).keys.patient_id
            asked["patient_id"] = plain["pid"] = pid
        assert await found(indexed, **asked) == expected(**plain), asked


# ---- sorting and paging ----


def oracle_order(sort: str) -> list[str]:
    key = sort.removeprefix("-")

    def value(uid: str) -> Any:
        k = DATA[uid].keys
        if key == "study_date":
            return score(k)
        if key == "patient_name":
            return norm_name(k.patient_name)
        return folded(getattr(k, key))

    return sorted(DATA, key=lambda uid: (value(uid), uid), reverse=sort.startswith("-"))


@pytest.mark.parametrize("sort", [*SORT_KEYS, *(f"-{k}" for k in SORT_KEYS)])
async def test_paging_covers_every_study_once_in_sort_order(indexed: Redis, sort: str) -> None:
    everything = await search(indexed, StudyQuery(limit=1000, sort=sort))
    pages: list[str] = []
    for offset in range(0, everything.total + 7, 7):
        page = await search(indexed, StudyQuery(limit=7, offset=offset, sort=sort))
        assert page.total == len(DATA)
        assert len(page.studies) == min(7, max(0, len(DATA) - offset))
        pages += [s.study_uid for s in page.studies]
    assert pages == [s.study_uid for s in everything.studies]
    assert sorted(pages) == sorted(DATA)
    if not sort.endswith("updated_at"):
        assert pages == oracle_order(sort)
    else:  # the order the studies were last changed in
        times = [s.updated_at for s in everything.studies]
        assert times == sorted(times, reverse=sort.startswith("-"))  # type: ignore[type-var]


async def test_read_straight_from_the_date_index_or_filtered_the_order_is_the_same(
    indexed: Redis,
) -> None:
    for sort in ("-study_date", "study_date"):
        fast = await search(indexed, StudyQuery(limit=1000, sort=sort))
        slow = await search(indexed, StudyQuery(limit=1000, sort=sort, modality=list(MODALITIES)))
        assert [s.study_uid for s in fast.studies] == [s.study_uid for s in slow.studies]
    a, b = dates()[20], dates()[-20]
    fast = await search(indexed, StudyQuery(limit=1000, study_date=f"{a}-{b}"))
    slow = await search(
        indexed, StudyQuery(limit=1000, study_date=f"{a}-{b}", modality=list(MODALITIES))
    )
    assert [s.study_uid for s in fast.studies] == [s.study_uid for s in slow.studies]
    assert {s.study_uid for s in fast.studies} == expected(start=a, end=b)


async def test_a_page_past_the_end_is_empty_with_the_total(indexed: Redis) -> None:
    page = await search(indexed, StudyQuery(offset=5000, modality=["CT"]))
    assert (page.total, page.studies) == (len(expected(modalities=("CT",))), [])


# ---- what a record says ----


async def test_each_record_counts_its_series_instances_and_modalities(indexed: Redis) -> None:
    page = await search(indexed, StudyQuery(limit=1000))
    for record in page.studies:
        study = DATA[record.study_uid]
        k = study.keys
        assert record.modalities == sorted(study.modalities)
        assert record.series_count == len({i.series_uid for i in study.uploads.values()})
        assert record.instance_count == len(study.uploads)
        assert [str(u) for u in record.upload_ids] == sorted(study.uploads)
        assert record.patient_name == (k.patient_name.strip() if k.patient_name else None)
        assert record.patient_id == k.patient_id
        assert record.study_date == k.study_date
        assert record.accession_number == k.accession_number
        assert record.institution_name == ((k.institution_name or "").strip() or None)
        assert record.study_description == k.study_description
        assert record.referring_physician_name == "Who^Doctor"


async def test_indexing_everything_again_changes_nothing(indexed: Redis) -> None:
    before = await snapshot(indexed)
    await index_all(indexed, DATA)
    assert await snapshot(indexed) == before


# ---- changes and removal ----

S = "1.2.826.0.1.3680043.10.9.1"


def ids(series: str, sop: str, modality: str | None) -> DicomIds:
    return dicom_ids(
        study_uid=S, series_uid=f"{S}.{series}", sop_uid=f"{S}.{series}.{sop}", modality=modality
    )


KEYS = StudyKeys(
    patient_name="Tester^Tina",
    patient_id="T-1",
    study_date="20210304",
    accession_number="A-9",
    institution_name="Test Clinic",
)


async def test_removing_instances_keeps_the_study_until_the_last_one_goes(redis: Redis) -> None:
    u1, u2, u3, u4 = (str(uuid.uuid4()) for _ in range(4))
    await index_all(redis, DATA)
    everything = await snapshot(redis)
    for upload_id, instance in (
        (u1, ids("1", "1", "CT")),
        (u2, ids("1", "2", "CT")),
        (u3, ids("2", "1", "MR")),
        (u4, ids("1", "1", "CT")),
    ):
        await queue_index(redis, upload_id, instance, KEYS)  # u4: the same SOP uid as u1
    record = await get_study(redis, S)
    assert record is not None
    assert (record.series_count, record.instance_count, record.modalities) == (2, 3, ["CT", "MR"])

    assert await unindex(redis, u3) == ["search index entry"]
    record = await get_study(redis, S)
    assert record is not None
    assert (record.series_count, record.instance_count, record.modalities) == (1, 2, ["CT"])
    assert sorted(str(u) for u in record.upload_ids) == sorted([u1, u2, u4])
    assert S not in await found(redis, modality=["MR"])
    assert S in await found(redis, modality=["CT"], patient_id="t-1", patient_name="TESTER*")
    assert await unindex(redis, u3) == []  # idempotent

    assert await unindex(redis, u1) == ["search index entry"]
    assert (await get_study(redis, S)).instance_count == 2  # type: ignore[union-attr]  # u4 holds it
    assert await unindex(redis, u4) == ["search index entry"]
    assert await unindex(redis, u2) == ["search index entry", "study search record"]
    assert await get_study(redis, S) is None
    for query in (
        {},
        {"patient_id": "T-1"},
        {"patient_name": "TESTER*"},
        {"accession_number": "A-9"},
        {"institution": "test clinic"},
        {"study_date": "20210304"},
        {"modality": ["CT"]},
        {"study_uid": [S]},
        {"sort": "patient_name"},
        {"sort": "updated_at"},
    ):
        assert S not in await found(redis, **query), query
    assert await snapshot(redis) == everything  # no key, member or field of it is left
    assert await unindex(redis, u2) == []


async def test_a_later_instance_with_other_values_moves_the_study_in_the_indexes(
    redis: Redis,
) -> None:
    await queue_index(redis, uuid.uuid4(), ids("1", "1", "CT"), KEYS)
    corrected = KEYS.model_copy(
        update={
            "patient_id": "T-2",
            "patient_name": "Tester^Tanja",
            "study_date": "20220101",
            "institution_name": None,
        },
    )
    await queue_index(redis, uuid.uuid4(), ids("1", "2", "CT"), corrected)
    assert await found(redis, patient_id="T-1") == set()
    assert await found(redis, patient_id="T-2") == {S}
    assert await found(redis, patient_name="TESTER^TINA") == set()
    assert await found(redis, patient_name="tester^tanja") == {S}
    assert await found(redis, study_date="20210304") == set()
    assert await found(redis, study_date="20220101") == {S}
    assert await found(redis, institution="Test Clinic") == {S}  # a missing value erases nothing
    assert await redis.zcard(names.STUDIES_BY_PATIENT_NAME) == 1


async def test_unindexing_in_the_same_transaction_as_other_deletions(redis: Redis) -> None:
    upload_id = uuid.uuid4()
    await queue_index(redis, upload_id, ids("1", "1", "CT"), KEYS)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(names.status_key(upload_id))
        await queue_unindex(pipe, upload_id)
        _, removed = await pipe.execute()
    assert removed == ["search index entry", "study search record"]
    assert await redis.dbsize() == 0


async def test_a_study_without_attributes_is_still_listed_and_found_by_uid(redis: Redis) -> None:
    await queue_index(redis, uuid.uuid4(), ids("1", "1", None), StudyKeys())
    assert await found(redis) == {S}
    assert await found(redis, study_uid=[S], sort="patient_name") == {S}
    assert await found(redis, study_date="20000101-") == set()
    assert await found(redis, patient_name="*") == {S}  # universal matching
    assert await found(redis, patient_name="*A*") == set()
    record = await get_study(redis, S)
    assert record is not None
    assert (record.modalities, record.study_date, record.patient_name) == ([], None, None)


async def snapshot(redis: Redis) -> dict[str, Any]:
    """Every key with its whole content."""
    out: dict[str, Any] = {}
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        if kind == "hash":
            out[key] = await redis.hgetall(key)
        elif kind == "set":
            out[key] = await redis.smembers(key)
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            out[key] = await redis.lrange(key, 0, -1)
        elif kind == "stream":
            out[key] = await redis.xrange(key)
        else:  # a string; DUMP's serialization is binary, not a reply to decode
            out[key] = await redis.get(key)
    return out


# ---- the query's own checks ----


@pytest.mark.parametrize(
    "params",
    [
        {"study_date": "2020"},
        {"study_date": "20201301"},
        {"study_date": "20200101-2020"},
        {"study_date": "20200101-20200201-20200301"},
        {"study_date_from": "yesterday"},
        {"study_date_from": "20200201", "study_date_to": "20200101"},
        {"study_date": "20200101", "study_date_from": "20200101"},
        {"sort": "name"},
        {"sort": "--study_date"},
        {"limit": 0},
        {"limit": 1001},
        {"offset": -1},
        {"offset": 2**64},  # Redis takes no LIMIT offset past 64 bits: it was a 500
        {"modality": ["C;T"]},
        {"study_uid": ["1.2.abc"]},
        {"patient_name": "X" * 300},
    ],
)
def test_a_query_that_is_not_valid_is_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        StudyQuery(**params)


# ---- over HTTP ----


@pytest.fixture
def client(indexed: Redis, client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The gateway, on the Redis the studies were indexed in."""
    return client


async def test_get_studies_answers_the_filters_as_search_does(client: httpx.AsyncClient) -> None:
    answer = await client.get("/studies", params={"modality": ["CT", "MR"], "limit": 1000})
    assert answer.status_code == 200
    body = answer.json()
    assert {s["study_uid"] for s in body["studies"]} == expected(modalities=("CT", "MR"))
    assert body["total"] == len(body["studies"])
    answer = await client.get(
        "/studies", params={"modality": "CT,MR", "patient_name": "smith*", "limit": 1000}
    )
    assert {s["study_uid"] for s in answer.json()["studies"]} == expected(
        modalities=("CT", "MR"), name="SMITH*"
    )
    a, b = dates()[5], dates()[-5]
    answer = await client.get("/studies", params={"study_date": f"{a}-{b}", "limit": 3})
    body = answer.json()
    assert body["total"] == len(expected(start=a, end=b))
    assert [s["study_uid"] for s in body["studies"]] == [
        uid for uid in oracle_order("-study_date") if uid in expected(start=a, end=b)
    ][:3]


async def test_get_one_study_or_404(client: httpx.AsyncClient) -> None:
    uid = sorted(DATA)[0]
    answer = await client.get(f"/studies/{uid}")
    assert answer.status_code == 200
    assert answer.json()["study_uid"] == uid
    assert answer.json()["instance_count"] == len(DATA[uid].uploads)
    for missing in ("1.2.3.999", "not-a-uid", "1." * 40 + "1"):
        answer = await client.get(f"/studies/{missing}")
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] == "/problems/study-not-found"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"study_date": "2020-13-01"}, None),
        ({"study_date_from": "SECRET"}, "study_date_from"),
        ({"sort": "SECRET"}, "sort"),
        ({"limit": 0}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"patient_name": "SECRET" * 60}, "patient_name"),
        ({"modality": "SECRET!"}, "modality"),
    ],
)
async def test_bad_parameters_are_400s_that_name_them_and_never_echo_them(
    client: httpx.AsyncClient, params: dict[str, Any], named: str | None
) -> None:
    answer = await client.get("/studies", params=params)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    text = answer.text
    assert "SECRET" not in text
    assert "2020-13-01" not in text
    assert (named or "study_date") in text
