"""The gateway's upload path in-process, on a real Redis: what is kept, what is refused."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_gateway import receive
from redis.asyncio import Redis

from shared import redis_names as names
from testbed.series import ct_slice

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def gateway_env() -> dict[str, Any]:
    return {"MAX_FILE_SIZE": 1000}


async def test_accepted_file_is_on_disk_under_its_id_and_queued(
    client: httpx.AsyncClient, uploads: Path, flushed_redis: str
) -> None:
    answer = await client.post("/upload", files={"file": ("../../etc/passwd", b"DICM" * 10)})
    assert answer.status_code == 202
    body = answer.json()
    assert body["filename"] == "../../etc/passwd"  # echoed back, never used as a path
    assert sorted(p.name for p in uploads.iterdir()) == [f"{body['study_id']}.dcm"]
    redis = Redis.from_url(flushed_redis, decode_responses=True)
    assert await redis.xlen(names.FILE_RECEIVED) == 1
    assert await redis.hget(names.status_key(body["study_id"]), "state") == "accepted"
    await redis.aclose()


async def test_a_file_too_large_is_refused_and_nothing_of_it_kept(
    client: httpx.AsyncClient, uploads: Path, flushed_redis: str
) -> None:
    files = [("file", ("small.dcm", b"x" * 100)), ("file", ("big.dcm", b"x" * 2000))]
    answer = await client.post("/upload", files=files)
    assert answer.status_code == 202
    body = answer.json()
    assert [u["filename"] for u in body["uploads"]] == ["small.dcm"]
    assert [(f["name"], f["reason"]) for f in body["files"]] == [("big.dcm", "too_large")]
    assert sorted(p.name for p in uploads.iterdir()) == [f"{body['study_id']}.dcm"]
    alone = await client.post("/upload", files={"file": ("big.dcm", b"x" * 2000)})
    assert alone.status_code == 413
    assert alone.headers["content-type"] == "application/problem+json"
    assert len(list(uploads.iterdir())) == 1
    redis = Redis.from_url(flushed_redis, decode_responses=True)
    assert await redis.xlen(names.FILE_RECEIVED) == 1
    await redis.aclose()


async def test_a_full_disk_answers_507_and_keeps_nothing(
    client: httpx.AsyncClient, uploads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(receive.os, "write", full)
    answer = await client.post("/upload", files={"file": ("a.dcm", b"x" * 100)})
    assert answer.status_code == 507
    assert answer.json()["type"] == "/problems/insufficient-storage"
    assert list(uploads.iterdir()) == []


@pytest.mark.parametrize("gateway_env", [{"FSYNC_UPLOADS": True}])
@pytest.mark.parametrize("route", ["/upload", "/dicomweb/studies"])
async def test_a_flush_to_disk_that_fails_answers_507_and_keeps_nothing(
    client: httpx.AsyncClient, uploads: Path, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """The request's files are complete; making them durable (fsync, off the event loop) fails
    as a full disk does: nothing is kept, neither the .part files nor any renamed one."""
    synced: list[int] = []

    def full(fd: int) -> None:
        synced.append(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(receive.os, "fsync", full)
    ct = [ct_slice(i, rows=16, columns=16) for i in range(2)]
    if route == "/upload":
        answer = await client.post(
            "/upload", files=[("file", ("a.dcm", ct[0])), ("file", ("b.dcm", ct[1]))]
        )
    else:
        body = b"".join(
            b"--b\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n" for data in ct
        )
        answer = await client.post(
            route,
            content=body + b"--b--\r\n",
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        )
    assert synced, "the files were made durable"
    assert answer.status_code == 507
    assert answer.json()["type"] == "/problems/insufficient-storage"
    assert list(uploads.iterdir()) == []


async def test_a_body_cut_short_is_refused_and_leaves_no_part_file(
    client: httpx.AsyncClient, uploads: Path
) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.dcm"\r\n\r\nDICM'
    answer = await client.post(
        "/upload", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert answer.status_code == 400
    assert "closing boundary" in answer.json()["detail"]
    assert list(uploads.iterdir()) == []


@pytest.mark.parametrize("chunk", [1, 3, 1 << 16])
async def test_a_preamble_before_the_first_boundary_is_skipped(
    client: httpx.AsyncClient, uploads: Path, chunk: int
) -> None:
    """RFC 2046 5.1.1 lets a body start with text to be ignored (found by fuzzing: it was a
    400), whatever chunks the body comes in."""
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.dcm"\r\n\r\n'
    body = b"This is a preamble.\r\n-b --\r\n" + part + b"DICM\r\n--b--\r\n"

    async def chunks() -> AsyncIterator[bytes]:
        for at in range(0, len(body), chunk):
            yield body[at : at + chunk]

    answer = await client.post(
        "/upload", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert answer.status_code == 202, answer.text
    (kept,) = uploads.glob("*.dcm")
    assert kept.read_bytes() == b"DICM"


async def test_a_body_without_its_boundary_is_refused_after_64_kib(
    client: httpx.AsyncClient, uploads: Path
) -> None:
    answer = await client.post(
        "/upload",
        content=b"x" * 70_000,
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert answer.status_code == 400
    assert answer.json()["detail"] == "the multipart body has no boundary in its first 64 KiB"
    assert list(uploads.iterdir()) == []


async def test_too_many_part_headers_is_a_clear_400(client: httpx.AsyncClient) -> None:
    headers = "".join(f"X-H{i}: v\r\n" for i in range(40))
    body = f'--b\r\nContent-Disposition: form-data; name="file"\r\n{headers}\r\nx\r\n--b--\r\n'
    answer = await client.post(
        "/upload",
        content=body.encode(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert answer.status_code == 400
    assert answer.json()["detail"] == "the multipart body is malformed"


async def test_multipart_without_boundary_is_a_clear_400(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/upload", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert answer.status_code == 400
    assert "boundary" in answer.json()["detail"]


async def test_unknown_routes_and_methods_are_problems_too(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["type"] == "/problems/not-found"
    wrong = await client.delete("/upload")
    assert wrong.status_code == 405
    assert wrong.json()["type"] == "/problems/method-not-allowed"


async def test_retry_of_an_unknown_or_unfailed_job_is_a_clear_problem(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.post("/jobs/00000000-0000-0000-0000-000000000000/retry")
    assert missing.status_code == 404
    answer = await client.post("/upload", files={"file": ("a.dcm", b"x" * 10)})
    not_failed = await client.post(f"/jobs/{answer.json()['study_id']}/retry")
    assert not_failed.status_code == 409
    assert not_failed.json()["type"] == "/problems/job-not-failed"
    assert "accepted" in not_failed.json()["detail"]


async def test_a_job_in_the_pipeline_cannot_be_deleted(client: httpx.AsyncClient) -> None:
    answer = await client.post("/upload", files={"file": ("a.dcm", b"x" * 10)})
    job_id = answer.json()["study_id"]
    status = await client.get(f"/dicom/status/{job_id}")
    assert status.json()["status"] == "QUEUED"
    refused = await client.delete("/dicom/delete", params={"jobId": job_id})
    assert refused.status_code == 409
    assert "accepted" in refused.json()["detail"]
    missing = await client.delete("/dicom/delete")
    assert missing.status_code == 400  # jobId is required


async def test_every_answer_carries_the_browser_security_headers(client: httpx.AsyncClient) -> None:
    """JSON and files may run nothing and be framed by nobody; an HTML page keeps the policy
    of its own (the dashboard) or at least refuses to be framed (/docs)."""
    api = await client.get("/stats")
    problem = await client.get("/uploads/00000000-0000-0000-0000-000000000000")
    docs = await client.get("/docs")
    page = await client.get("/", headers={"Accept": "text/html"})
    for answer in (api, problem, docs, page):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert problem.status_code == 404
    for answer in (api, problem):
        assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    assert "script-src 'self'" in page.headers["content-security-policy"]  # its own, kept
    assert page.headers["content-security-policy"].count("frame-ancestors") == 1
