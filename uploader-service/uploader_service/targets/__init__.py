"""The target interface: one small protocol, one class per target, chosen by name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from uuid import UUID

from shared.events import DicomIds, FileDescribed, TargetResult


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
    def of(cls, event: FileDescribed) -> Item:
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
    """Somewhere an archived instance is copied to. ``put`` is idempotent and checks itself:
    it returns only once the target holds the bytes it was given (checksum compared), and
    raises RetryableError for a passing fault, PermanentError for one that will not pass."""

    name: str

    async def put(self, item: Item) -> TargetResult: ...


def build_targets(names: Sequence[str]) -> list[Target]:
    from uploader_service.targets.local import LocalTarget

    factories = {"local": LocalTarget}
    return [factories[name]() for name in names]
