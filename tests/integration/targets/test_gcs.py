"""The gcs target against a real GCS emulator: gcp-storage-emulator, in memory, on a free port."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from google.api_core import exceptions as api
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from uploader_service.targets import Item, gcs
from uploader_service.targets.gcs import GcsSettings, GcsTarget, classify, crc32c_of
from uploader_service.targets.keys import object_keys

from shared.errors import PermanentError, RetryableError
from testbed import servers
from tests.integration.targets.items import make_item
from tests.support import ct_slice, free_port, pydicom_file

if TYPE_CHECKING:
    from tests.integration.targets.conftest import StartServer

pytestmark = pytest.mark.timeout(60)
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def emulator(start_server: StartServer) -> servers.GcsServer:
    """A gcp-storage-emulator of our own, in memory, logging its requests to a file."""
    return start_server(servers.gcs_emulator)


@pytest.fixture
def bucket(emulator: servers.GcsServer, monkeypatch: pytest.MonkeyPatch) -> storage.Bucket:
    """A fresh bucket for this test, and the environment that points the target at it."""
    name = f"dicomflow-{uuid.uuid4().hex[:12]}"
    for variable, value in emulator.env(name).items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("GCS_PREFIX", "dicom")
    monkeypatch.setenv("GCS_RETRY_DEADLINE", "2")
    monkeypatch.delenv("GCS_CHUNK_SIZE", raising=False)
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    return client.create_bucket(name)


@pytest.fixture
def small_item(tmp_path: Path) -> Item:
    return make_item(tmp_path / "ct-small", pydicom_file("CT_small.dcm").read_bytes())


@pytest.fixture(scope="module")
def large_original() -> bytes:
    """A 12 MiB CT instance (2048 x 3072, 16-bit): over the 8 MiB resumable threshold."""
    return ct_slice(rows=2048, columns=3072)


async def test_put_stores_three_objects_at_the_scheme_keys(
    bucket: storage.Bucket, small_item: Item, emulator: servers.GcsServer
) -> None:
    result = await GcsTarget.from_env().put(small_item)

    keys = object_keys("dicom", small_item.ids)
    assert result.target == "gcs"
    assert result.ok
    assert result.location == f"gs://{bucket.name}/{keys.dicom}"
    assert result.bytes == small_item.size
    assert result.seconds is not None
    assert result.seconds >= 0
    expected = {
        keys.dicom: (small_item.original, "application/dicom"),
        keys.metadata: (small_item.metadata, "application/json"),
        keys.preview: (small_item.preview, "image/png"),
    }
    assert {blob.name for blob in bucket.list_blobs()} == set(expected)
    for key, (path, content_type) in expected.items():
        assert path is not None
        blob = bucket.get_blob(key)
        assert blob is not None
        assert blob.content_type == content_type
        assert blob.download_as_bytes() == path.read_bytes()
        if key == keys.dicom:
            assert result.checksum == f"crc32c:{blob.crc32c}"
    # small files go in one request each
    uploads = [line for line in emulator.requests_for(bucket.name) if "/upload/" in line]
    assert len(uploads) == 3
    assert all("uploadType=multipart" in line for line in uploads)


async def test_without_a_preview_only_the_original_and_metadata_are_stored(
    bucket: storage.Bucket, tmp_path: Path
) -> None:
    item = make_item(
        tmp_path / "no-preview", pydicom_file("CT_small.dcm").read_bytes(), preview=False
    )
    await GcsTarget.from_env().put(item)
    keys = object_keys("dicom", item.ids)
    assert {blob.name for blob in bucket.list_blobs()} == {keys.dicom, keys.metadata}


@pytest.mark.parametrize("chunk_mib", [8, 4])
async def test_a_large_original_goes_as_a_verified_resumable_upload(
    bucket: storage.Bucket,
    emulator: servers.GcsServer,
    large_original: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunk_mib: int,
) -> None:
    """Over 8 MiB the library goes resumable, in chunks of GCS_CHUNK_SIZE (emulator's log)."""
    monkeypatch.setenv("GCS_CHUNK_SIZE", str(chunk_mib * MiB))
    item = make_item(tmp_path / "large", large_original)
    assert item.size > 8 * MiB

    result = await GcsTarget.from_env().put(item)

    key = object_keys("dicom", item.ids).dicom
    blob = bucket.get_blob(key)
    assert blob is not None
    assert blob.size == item.size
    assert blob.content_type == "application/dicom"
    assert result.checksum == f"crc32c:{blob.crc32c}" == f"crc32c:{crc32c_of(item.original)}"
    assert blob.download_as_bytes() == large_original
    logged = emulator.requests_for(bucket.name)
    started = [line for line in logged if "POST" in line and "uploadType=resumable" in line]
    chunks = [line for line in logged if "PUT" in line and "upload_id=" in line]
    assert len(started) == 1  # only the original; metadata and preview are small
    assert len(chunks) == math.ceil(item.size / (chunk_mib * MiB))


async def test_putting_the_same_instance_twice_changes_nothing(
    bucket: storage.Bucket, small_item: Item
) -> None:
    target = GcsTarget.from_env()
    first = await target.put(small_item)
    second = await target.put(small_item)

    assert first.model_copy(update={"seconds": None}) == second.model_copy(update={"seconds": None})
    blobs = list(bucket.list_blobs())
    assert len(blobs) == 3
    key = object_keys("dicom", small_item.ids).dicom
    assert bucket.blob(key).download_as_bytes() == small_item.original.read_bytes()


async def test_a_missing_bucket_is_a_permanent_error_at_once(
    bucket: storage.Bucket, small_item: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCS_BUCKET", "no-such-bucket")
    started = time.monotonic()
    with pytest.raises(PermanentError, match=r"^gcs: bucket 'no-such-bucket' does not exist$"):
        await GcsTarget.from_env().put(small_item)
    assert time.monotonic() - started < 2  # a 404 is not retried


async def test_an_emulator_that_is_down_is_a_retryable_error_within_seconds(
    bucket: storage.Bucket, small_item: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # closed
    monkeypatch.setenv("GCS_RETRY_DEADLINE", "1")
    started = time.monotonic()
    with pytest.raises(RetryableError, match=r"^gcs: cannot reach the service$"):
        await GcsTarget.from_env().put(small_item)
    assert time.monotonic() - started < 8


async def test_a_stored_object_that_does_not_match_is_a_permanent_error(
    bucket: storage.Bucket, small_item: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket's CRC32C is compared with the local one: a different local CRC must fail."""
    monkeypatch.setattr(gcs, "crc32c_of", lambda path: "AAAAAA==")
    key = object_keys("dicom", small_item.ids).dicom
    with pytest.raises(PermanentError) as caught:
        await GcsTarget.from_env().put(small_item)
    assert (
        str(caught.value) == f"gcs: object '{key}' does not match the local file (CRC32C or size)"
    )


async def test_archived_files_not_on_disk_are_a_retryable_error(
    bucket: storage.Bucket, small_item: Item
) -> None:
    small_item.metadata.unlink()
    with pytest.raises(RetryableError, match="not on disk"):
        await GcsTarget.from_env().put(small_item)
    assert list(bucket.list_blobs()) == []


def test_from_env_without_a_bucket_stops_the_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCS_")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from uploader_service.targets.gcs import GcsTarget\nGcsTarget.from_env()",
        ],
        cwd=tmp_path,  # no .env here
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("configuration error: GCS_BUCKET: ")
    assert len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("value", ["1000000", "0", "-262144"])
def test_a_chunk_size_not_in_256_kib_steps_stops_at_start(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GCS_BUCKET", "b")
    monkeypatch.setenv("GCS_CHUNK_SIZE", value)
    with pytest.raises(SystemExit) as stopped:
        GcsTarget.from_env()
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "configuration error: GCS_CHUNK_SIZE: must be a positive multiple of 262144 (256 KiB)\n"
    )


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GCS_PREFIX", "GCS_CHUNK_SIZE", "GCS_RETRY_DEADLINE", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    settings = GcsSettings(GCS_BUCKET="b", _env_file=None)  # type: ignore[call-arg]
    assert (settings.prefix, settings.chunk_size, settings.retry_deadline) == ("dicom", 8 * MiB, 60)
    assert settings.project is None


@pytest.mark.skip(reason="the emulator accepts any credentials, so a refusal cannot happen here")
def test_refused_credentials_are_a_permanent_error() -> None:
    """Needs a real bucket and a revoked key; the mapping itself is checked below."""


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        (api.Forbidden("denied"), PermanentError, "gcs: credentials refused"),
        (api.Unauthorized("no"), PermanentError, "gcs: credentials refused"),
        (api.NotFound("gone"), PermanentError, "gcs: bucket 'b' does not exist"),
        (api.BadRequest("bad"), PermanentError, "gcs: request refused (HTTP 400)"),
        (api.TooManyRequests("slow"), RetryableError, "gcs: service unavailable (HTTP 429)"),
        (api.ServiceUnavailable("x"), RetryableError, "gcs: service unavailable (HTTP 503)"),
        (api.GatewayTimeout("x"), RetryableError, "gcs: service unavailable (HTTP 504)"),
        (
            api.RetryError("deadline", api.InternalServerError("x")),
            RetryableError,
            "gcs: service unavailable (HTTP 500)",
        ),
    ],
)
def test_library_errors_the_emulator_cannot_produce_are_classified(
    error: Exception, kind: type[Exception], message: str
) -> None:
    """Only the mapping: 403/401/429/5xx cannot be provoked on the emulator."""
    ours = classify(error, "b")
    assert type(ours) is kind
    assert str(ours) == message


# ---- delete --------------------------------------------------------------------------------


async def test_delete_removes_the_three_objects_and_nothing_else(
    bucket: storage.Bucket, small_item: Item, tmp_path: Path
) -> None:
    target = GcsTarget.from_env()
    ids = small_item.ids.model_copy(update={"sop_uid": "1.2.826.0.1.3680043.8.498.99"})
    sibling = make_item(tmp_path / "sibling", b"another instance of the series", ids=ids)
    await target.put(small_item)
    await target.put(sibling)

    result = await target.delete(small_item.ids)

    keys = object_keys("dicom", small_item.ids)
    assert (result.target, result.ok, result.error) == ("gcs", True, None)
    assert result.location == f"gs://{bucket.name}/{keys.dicom}"
    left = object_keys("dicom", sibling.ids)
    assert {blob.name for blob in bucket.list_blobs()} == {left.dicom, left.metadata, left.preview}


async def test_deleting_objects_already_gone_succeeds(
    bucket: storage.Bucket, small_item: Item
) -> None:
    target = GcsTarget.from_env()
    await target.put(small_item)
    first = await target.delete(small_item.ids)
    second = await target.delete(small_item.ids)
    assert second.ok
    assert second.location == first.location
    assert list(bucket.list_blobs()) == []


async def test_delete_from_a_missing_bucket_is_a_permanent_error(
    bucket: storage.Bucket, small_item: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GCS answers 404 for a missing object and a missing bucket alike: the target tells them
    apart by listing the bucket, which is 404 only when the bucket is missing."""
    monkeypatch.setenv("GCS_BUCKET", "no-such-bucket")
    with pytest.raises(PermanentError, match=r"^gcs: bucket 'no-such-bucket' does not exist$"):
        await GcsTarget.from_env().delete(small_item.ids)


async def test_delete_with_the_emulator_down_is_a_retryable_error(
    bucket: storage.Bucket, small_item: Item, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # closed
    monkeypatch.setenv("GCS_RETRY_DEADLINE", "1")
    with pytest.raises(RetryableError, match=r"^gcs: cannot reach the service$"):
        await GcsTarget.from_env().delete(small_item.ids)
