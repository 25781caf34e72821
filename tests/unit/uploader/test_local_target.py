"""The local target's delete: the gateway removes the archive, so the target touches nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from uuid import uuid4

from uploader_service.targets import Item
from uploader_service.targets.local import LocalTarget

from shared.events import TargetResult
from tests.support import dicom_ids

IDS = dicom_ids()


def archived(folder: Path) -> Item:
    """An archive folder as the descriptor leaves it (the bytes need not be DICOM here)."""
    folder.mkdir(parents=True)
    (folder / "original.dcm").write_bytes(b"an archived original")
    (folder / "metadata.json").write_text("{}")
    (folder / "preview.png").write_bytes(b"a preview")
    data = (folder / "original.dcm").read_bytes()
    return Item(
        upload_id=uuid4(),
        ids=IDS,
        original=folder / "original.dcm",
        metadata=folder / "metadata.json",
        preview=folder / "preview.png",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


async def test_delete_reports_success_and_leaves_the_archive_to_the_gateway(
    tmp_path: Path,
) -> None:
    item = archived(tmp_path / "archive" / "one")
    target = LocalTarget.from_env()
    assert (await target.put(item)).ok

    result = await target.delete(item.ids)

    assert result == TargetResult(target="local", ok=True, location=None)
    assert sorted(p.name for p in item.original.parent.iterdir()) == [
        "metadata.json",
        "original.dcm",
        "preview.png",
    ]


async def test_delete_of_an_instance_never_archived_succeeds() -> None:
    result = await LocalTarget().delete(IDS)
    assert (result.ok, result.location, result.error) == (True, None, None)
