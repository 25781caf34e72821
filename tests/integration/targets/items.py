"""Items for the target tests: an archive folder as the descriptor leaves it, as an Item."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from uuid import uuid4

from PIL import Image
from pydicom import dcmread
from uploader_service.targets import Item

from shared.events import DicomIds
from tests.support import dicom_ids


def ids_of(path: Path) -> DicomIds:
    """The UIDs of a DICOM file."""
    ds = dcmread(path, stop_before_pixels=True)
    return dicom_ids(ds)


def png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (16, 16), 128).save(out, format="PNG")
    return out.getvalue()


def make_item(
    folder: Path, original: bytes, *, ids: DicomIds | None = None, preview: bool = True
) -> Item:
    """original.dcm, metadata.json and (if preview) preview.png in folder, as an Item.

    Without ids they are read from original, which must then be DICOM; with them it may be
    any bytes (the object-store targets do not read DICOM)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "original.dcm"
    path.write_bytes(original)
    ids = ids_of(path) if ids is None else ids
    (folder / "metadata.json").write_text(json.dumps(ids.model_dump()))
    if preview:
        (folder / "preview.png").write_bytes(png())
    return Item(
        upload_id=uuid4(),
        ids=ids,
        original=path,
        metadata=folder / "metadata.json",
        preview=folder / "preview.png" if preview else None,
        sha256=hashlib.sha256(original).hexdigest(),
        size=len(original),
    )
