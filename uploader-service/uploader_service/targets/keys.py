"""Where an instance lives in an object store: one key scheme for every target and API."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import DicomIds


@dataclass(frozen=True)
class ObjectKeys:
    """``{prefix}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}`` plus an extension."""

    dicom: str
    metadata: str
    preview: str


def object_keys(prefix: str, ids: DicomIds) -> ObjectKeys:
    """The keys of an instance's original, metadata.json and preview.png under ``prefix``.

    UIDs are digits and dots only, so keys need no escaping; the same instance always gets
    the same keys, which makes every upload to an object store idempotent.
    """
    parts = [p for p in prefix.strip("/").split("/") if p]
    base = "/".join([*parts, ids.study_uid, ids.series_uid, ids.sop_uid])
    return ObjectKeys(dicom=f"{base}.dcm", metadata=f"{base}.json", preview=f"{base}.png")
