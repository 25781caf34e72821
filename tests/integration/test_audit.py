"""The audit trail (issue 12): who did what, when, from where, and how it ended, for uploads
(whichever way in), downloads, deletions, retries, key changes and refusals; read back by
admins with ``GET /audit``; never a secret nor patient data in it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from api_gateway.access import KeyStore, Scope
from redis.asyncio import Redis

from shared import audit, intake
from shared import redis_names as names
from shared.events import Origin
from shared.jobs import JobStore
from tests.support import ct_slice

PATIENT = "Audit^Hidden^Patient"


@pytest.fixture
def gateway_env() -> dict[str, Any]:
    return {"ACCESS_CONTROL": "on"}


@pytest.fixture
async def keys(redis: Redis, served_gateway: str) -> dict[str, dict[str, str]]:
    store = KeyStore(redis)
    made = {}
    for name, scope in (("pacs", Scope.WRITE), ("viewer", Scope.READ), ("ops", Scope.ADMIN)):
        _, secret = await store.create(name, [scope])
        made[name] = {"Authorization": f"Bearer {secret}"}
    return made


async def trail(redis: Redis) -> list[dict[str, str]]:
    return [fields for _, fields in await redis.xrange(names.AUDIT)]


async def test_who_did_what_is_recorded_and_read_back_by_admins(
    served_gateway: str, redis: Redis, keys: dict[str, dict[str, str]]
) -> None:
    dicom = ct_slice(0, rows=32, columns=32, patient_name=PATIENT)
    async with httpx.AsyncClient(base_url=served_gateway) as client:
        sent = await client.post("/upload", files={"file": ("a.dcm", dicom)}, headers=keys["pacs"])
        assert sent.status_code == 202, sent.text
        upload_id = sent.json()["uploads"][0]["upload_id"]
        await client.get(f"/uploads/{upload_id}/original", headers=keys["viewer"])
        await client.get(f"/uploads/{upload_id}/original")  # anonymous
        await client.delete(f"/uploads/{upload_id}", headers=keys["viewer"])  # not an admin
        made = await client.post(
            "/keys", json={"name": "ct2", "scopes": ["write"]}, headers=keys["ops"]
        )
        key_id = made.json()["id"]
        await client.delete(f"/keys/{key_id}", headers=keys["ops"])
        status = await client.get(f"/status/{upload_id}", headers=keys["viewer"])

        entries = await trail(redis)
        said = [(e["actor"], e["action"], e["outcome"]) for e in entries]
        assert said == [
            ("key:pacs", "upload", "accepted"),
            ("key:viewer", "download.original", "409"),  # not archived yet: no worker runs here
            ("anonymous", "refused", "401"),
            ("key:viewer", "refused", "403"),
            ("key:ops", "key.create", "201"),
            ("key:ops", "key.revoke", "200"),
        ]
        assert all(e["client"] == "127.0.0.1" for e in entries)
        assert [e.get("upload_id") for e in entries[:4]] == [upload_id] * 4
        assert entries[1]["route"] == "/uploads/{study_id}/original"
        assert entries[4]["key_id"] == entries[5]["key_id"] == key_id
        assert datetime.fromisoformat(entries[0]["at"]) > datetime.now(UTC) - timedelta(minutes=1)
        # the job says who sent it too
        assert status.json()["details"]["actor"] == "key:pacs"

        # an admin reads it back, filtered and page by page; nobody else may
        assert (await client.get("/audit", headers=keys["viewer"])).status_code == 403
        everything = (await client.get("/audit", headers=keys["ops"])).json()
        assert [e["action"] for e in everything["entries"]][:6] == [a for _, a, _ in said]
        refusals = await client.get("/audit?action=refused", headers=keys["ops"])
        assert [e["outcome"] for e in refusals.json()["entries"]] == [
            "401",
            "403",
            "403",
        ]  # /audit too
        by_viewer = await client.get("/audit?actor=key:viewer", headers=keys["ops"])
        assert {e["actor"] for e in by_viewer.json()["entries"]} == {"key:viewer"}
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        future = await client.get("/audit", params={"since": later}, headers=keys["ops"])
        assert future.json() == {"entries": [], "count": 0, "next": None}
        pages, after = [], None
        while True:
            params = {"limit": "2", **({"after": after} if after else {})}
            page = (await client.get("/audit", params=params, headers=keys["ops"])).json()
            pages.extend(e["id"] for e in page["entries"])
            if not (after := page["next"]):
                break
        assert pages[:6] == [e["id"] for e in everything["entries"]][:6]
        assert len(pages) == len(set(pages))
        csv = await client.get("/jobs/audit.csv", headers=keys["ops"])
        assert "actor" in csv.text.splitlines()[0].split(",")
        assert "key:pacs" in csv.text

    stored = json.dumps(await trail(redis))
    assert PATIENT.split("^")[0] not in stored
    assert "dfk_" not in stored  # no secret, ever


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("until=0080-03-14T13:57:15-07:19", 200),  # before 1970: before every entry
        ("since=1969-12-31T23:59:59Z", 200),
        ("after=99999999999999999999-0", 400),  # beyond a stream id's 64 bits
        ("after=1-18446744073709551616", 400),
        ("after=18446744073709551615-18446744073709551615", 200),
    ],
)
async def test_odd_times_and_ids_are_answers_not_server_errors(
    served_gateway: str, keys: dict[str, dict[str, str]], query: str, status: int
) -> None:
    """Found by schemathesis: Redis refused the stream ids they made, and that was a 500."""
    async with httpx.AsyncClient(base_url=served_gateway) as client:
        answer = await client.get(f"/audit?{query}", headers=keys["ops"])
    assert answer.status_code == status, answer.text
    if status == 200:
        assert answer.json()["next"] is None


async def test_a_dimse_upload_is_recorded_as_its_calling_ae(redis: Redis, tmp_path: Any) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(ct_slice(1, rows=32, columns=32))
    event = intake.adopt(
        path, tmp_path, Origin(source="dimse", calling_ae="CT01", peer="10.0.0.7:4100")
    )
    await intake.queue(JobStore(redis), [event])
    [entry] = await trail(redis)
    assert entry["actor"] == "ae:CT01"
    assert entry["client"] == "10.0.0.7:4100"
    assert entry["upload_id"] == str(event.upload_id)
    job = await JobStore(redis).read(event.upload_id)
    assert job is not None
    assert job.details["actor"] == "ae:CT01"  # the job names its sender too
    entries, following = await audit.read(redis, actor="ae:CT01")
    assert [e.targets["upload_id"] for e in entries] == [str(event.upload_id)]
    assert following is None
