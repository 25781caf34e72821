"""The DICOMweb target and client against a real Orthanc with its DICOMweb plugin, not mocks."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from structlog.testing import capture_logs
from uploader_service.targets import Item
from uploader_service.targets.dicomweb import DicomwebTarget

from shared.dicomweb import DicomwebClient, DicomwebNotFound, DicomwebSettings
from shared.errors import PermanentError, RetryableError
from shared.events import DicomIds
from shared.multipart_related import Event, Mark, PartReader
from testbed import servers
from tests.integration.targets.items import make_item
from tests.support import dicom_ids, free_port, pydicom_file, write_ct_series

if TYPE_CHECKING:
    from tests.integration.targets.conftest import StartServer

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD = servers.ORTHANC_USER, servers.ORTHANC_PASSWORD


@pytest.fixture(scope="module")
def orthanc(start_server: StartServer) -> servers.OrthancServer:
    """An Orthanc of our own on free ports, local clients only, basic auth, DICOMweb on."""
    return start_server(servers.orthanc)


@pytest.fixture(autouse=True)
def _no_dicomweb_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's DICOMWEB_* variables must not leak into the settings built here."""
    for name in [n for n in os.environ if n.startswith("DICOMWEB_")]:
        monkeypatch.delenv(name)


def settings(url: str, **overrides: Any) -> DicomwebSettings:
    values: dict[str, Any] = {
        "DICOMWEB_URL": url,
        "DICOMWEB_USERNAME": USER,
        "DICOMWEB_PASSWORD": PASSWORD,
        "DICOMWEB_RETRIES": 1,
        "DICOMWEB_BACKOFF_S": 0.01,
        **overrides,
    }
    return DicomwebSettings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def target(orthanc: servers.OrthancServer) -> AsyncIterator[DicomwebTarget]:
    target = DicomwebTarget(settings(orthanc.dicomweb))
    yield target
    await target.aclose()


def item_for(source: Path, folder: Path) -> Item:
    """An archived item as the uploader sees it; DICOMweb stores only the original."""
    return make_item(folder, source.read_bytes(), preview=False)


def read_back_with_dicomweb_client(
    orthanc: servers.OrthancServer, ids: DicomIds
) -> pydicom.Dataset:
    """The instance as an independent client (dicomweb-client, on requests) retrieves it."""
    import requests
    from dicomweb_client import DICOMwebClient

    with requests.Session() as session:
        session.auth = (USER, PASSWORD)
        client = DICOMwebClient(orthanc.dicomweb, session=session)
        return client.retrieve_instance(
            ids.study_uid, ids.series_uid, ids.sop_uid, media_types=(("application/dicom", "*"),)
        )


def retries_logged(logs: list[MutableMapping[str, Any]]) -> list[int]:
    return [entry["attempt"] for entry in logs if entry["event"] == "dicomweb.retried"]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"])
async def test_put_stores_the_instance_as_uploaded(
    orthanc: servers.OrthancServer, target: DicomwebTarget, tmp_path: Path, name: str
) -> None:
    item = item_for(pydicom_file(name), tmp_path)
    result = await target.put(item)
    ids = item.ids
    assert result.ok
    assert result.target == "dicomweb"
    assert result.location == (
        f"{orthanc.dicomweb}/studies/{ids.study_uid}/series/{ids.series_uid}"
        f"/instances/{ids.sop_uid}"
    )
    assert (result.bytes, result.checksum) == (item.size, f"sha256:{item.sha256}")

    held = await asyncio.to_thread(read_back_with_dicomweb_client, orthanc, ids)
    assert held.SOPInstanceUID == ids.sop_uid
    assert held.file_meta.TransferSyntaxUID == ids.transfer_syntax_uid  # not transcoded
    assert held == pydicom.dcmread(item.original)
    chunks = [c async for c in target.client.retrieve_instance(*_uids(ids))]
    assert b"".join(chunks) == item.original.read_bytes()  # Orthanc keeps the file as sent


def _uids(ids: DicomIds) -> tuple[str, str, str]:
    return ids.study_uid, ids.series_uid, ids.sop_uid


async def test_putting_the_same_instance_twice_succeeds(
    orthanc: servers.OrthancServer, target: DicomwebTarget, tmp_path: Path
) -> None:
    item = item_for(pydicom_file("CT_small.dcm"), tmp_path)
    first = await target.put(item)
    second = await target.put(item)
    assert first.location == second.location

    # Orthanc answers a duplicate with 200 and lists it again, as if stored anew
    again = await target.client.store(item.original)
    assert (again.status, again.referenced, again.failed) == (200, (item.ids.sop_uid,), ())
    series = f"{orthanc.dicomweb}/studies/{item.ids.study_uid}/series/{item.ids.series_uid}"
    async with httpx.AsyncClient(auth=(USER, PASSWORD)) as http:
        answer = await http.get(f"{series}/instances")
    assert [i["00080018"]["Value"] for i in answer.json()] == [[item.ids.sop_uid]]


@pytest.mark.parametrize(
    "sign_in",
    [
        {"DICOMWEB_PASSWORD": "wrong"},
        {"DICOMWEB_USERNAME": None, "DICOMWEB_PASSWORD": None, "DICOMWEB_TOKEN": "not-a-token"},
        {"DICOMWEB_USERNAME": None, "DICOMWEB_PASSWORD": None},
    ],
    ids=["wrong-password", "bearer-token", "none"],
)
async def test_refused_credentials_fail_at_once(
    orthanc: servers.OrthancServer, tmp_path: Path, sign_in: dict[str, Any]
) -> None:
    item = item_for(pydicom_file("CT_small.dcm"), tmp_path)
    target = DicomwebTarget(settings(orthanc.dicomweb, DICOMWEB_RETRIES=3, **sign_in))
    with capture_logs() as logs, pytest.raises(PermanentError, match="credentials refused"):
        await target.put(item)
    await target.aclose()
    assert retries_logged(logs) == []


async def test_server_down_is_retryable_after_a_few_tries(tmp_path: Path) -> None:
    item = item_for(pydicom_file("CT_small.dcm"), tmp_path)
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    target = DicomwebTarget(settings(closed, DICOMWEB_RETRIES=2))
    with capture_logs() as logs, pytest.raises(RetryableError, match="cannot reach the server"):
        await target.put(item)
    await target.aclose()
    assert retries_logged(logs) == [1, 2]


async def test_a_url_that_is_not_the_service_root_is_permanent(
    orthanc: servers.OrthancServer, tmp_path: Path
) -> None:
    item = item_for(pydicom_file("CT_small.dcm"), tmp_path)
    target = DicomwebTarget(settings(f"{orthanc.root}/not-dicom-web"))
    with pytest.raises(PermanentError, match="is DICOMWEB_URL the DICOMweb service root"):
        await target.put(item)
    await target.aclose()


async def test_readback_of_another_instance_under_the_same_uid_is_permanent(
    orthanc: servers.OrthancServer, target: DicomwebTarget, tmp_path: Path
) -> None:
    """Orthanc keeps the first instance it got for a SOP Instance UID and still answers 200."""
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "first.dcm")
    await target.client.store(tmp_path / "first.dcm")
    ds.SeriesDescription = "a different instance, same UIDs"
    ds.save_as(tmp_path / "second.dcm")
    item = item_for(tmp_path / "second.dcm", tmp_path / "archive")
    with pytest.raises(PermanentError, match="differs from the upload's SHA-256"):
        await target.put(item)


async def test_an_original_that_does_not_match_the_upload_is_permanent(
    target: DicomwebTarget, tmp_path: Path
) -> None:
    item = item_for(pydicom_file("CT_small.dcm"), tmp_path)
    with pytest.raises(PermanentError, match="does not match the upload"):
        await target.put(dataclasses.replace(item, sha256="0" * 64))


async def test_verify_by_response_trusts_the_referenced_sop_sequence(
    orthanc: servers.OrthancServer, tmp_path: Path
) -> None:
    item = item_for(pydicom_file("JPEG2000.dcm"), tmp_path)
    target = DicomwebTarget(settings(orthanc.dicomweb, DICOMWEB_VERIFY="response"))
    result = await target.put(item)
    await target.aclose()
    assert result.ok
    assert result.checksum == f"sha256:{item.sha256}"


async def test_retrieve_writes_a_study_or_one_instance_to_files(
    orthanc: servers.OrthancServer, tmp_path: Path
) -> None:
    sources = write_ct_series(tmp_path / "in", 2, rows=16, columns=16)
    ds = [pydicom.dcmread(p, stop_before_pixels=True) for p in sources]
    study, series = ds[0].StudyInstanceUID, ds[0].SeriesInstanceUID
    async with DicomwebClient(settings(orthanc.dicomweb)) as client:
        for path in sources:
            await client.store(path)

        files = await client.retrieve(study, dest_folder=tmp_path / "study")
        assert sorted(files) == sorted(tmp_path / "study" / f"{d.SOPInstanceUID}.dcm" for d in ds)
        for path, d in zip(sources, ds, strict=True):
            held = tmp_path / "study" / f"{d.SOPInstanceUID}.dcm"
            assert held.read_bytes() == path.read_bytes()

        sop = ds[1].SOPInstanceUID
        one = await client.retrieve(study, series, sop, dest_folder=tmp_path / "one")
        assert one == [tmp_path / "one" / f"{sop}.dcm"]
        assert one[0].read_bytes() == sources[1].read_bytes()
        assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [f"{sop}.dcm"]

        with pytest.raises(DicomwebNotFound):
            await client.retrieve(generate_uid(), dest_folder=tmp_path / "none")


@pytest.mark.parametrize(
    ("env", "first_line"),
    [
        ({}, "configuration error: DICOMWEB_URL: "),
        (
            {"DICOMWEB_URL": "http://127.0.0.1:9/dicom-web", "DICOMWEB_USERNAME": "u"},
            "configuration error: DICOMWEB_USERNAME and DICOMWEB_PASSWORD go together",
        ),
    ],
    ids=["no-url", "username-alone"],
)
def test_from_env_stops_with_a_line_naming_the_variable(
    tmp_path: Path, env: dict[str, str], first_line: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from uploader_service.targets.dicomweb import DicomwebTarget; "
            "DicomwebTarget.from_env()",
        ],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(first_line), done.stderr


# What other servers answer and Orthanc never does (409, Azure's 45070, 0xA7xx, 503, a response
# cut short) is played by httpx.MockTransport: the same client code, a scripted server.


def _stow_answer(status: int, failed: list[tuple[str, int]] | None = None) -> httpx.Response:
    body: dict[str, Any] = {}
    if failed:
        items = [
            {"00081155": {"vr": "UI", "Value": [sop]}, "00081197": {"vr": "US", "Value": [r]}}
            for sop, r in failed
        ]
        body["00081198"] = {"vr": "SQ", "Value": items}
    return httpx.Response(status, json=body, headers={"content-type": "application/dicom+json"})


def scripted(*answers: httpx.Response, seen: list[httpx.Request] | None = None) -> DicomwebClient:
    """A client whose server gives these answers in turn (the last one from then on)."""
    queue = list(answers)

    async def handle(request: httpx.Request) -> httpx.Response:
        await request.aread()
        if seen is not None:
            seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    url = "http://dicomweb.test/dicomWeb"
    return DicomwebClient(settings(url), transport=httpx.MockTransport(handle))


@pytest.mark.parametrize(
    "answer",
    [
        _stow_answer(409),
        _stow_answer(202, [("1.2.3", 45070)]),
        _stow_answer(409, [("1.2.3", 0x0111)]),
    ],
    ids=["409", "azure-45070", "0x0111"],
)
async def test_an_instance_the_server_already_holds_counts_as_stored(
    answer: httpx.Response,
) -> None:
    seen: list[httpx.Request] = []
    async with scripted(answer, seen=seen) as client:
        outcome = await client.store(pydicom_file("CT_small.dcm"))
    assert outcome.duplicate
    request, size = seen[0], pydicom_file("CT_small.dcm").stat().st_size
    assert request.url == "http://dicomweb.test/dicomWeb/studies"
    assert request.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    assert int(request.headers["content-length"]) == len(request.content) > size
    assert "transfer-encoding" not in request.headers


@pytest.mark.parametrize(
    ("answers", "error", "tries"),
    [
        ([_stow_answer(409, [("1.2.3", 0x0122)])], PermanentError, 1),
        ([_stow_answer(202, [("1.2.3", 0xC000)])], PermanentError, 1),
        ([_stow_answer(202, [("1.2.3", 0xA700)])], RetryableError, 2),
        ([httpx.Response(429, headers={"retry-after": "0"})], RetryableError, 2),
        # "²" (latin-1 B2): str.isdigit takes it, float refuses it: a ValueError, not a retry
        ([httpx.Response(429, headers=[(b"retry-after", b"\xb2")])], RetryableError, 2),
        ([httpx.Response(413)], PermanentError, 1),
    ],
    ids=[
        "409-sop-class-not-supported",
        "cannot-understand",
        "out-of-resources",
        "429",
        "429-odd-retry-after",
        "413",
    ],
)
async def test_refusals_are_sorted_into_retryable_and_permanent(
    answers: list[httpx.Response], error: type[Exception], tries: int
) -> None:
    seen: list[httpx.Request] = []
    async with scripted(*answers, seen=seen) as client:
        with pytest.raises(error, match="dicomweb: "):
            await client.store(pydicom_file("CT_small.dcm"))
    assert len(seen) == tries


async def test_a_passing_fault_is_retried_until_the_store_succeeds() -> None:
    answers = (httpx.Response(503), _stow_answer(200))
    async with scripted(*answers) as client:
        outcome = await client.store(pydicom_file("CT_small.dcm"))
    assert (outcome.status, outcome.duplicate) == (200, False)


async def test_a_retrieve_cut_off_midway_is_retried_and_leaves_no_file(tmp_path: Path) -> None:
    cut = httpx.Response(
        200,
        content=b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM and then nothing",
        headers={"content-type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    async with scripted(cut) as client:
        with capture_logs() as logs, pytest.raises(RetryableError, match="closing boundary"):
            await client.retrieve("1.2.3", dest_folder=tmp_path)
    assert retries_logged(logs) == [1]
    assert list(tmp_path.iterdir()) == []


# The multipart/related reader (python-multipart underneath) against bodies cut anywhere.

BOUNDARIES = ["b", "3f2a9c1e-77d0-4b5e-9a61-0c8e2d4f6b1a", "----=_Part_0_1234.5678"]


def _part_data(rng: random.Random, delimiter: bytes) -> bytes:
    """Bytes full of CRs, LFs, dashes and starts of the delimiter, but never all of it."""
    fragments = [b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", b"DICM", rng.randbytes(6)]
    fragments.append(delimiter[: rng.randrange(1, len(delimiter))])
    while True:
        data = b"".join(rng.choice(fragments) for _ in range(rng.randint(0, 40)))
        if delimiter not in data:
            return data


def _random_body(rng: random.Random, fewest_parts: int) -> tuple[str, list[bytes], bytes]:
    """A boundary, the data of up to four parts, and the multipart/related body holding them."""
    boundary = rng.choice(BOUNDARIES)
    dash = b"--" + boundary.encode()
    parts = [_part_data(rng, b"\r\n" + dash) for _ in range(rng.randint(fewest_parts, 4))]
    if not parts:
        return boundary, parts, dash + b"--\r\n"
    body = b""
    for i, data in enumerate(parts):
        padding = rng.choice([b"", b" ", b" \t"]) if i else b""  # transport padding
        body += (b"\r\n" if i else b"") + dash + padding + b"\r\n"
        body += b"Content-Type: application/dicom\r\nContent-Length: %d\r\n\r\n" % len(data) + data
    body += b"\r\n" + dash + b"--" + rng.choice([b"", b"\r\n", b"\r\nan epilogue\r\n"])
    return boundary, parts, body


def _cut(rng: random.Random, body: bytes) -> list[bytes]:
    if rng.random() < 0.1:
        return [body[i : i + 1] for i in range(len(body))]
    cuts = sorted(rng.sample(range(1, len(body)), rng.randint(0, min(12, max(len(body) - 1, 0)))))
    return [body[i:j] for i, j in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def _parts_of(events: list[Event]) -> tuple[list[bytes], bytes | None]:
    """The complete parts, and the data of one still open."""
    parts: list[bytes] = []
    open_part: bytearray | None = None
    for event in events:
        if event is Mark.PART_START:
            assert open_part is None
            open_part = bytearray()
        elif event is Mark.PART_END:
            assert open_part is not None
            parts.append(bytes(open_part))
            open_part = None
        else:
            assert isinstance(event, bytes)
            assert open_part is not None
            open_part += event
    return parts, None if open_part is None else bytes(open_part)


def test_the_reader_finds_the_parts_however_the_body_is_chunked() -> None:
    rng = random.Random(2046)
    for _ in range(2000):
        boundary, expected, body = _random_body(rng, fewest_parts=0)
        reader = PartReader(boundary)
        events = [event for chunk in _cut(rng, body) for event in reader.feed(chunk)]
        reader.close()
        assert _parts_of(events) == (expected, None), body


def test_a_body_cut_short_anywhere_is_retryable_and_gives_only_what_arrived() -> None:
    rng = random.Random(1521)
    for _ in range(1000):
        boundary, expected, body = _random_body(rng, fewest_parts=1)
        closing = body.rindex(b"\r\n--" + boundary.encode() + b"--")
        body = body[: rng.randrange(closing + len(boundary) + 5)]  # never its last "--"
        reader = PartReader(boundary)
        events = [event for chunk in _cut(rng, body) for event in reader.feed(chunk)]
        with pytest.raises(RetryableError, match="closing boundary"):
            reader.close()
        complete, open_part = _parts_of(events)
        assert complete == expected[: len(complete)], body
        if open_part is not None:
            assert expected[len(complete)].startswith(open_part), body


def test_part_data_comes_out_as_it_arrives() -> None:
    """A 4 MiB part fed by 64 KiB: all it has received, but a delimiter's length, is given back."""
    head = b"--b\r\nContent-Type: application/dicom\r\n\r\n"
    data = random.Random(7).randbytes(4 * 1024 * 1024)
    body = head + data + b"\r\n--b--"
    reader = PartReader("b")
    given = 0
    for at in range(0, len(body), 64 * 1024):
        events = reader.feed(body[at : at + 64 * 1024])
        given += sum(len(e) for e in events if isinstance(e, bytes))
        arrived = min(at + 64 * 1024, len(body)) - len(head)
        assert given >= min(arrived, len(data)) - len(b"\r\n--b")
    reader.close()
    assert given == len(data)


@pytest.mark.parametrize(
    "body",
    [
        b"--b\r\nContent-Type: application/dicom\r\nno colon here\r\n\r\nDICM\r\n--b--",
        b"--x\r\n\r\nDICM\r\n--x--",  # no --b: all of it would be a preamble (RFC 2046)
        b"--b\r\n" + b"Content-Type: " + b"x" * 20_000 + b"\r\n\r\nDICM\r\n--b--",
    ],
    ids=["bad-header", "wrong-boundary", "header-too-long"],
)
def test_a_malformed_body_is_permanent(body: bytes) -> None:
    def read() -> None:
        reader = PartReader("b")
        reader.feed(body)
        reader.close()

    with pytest.raises(PermanentError, match="dicomweb: malformed multipart response"):
        read()


def test_a_preamble_is_skipped() -> None:
    """RFC 2046 5.1.1: text before the first boundary is ignored (found by fuzzing)."""
    body = b"a preamble\r\n--b\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b--"
    reader = PartReader("b")
    events = [event for at in range(len(body)) for event in reader.feed(body[at : at + 1])]
    reader.close()
    assert events[0] is Mark.PART_START
    assert b"".join(e for e in events if isinstance(e, bytes)) == b"DICM"


async def test_a_retrieve_streamed_in_odd_chunks_writes_each_instance_whole(
    tmp_path: Path,
) -> None:
    sources = [pydicom_file(name) for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")]
    body = b"".join(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n"
        for path in sources
    )
    rng = random.Random(3)
    chunks = _cut(rng, body + b"--b--\r\n")

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    answer = httpx.Response(
        200,
        content=stream(),
        headers={"content-type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    async with scripted(answer) as client:
        written = await client.retrieve("1.2.3", dest_folder=tmp_path)
    uids = [pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in sources]
    assert written == [tmp_path / f"{uid}.dcm" for uid in uids]
    for path, source in zip(written, sources, strict=True):
        assert path.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


# ---- delete --------------------------------------------------------------------------------
# Orthanc's DICOMweb plugin has no DELETE (it answers 405, Allow: GET): on it, delete must fail
# for good and leave the instance alone. The servers that have one (Google Cloud Healthcare,
# the Azure DICOM service, dcm4chee) are played by the scripted transport, as above.


async def test_delete_on_orthanc_is_refused_for_good_and_leaves_the_instance(
    orthanc: servers.OrthancServer, tmp_path: Path
) -> None:
    item = item_for(pydicom_file("CT_small.dcm"), tmp_path)
    target = DicomwebTarget(settings(orthanc.dicomweb, DICOMWEB_RETRIES=3))
    await target.put(item)

    with capture_logs() as logs, pytest.raises(PermanentError) as raised:
        await target.delete(item.ids)

    assert str(raised.value) == (
        "dicomweb: this server does not support DELETE; remove the instance there"
    )
    assert retries_logged(logs) == []
    chunks = [c async for c in target.client.retrieve_instance(*_uids(item.ids))]
    assert b"".join(chunks) == item.original.read_bytes()  # still there
    await target.aclose()


async def test_delete_on_orthanc_with_a_wrong_password_is_refused_credentials(
    orthanc: servers.OrthancServer,
) -> None:
    ids = dicom_ids(fresh=True)
    target = DicomwebTarget(settings(orthanc.dicomweb, DICOMWEB_PASSWORD="wrong"))
    with pytest.raises(PermanentError, match=r"^dicomweb: credentials refused \(401\)$"):
        await target.delete(ids)
    await target.aclose()


SCRIPTED_IDS = dicom_ids()


@pytest.mark.parametrize("status", [200, 202, 204, 404])
async def test_delete_succeeds_when_removed_or_already_gone(status: int) -> None:
    seen: list[httpx.Request] = []
    client = scripted(httpx.Response(status), seen=seen)
    target = DicomwebTarget(client.settings, client=client)
    result = await target.delete(SCRIPTED_IDS)
    await target.aclose()

    instance = "http://dicomweb.test/dicomWeb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"
    assert (result.target, result.ok, result.location) == ("dicomweb", True, instance)
    assert [(r.method, str(r.url)) for r in seen] == [("DELETE", instance)]


@pytest.mark.parametrize(
    ("answers", "error", "message", "tries"),
    [
        ([httpx.Response(405)], PermanentError, "does not support DELETE", 1),
        ([httpx.Response(501)], PermanentError, "does not support DELETE", 1),
        ([httpx.Response(403)], PermanentError, r"credentials refused \(403\)", 1),
        ([httpx.Response(409)], PermanentError, "answered 409 to DELETE", 1),
        ([httpx.Response(503)], RetryableError, "DELETE answered 503", 2),
        ([httpx.Response(503), httpx.Response(204)], None, "", 2),
    ],
    ids=["405", "501", "403", "409", "503", "503-then-204"],
)
async def test_delete_refusals_are_sorted_into_retryable_and_permanent(
    answers: list[httpx.Response], error: type[Exception] | None, message: str, tries: int
) -> None:
    seen: list[httpx.Request] = []
    async with scripted(*answers, seen=seen) as client:
        if error is None:
            await client.delete_instance("1.2.3", "1.2.3.4", "1.2.3.4.5")
        else:
            with pytest.raises(error, match=f"^dicomweb: .*{message}"):
                await client.delete_instance("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert len(seen) == tries
