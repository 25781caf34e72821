"""The study API in-process on a real Redis: labels, raw and batch uploads, users, statistics,
listing, lookup and delete, with the seeds' shapes (002 and 004) and their errors."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from redis.asyncio import Redis
from status_service.apply import apply

from shared import redis_names as names
from shared.events import FileRejected, Reason
from shared.jobs import JobStore
from tests.support import ct_slice

pytestmark = pytest.mark.timeout(60)

MAX = 200_000


@pytest.fixture
def gateway_env() -> dict[str, Any]:
    return {"MAX_FILE_SIZE": MAX, "MAX_BATCH_SIZE": 4 * MAX}


def small_ct(i: int = 0) -> bytes:
    return ct_slice(i, rows=32, columns=32)


def png_bytes() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (8, 6), 128).save(out, format="PNG")
    return out.getvalue()


async def reject(redis: Redis, upload_id: str) -> None:
    """Bring a job to a final state as the validator would."""
    from shared.events import FileRef

    event = FileRejected(
        upload_id=UUID(upload_id),
        file=FileRef(path="x", sha256="0" * 64, size=1),
        reasons=[Reason(code="not-dicom", message="not DICOM")],
    )
    assert await apply(JobStore(redis), event)


# -- seed 004: labels ---------------------------------------------------------------------------


async def test_a_labelled_upload_files_dicom_and_refuses_the_rest_per_file(
    client: httpx.AsyncClient, uploads: Path
) -> None:
    files = [
        ("files", ("IM000001", small_ct(1))),
        ("files", ("IM000020", small_ct(2))),
        ("files", ("sample.pdf", b"%PDF-1.4 not dicom")),
        ("files", ("huge.dcm", b"\0" * (MAX + 1))),
    ]
    answer = await client.post("/upload", data={"study": "iraj-x-ray"}, files=files)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["success"] is False
    assert body["failedFiles"] == 2
    assert {(f["name"], f["reason"]) for f in body["files"]} == {
        ("sample.pdf", "invalid_type"),
        ("huge.dcm", "too_large"),
    }
    assert body["label"] == "iraj-x-ray"
    assert [u["filename"] for u in body["uploads"]] == ["IM000001", "IM000020"]
    kept = sorted(p.name for p in uploads.iterdir())
    assert kept == sorted(f"{u['study_id']}.dcm" for u in body["uploads"])

    listing = (await client.get("/files")).json()
    assert listing == {"studies": ["iraj-x-ray"], "studiesCount": 1, "success": True}
    in_study = (await client.get("/files/iraj-x-ray")).json()
    assert in_study == {
        "files": ["IM000001", "IM000020"],
        "filesCount": 2,
        "study": "iraj-x-ray",
        "success": True,
    }
    ours = (await client.get("/labels/iraj-x-ray")).json()
    assert [(f["name"], f["status"]) for f in ours["files"]] == [
        ("IM000001", "accepted"),
        ("IM000020", "accepted"),
    ]


async def test_a_name_already_under_the_label_is_a_duplicate(client: httpx.AsyncClient) -> None:
    first = await client.post("/upload?label=L1", files={"file": ("IM1", small_ct(1))})
    assert first.status_code == 202
    again = await client.post("/upload", data={"label": "L1"}, files={"file": ("IM1", small_ct(2))})
    assert again.status_code == 409
    body = again.json()
    assert body["success"] is False
    assert body["failedFiles"] == 1
    assert body["files"] == [
        {
            "name": "IM1",
            "reason": "duplicate",
            "message": "a file of this name is already filed under this label",
        }
    ]
    twice = [("file", ("IM2", small_ct(3))), ("file", ("IM2", small_ct(4)))]
    mixed = (await client.post("/upload?label=L1", files=twice)).json()
    assert mixed["failedFiles"] == 1
    assert mixed["files"][0]["reason"] == "duplicate"
    assert (await client.get("/files/L1")).json()["files"] == ["IM1", "IM2"]


async def test_every_file_refused_answers_with_that_reason_and_the_seed_shape(
    client: httpx.AsyncClient,
) -> None:
    not_dicom = await client.post("/upload?label=x", files={"files": ("a.pdf", b"%PDF")})
    assert not_dicom.status_code == 415
    body = not_dicom.json()
    assert body["success"] is False
    assert body["files"][0]["reason"] == "invalid_type"
    assert body["type"] == "/problems/files-refused"
    too_big = await client.post("/upload", files={"file": ("a.dcm", b"x" * (MAX + 1))})
    assert too_big.status_code == 413
    assert "MAX_FILE_SIZE" in too_big.json()["detail"]


async def test_seed_004_errors(client: httpx.AsyncClient) -> None:
    assert (await client.post("/upload?label=S", files={"file": ("IM1", small_ct())})).is_success
    missing_study = await client.get("/files/nope")
    assert missing_study.status_code == 404
    assert missing_study.json()["error"] == "study not found"
    assert missing_study.json()["success"] is False
    missing_file = await client.get("/files/S/IM9/tag", params={"tag": "(0028,0010)"})
    assert missing_file.status_code == 404
    assert (
        missing_file.json() | {"error": "file not found", "success": False} == missing_file.json()
    )
    no_tag = await client.get("/files/S/IM1/tag")
    assert no_tag.status_code == 400
    assert no_tag.json()["error"] == "tag query parameter is empty"
    assert no_tag.json()["success"] is False
    bad_tag = await client.get("/files/S/IM1/tag", params={"tag": "(zzzz,2222)"})
    assert bad_tag.status_code == 400
    assert bad_tag.json()["invalidTags"] == ["(zzzz,2222)"]
    assert bad_tag.json()["success"] is False


async def test_a_label_that_cannot_be_one_is_a_clear_400(client: httpx.AsyncClient) -> None:
    answer = await client.post("/upload?label=a%0Ab", files={"file": ("a", small_ct())})
    assert answer.status_code == 400
    assert "label" in answer.json()["detail"]


# -- seed 002: raw, images, batches, users, stats ------------------------------------------------


async def test_a_raw_upload_with_its_user(client: httpx.AsyncClient, redis: Redis) -> None:
    answer = await client.post(
        "/upload",
        content=small_ct(),
        headers={
            "X-File-Name": "scan.dcm",
            "X-User-ID": "u-1",
            "content-type": "application/dicom",
        },
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["upload_id"] == body["study_id"]
    assert body["message"]
    assert "diagnosis" not in body
    assert "confidence" not in body
    details = (await client.get(f"/upload/{body['upload_id']}/details")).json()
    assert details["filename"] == "scan.dcm"
    assert details["user_id"] == "u-1"
    assert details["status"] == "accepted"
    mine = (await client.get("/user/u-1/uploads")).json()
    assert mine["user_id"] == "u-1"
    assert mine["count"] == 1
    assert mine["uploads"][0]["upload_id"] == body["upload_id"]


async def test_a_raw_upload_needs_its_file_name(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/upload", content=small_ct(), headers={"content-type": "application/octet-stream"}
    )
    assert answer.status_code == 400
    assert "X-File-Name" in answer.json()["detail"]
    too_big = await client.post(
        "/upload", content=b"x" * (MAX + 1), headers={"X-File-Name": "big.dcm"}
    )
    assert too_big.status_code == 413


async def test_an_image_becomes_a_secondary_capture_instance(
    client: httpx.AsyncClient, uploads: Path
) -> None:
    import pydicom

    answer = await client.post(
        "/upload",
        content=png_bytes(),
        headers={"X-File-Name": "photo.png", "content-type": "image/png"},
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["converted_from"] == "png"
    ds = pydicom.dcmread(uploads / f"{body['upload_id']}.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (ds.Rows, ds.Columns, ds.PhotometricInterpretation) == (6, 8, "MONOCHROME2")
    assert int(ds.pixel_array.max()) == 128
    status = (await client.get(f"/status/{body['upload_id']}")).json()
    assert status["details"]["source"] == "image"
    assert status["details"]["sha256"] == body["sha256"]
    image_sha256 = hashlib.sha256(png_bytes()).hexdigest()
    assert status["details"]["source_sha256"] == image_sha256


async def test_an_image_is_found_by_its_own_hash_until_it_is_deleted(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    # a client that resumes (dicomflow upload) looks files up by the hash of what it has
    image_sha256 = hashlib.sha256(png_bytes()).hexdigest()
    headers = {"X-File-Name": "photo.png", "content-type": "image/png"}
    body = (await client.post("/upload", content=png_bytes(), headers=headers)).json()
    lookup = {"sha256": [image_sha256, body["sha256"]]}
    known = (await client.post("/uploads/lookup", json=lookup)).json()["known"]
    assert known == {image_sha256: body["upload_id"], body["sha256"]: body["upload_id"]}
    await reject(redis, body["upload_id"])
    removed = await client.delete(f"/uploads/{body['upload_id']}")
    assert removed.status_code == 200, removed.text
    assert (await client.post("/uploads/lookup", json=lookup)).json() == {"known": {}}


async def test_a_batch_with_its_progress_files_and_user(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    files = [
        {"filename": "dicom1.dcm", "content": base64.b64encode(small_ct(1)).decode()},
        {"filename": "scan1.png", "content": base64.b64encode(png_bytes()).decode()},
        {"filename": "broken.dcm", "content": "not base64!!"},
    ]
    answer = await client.post("/upload/batch", json={"files": files}, headers={"X-User-ID": "u-2"})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "queued"
    assert body["total_files"] == 2
    assert body["files"] == [
        {
            "name": "broken.dcm",
            "reason": "invalid_base64",
            "message": "the content is not valid base64",
        }
    ]
    batch_id = body["batch_id"]
    status = (await client.get(f"/upload/batch/{batch_id}/status")).json()
    assert status["status"] == "queued"
    assert (status["total_files"], status["processed_files"]) == (2, 0)
    assert status["progress_percentage"] == 0
    await reject(redis, body["uploads"][0]["upload_id"])
    status = (await client.get(f"/upload/batch/{batch_id}/status")).json()
    assert (status["status"], status["processed_files"]) == ("processing", 1)
    assert status["progress_percentage"] == 50
    assert status["counts"] == {"rejected": 1, "accepted": 1}
    listed = (await client.get(f"/upload/batch/{batch_id}/files")).json()
    assert listed["count"] == 2
    assert [f["details"]["filename"] for f in listed["files"]] == ["dicom1.dcm", "scan1.png"]
    batches = (await client.get("/user/u-2/batches")).json()
    assert batches["count"] == 1
    assert batches["batches"][0]["batch_id"] == batch_id
    assert (await client.get("/upload/batch/nope/status")).status_code == 404
    await reject(redis, body["uploads"][1]["upload_id"])
    for upload in body["uploads"]:
        assert (await client.delete(f"/uploads/{upload['upload_id']}")).status_code == 200
    emptied = (await client.get(f"/upload/batch/{batch_id}/status")).json()
    assert (emptied["status"], emptied["total_files"]) == ("completed", 0)  # not "queued"
    assert emptied["progress_percentage"] == 100


async def test_a_full_disk_during_a_batch_answers_507_and_keeps_nothing(
    client: httpx.AsyncClient, uploads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api_gateway import receive

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(receive.os, "write", full)
    files = [{"filename": "a.dcm", "content": base64.b64encode(small_ct()).decode()}]
    answer = await client.post("/upload/batch", json={"files": files})
    assert answer.status_code == 507
    assert answer.json()["type"] == "/problems/insufficient-storage"
    assert list(uploads.iterdir()) == []  # neither the spooled batch nor a decoded file


async def test_batches_over_the_limit_or_malformed_are_refused_before_decoding(
    client: httpx.AsyncClient, uploads: Path
) -> None:
    big = json.dumps({"files": [{"filename": "a", "content": "A" * (4 * MAX)}]})
    declared = await client.post(
        "/upload/batch", content=big, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413

    async def chunked():  # no Content-Length: refused as the spool passes the limit
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536].encode()

    streamed = await client.post(
        "/upload/batch", content=chunked(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    broken = await client.post(
        "/upload/batch", content=b'{"files": [', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["detail"] == "the batch is not valid JSON"
    empty = await client.post("/upload/batch", json={"files": []})
    assert empty.status_code == 400
    form = await client.post("/upload/batch", data={"files": "x"})
    assert form.status_code == 415
    assert list(uploads.iterdir()) == []


async def test_stats_count_users_states_and_time(client: httpx.AsyncClient, redis: Redis) -> None:
    empty = (await client.get("/stats")).json()
    assert empty["total_uploads"] == 0
    assert empty["latest_upload"] is None
    ids = []
    for user in ("a", "b", "a"):
        answer = await client.post(
            "/upload", files={"file": ("x", small_ct())}, headers={"X-User-ID": user}
        )
        ids.append(answer.json()["upload_id"])
    await reject(redis, ids[0])
    stats = (await client.get("/stats")).json()
    assert stats["total_uploads"] == 3
    assert stats["unique_users"] == 2
    assert stats["earliest_upload"] <= stats["latest_upload"]
    assert stats["by_state"] == {"accepted": 2, "rejected": 1}


async def test_save_upload_lists_it_for_the_user(client: httpx.AsyncClient) -> None:
    upload_id = (await client.post("/upload", files={"file": ("x", small_ct())})).json()[
        "upload_id"
    ]
    saved = await client.post("/save-upload", params={"user_id": "u-9", "upload_id": upload_id})
    assert saved.status_code == 200
    assert saved.json()["upload_id"] == upload_id
    assert (await client.get("/user/u-9/uploads")).json()["count"] == 1
    unknown = await client.post(
        "/save-upload",
        params={"user_id": "u-9", "upload_id": "00000000-0000-0000-0000-000000000000"},
    )
    assert unknown.status_code == 404
    assert (await client.post("/save-upload", params={"upload_id": upload_id})).status_code == 400
    blank = await client.post("/save-upload", params={"user_id": " ", "upload_id": upload_id})
    assert blank.status_code == 400
    ours = await client.put(f"/users/u-8/uploads/{upload_id}")
    assert ours.status_code == 204
    assert (await client.get("/users/u-8/uploads")).json()["count"] == 1
    nobody = await client.put(f"/users/%20/uploads/{upload_id}")
    assert nobody.status_code == 400  # not a 500
    assert nobody.json()["detail"] == "the user id is empty"


# -- our API: listing, lookup, delete -----------------------------------------------------------


async def test_listing_pages_and_filters(client: httpx.AsyncClient, redis: Redis) -> None:
    ids = []
    for i in range(7):
        answer = await client.post("/upload?label=P", files={"file": (f"f{i}", small_ct(i))})
        ids.append(answer.json()["upload_id"])
    await reject(redis, ids[2])
    seen, before = [], None
    while True:
        params = {"limit": 3} | ({"before": before} if before is not None else {})
        page = (await client.get("/uploads", params=params)).json()
        seen += [u["upload_id"] for u in page["uploads"]]
        before = page["next"]
        if before is None:
            break
    assert seen == ids[::-1]
    rejected = (await client.get("/uploads", params={"state": "rejected"})).json()
    assert [u["upload_id"] for u in rejected["uploads"]] == [ids[2]]
    labelled = (await client.get("/uploads", params={"label": "P", "state": "accepted"})).json()
    assert labelled["count"] == 6
    assert (await client.get("/uploads", params={"state": "nonsense"})).status_code == 400


async def test_lookup_says_which_bytes_are_held(client: httpx.AsyncClient) -> None:
    body = (await client.post("/upload", files={"file": ("x", small_ct(5))})).json()
    answer = await client.post("/uploads/lookup", json={"sha256": [body["sha256"], "0" * 64]})
    assert answer.json() == {"known": {body["sha256"]: body["upload_id"]}}


async def test_delete_removes_the_record_and_every_entry_and_says_so(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    body = (
        await client.post(
            "/upload?label=D", files={"file": ("IM1", small_ct())}, headers={"X-User-ID": "u"}
        )
    ).json()
    upload_id = body["upload_id"]
    in_pipeline = await client.delete(f"/uploads/{upload_id}")
    assert in_pipeline.status_code == 409
    await reject(redis, upload_id)
    answer = await client.delete(f"/uploads/{upload_id}")
    assert answer.status_code == 200, answer.text
    removed = answer.json()["removed"]
    assert "job record" in removed
    assert "label entry" in removed
    assert "user's upload list entry" in removed
    assert (await client.get(f"/status/{upload_id}")).status_code == 404
    assert (await client.get("/files")).json()["studies"] == []
    assert (await client.get("/user/u/uploads")).json()["count"] == 0
    assert not await redis.exists(names.sha256_key(body["sha256"]))
    assert (await client.get("/stats")).json()["by_state"] == {}
    again = await client.delete(f"/uploads/{upload_id}")
    assert again.status_code == 404
