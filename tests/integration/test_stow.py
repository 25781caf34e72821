"""STOW-RS (PS3.18 §10.5) on a served gateway with real Redis and no validator: each part one
upload job through the intake; hostile bodies get the standard's answer and leave nothing.

Without a validator every instance stays pending: the answer says so (202, WarningReason
0xB0F0) once STOW_VALIDATION_TIMEOUT_S has passed. tests/e2e/test_stow_e2e.py runs the pipeline.
"""

from __future__ import annotations

import asyncio
import io
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from api_gateway.dicomweb import stow
from dicomweb_client import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian

from tests.support import ct_instances

UPLOAD_ID = "00091001"  # (0009,1001) in the dicomflow private block (0009,0010)
BOUNDARY = "stow-test-boundary"


@pytest.fixture
def gateway_env() -> dict[str, Any]:
    return {
        "STOW_VALIDATION_TIMEOUT_S": 0.3,
        "HTTP_BODY_READ_TIMEOUT_S": 0.5,
        "MAX_FILE_SIZE": 200_000,
    }


def encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def body(*parts: bytes, boundary: str = BOUNDARY, close: bool = True) -> bytes:
    out = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    return out + (b"--" + boundary.encode() + b"--\r\n" if close else b"")


def related(boundary: str = BOUNDARY, quoted: bool = True) -> str:
    b = f'"{boundary}"' if quoted else boundary
    return f'multipart/related; type="application/dicom"; boundary={b}'


def leftovers(uploads: Path) -> list[str]:
    return sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []


async def test_dicomweb_client_stores_a_series_in_one_request(
    served_gateway: str, uploads: Path
) -> None:
    series = ct_instances(3)
    client = DICOMwebClient(url=f"{served_gateway}/dicomweb")
    answer = await asyncio.to_thread(client.store_instances, series)
    stored = answer.ReferencedSOPSequence
    assert [i.ReferencedSOPInstanceUID for i in stored] == [d.SOPInstanceUID for d in series]
    study = series[0].StudyInstanceUID
    # built from the request's Host header (dicomweb-client sends the host without its port)
    assert answer.RetrieveURL.endswith(f"/dicomweb/studies/{study}")
    assert "FailedSOPSequence" not in answer
    async with httpx.AsyncClient(base_url=served_gateway) as http:
        for item in stored:
            assert item.WarningReason == stow.VALIDATION_PENDING  # no validator runs here
            assert item.RetrieveURL.endswith(f"/instances/{item.ReferencedSOPInstanceUID}")
            upload_id = item[0x0009, 0x1001].value
            status = (await http.get(f"/status/{upload_id}")).json()
            assert status["status"] == "accepted"
            assert status["details"]["source"] == "stow"
    assert len([n for n in leftovers(uploads) if n.endswith(".dcm")]) == 3


async def test_status_codes_follow_table_10_5_3_1(served_gateway: str, uploads: Path) -> None:
    good, other = ct_instances(1)[0], ct_instances(1)[0]
    study = good.StudyInstanceUID
    async with httpx.AsyncClient(base_url=served_gateway) as http:
        # some stored, one of another study: 202, the other failed 0xC409
        answer = await http.post(
            f"/dicomweb/studies/{study}",
            content=body(encoded(good), encoded(other)),
            headers={"content-type": related(quoted=False)},
        )
        assert answer.status_code == 202
        assert answer.headers["content-type"] == "application/dicom+json"
        ds = pydicom.Dataset.from_json(answer.json())
        assert ds.RetrieveURL.endswith(f"/dicomweb/studies/{study}")
        (failed,) = ds.FailedSOPSequence
        assert failed.ReferencedSOPInstanceUID == other.SOPInstanceUID
        assert failed.FailureReason == stow.STUDY_UID_MISMATCH
        # none stored (not DICOM, an unknown part type, too large): 409, each with its reason
        too_large = b"\0" * 128 + b"DICM" + b"\0" * 300_000
        odd = f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\n".encode() + encoded(good) + b"\r\n"
        answer = await http.post(
            "/dicomweb/studies",
            content=odd + body(b"hello, not DICOM", too_large),
            headers={"content-type": related()},
        )
        assert answer.status_code == 409
        reasons = [
            i.FailureReason for i in pydicom.Dataset.from_json(answer.json()).FailedSOPSequence
        ]
        assert sorted(reasons) == sorted(
            [stow.CANNOT_UNDERSTAND, stow.CANNOT_UNDERSTAND, stow.OUT_OF_RESOURCES]
        )
    # only the one stored instance stays
    assert len(leftovers(uploads)) == 1


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ("multipart/related; boundary=" + BOUNDARY, 415),  # no type
        ('multipart/related; type="image/jpeg"; boundary=' + BOUNDARY, 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
        (related("another-boundary"), 400),  # not the body's boundary
    ],
)
async def test_a_wrong_content_type_is_refused_and_nothing_is_kept(
    served_gateway: str, uploads: Path, content_type: str, status: int
) -> None:
    async with httpx.AsyncClient(base_url=served_gateway) as http:
        answer = await http.post(
            "/dicomweb/studies",
            content=body(encoded(ct_instances(1)[0])),
            headers={"content-type": content_type},
        )
    assert answer.status_code == status, answer.text
    assert leftovers(uploads) == []


async def test_a_body_cut_short_is_a_400_and_leaves_nothing(
    served_gateway: str, uploads: Path
) -> None:
    whole = encoded(ct_instances(1)[0])
    cut = body(whole, boundary=BOUNDARY, close=False) + b"--" + BOUNDARY.encode() + b"\r\n"
    cut += b"Content-Type: application/dicom\r\n\r\n" + whole[:1000]
    async with httpx.AsyncClient(base_url=served_gateway) as http:
        answer = await http.post(
            "/dicomweb/studies", content=cut, headers={"content-type": related()}
        )
    assert answer.status_code == 400
    assert leftovers(uploads) == []


async def test_a_chunked_body_that_stalls_is_a_408_and_leaves_nothing(
    served_gateway: str, uploads: Path
) -> None:
    first = body(encoded(ct_instances(1)[0]), close=False)  # one whole part, then nothing, ever
    host, port = served_gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: {related()}\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"{len(first):x}\r\n".encode()
            + first
            + b"\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"/problems/request-timeout" in answer
    assert leftovers(uploads) == []


async def test_a_chunked_body_is_stored(served_gateway: str, uploads: Path) -> None:
    data = body(*(encoded(d) for d in ct_instances(2)))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 777):
            yield data[start : start + 777]

    async with httpx.AsyncClient(base_url=served_gateway) as http:
        answer = await http.post(
            "/dicomweb/studies", content=chunks(), headers={"content-type": related()}
        )
    assert answer.status_code == 202  # stored, validation pending (no validator here)
    assert len(pydicom.Dataset.from_json(answer.json()).ReferencedSOPSequence) == 2
    assert len(leftovers(uploads)) == 2


def large_part_head(pixel_bytes: int) -> bytes:
    """A CT instance up to its Pixel Data header: the pixel bytes are the caller's to send."""
    ds = ct_instances(1)[0]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    del ds.PixelData
    header = b"\xe0\x7f\x10\x00OB\x00\x00" + pixel_bytes.to_bytes(4, "little")
    return encoded(ds) + header


@pytest.mark.parametrize(
    "gateway_env", [{"STOW_VALIDATION_TIMEOUT_S": 0, "MAX_FILE_SIZE": 200 * 2**20}]
)
async def test_a_large_part_streams_to_disk_in_flat_memory(
    served_gateway: str, uploads: Path
) -> None:
    size, chunk = 96 * 2**20, b"\0" * 2**20
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()

    async def stream() -> AsyncIterator[bytes]:
        yield head + large_part_head(size)
        for _ in range(size // len(chunk)):
            yield chunk  # the same bytes each time: the client holds one chunk
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    tracemalloc.start()
    try:
        async with httpx.AsyncClient(base_url=served_gateway, timeout=60) as http:
            answer = await http.post(
                "/dicomweb/studies", content=stream(), headers={"content-type": related()}
            )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert answer.status_code == 202, answer.text
    (stored,) = list(uploads.glob("*.dcm"))
    assert stored.stat().st_size > size
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB at the peak for a {size >> 20} MiB part"
