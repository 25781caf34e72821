"""The target interface: one small protocol, one class per target, chosen by name.

A target module defines a class with a ``name``, a ``from_env()`` class method that loads the
target's own settings (``shared.settings.load``, so a missing variable stops the uploader at
start with one line naming it), ``put`` and ``delete``. Targets are imported only when
configured, so the SDK of a target nobody uses is never loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from uuid import UUID

from shared.events import CopyRequested, DicomIds, FileDescribed, TargetResult

# target name -> "module:class"
REGISTRY: dict[str, str] = {
    "local": "uploader_service.targets.local:LocalTarget",
    "s3": "uploader_service.targets.s3:S3Target",
    "azure": "uploader_service.targets.azure:AzureTarget",
    "gcs": "uploader_service.targets.gcs:GcsTarget",
    "dicomweb": "uploader_service.targets.dicomweb:DicomwebTarget",
}


@dataclass(frozen=True)
class Item:
    """One archived instance, ready to copy."""

    upload_id: UUID
    ids: DicomIds
    original: Path
    metadata: Path
    preview: Path | None
    sha256: str
    size: int

    @classmethod
    def of(cls, event: FileDescribed | CopyRequested) -> Item:
        return cls(
            upload_id=event.upload_id,
            ids=event.ids,
            original=Path(event.archive_path) / "original.dcm",
            metadata=Path(event.metadata_file),
            preview=Path(event.preview_file) if event.preview_file else None,
            sha256=event.file.sha256,
            size=event.file.size,
        )


class Target(Protocol):
    """Somewhere an archived instance is copied to.

    ``put`` is idempotent (the same instance always lands at the same place) and checks
    itself: it returns only once the target holds the bytes it was given, compared by a
    checksum, and raises ``RetryableError`` for a fault that may pass (timeout, 5xx,
    throttling, connection refused) or ``PermanentError`` for one that will not (credentials
    refused, bucket missing, checksum mismatch). Messages name the target and the problem,
    never patient data.
    """

    name: str

    async def put(self, item: Item) -> TargetResult: ...

    async def delete(self, ids: DicomIds) -> TargetResult:
        """Remove this instance's copies (original, metadata, preview) from the target.
        Idempotent: copies already gone count as removed. Raises RetryableError for a fault
        that may pass, PermanentError for one that will not (credentials refused, the server
        cannot delete). Returns TargetResult(target=name, ok=True, location=<what was removed>)."""
        ...


def build_targets(names: Sequence[str]) -> list[Target]:
    """The configured targets, each built from its own settings; unknown names raise."""
    targets: list[Target] = []
    for name in names:
        module, _, cls = REGISTRY[name].partition(":")
        targets.append(getattr(importlib.import_module(module), cls).from_env())
    return targets
