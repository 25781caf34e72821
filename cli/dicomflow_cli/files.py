"""Finding the files to upload: what each one is, its name for the server, its SHA-256."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dicomflow_cli.client import UsageError

Kind = Literal["dicom", "jpeg", "png"]
MEDIA: dict[str, str] = {"dicom": "application/dicom", "jpeg": "image/jpeg", "png": "image/png"}


@dataclass
class Item:
    """One file found, and what became of it."""

    path: Path
    name: str  # the name the server is given: relative to the folder named, with its name
    size: int
    kind: Kind | None  # None: not something to upload
    sha256: str | None = None
    upload_id: str | None = None
    known: bool = False  # the server had it already
    status: str | None = None
    outcome: str = "pending"
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        details = self.details
        return {
            "path": str(self.path),
            "name": self.name,
            "size": self.size,
            "kind": self.kind,
            "sha256": self.sha256,
            "outcome": self.outcome,
            "upload_id": self.upload_id,
            "status": self.status,
            "already_there": self.known,
            "message": self.message,
            "reasons": details.get("reasons", []),
            "error": details.get("error"),
            "duplicate_of": details.get("duplicate_of"),
        }


def kind_of(path: Path) -> Kind | None:
    """DICOM when bytes 128:132 are DICM; JPEG and PNG by their signatures; else None."""
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return None
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return None


def find(paths: Iterable[str], recursive: bool) -> list[Item]:
    """Every file the paths name: files as given, a folder's files (its tree when recursive),
    each once, in a stable order. A path that does not exist is a usage error."""
    found: dict[Path, Item] = {}
    for text in paths:
        root = Path(text)
        if not root.exists():
            raise UsageError(f"no such file or folder: {text}")
        if root.is_file():
            pairs: Iterable[tuple[Path, str]] = [(root, root.name)]
        else:
            base = root.resolve().name or "files"
            pairs = (
                (p, f"{base}/{p.relative_to(root).as_posix()}") for p in _walk(root, recursive)
            )
        for path, name in pairs:
            key = path.resolve()
            if key not in found:
                found[key] = Item(path, name, _size(path), kind_of(path))
    return list(found.values())


def _walk(root: Path, recursive: bool) -> Iterator[Path]:
    if not recursive:
        yield from sorted(p for p in root.iterdir() if p.is_file())
        return
    for folder, folders, files in os.walk(root):  # symlinked folders are not followed
        folders.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file():
                yield path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
