"""The local target: the archive itself. ``put`` checks the archived original against the upload's
SHA-256; ``delete`` leaves the archive to the gateway, which removes it with the job."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import pytest
from uploader_service.targets import Item
from uploader_service.targets.local import LocalTarget
from uploader_service.worker import _attempt

from shared.errors import PermanentError, RetryableError
from shared.files import SMALL_FILE
from tests.support import dicom_ids

IDS = dicom_ids()
MISMATCH = "local: the archived original does not match the upload's SHA-256"
SMALL, LARGE = 1000, SMALL_FILE + 1000  # checked in the event loop / in a thread


def archived(folder: Path, size: int = SMALL) -> Item:
    """An archive folder as the descriptor leaves it, for an upload of ``size`` bytes (they
    need not be DICOM here), with the upload's SHA-256 as the gateway computed it."""
    folder.mkdir(parents=True)
    data = bytes(i % 251 for i in range(size))
    (folder / "original.dcm").write_bytes(data)
    (folder / "metadata.json").write_text("{}")
    (folder / "preview.png").write_bytes(b"a preview")
    return Item(
        upload_id=uuid4(),
        ids=IDS,
        original=folder / "original.dcm",
        metadata=folder / "metadata.json",
        preview=folder / "preview.png",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def replace_by_another_file(path: Path) -> None:
    """Another instance's bytes at the same place and of the same size."""
    path.write_bytes(bytes(255 - b for b in path.read_bytes()))


# ---- put ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
async def test_put_of_an_intact_original_reports_its_checksum_and_place(
    tmp_path: Path, size: int
) -> None:
    item = archived(tmp_path / "archive" / "one", size)
    result = await LocalTarget.from_env().put(item)
    on_disk = hashlib.sha256(item.original.read_bytes()).hexdigest()
    assert (result.target, result.ok, result.error) == ("local", True, None)
    assert result.checksum == f"sha256:{on_disk}"
    assert result.location == str(item.original.resolve())
    assert result.bytes == size


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("damage", [flip_a_byte, truncate, replace_by_another_file])
async def test_put_finds_an_archived_original_that_differs_from_the_upload(
    tmp_path: Path, size: int, damage: Callable[[Path], None]
) -> None:
    item = archived(tmp_path / "archive" / "one", size)
    damage(item.original)
    with pytest.raises(PermanentError) as raised:
        await LocalTarget().put(item)
    assert str(raised.value) == MISMATCH


async def test_a_mismatch_fails_the_job_for_good_with_the_target_named(tmp_path: Path) -> None:
    """How the uploader reports it: this target failed, permanently, in the target's words."""
    item = archived(tmp_path / "archive" / "one")
    flip_a_byte(item.original)
    target = LocalTarget()
    result, permanent = await _attempt(target, target.put(item))
    assert (result.target, result.ok, result.error) == ("local", False, MISMATCH)
    assert permanent


async def test_put_of_an_original_not_on_disk_is_worth_a_retry(tmp_path: Path) -> None:
    item = archived(tmp_path / "archive" / "one")
    item.original.unlink()
    target = LocalTarget()
    with pytest.raises(RetryableError, match=r"^local: the archived original is not on disk"):
        await target.put(item)
    result, permanent = await _attempt(target, target.put(item))
    assert not result.ok
    assert not permanent


# ---- delete ------------------------------------------------------------------------------


async def test_delete_leaves_every_archived_byte_to_the_gateway_and_claims_nothing_removed(
    tmp_path: Path,
) -> None:
    item = archived(tmp_path / "archive" / "one")
    target = LocalTarget.from_env()
    assert (await target.put(item)).ok
    before = {p.name: p.read_bytes() for p in item.original.parent.iterdir()}

    result = await target.delete(item.ids)

    assert {p.name: p.read_bytes() for p in item.original.parent.iterdir()} == before
    assert (result.target, result.ok, result.error) == ("local", True, None)
    assert result.location is None  # what was removed: nothing, by this target


async def test_delete_after_the_gateway_removed_the_archive_succeeds_and_brings_nothing_back(
    tmp_path: Path,
) -> None:
    """The order of a real deletion: the gateway removes the archive folder, then the copies
    are deleted; copies already gone count as removed."""
    item = archived(tmp_path / "archive" / "one")
    target = LocalTarget()
    assert (await target.put(item)).ok
    shutil.rmtree(item.original.parent)  # what the gateway's removal does

    result = await target.delete(item.ids)

    assert (result.ok, result.error) == (True, None)
    assert not item.original.parent.exists()
    assert list((tmp_path / "archive").iterdir()) == []
