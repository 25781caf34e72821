"""WADO-RS against a served gateway on real Redis, driven by dicomweb-client and plain httpx.

Five of pydicom's test files, given one study and their own series and SOP Instance UIDs, are
archived as the descriptor archives them (``original.dcm`` and ``metadata.json`` under
``ARCHIVE_PATH/{upload id}``, the instance key, the study index's entry), in four transfer
syntaxes: Explicit VR Little Endian, JPEG 2000 lossless, JPEG baseline and RLE (one of them
two frames).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import numpy as np
import pydicom
import pytest
from api_gateway.settings import GatewaySettings
from descriptor_service.metadata import describe
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.encaps import get_frame
from redis.asyncio import Redis

from shared import redis_names as names

STUDY = "1.2.826.0.1.3680043.8.498.77"
SERIES_CT, SERIES_MR, SERIES_SC = (f"{STUDY}.{n}" for n in (1, 2, 3))
NATIVE = "1.2.840.10008.1.2.1"
DICOM_PARTS = 'multipart/related; type="application/dicom"'


@dataclass(frozen=True)
class Archived:
    name: str
    series: str
    sop: str
    path: Path


FILES = {  # key: (pydicom test file, series)
    "ct": ("CT_small.dcm", SERIES_CT),  # Explicit VR Little Endian
    "j2k": ("MR_small_jp2klossless.dcm", SERIES_MR),  # JPEG 2000 lossless
    "rle": ("MR_small_RLE.dcm", SERIES_MR),  # RLE lossless
    "jpeg": ("SC_rgb_jpeg_dcmtk.dcm", SERIES_SC),  # JPEG baseline, YBR_FULL
    "multi": ("SC_rgb_rle_2frame.dcm", SERIES_SC),  # RLE, two frames
}


@pytest.fixture
async def archived(redis: Redis, gateway_settings: GatewaySettings) -> dict[str, Archived]:
    """The five instances archived and indexed as the pipeline leaves them."""
    out = {}
    for n, (key, (name, series)) in enumerate(FILES.items(), start=1):
        ds = pydicom.dcmread(get_testdata_file(name))
        sop = f"{series}.{n}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        upload_id = str(uuid4())
        folder = gateway_settings.archive_path / upload_id
        folder.mkdir(parents=True)
        original = folder / "original.dcm"
        ds.save_as(original, enforce_file_format=True)
        data = original.read_bytes()
        described = describe(pydicom.dcmread(original))
        (folder / "metadata.json").write_text(json.dumps(described))
        sha256 = hashlib.sha256(data).hexdigest()
        await redis.set(names.instance_key(sop), f"{upload_id} {sha256}")
        modality = str(ds.get("Modality", ""))
        await redis.hset(names.study_uploads_key(STUDY), upload_id, f"{series}\t{sop}\t{modality}")
        out[key] = Archived(name, series, sop, original)
    return out


def dicomweb(base: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{base}/dicomweb")


def instance_url(base: str, a: Archived) -> str:
    return f"{base}/dicomweb/studies/{STUDY}/series/{a.series}/instances/{a.sop}"


async def test_retrieve_study_streams_every_instance_as_stored(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    client = dicomweb(served_gateway)
    got = await asyncio.to_thread(client.retrieve_study, STUDY)
    by_sop = {ds.SOPInstanceUID: ds for ds in got}
    assert set(by_sop) == {a.sop for a in archived.values()}
    for a in archived.values():
        stored = pydicom.dcmread(a.path)
        ds = by_sop[a.sop]
        assert ds.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID
        assert ds.PixelData == stored.PixelData


async def test_a_study_is_streamed_part_by_part(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    """Sent as it is read (chunked, no length known in advance), never built whole first."""
    async with (
        httpx.AsyncClient() as http,
        http.stream("GET", f"{served_gateway}/dicomweb/studies/{STUDY}") as answer,
    ):
        assert answer.status_code == 200
        assert "content-length" not in answer.headers
        assert answer.headers["transfer-encoding"] == "chunked"
        body = b"".join([chunk async for chunk in answer.aiter_bytes()])
    assert body.count(b"Content-Type: application/dicom; transfer-syntax=") == len(archived)


async def test_retrieve_series_and_instance_transcoded_to_explicit_vr_little_endian(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    client = dicomweb(served_gateway)
    got = await asyncio.to_thread(
        client.retrieve_series, STUDY, SERIES_MR, media_types=(("application/dicom", NATIVE),)
    )
    assert len(got) == 2
    for ds in got:
        assert ds.file_meta.TransferSyntaxUID == NATIVE
        original = next(a for a in archived.values() if a.sop == ds.SOPInstanceUID)
        np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(original.path).pixel_array)
    one = await asyncio.to_thread(
        client.retrieve_instance,
        STUDY,
        SERIES_SC,
        archived["jpeg"].sop,
        media_types=(("application/dicom", NATIVE),),
    )
    assert one.file_meta.TransferSyntaxUID == NATIVE
    assert one.pixel_array.shape == (100, 100, 3)


async def test_series_metadata_is_dicom_json_whose_bulk_data_uris_work(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    client = dicomweb(served_gateway)
    metadata = await asyncio.to_thread(client.retrieve_series_metadata, STUDY, SERIES_CT)
    assert len(metadata) == 1
    ds = pydicom.Dataset.from_json(metadata[0], lambda tag, vr, uri: b"")
    assert ds.SOPInstanceUID == archived["ct"].sop
    assert metadata[0]["00083002"]["Value"] == [NATIVE]
    path = f"/dicomweb/studies/{STUDY}/series/{SERIES_CT}/instances/{archived['ct'].sop}"
    assert metadata[0]["7FE00010"]["BulkDataURI"].endswith(f"{path}/bulkdata/7FE00010")
    # dicomweb-client sends a Host header without the port: the URIs of an answer to it lack
    # the port (DICOMWEB_PUBLIC_URL fixes them); httpx sends it, so its answer's URIs work
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{served_gateway}{path}/metadata")
    uri = answer.json()[0]["7FE00010"]["BulkDataURI"]
    assert uri == f"{served_gateway}{path}/bulkdata/7FE00010"
    [pixels] = await asyncio.to_thread(client.retrieve_bulkdata, uri)
    assert pixels == pydicom.dcmread(archived["ct"].path).PixelData
    study = await asyncio.to_thread(client.retrieve_study_metadata, STUDY)
    assert {m["00080018"]["Value"][0] for m in study} == {a.sop for a in archived.values()}


@pytest.mark.parametrize(
    "gateway_env", [{"DICOMWEB_PUBLIC_URL": "https://pacs.example.org/dicomweb/"}]
)
async def test_bulk_data_uris_start_with_the_public_url_when_set(
    client: httpx.AsyncClient, archived: dict[str, Archived]
) -> None:
    ct = archived["ct"]
    path = f"/dicomweb/studies/{STUDY}/series/{ct.series}/instances/{ct.sop}"
    answer = await client.get(f"{path}/metadata")
    uri = answer.json()[0]["7FE00010"]["BulkDataURI"]
    assert uri == f"https://pacs.example.org{path}/bulkdata/7FE00010"


async def test_metadata_etag_answers_304_while_nothing_changed(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    url = instance_url(served_gateway, archived["ct"]) + "/metadata"
    async with httpx.AsyncClient() as http:
        first = await http.get(url, headers={"Accept": "application/dicom+json"})
        assert first.status_code == 200
        assert first.headers["content-type"] == "application/dicom+json"
        etag = first.headers["etag"]
        again = await http.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304
        other = await http.get(url, headers={"If-None-Match": '"other"'})
        assert other.status_code == 200


async def test_frames_native_compressed_as_stored_and_decoded(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    client = dicomweb(served_gateway)
    ct = archived["ct"]
    [native] = await asyncio.to_thread(
        client.retrieve_instance_frames,
        STUDY,
        ct.series,
        ct.sop,
        [1],
        media_types=("application/octet-stream",),
    )
    assert native == pydicom.dcmread(ct.path).PixelData

    multi = archived["multi"]
    stored = pydicom.dcmread(multi.path)
    as_stored = await asyncio.to_thread(
        client.retrieve_instance_frames,
        STUDY,
        multi.series,
        multi.sop,
        [2, 1],
        media_types=(("application/octet-stream", "*"),),
    )
    assert as_stored == [get_frame(stored.PixelData, i, number_of_frames=2) for i in (1, 0)]
    decoded = await asyncio.to_thread(
        client.retrieve_instance_frames,
        STUDY,
        multi.series,
        multi.sop,
        [2],
        media_types=(("application/octet-stream", NATIVE),),
    )
    assert decoded == [stored.pixel_array[1].tobytes()]

    jpeg = archived["jpeg"]
    [baseline] = await asyncio.to_thread(
        client.retrieve_instance_frames,
        STUDY,
        jpeg.series,
        jpeg.sop,
        [1],
        media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),),
    )
    assert baseline[:2] == b"\xff\xd8"  # a JPEG stream, as stored


async def test_frame_parts_name_their_transfer_syntax(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    """OHIF's request: any syntax, octet-stream; each part says which syntax it holds."""
    url = instance_url(served_gateway, archived["j2k"]) + "/frames/1"
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    async with httpx.AsyncClient() as http:
        answer = await http.get(url, headers={"Accept": accept})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("multipart/related")
    assert (
        b"Content-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.90"
        in answer.content
    )


async def test_one_frame_asked_for_as_a_bare_media_type_is_a_single_part(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    """OHIF's ``singlepart`` option: ``application/octet-stream`` alone gets the frame alone."""
    j2k = archived["j2k"]
    url = instance_url(served_gateway, j2k) + "/frames/1"
    async with httpx.AsyncClient() as http:
        answer = await http.get(
            url, headers={"Accept": "application/octet-stream; transfer-syntax=*"}
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == (
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.90"
    )
    stored = pydicom.dcmread(j2k.path)
    assert answer.content == get_frame(stored.PixelData, 0, number_of_frames=1)


async def test_rendered_and_thumbnails_at_every_level(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    client = dicomweb(served_gateway)
    ct = archived["ct"]
    png = await asyncio.to_thread(
        client.retrieve_instance_rendered,
        STUDY,
        ct.series,
        ct.sop,
        media_types=("image/png",),
        params={"window": "40,400,linear", "viewport": "32,32"},
    )
    assert png.startswith(b"\x89PNG")
    assert int.from_bytes(png[16:20], "big") == 32  # width in the IHDR chunk
    jpeg = await asyncio.to_thread(
        client.retrieve_instance_rendered,
        STUDY,
        ct.series,
        ct.sop,
        media_types=("image/jpeg",),
        params={"quality": 50},
    )
    assert jpeg[:2] == b"\xff\xd8"
    # the cache of /uploads/{id}/image: one file per parameter set, beside the archive
    assert (ct.path.parent / "renders" / "1_40_400_linear_32.png").is_file()
    assert (ct.path.parent / "renders" / "1_file_full_q50.jpeg").is_file()
    multi = archived["multi"]
    base = f"{served_gateway}/dicomweb/studies/{STUDY}"
    async with httpx.AsyncClient() as http:
        for url in (
            instance_url(served_gateway, multi) + "/frames/2/rendered",
            instance_url(served_gateway, multi) + "/frames/2/thumbnail",
            instance_url(served_gateway, multi) + "/thumbnail",
            f"{base}/series/{SERIES_MR}/rendered",
            f"{base}/series/{SERIES_MR}/thumbnail",
            f"{base}/rendered",
            f"{base}/thumbnail",
        ):
            answer = await http.get(url, headers={"Accept": "image/png"})
            assert answer.status_code == 200, url
            assert answer.headers["content-type"] == "image/png"
        gif = await http.get(f"{base}/thumbnail", headers={"Accept": "image/gif"})
        assert gif.status_code == 406


async def test_errors_are_problems_with_the_standards_status(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    ct, j2k = archived["ct"], archived["j2k"]
    base = f"{served_gateway}/dicomweb/studies"
    cases: list[tuple[str, dict[str, Any], int]] = [
        (f"{base}/1.2.3.4", {}, 404),
        (f"{base}/{STUDY}/series/1.2.3.4/metadata", {}, 404),
        (f"{base}/{STUDY}/series/{ct.series}/instances/1.2.3.4", {}, 404),
        (  # JPEG 2000 cannot be given as JPEG baseline
            instance_url(served_gateway, j2k),
            {"Accept": f"{DICOM_PARTS}; transfer-syntax=1.2.840.10008.1.2.4.50"},
            406,
        ),
        (instance_url(served_gateway, ct), {"Accept": "text/html"}, 406),
        (instance_url(served_gateway, ct) + "/frames/0", {}, 400),
        (instance_url(served_gateway, ct) + "/frames/one", {}, 400),
        (instance_url(served_gateway, ct) + "/frames/2", {}, 400),  # out of range: PS3.18 9.5.2
        (instance_url(served_gateway, ct) + "/frames/2/rendered", {}, 400),
        (instance_url(served_gateway, ct) + "/frames/1,2/rendered", {}, 400),
        (instance_url(served_gateway, ct) + "/rendered?window=a,b", {}, 400),
        (instance_url(served_gateway, ct) + "/rendered?viewport=1,2,3,4", {}, 400),
        (instance_url(served_gateway, ct) + "/bulkdata/00100010", {}, 404),
    ]
    async with httpx.AsyncClient() as http:
        for url, headers, status in cases:
            answer = await http.get(url, headers=headers)
            assert answer.status_code == status, url
            assert answer.headers["content-type"] == "application/problem+json", url


@pytest.mark.parametrize(
    "gateway_env", [{"CORS_ALLOW_ORIGINS": "http://viewer.test, http://other.test"}]
)
async def test_cors_preflight_allows_a_configured_viewer(
    served_gateway: str, archived: dict[str, Archived]
) -> None:
    url = instance_url(served_gateway, archived["ct"]) + "/frames/1"
    async with httpx.AsyncClient() as http:
        preflight = await http.options(
            url,
            headers={
                "Origin": "http://viewer.test",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, accept, range, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://viewer.test"
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"authorization", "accept", "range", "content-type"} <= set(allowed.split(", "))
        answer = await http.get(url, headers={"Origin": "http://viewer.test"})
        assert answer.headers["access-control-allow-origin"] == "http://viewer.test"
        stranger = await http.get(url, headers={"Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in stranger.headers


async def test_no_cors_by_default(served_gateway: str, archived: dict[str, Archived]) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.get(
            instance_url(served_gateway, archived["ct"]) + "/metadata",
            headers={"Origin": "http://viewer.test"},
        )
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


async def test_a_uid_archived_twice_is_served_from_its_newest_copy(
    served_gateway: str,
    archived: dict[str, Archived],
    redis: Redis,
    gateway_settings: GatewaySettings,
) -> None:
    """Same SOP Instance UID, other bytes: both stay archived, the instance key names the newest."""
    ct = archived["ct"]
    ds = pydicom.dcmread(ct.path)
    ds.SeriesDescription = "corrected"
    upload_id = str(uuid4())
    folder = gateway_settings.archive_path / upload_id
    folder.mkdir(parents=True)
    ds.save_as(folder / "original.dcm", enforce_file_format=True)
    (folder / "metadata.json").write_text(json.dumps(describe(ds)))
    await redis.hset(names.study_uploads_key(STUDY), upload_id, f"{ct.series}\t{ct.sop}\tCT")
    await redis.set(names.instance_key(ct.sop), f"{upload_id} newer")
    client = dicomweb(served_gateway)
    study = await asyncio.to_thread(client.retrieve_study, STUDY)
    assert len(study) == len(archived)
    newest = await asyncio.to_thread(client.retrieve_instance, STUDY, ct.series, ct.sop)
    assert newest.SeriesDescription == "corrected"
    [metadata] = await asyncio.to_thread(client.retrieve_series_metadata, STUDY, ct.series)
    assert metadata["0008103E"]["Value"] == ["corrected"]
