"""QIDO-RS on a real Redis: a synthetic set indexed as the status service indexes it, queried
at every level with every kind of matching, through the gateway (``shared.query.find``)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from api_gateway.deps import get_redis
from fastapi import FastAPI
from redis.asyncio import Redis
from status_service.indexes import queue_index

from shared import redis_names as names
from shared.events import StudyKeys
from shared.study_index import unindex
from tests.support import dicom_ids

pytestmark = pytest.mark.timeout(60)

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.10.11"


def keys(p: int, s: int, r: int, i: int) -> StudyKeys:
    """Patient p's study s, series r, instance i."""
    names = ["Smith^Jane", "SMITH^John", "Doe^Ann", "Müller^Hans"]
    return StudyKeys(
        patient_name=names[p],
        patient_id=f"PID-{p}",
        patient_birth_date=f"19{50 + p}0101",
        patient_sex="FM"[p % 2],
        study_date=f"202{s}0{p + 1}15",
        study_time=f"{8 + s:02d}3000",
        accession_number=f"ACC{p}{s}",
        study_description=["CHEST", "HEAD"][s % 2],
        referring_physician_name="Who^Doctor",
        study_id=str(s + 1),
        institution_name="General Hospital",
        series_description=f"SERIES {r}",
        series_number=str(r + 1),
        performed_procedure_step_start_date=f"202{s}0{p + 1}15",
        performed_procedure_step_start_time="083000",
        instance_number=str(i + 1),
        rows=512,
        columns=256 + r,
        bits_allocated=16,
        number_of_frames="1",
    )


# (patient, study, series, instances, modality)
LAYOUT = [
    (p, s, r, 3 if r == 0 else 2, "CT" if r == 0 else "MR")
    for p in range(4)
    for s in range(2)
    for r in range(2)
]


def study_uid(p: int, s: int) -> str:
    return f"{ROOT}.{p}.{s}"


async def index(redis: Redis) -> dict[str, str]:
    """Index the set; upload id -> SOP instance uid."""
    uploads = {}
    for p, s, r, n, modality in LAYOUT:
        for i in range(n):
            sop = f"{study_uid(p, s)}.{r}.{i}"
            ids = dicom_ids(
                study_uid=study_uid(p, s),
                series_uid=f"{study_uid(p, s)}.{r}",
                sop_uid=sop,
                modality=modality,
                sop_class_uid=MR_IMAGE if modality == "MR" else dicom_ids().sop_class_uid,
            )
            upload = str(uuid.uuid4())
            await queue_index(redis, upload, ids, keys(p, s, r, i))
            uploads[upload] = sop
    return uploads


@pytest.fixture
async def indexed(redis: Redis) -> dict[str, str]:
    return await index(redis)


def values(datasets: list[dict[str, Any]], tag: str) -> list[Any]:
    out = []
    for ds in datasets:
        value = ds.get(tag, {}).get("Value", [None])[0]
        out.append(value["Alphabetic"] if isinstance(value, dict) else value)
    return out


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(f"/dicomweb{path}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body: list[dict[str, Any]] = response.json()
    return body


STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


async def test_studies_carry_the_required_attributes_and_counts(
    client: httpx.AsyncClient, indexed: dict[str, str]
) -> None:
    studies = await get(client, "/studies")
    assert len(studies) == 8
    one = next(s for s in studies if s[STUDY_UID]["Value"] == [study_uid(0, 1)])
    assert one["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Smith^Jane"}]}
    assert one["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert one["00201206"] == {"vr": "IS", "Value": [2]}
    assert one["00201208"] == {"vr": "IS", "Value": [5]}
    assert one["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}  # InstanceAvailability
    for tag in (
        "00080020",
        "00080030",
        "00080050",
        "00080090",
        "00100020",
        "00100030",
        "00100040",
        "00200010",
        "00081030",
    ):
        assert "Value" in one[tag], tag
    # newest first
    assert values(studies, "00080020") == sorted(values(studies, "00080020"), reverse=True)


async def test_study_matching_kinds(client: httpx.AsyncClient, indexed: dict[str, str]) -> None:
    async def uids(**params: Any) -> set[str]:
        return set(values(await get(client, "/studies", **params), STUDY_UID))

    assert await uids(PatientName="smith*") == {study_uid(p, s) for p in (0, 1) for s in (0, 1)}
    assert await uids(PatientName="SMITH^JANE") == {study_uid(0, 0), study_uid(0, 1)}
    assert await uids(**{"00100010": "?OE^*"}) == {study_uid(2, 0), study_uid(2, 1)}
    assert await uids(PatientID="PID-3") == {study_uid(3, 0), study_uid(3, 1)}
    assert await uids(StudyDate="20210101-") == {study_uid(p, 1) for p in range(4)}
    assert await uids(StudyDate="-20200215") == {study_uid(0, 0), study_uid(1, 0)}
    assert await uids(StudyDate="20200315") == {study_uid(2, 0)}
    assert await uids(StudyTime="0900-") == {study_uid(p, 1) for p in range(4)}
    pair = f"{study_uid(0, 0)}\\{study_uid(3, 1)}"
    assert await uids(StudyInstanceUID=pair) == {study_uid(0, 0), study_uid(3, 1)}
    assert await uids(ModalitiesInStudy="MR") == {study_uid(p, s) for p in range(4) for s in (0, 1)}
    assert await uids(StudyDescription="head") == {study_uid(p, 1) for p in range(4)}
    assert await uids(AccessionNumber="ACC2*", PatientSex="F") == {study_uid(2, 0), study_uid(2, 1)}
    assert await uids(PatientName="*", StudyID="2") == {study_uid(p, 1) for p in range(4)}
    assert await uids(PatientName="NOBODY") == set()


async def test_series_and_instances_at_every_scope(
    client: httpx.AsyncClient, indexed: dict[str, str]
) -> None:
    series = await get(client, "/series")
    assert len(series) == 16
    assert {
        "00080060",
        "0008103E",
        "00200011",
        "0020000E",
        "00201209",
        "0020000D",
        "00400244",
        "00400245",
        "00100010",
    } <= set(series[0])
    ct = await get(client, "/series", Modality="CT", PatientName="doe*")
    assert sorted(values(ct, SERIES_UID)) == [f"{study_uid(2, s)}.0" for s in (0, 1)]
    assert values(ct, "00201209") == [3, 3]
    scoped = await get(client, f"/studies/{study_uid(1, 0)}/series")
    assert values(scoped, "00200011") == [1, 2]  # by series number
    assert "00100010" not in scoped[0]  # scoped to a study: no study attributes
    assert values(
        await get(client, f"/studies/{study_uid(1, 0)}/series", SeriesNumber="2"), SERIES_UID
    ) == [f"{study_uid(1, 0)}.1"]

    everything = await get(client, "/instances", limit=1000)
    assert len(everything) == len(indexed)
    first = everything[0]
    assert {
        "00080016",
        "00080018",
        "00200013",
        "00280010",
        "00280011",
        "00280100",
        "00280008",
        "0020000E",
        "0020000D",
        "00080060",
    } <= set(first)
    mr = await get(client, "/instances", SOPClassUID=MR_IMAGE)
    assert len(mr) == 16
    in_study = await get(client, f"/studies/{study_uid(0, 0)}/instances")
    assert len(in_study) == 5
    in_series = await get(
        client, f"/studies/{study_uid(0, 0)}/series/{study_uid(0, 0)}.0/instances"
    )
    assert values(in_series, "00200013") == [1, 2, 3]
    assert values(in_series, SOP_UID) == [f"{study_uid(0, 0)}.0.{i}" for i in range(3)]
    picked = await get(client, "/instances", InstanceNumber="2", Columns="257", PatientID="PID-1")
    assert sorted(values(picked, SOP_UID)) == [f"{study_uid(1, s)}.1.1" for s in (0, 1)]
    assert await get(client, f"/studies/{study_uid(0, 0)}/series/1.2.3/instances") == []


async def test_includefield_adds_attributes_and_all_adds_every_level(
    client: httpx.AsyncClient, indexed: dict[str, str]
) -> None:
    path = f"/studies/{study_uid(0, 0)}/series"
    plain = await get(client, path)
    assert "00080020" not in plain[0]
    both = await client.get(
        f"/dicomweb{path}?includefield=StudyDate,00100020&includefield=00081030"
    )
    assert {"00080020", "00100020", "00081030"} <= set(both.json()[0])
    every = await get(client, path, includefield="all")
    assert {"00080020", "00100010", "00201208"} <= set(every[0])


async def test_paging_reaches_the_end_and_warns_while_more_remain(
    client: httpx.AsyncClient, indexed: dict[str, str]
) -> None:
    seen: list[str] = []
    offset = 0
    while True:
        response = await client.get("/dicomweb/instances", params={"limit": 7, "offset": offset})
        page = response.json()
        if not page:
            break
        more = offset + len(page) < len(indexed)
        assert ("Warning" in response.headers) == more
        if more:
            assert response.headers["Warning"].startswith("299 ")
        seen += values(page, SOP_UID)
        offset += len(page)
    assert sorted(seen) == sorted(indexed.values())
    assert len(seen) == len(set(seen))


async def test_fuzzymatching_is_accepted_and_unknown_attributes_are_named(
    client: httpx.AsyncClient, indexed: dict[str, str]
) -> None:
    response = await client.get("/dicomweb/studies?fuzzymatching=true&PatientName=smith*")
    assert response.status_code == 200
    assert "fuzzymatching" in response.headers["Warning"]
    response = await client.get("/dicomweb/studies?PatientWeight=70")
    assert response.status_code == 200
    assert "PatientWeight" in response.headers["Warning"]
    assert len(response.json()) == 8


@pytest.mark.parametrize(
    "query",
    [
        "NotAKeyword=1",
        "FFFF0001=1",
        "StudyDate=2020",
        "StudyDate=20201301",
        "StudyDate=20200101-20200201-20200301",
        "StudyTime=25",
        "StudyInstanceUID=1.2.abc",
        "limit=0",
        "limit=-5",
        "limit=abc",
        "offset=-1",
        "SOPInstanceUID=1.2",
        "includefield=NoSuchThing",
    ],
)
async def test_a_bad_key_or_value_is_a_400_problem_that_quotes_no_value(
    client: httpx.AsyncClient, query: str
) -> None:
    response = await client.get(f"/dicomweb/studies?{query}")
    assert response.status_code == 400, query
    assert response.headers["content-type"] == "application/problem+json"
    key, _, value = query.partition("=")
    if len(value) > 3 and key != "includefield":  # a key's name may be quoted, a value never
        assert value not in response.json().get("detail", ""), query


async def test_a_bad_uid_in_the_path_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/dicomweb/studies/1.2.x/series")
    assert response.status_code == 400


async def test_forgotten_instances_leave_every_level(
    client: httpx.AsyncClient, redis: Redis, indexed: dict[str, str]
) -> None:
    doomed = [u for u, sop in indexed.items() if sop.startswith(f"{study_uid(3, 1)}.1.")]
    await unindex(redis, doomed[0])
    series = await get(client, f"/studies/{study_uid(3, 1)}/series", SeriesNumber="2")
    assert values(series, "00201209") == [1]
    await unindex(redis, doomed[1])
    assert await get(client, f"/studies/{study_uid(3, 1)}/series", SeriesNumber="2") == []
    assert await get(client, "/instances", SeriesInstanceUID=f"{study_uid(3, 1)}.1") == []
    study = await get(client, "/studies", StudyInstanceUID=study_uid(3, 1))
    assert values(study, "00201206") == [1]
    assert values(study, "00080061") == ["CT"]
    for upload in indexed:
        await unindex(redis, upload)
    left = [k async for k in redis.scan_iter() if not k.startswith("dcm:events:")]
    assert left == []  # the gateway made its streams; of the indexes nothing is left


async def test_each_result_has_its_retrieve_url(
    client: httpx.AsyncClient, indexed: dict[str, str]
) -> None:
    base = "http://gateway/dicomweb/studies"
    [study] = await get(client, "/studies", StudyInstanceUID=study_uid(0, 0))
    assert study["00081190"] == {"vr": "UR", "Value": [f"{base}/{study_uid(0, 0)}"]}
    series = await get(client, f"/studies/{study_uid(0, 0)}/series", SeriesNumber="1")
    assert values(series, "00081190") == [f"{base}/{study_uid(0, 0)}/series/{study_uid(0, 0)}.0"]
    [one] = await get(client, "/instances", SOPInstanceUID=f"{study_uid(0, 0)}.0.2")
    want = f"{base}/{study_uid(0, 0)}/series/{study_uid(0, 0)}.0/instances/{study_uid(0, 0)}.0.2"
    assert one["00081190"]["Value"] == [want]


async def test_only_dicom_json_is_offered(client: httpx.AsyncClient) -> None:
    xml = 'multipart/related; type="application/dicom+xml"'
    response = await client.get("/dicomweb/studies", headers={"Accept": xml})
    assert response.status_code == 406
    for accept in ("application/dicom+json", "application/json", "*/*", f"{xml}, */*;q=0.1"):
        response = await client.get("/dicomweb/studies", headers={"Accept": accept})
        assert (response.status_code, response.json()) == (200, []), accept


async def test_redis_down_is_a_503_not_a_500(
    client: httpx.AsyncClient, gateway_app: FastAPI
) -> None:
    async def unreachable() -> Redis:
        return Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)

    gateway_app.dependency_overrides[get_redis] = unreachable
    try:
        response = await client.get("/dicomweb/instances")
    finally:
        gateway_app.dependency_overrides.clear()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


async def test_an_upload_indexed_before_series_were_is_still_removed_cleanly(
    redis: Redis, client: httpx.AsyncClient
) -> None:
    upload = str(uuid.uuid4())
    ids = dicom_ids(study_uid=study_uid(0, 0), series_uid=f"{study_uid(0, 0)}.0", modality="CT")
    other = dicom_ids(
        study_uid=study_uid(0, 0), series_uid=f"{study_uid(0, 0)}.0", sop_uid="1.2.9", modality="CT"
    )
    await queue_index(redis, upload, ids, keys(0, 0, 0, 0))
    await queue_index(redis, str(uuid.uuid4()), other, keys(0, 0, 0, 1))
    # as the older index script left it: no series or instance hashes
    await redis.delete(names.series_key(ids.series_uid), names.series_instances_key(ids.series_uid))
    await redis.delete(names.sop_instance_key(ids.sop_uid), names.sop_instance_key("1.2.9"))
    assert await unindex(redis, upload) == ["search index entry"]
    assert not await redis.exists(names.series_key(ids.series_uid))
    assert await get(client, "/instances") == []
    assert len(await get(client, "/studies")) == 1


@pytest.mark.parametrize(
    ("path", "params", "tag"),
    [
        ("/series", {}, SERIES_UID),
        ("/series", {"Modality": "CT"}, SERIES_UID),
        ("/instances", {"PatientName": "SMITH*"}, SOP_UID),
        ("/instances", {"SeriesNumber": "2"}, SOP_UID),
        ("/instances", {"InstanceNumber": "1"}, SOP_UID),
        (f"/studies/{study_uid(1, 1)}/instances", {}, SOP_UID),
    ],
)
async def test_every_way_of_paging_gives_the_whole_answer_once_in_order(
    client: httpx.AsyncClient,
    indexed: dict[str, str],
    path: str,
    params: dict[str, str],
    tag: str,
) -> None:
    whole = values(await get(client, path, limit=1000, **params), tag)
    assert whole
    for size in (1, 2, 3, 5):
        paged: list[str] = []
        for offset in range(0, len(whole) + size, size):
            response = await client.get(
                f"/dicomweb{path}", params={**params, "limit": size, "offset": offset}
            )
            paged += values(response.json(), tag)
            assert response.headers["X-Total-Count"] == str(len(whole))
        assert paged == whole, (path, params, size)
