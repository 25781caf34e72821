"""The azure target against a real Azurite: keys, content types, blocks, checksums and faults."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ResourceTypes,
    generate_account_sas,
)
from uploader_service.targets import Item
from uploader_service.targets import azure as azure_target
from uploader_service.targets.azure import AzureTarget
from uploader_service.targets.keys import object_keys

from shared.errors import PermanentError, RetryableError
from testbed import servers
from tests.integration.targets.items import make_item
from tests.support import dicom_ids, free_port, pydicom_file

if TYPE_CHECKING:
    from tests.integration.targets.conftest import StartServer

pytestmark = pytest.mark.timeout(60)

WRONG_KEY = base64.b64encode(b"not the key of devstoreaccount1 " * 2).decode()
LARGE = 20_000_000  # above AZURE_SINGLE_PUT_SIZE (8 MiB): five blocks of at most 4 MiB


@pytest.fixture(scope="module")
def azurite(start_server: StartServer) -> servers.AzureServer:
    """An Azurite blob service of our own, in memory, on a free port."""
    return start_server(servers.azurite)


@pytest.fixture(scope="module")
def service(azurite: servers.AzureServer) -> Iterator[BlobServiceClient]:
    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    yield client
    client.close()


@pytest.fixture
def container(service: BlobServiceClient) -> Iterator[str]:
    """A fresh, empty container for one test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    service.create_container(name)
    yield name
    service.delete_container(name)


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, azurite: servers.AzureServer, container: str
) -> pytest.MonkeyPatch:
    """The azure variables for our Azurite, with retries short enough for a test."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(os.environ):
        if name.startswith("AZURE_"):
            monkeypatch.delenv(name)
    for name, value in azurite.env(container).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AZURE_RETRY_TOTAL", "1")
    monkeypatch.setenv("AZURE_RETRY_BACKOFF", "0")
    return monkeypatch


@pytest.fixture
def target(env: pytest.MonkeyPatch) -> Iterator[AzureTarget]:
    built = AzureTarget.from_env()
    yield built
    built.close()


@pytest.fixture
def small_item(tmp_path: Path) -> Item:
    """pydicom's CT_small.dcm, its metadata.json and a preview.png."""
    return make_item(tmp_path / "small", pydicom_file("CT_small.dcm").read_bytes())


@pytest.fixture
def large_item(tmp_path: Path) -> Item:
    """A 20 MB original (and metadata.json, no preview): large enough for a block upload."""
    ids = dicom_ids(
        study_uid="1.2.826.0.1.3680043.8.498.1",
        series_uid="1.2.826.0.1.3680043.8.498.1.2",
        sop_uid="1.2.826.0.1.3680043.8.498.1.2.3",
        modality="CT",
    )
    original = random.Random(7).randbytes(LARGE)
    return make_item(tmp_path / "large", original, ids=ids, preview=False)


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


async def test_put_stores_the_three_files_at_the_scheme_keys(
    target: AzureTarget, service: BlobServiceClient, container: str, small_item: Item
) -> None:
    result = await target.put(small_item)
    keys = object_keys("dicom", small_item.ids)
    assert keys.dicom.startswith(f"dicom/{small_item.ids.study_uid}/")
    expected = [
        (keys.dicom, small_item.original, "application/dicom"),
        (keys.metadata, small_item.metadata, "application/json"),
        (keys.preview, small_item.preview, "image/png"),
    ]
    for key, path, content_type in expected:
        assert path is not None
        blob = service.get_blob_client(container, key)
        props = blob.get_blob_properties()
        assert props.content_settings.content_type == content_type
        md5 = props.content_settings.content_md5
        assert md5 == hashlib.md5(path.read_bytes()).digest()
        assert blob.download_blob().readall() == path.read_bytes()
    original = small_item.original.read_bytes()
    assert result.target == "azure"
    assert result.ok
    assert result.location == f"{service.url.rstrip('/')}/{container}/{keys.dicom}"
    assert result.bytes == len(original) == small_item.size
    assert result.checksum == f"md5:{md5_b64(original)}"
    assert result.seconds is not None
    assert result.seconds >= 0


async def test_a_large_original_goes_up_in_blocks_and_is_verified(
    target: AzureTarget, service: BlobServiceClient, container: str, large_item: Item
) -> None:
    result = await target.put(large_item)
    blob = service.get_blob_client(container, object_keys("dicom", large_item.ids).dicom)
    committed, uncommitted = blob.get_block_list("all")
    assert len(committed) == 5  # ceil(20 MB / 4 MiB)
    assert all(block.size <= 4 * 1024 * 1024 for block in committed)
    assert sum(block.size for block in committed) == LARGE
    assert uncommitted == []
    original = large_item.original.read_bytes()
    props = blob.get_blob_properties()
    assert props.size == LARGE
    assert props.content_settings.content_type == "application/dicom"
    assert props.content_settings.content_md5 == hashlib.md5(original).digest()
    assert blob.download_blob().readall() == original
    assert result.checksum == f"md5:{md5_b64(original)}"
    assert result.bytes == LARGE
    keys = object_keys("dicom", large_item.ids)
    names = {b.name for b in service.get_container_client(container).list_blobs()}
    assert names == {keys.dicom, keys.metadata}  # no preview, no preview blob


async def test_putting_twice_changes_nothing(
    target: AzureTarget, service: BlobServiceClient, container: str, small_item: Item
) -> None:
    first = await target.put(small_item)
    second = await target.put(small_item)
    assert (first.location, first.bytes, first.checksum) == (
        second.location,
        second.bytes,
        second.checksum,
    )
    keys = object_keys("dicom", small_item.ids)
    names = sorted(b.name for b in service.get_container_client(container).list_blobs())
    assert names == sorted([keys.dicom, keys.metadata, keys.preview])
    blob = service.get_blob_client(container, keys.dicom)
    assert blob.download_blob().readall() == small_item.original.read_bytes()


async def test_a_missing_container_fails_at_once(env: pytest.MonkeyPatch, small_item: Item) -> None:
    env.setenv("AZURE_CONTAINER", "no-such-container")
    env.setenv("AZURE_RETRY_TOTAL", "3")
    env.setenv("AZURE_RETRY_BACKOFF", "30")  # a retry would show as half a minute
    target = AzureTarget.from_env()
    started = time.monotonic()
    with pytest.raises(PermanentError, match="azure: container 'no-such-container' does not exist"):
        await target.put(small_item)
    assert time.monotonic() - started < 10
    target.close()


async def test_a_wrong_account_key_fails_at_once(
    env: pytest.MonkeyPatch,
    azurite: servers.AzureServer,
    service: BlobServiceClient,
    container: str,
    small_item: Item,
) -> None:
    env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string(WRONG_KEY))
    env.setenv("AZURE_RETRY_TOTAL", "3")
    env.setenv("AZURE_RETRY_BACKOFF", "30")
    target = AzureTarget.from_env()
    started = time.monotonic()
    with pytest.raises(PermanentError, match="azure: credentials refused"):
        await target.put(small_item)
    assert time.monotonic() - started < 10
    target.close()
    assert list(service.get_container_client(container).list_blobs()) == []


async def test_azurite_down_is_worth_a_retry(env: pytest.MonkeyPatch, small_item: Item) -> None:
    closed = servers.AzureServer(free_port())  # nothing listens there
    env.setenv("AZURE_STORAGE_CONNECTION_STRING", closed.connection_string())
    target = AzureTarget.from_env()
    started = time.monotonic()
    with pytest.raises(RetryableError, match="azure: the storage account did not answer"):
        await target.put(small_item)
    assert time.monotonic() - started < 15  # one retry, 2 ± 1 s after the first try
    target.close()


@pytest.mark.parametrize(
    ("which", "why"),
    [
        # Azurite answers 400 InvalidOperation, Azure 400 Md5Mismatch
        ("small_item", r"(refused with HTTP 400|does not hold the bytes sent)"),
        ("large_item", r"does not hold the bytes sent \(MD5 or size\)"),
    ],
)
async def test_a_blob_that_does_not_match_the_file_is_refused(
    target: AzureTarget,
    monkeypatch: pytest.MonkeyPatch,
    which: str,
    why: str,
    request: pytest.FixtureRequest,
) -> None:
    """The local MD5 disagrees with the bytes sent: the service refuses a single put; a block
    upload, whose Content-MD5 the service stores unchecked, fails the read-back."""
    item: Item = request.getfixturevalue(which)
    monkeypatch.setattr(azure_target, "_md5_of", lambda path: hashlib.md5(b"other").digest())
    key = re.escape(object_keys("dicom", item.ids).dicom)
    with pytest.raises(PermanentError, match=f"^azure: blob '{key}' {why}"):
        await target.put(item)


async def test_an_original_missing_on_disk_is_worth_a_retry(
    target: AzureTarget, small_item: Item
) -> None:
    small_item.original.unlink()
    with pytest.raises(RetryableError, match=r"original\.dcm is not on disk"):
        await target.put(small_item)


async def test_an_account_url_with_its_key_or_a_sas_token_works(
    env: pytest.MonkeyPatch,
    azurite: servers.AzureServer,
    service: BlobServiceClient,
    small_item: Item,
) -> None:
    env.delenv("AZURE_STORAGE_CONNECTION_STRING")
    env.setenv("AZURE_STORAGE_ACCOUNT_URL", azurite.account_url)
    env.setenv("AZURE_STORAGE_KEY", servers.AZURITE_KEY)
    target = AzureTarget.from_env()
    assert (await target.put(small_item)).ok
    target.close()
    sas = generate_account_sas(
        servers.AZURITE_ACCOUNT,
        servers.AZURITE_KEY,
        ResourceTypes(container=True, object=True),
        AccountSasPermissions(read=True, write=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    env.delenv("AZURE_STORAGE_KEY")
    env.setenv("AZURE_STORAGE_SAS_TOKEN", f"?{sas}")
    target = AzureTarget.from_env()
    result = await target.put(small_item)
    target.close()
    assert result.ok
    assert result.location is not None
    assert "?" not in result.location  # the token never leaves in a location
    assert "sig=" not in result.location


def test_from_env_without_an_endpoint_stops_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    env["AZURE_CONTAINER"] = "dicom"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from uploader_service.targets.azure import AzureTarget; AzureTarget.from_env()",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: ")
    assert "AZURE_STORAGE_CONNECTION_STRING" in lines[0]
    assert "AZURE_STORAGE_ACCOUNT_URL" in lines[0]


@pytest.mark.parametrize(
    ("variables", "names"),
    [
        (
            {"AZURE_STORAGE_ACCOUNT_URL": "https://x.blob.core.windows.net"},
            ["AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"],
        ),
        (
            {
                "AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
                "AZURE_STORAGE_ACCOUNT_URL": "https://x.blob.core.windows.net",
            },
            ["AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_URL"],
        ),
        (
            {"AZURE_STORAGE_CONNECTION_STRING": "nonsense", "AZURE_CONTAINER": "Not_Valid"},
            ["AZURE_CONTAINER"],
        ),
        ({"AZURE_STORAGE_CONNECTION_STRING": "nonsense"}, ["AZURE_STORAGE_CONNECTION_STRING"]),
    ],
)
def test_bad_settings_stop_with_lines_naming_the_variables(
    env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variables: dict[str, str],
    names: list[str],
) -> None:
    env.delenv("AZURE_STORAGE_CONNECTION_STRING")
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        AzureTarget.from_env()
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: ")
    assert all(name in lines[0] for name in names)


# ---- delete --------------------------------------------------------------------------------


def blobs_in(service: BlobServiceClient, container: str) -> list[str]:
    """Every blob in container, snapshots included (a snapshot shows as its blob's name)."""
    listed = service.get_container_client(container).list_blobs(include=["snapshots"])
    return sorted(b.name for b in listed)


async def test_delete_removes_the_three_blobs_and_nothing_else(
    target: AzureTarget,
    service: BlobServiceClient,
    container: str,
    small_item: Item,
    tmp_path: Path,
) -> None:
    ids = small_item.ids.model_copy(update={"sop_uid": "1.2.826.0.1.3680043.8.498.99"})
    sibling = make_item(tmp_path / "sibling", b"another instance of the series", ids=ids)
    await target.put(small_item)
    await target.put(sibling)

    result = await target.delete(small_item.ids)

    keys = object_keys("dicom", small_item.ids)
    assert (result.target, result.ok, result.error) == ("azure", True, None)
    assert result.location == f"{service.url.rstrip('/')}/{container}/{keys.dicom}"
    left = object_keys("dicom", sibling.ids)
    assert blobs_in(service, container) == sorted([left.dicom, left.metadata, left.preview])


async def test_delete_takes_the_snapshots_of_a_blob_with_it(
    target: AzureTarget, service: BlobServiceClient, container: str, small_item: Item
) -> None:
    await target.put(small_item)
    key = object_keys("dicom", small_item.ids).dicom
    service.get_blob_client(container, key).create_snapshot()
    assert blobs_in(service, container).count(key) == 2

    assert (await target.delete(small_item.ids)).ok
    assert blobs_in(service, container) == []


async def test_deleting_blobs_already_gone_succeeds(
    target: AzureTarget, service: BlobServiceClient, container: str, small_item: Item
) -> None:
    await target.put(small_item)
    first = await target.delete(small_item.ids)
    second = await target.delete(small_item.ids)
    assert second.ok
    assert second.location == first.location
    assert blobs_in(service, container) == []


async def test_delete_from_a_missing_container_is_a_permanent_error(
    env: pytest.MonkeyPatch, small_item: Item
) -> None:
    """Azure answers 404 for a missing container too: ContainerNotFound is not BlobNotFound."""
    env.setenv("AZURE_CONTAINER", "no-such-container")
    target = AzureTarget.from_env()
    with pytest.raises(PermanentError) as raised:
        await target.delete(small_item.ids)
    target.close()
    assert str(raised.value) == "azure: container 'no-such-container' does not exist"


async def test_delete_with_a_wrong_account_key_is_a_permanent_error(
    target: AzureTarget,
    env: pytest.MonkeyPatch,
    azurite: servers.AzureServer,
    service: BlobServiceClient,
    container: str,
    small_item: Item,
) -> None:
    await target.put(small_item)
    env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string(WRONG_KEY))
    wrong = AzureTarget.from_env()
    with pytest.raises(PermanentError, match=r"^azure: credentials refused"):
        await wrong.delete(small_item.ids)
    wrong.close()
    assert len(blobs_in(service, container)) == 3
